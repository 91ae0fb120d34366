"""The response half of an exchange: relay what the origin answers to the client (RFC 9112 section 6).

``Relay`` is a base of ``Exchange``: the methods an ``Origin`` calls (``ResponseOwner``). The framing towards the
client is the proxy's own: a known length stays, a body of unknown length is chunked for an HTTP/1.1 client and
ends with the connection for an HTTP/1.0 one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from authproxy.engine import forward
from authproxy.engine.states import ExchangeState

if TYPE_CHECKING:
    from authproxy.engine.connection import Connection
    from authproxy.engine.origin import Origin

_NO_BODY_STATUS = frozenset({204, 304})
_RESPONDING = ExchangeState.RESPONDING  # read once: through the Enum class it costs a __getattr__ call (3.11)


class Relay:
    """The origin's response, relayed. Implements ``authproxy.engine.origin.ResponseOwner``."""

    __slots__ = (
        "_out",
        "chunked_out",
        "close_delimited",
        "forwarding",
        "head_sent",
        "keep_alive",
        "reused_upstream",
        "sent_bytes",
        "state",
        "status",
        "upstream",
        "upstream_keep_alive",
    )

    # The response's fields are slots of this class; the rest are set by Exchange (its __slots__).
    conn: Connection
    state: ExchangeState
    method: bytes
    version: str
    keep_alive: bool
    auth_info: str | None
    status: int
    head_sent: bool
    chunked_out: bool
    close_delimited: bool
    upstream_keep_alive: bool
    sent_bytes: int
    body_complete: bool
    has_body: bool
    done: bool
    reused_upstream: bool
    forwarding: bool
    upstream: Origin | None
    peer: str | None
    _out: list[bytes]

    def finish(self, *, reusable: bool, keep_client: bool, abort: bool = False) -> None:
        raise NotImplementedError

    def refuse(self, status: int, detail: str, *, error: str | None = None, close: bool = False,
               extra: list[tuple[str, str]] | None = None) -> None:
        raise NotImplementedError

    def route(self) -> None:
        raise NotImplementedError

    def log(self) -> None:
        raise NotImplementedError

    # == events from the Origin ===============================================================================
    def upstream_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                      keep_alive: bool) -> None:
        """Relay a response head, repairing or refusing framing RFC 9112 section 6 forbids (issue 9).

        An origin's 407 is refused (502): it asks this proxy for credentials of a hop beyond it (see below).
        For framing, Squid either repairs or refuses; so does this, by what the client can still be told truly:
        - a 1xx ends with its head (RFC 9110 section 15.2). With Content-Length or Transfer-Encoding llhttp
          reads a body for some 1xx codes, so origin and proxy would disagree on where the next response
          starts: refused (502), the origin connection closed;
        - a 204 or 304 has no body (RFC 9112 section 6.3 rule 1): Content-Length and Transfer-Encoding are
          not relayed (a client trusting them would wait for bytes that never come), and when they were sent
          (a 204 must not, RFC 9110 section 8.6) the origin connection is closed: whatever the origin believes
          follows must not become the next request's response;
        - Transfer-Encoding with Content-Length (rule 3): the coding wins, the length is dropped, and the origin
          connection is closed after (the pair is the shape of a smuggling attempt); so is an HTTP/1.0 origin's
          after Transfer-Encoding (RFC 9112 section 6.1);
        - chunked applied twice, or before another coding (RFC 9112 section 6.1): no end we can trust, 502;
        - a final coding other than chunked (rule 4): the body ends when the origin closes, and no length is
          claimed. An HTTP/1.1 client gets it re-chunked, the origin's codings named before chunked; an
          HTTP/1.0 client gets it as it came, ended by closing the connection (HTTP/1.0 cannot be sent
          Transfer-Encoding, so such a coding goes unnamed: the one thing it cannot be told);
        - several Content-Length fields, or one holding a list: llhttp refuses them (502), identical or not
          (RFC 9110 section 8.6 allows either rejecting or repairing; rejecting is the one that cannot be
          wrong).
        """
        if status == 407:
            # A 407 asks the client of that hop (this proxy) for proxy credentials, which this proxy never has
            # to give: it consumes Proxy-Authorization (RFC 9110 section 11.7.2). Relayed, the client would
            # take it for this proxy's refusal of its password (issue 9 item 7).
            self.upstream_error(f"the origin {self.peer} answered 407 Proxy Authentication Required: it asks "
                                "for credentials of a proxy beyond this one, which this proxy does not send")
            return
        if not 100 <= status <= 599:
            # RFC 9110 section 15: values outside 100..599 are invalid, to be handled as a 5xx. Relayed, "000" or
            # "099" would reach the client as a status line that is not HTTP's (and llhttp takes a code below 200
            # for an interim response, so the exchange would never end).
            self.upstream_error(f"the origin {self.peer} answered with the invalid status code {status:03d}")
            return
        fields, content_length, codings = forward.response_fields(headers)
        if 100 <= status < 200:
            if status == 101:
                self.upstream_error("the origin switched protocols, which this proxy does not relay")
            elif content_length or codings is not None:
                self.upstream_error(f"the origin {self.peer} sent an interim {status} response with content, "
                                    "which a 1xx cannot have (RFC 9110 section 15.2)")
            elif self.version == "1.1":
                self._out.append(b"HTTP/1.1 %d %b\r\n\r\n" % (status, reason))
            return
        reuse = keep_alive
        chunked = False  # the origin's body arrives chunked (httptools takes the chunking off)
        if codings is not None:
            if content_length is not None or (self.upstream is not None and self.upstream.http_version() == "1.0"):
                # Rule 3; and RFC 9112 section 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty
                # framing, to be processed and then followed by closing the connection.
                content_length, reuse = None, False
            chunked = bool(codings) and codings[-1] == b"chunked"
            if codings.count(b"chunked") > chunked:
                self.upstream_error(f"the origin {self.peer} applied the chunked coding other than once and last "
                                    "(RFC 9112 section 6.1)")
                return
        if self.auth_info is not None:
            fields.append((b"Proxy-Authentication-Info", self.auth_info.encode("latin-1")))
        conn = self.conn
        keep = self.keep_alive and not conn.draining
        send_length: int | None = None
        if status in _NO_BODY_STATUS:
            if content_length or codings is not None:
                reuse = False
            bodiless = True
        elif self.method == b"HEAD":
            send_length = content_length  # the length a GET would have had (RFC 9110 section 9.3.2)
            bodiless = True
        else:
            bodiless = False
            if content_length is not None:
                send_length = content_length
            elif self.version == "1.1":
                self.chunked_out = True
                others = [c for c in codings if c not in (b"chunked", b"identity")] if codings else None
                if others:  # the codings the body still carries, named before our chunked (RFC 9112 section 6.1)
                    fields.append((b"Transfer-Encoding", b", ".join(others)))
            else:
                # An HTTP/1.0 client learns where the body ends when the connection closes. It cannot be sent
                # Transfer-Encoding (RFC 9112 section 6.1), so a coding other than chunked goes unnamed.
                keep = False
        self.close_delimited = not bodiless and content_length is None and not chunked
        self.upstream_keep_alive = reuse and not self.close_delimited
        self.keep_alive = keep
        self.status = status
        self.head_sent = True
        self.state = _RESPONDING
        head = forward.build_response_head(
            status, reason, fields, via=conn.shared.via("1.1"), content_length=send_length,
            chunked=self.chunked_out, keep_alive=keep,
        )
        self.sent_bytes += len(head)
        self._out.append(head)

    def upstream_body(self, data: bytes) -> None:
        if not data:
            return
        self.sent_bytes += len(data)
        if self.chunked_out:
            self._out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self._out.append(data)

    def upstream_flush(self) -> None:
        """Send what the last read from the origin produced, in one go: a small response is one syscall."""
        out = self._out
        if out:
            # One contiguous write for a small response (cheaper than writev of its pieces); big bodies go
            # as they are, without copying.
            sink = self.conn.sink
            if len(out) == 1:
                sink.send(out[0])
            elif (len(out) <= 8 and sum(map(len, out)) <= 16384) or len(out) > 32:
                # Many pieces are a body in tiny chunks: kept apart in a write buffer the client does not read,
                # each byte would cost ~40 of objects (20 such responses held +153 MB), so they go as one.
                sink.send(b"".join(out))
            else:
                sink.send_many(out)
                self._out = []
                return
            out.clear()

    def upstream_complete(self) -> None:
        if self.chunked_out:
            self._out.append(b"0\r\n\r\n")
        self.upstream_flush()
        self.finish(reusable=self.upstream_keep_alive and self.body_complete, keep_client=self.keep_alive)

    def upstream_lost(self) -> None:
        self.upstream_flush()
        if self.done:
            return
        if self.head_sent and self.close_delimited:
            self.upstream_complete()  # read-until-close: the close is the end of the body
            return
        if not self.head_sent:
            upstream = self.upstream
            if (self.reused_upstream and upstream is not None and not upstream.received_any
                    and not self.has_body):
                # A pooled connection the origin had just closed: try once more on a new one.
                self.reused_upstream = False
                self.upstream = None
                self.forwarding = False
                self.route()  # decided again: the destination policy may have changed (SIGHUP) meanwhile
                return
            self.refuse(502, f"the origin {self.peer} closed the connection without answering",
                        error="connection_terminated")
            return
        self.finish(reusable=False, keep_client=False, abort=True)

    def upstream_error(self, message: str, *, status: int = 502, error: str = "http_protocol_error") -> None:
        self.upstream_flush()
        if self.head_sent:
            self.finish(reusable=False, keep_client=False, abort=True)
        else:
            self.refuse(status, message, error=error)

    def upstream_pause_writing(self) -> None:
        self.conn.pause_reading("upstream")

    def upstream_resume_writing(self) -> None:
        self.conn.resume_reading("upstream")

    def upstream_timed_out(self) -> None:
        """The origin sent nothing for read_timeout seconds (the connection's timer, EXCHANGE_TIMERS)."""
        if self.head_sent:
            self.finish(reusable=False, keep_client=False, abort=True)
        else:
            self.refuse(504, f"the origin {self.peer} sent no response within "
                        f"{self.conn.shared.config.read_timeout:g} s", error="http_response_timeout")
