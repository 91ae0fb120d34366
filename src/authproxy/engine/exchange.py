"""One request and its response as they cross the proxy: authenticate, route, then answer, forward or tunnel.

An ``Exchange`` is made when a request head has been parsed. It runs the verifier (``Authenticator``), then
either answers itself (400, 403, 407, 429 ...), opens a CONNECT tunnel, or forwards the request to an origin and
relays the response (``authproxy.engine.relay``, the half of this class that deals with the response). It does
no IO: it gives commands to its connection's sink and is sent the completions back as method calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from authproxy.auth.errors import ProtocolError
from authproxy.auth.outcomes import Outcome
from authproxy.engine import forward
from authproxy.engine.authenticate import Authentication
from authproxy.engine.authn import PendingBody
from authproxy.engine.decision import Decision, Refused
from authproxy.engine.responses import made_up_response
from authproxy.engine.states import ExchangeState
from authproxy.observe.accesslog import AccessRecord

if TYPE_CHECKING:
    from authproxy.engine.commands import ConnectFailure, TunnelSink
    from authproxy.engine.connection import Connection
    from authproxy.engine.origin import Origin

# An Enum member read through its class costs a call of the metaclass's __getattr__ (Python 3.11): the states
# and outcome every request goes through are read once, here.
_AUTHENTICATING, _WAITING, _DISCARDING, _DONE = (ExchangeState.AUTHENTICATING, ExchangeState.WAITING,
                                                 ExchangeState.DISCARDING, ExchangeState.DONE)
_NO_OUTCOME = Outcome.NONE

_DISCARD_LIMIT = 1 << 20  # body bytes of a refused request we read and drop to keep the connection alive
_BUFFER_LIMIT = 256 * 1024  # body bytes held while authenticating or connecting before reading pauses
_SMALL_PIECE = 4096  # a held body piece smaller than this is gathered into a bytearray of up to _BUFFER_PIECE
_BUFFER_PIECE = 65536


class Exchange(Authentication):
    """A request, from parsed head to logged response."""

    __slots__ = (
        "body_buffer", "body_complete", "buffered", "chunked", "conn", "content_length", "discarded", "discarding",
        "done", "has_body", "headers", "method", "peer", "received", "request_head", "started", "t0", "target",
        "tunnel", "version",
    )

    def __init__(self, conn: Connection, method: bytes, target: bytes, version: str,
                 headers: list[tuple[bytes, bytes]], keep_alive: bool,
                 content_length: int | None, chunked: bool) -> None:
        self.conn = conn
        self.state = _AUTHENTICATING
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked
        self.has_body = chunked or bool(content_length)
        self.body_complete = not self.has_body
        shared = conn.shared
        self.started = shared.wall()
        self.t0 = shared.monotonic()
        # Request body bytes received before the exchange could forward them (auth, connecting).
        self.body_buffer: list[bytes | bytearray] = []
        self.buffered = 0
        self.received = 0
        self.discarding = False
        self.discarded = 0
        self.forwarding = False
        # Authentication.
        self.user: str | None = None
        self.outcome = _NO_OUTCOME
        self.auth_info: str | None = None
        self.pending_body: PendingBody | None = None
        # Routing and response.
        self.dest: forward.Target | None = None
        self.connect_dest: tuple[str, int] = ("", 0)
        self.request_head = b""
        self.upstream: Origin | None = None
        self.reused_upstream = False
        self.tunnel: TunnelSink | None = None
        self.status = 0
        self.head_sent = False
        self.chunked_out = False
        self.close_delimited = False
        self.upstream_keep_alive = False
        self.sent_bytes = 0
        self.peer: str | None = None
        self.done = False
        # Response bytes from one read of the origin, written together by upstream_flush.
        self._out: list[bytes] = []

    # == made-up responses ====================================================================================
    def refuse(self, status: int, detail: str, *, error: str | None = None, close: bool = False,
               extra: list[tuple[str, str]] | None = None) -> None:
        """Answer the request ourselves. A request body still on its way is read and dropped, or we close."""
        if self.done:
            return
        if self.pending_body is not None:
            self.release_body()
        if self.head_sent:  # the response already started: all we can do is cut the connection
            self.finish(reusable=False, keep_client=False)
            return
        conn = self.conn
        keep = self.keep_alive and not close and not conn.draining
        if not self.body_complete:
            expects_continue = any(
                n.lower() == b"expect" and v.lower() == b"100-continue" for n, v in self.headers
            )
            if expects_continue or (self.content_length or 0) > _DISCARD_LIMIT:
                keep = False  # the client may never send the body: we cannot find the next request
            else:
                self.discarding = True
                self.body_buffer.clear()
        data = made_up_response(
            status, detail, proxy_name=conn.shared.config.via_pseudonym,
            error=error, keep_alive=keep, extra_headers=extra or (), head_only=self.method == b"HEAD",
        )
        self.status = status
        self.head_sent = True
        self.sent_bytes += len(data)
        conn.sink.send(data)
        self.finish(reusable=False, keep_client=keep)

    # == routing ==============================================================================================
    def route(self) -> None:
        """Decide where the request may go (the destination policy), then tunnel or forward it."""
        conn = self.conn
        shared = conn.shared
        is_connect = self.method == b"CONNECT"
        if is_connect:
            host, port = self.connect_dest
            conn.expect_tunnel(self)  # bytes after the CONNECT head are tunnel data, not a request
        else:
            assert self.dest is not None
            host, port = self.dest.host, self.dest.port
            hop_limit = None
            if self.method in (b"TRACE", b"OPTIONS"):
                try:
                    hop_limit = forward.max_forwards(self.headers)
                except ProtocolError as exc:
                    self._malformed(exc)
                    return
                if hop_limit == 0:
                    self._answer_max_forwards()
                    return
            self.request_head = forward.build_request_head(
                self.method, self.dest, self.headers, tokens=forward.connection_tokens(self.headers),
                via=shared.via(self.version), content_length=self.content_length,
                chunked=self.chunked, hop_limit=hop_limit,
            )
        if forward.via_lists(self.headers, shared.via_name):
            self._go(Refused(508, "proxy_loop_detected", "this request has already passed through this proxy "
                             "(its Via names it): forwarding it again would loop"))
            return
        decision = conn.sink.decide(self, self.user, host, port, is_connect)
        if decision is not None:
            self._go(decision)
            return
        self.state = ExchangeState.DECIDING
        conn.pause_reading("connect")

    def decided(self, decision: Decision) -> None:
        """Event: the destination decision that ``ClientSink.decide`` could not give at once."""
        self.conn.resume_reading("connect")
        if not self.done and not self.conn.closed:
            self._go(decision)

    def _go(self, decision: Decision) -> None:
        if isinstance(decision, Refused):
            self.refuse(decision.status, decision.detail, error=decision.error)
            return
        address = decision.address  # connect to the address that was checked: no second lookup, no rebinding
        conn = self.conn
        if self.method == b"CONNECT":
            host, port = self.connect_dest
            self.state = ExchangeState.CONNECTING
            conn.pause_reading("connect")
            conn.sink.open_tunnel(self, host, address, port)
            return
        dest = self.dest
        assert dest is not None
        upstream = conn.sink.pooled_origin(dest.host, dest.port)
        if upstream is not None:
            self.reused_upstream = True
            self._send_request(upstream)
        else:
            self.state = ExchangeState.CONNECTING
            conn.pause_reading("connect")
            conn.sink.open_origin(self, dest.host, address, dest.port)

    def _answer_max_forwards(self) -> None:
        """Max-Forwards reached zero here: this proxy is the final recipient (RFC 9110 section 7.6.2)."""
        if self.method == b"TRACE":
            body = forward.trace_echo(self.method, self.target, self.version, self.headers)
            ctype = b"message/http"
        else:
            body, ctype = b"", b"text/plain"
        head = forward.build_response_head(
            200, b"OK", [(b"Content-Type", ctype), (b"Allow", b"GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE")],
            via=self.conn.shared.via("1.1"), content_length=len(body), chunked=False, keep_alive=self.keep_alive,
        )
        self.status = 200
        self.head_sent = True
        self.sent_bytes = len(head) + len(body)
        self.conn.sink.send(head + body)
        self.finish(reusable=False, keep_client=self.keep_alive)

    def upstream_connected(self, upstream: Origin) -> None:
        """Event: the connection ``ClientSink.open_origin`` asked for is open."""
        self.conn.resume_reading("connect")
        if self.done or self.conn.closed:
            upstream.close()
            return
        self._send_request(upstream)

    def connect_failed(self, failure: ConnectFailure, reason: str) -> None:
        """Event: the origin (or tunnel) could not be reached: 502 or 504, naming the hop."""
        self.conn.resume_reading("connect")
        if self.method == b"CONNECT":
            host, port = self.connect_dest
        else:
            assert self.dest is not None
            host, port = self.dest.host, self.dest.port
        where = f"{host}:{port}"
        error = failure.value
        if error == "connection_timeout":
            self.refuse(504, f"the origin {where} did not accept a connection within "
                        f"{self.conn.shared.config.connect_timeout:g} s", error=error)
        elif error == "dns_error":
            self.refuse(502, f"the origin's name {host!r} could not be resolved", error=error)
        elif error == "connection_refused":
            self.refuse(502, f"the origin {where} refused the connection", error=error)
        else:
            self.refuse(502, f"the origin {where} could not be reached: {reason}", error=error)

    def step_timed_out(self, limit: float) -> None:
        """The housekeeping tick found a slow step past ``limit`` (connect_timeout): a password check that has not
        come back (a queue of them behind a flood), a name not resolved, a connect not made. The driver times the
        last two itself; this is what bounds every step of PREPARING whatever the driver does. The connection is
        closed after the answer, which also cancels the step (RFC 9110 section 15.6.4, 15.6.5)."""
        if self.state is ExchangeState.AUTHENTICATING:
            self.refuse(503, f"this proxy could not check the credentials within {limit:g} s; retry shortly",
                        close=True, extra=[("Retry-After", "1")])
        elif self.state is ExchangeState.DECIDING:
            host = self.connect_dest[0] if self.method == b"CONNECT" else (self.dest.host if self.dest else "")
            self.refuse(504, f"the origin's name {host!r} was not resolved within {limit:g} s",
                        error="dns_timeout", close=True)
        else:
            host, port = self.connect_dest if self.method == b"CONNECT" else (
                (self.dest.host, self.dest.port) if self.dest else ("", 0))
            self.refuse(504, f"the origin {host}:{port} did not accept a connection within {limit:g} s",
                        error="connection_timeout", close=True)

    def _send_request(self, upstream: Origin) -> None:
        assert self.dest is not None
        self.upstream = upstream
        self.state = _WAITING
        self.peer = self.dest.authority
        if self.conn.writing_paused_now:
            self.conn.hold_source()  # the client is not reading: this origin waits too
        # read_timeout runs from the request (a pooled connection sat idle before it).
        upstream.last_activity = self.conn.shared.monotonic()
        upstream.start(self, head_only=self.method == b"HEAD")
        upstream.write(self.request_head)
        self.forwarding = True
        if self.body_buffer:
            self.flush_body()
            self.buffered = 0
            self.conn.resume_reading("body")
        if self.body_complete and self.chunked:
            upstream.write(b"0\r\n\r\n")

    # == the request body =====================================================================================
    def request_body(self, data: bytes) -> None:
        self.received += len(data)
        config = self.conn.shared.config
        limit = config.max_body_size
        if limit and self.received > limit and not self.discarding:
            self.outcome = self.outcome if self.outcome is not Outcome.NONE else Outcome.BAD_REQUEST
            if self.done:
                self.conn.close()
            else:
                self.refuse(413, f"the request body is larger than this proxy accepts ({limit} bytes)",
                            error="http_request_denied", close=True)
            return
        if self.discarding or self.done:
            self.discarded += len(data)
            if self.discarded > _DISCARD_LIMIT:
                self.conn.close()
            return
        if self.forwarding:
            if self.chunked:
                # Gathered and sent as one chunk per parsed slice (flush_body): a body of 1-byte chunks would
                # otherwise cost a write, a syscall, per 6 bytes the client sends.
                self.body_buffer.append(data)
            else:
                self._write_body(data)
            return
        buffered = self.body_buffer
        if len(data) < _SMALL_PIECE:
            # Tiny chunks held (for auth-int, up to 1 MiB of them) would cost ~40 bytes of object each per byte
            # of body: gathered in place instead (a body of 1-byte chunks held 8 MB per MiB).
            last = buffered[-1] if buffered else None
            if type(last) is bytearray and len(last) < _BUFFER_PIECE:
                last += data
            else:
                buffered.append(bytearray(data))
        else:
            buffered.append(data)
        self.buffered += len(data)
        if self.pending_body is not None:
            # Read whole, up to auth_int_max_body (the digest covers it): never paused at _BUFFER_LIMIT, which
            # left a body past 256 KiB waiting for reads that never came.
            limit = config.auth_int_max_body
            if self.buffered > limit:
                self.outcome = Outcome.BAD_REQUEST
                self.refuse(413, f"a request authenticated with qop=auth-int may carry at most {limit} bytes",
                            error="http_request_denied", close=True)
            else:
                self.hold_body(len(data))
        elif self.buffered > _BUFFER_LIMIT:
            self.conn.pause_reading("body")

    def flush_body(self) -> None:
        """Send the body bytes gathered while forwarding (or held before), as one write (one chunk if chunked)."""
        buffered = self.body_buffer
        if not buffered or self.upstream is None:
            return
        data = bytes(buffered[0]) if len(buffered) == 1 else b"".join(buffered)
        buffered.clear()
        self._write_body(data)

    def _write_body(self, data: bytes) -> None:
        assert self.upstream is not None
        if self.chunked:
            self.upstream.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.upstream.write(data)

    def request_complete(self) -> None:
        self.body_complete = True
        if self.discarding:
            self.discarding = False
            self.conn.exchange_body_done(self)
            return
        if self.forwarding and self.upstream is not None:
            self.upstream.last_activity = self.conn.shared.monotonic()  # the origin's turn to answer starts now
            if self.chunked:
                self.flush_body()
                self.upstream.write(b"0\r\n\r\n")
        elif self.pending_body is not None:
            self._resume_body()
        if self.done:
            self.conn.exchange_body_done(self)

    # == CONNECT ==============================================================================================
    def tunnel_connected(self, tunnel: TunnelSink) -> None:
        """Event: the tunnel ``ClientSink.open_tunnel`` asked for is open: 200, then relay."""
        conn = self.conn
        if self.done or conn.closed:
            tunnel.close()
            return
        host, port = self.connect_dest
        self.tunnel = tunnel
        self.state = ExchangeState.TUNNELLING
        self.peer = f"{host}:{port}"
        self.status = 200
        self.head_sent = True
        # RFC 9110 section 9.3.6: a 2xx answer to CONNECT carries no Content-Length or Transfer-Encoding.
        head = b"HTTP/1.1 200 Connection established\r\n"
        if self.auth_info is not None:
            head += b"Proxy-Authentication-Info: " + self.auth_info.encode("latin-1") + b"\r\n"
        head += b"\r\n"
        self.sent_bytes += len(head)
        conn.sink.send(head)
        conn.last_activity = conn.shared.monotonic()  # the tunnel's idle time runs from its start
        conn.start_tunnel(self, tunnel)
        conn.resume_reading("connect")

    # == the end ==============================================================================================
    def finish(self, *, reusable: bool, keep_client: bool, abort: bool = False) -> None:
        if self.done:
            return
        self.done = True
        self.state = _DISCARDING if self.discarding else _DONE
        if self.upstream is not None:
            self.upstream.release(reusable)
            self.upstream = None
        self.log()
        self.conn.exchange_done(self, keep_client=keep_client, abort=abort)

    def log(self) -> None:
        shared = self.conn.shared
        if not shared.logging:
            return
        self.conn.sink.log(
            AccessRecord(
                started=self.started,
                duration=shared.monotonic() - self.t0,
                client=self.conn.client,
                user=self.user,
                method=self.method.decode("latin-1"),
                target=self.target_text,
                status=self.status,
                sent_bytes=self.sent_bytes,
                outcome=self.outcome,
                peer=self.peer,
                tunnel=self.tunnel is not None,
            )
        )

    def abandon(self) -> None:
        """The client went away: release the origin side."""
        if self.pending_body is not None:
            self.release_body()
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None
        if not self.done:
            self.done = True
            self.state = ExchangeState.DONE
            self.log()
