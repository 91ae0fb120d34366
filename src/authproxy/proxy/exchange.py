"""One request and its response as they cross the proxy: authenticate, route, relay, log.

An ``Exchange`` is created when a request head has been parsed. It asks the Authenticator, then either answers
itself (400, 403, 407 ...), opens a CONNECT tunnel, or forwards the request to an origin over a pooled
connection and relays the response, streaming bodies both ways with back-pressure.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from authproxy.auth.errors import AuthProxyError, ProtocolError
from authproxy.auth.outcomes import Outcome
from authproxy.auth.verifier import Allow, Reject
from authproxy.observe.accesslog import AccessRecord
from authproxy.proxy import forward
from authproxy.proxy.authn import PendingBody, PendingPassword, Step
from authproxy.proxy.policy import Decision, Refused
from authproxy.proxy.responses import made_up_response
from authproxy.proxy.throttle import retry_after
from authproxy.proxy.tunnel import TunnelUpstream
from authproxy.proxy.upstream import UpstreamConnection

if TYPE_CHECKING:
    from authproxy.proxy.connection import ClientConnection

_NO_BODY_STATUS = frozenset({204, 304})
_DISCARD_LIMIT = 1 << 20  # body bytes of a refused request we read and drop to keep the connection alive


class Exchange:
    """A request, from parsed head to logged response. Implements upstream.ResponseSink."""

    __slots__ = (
        "_out",
        "auth_info",
        "body_buffer",
        "body_complete",
        "buffered",
        "chunked",
        "chunked_out",
        "close_delimited",
        "conn",
        "connect_dest",
        "content_length",
        "dest",
        "discarded",
        "discarding",
        "done",
        "forwarding",
        "has_body",
        "head_sent",
        "headers",
        "keep_alive",
        "method",
        "outcome",
        "peer",
        "pending_body",
        "received",
        "request_head",
        "reused_upstream",
        "sent_bytes",
        "server",
        "started",
        "status",
        "t0",
        "target",
        "task",
        "tunnel",
        "upstream",
        "upstream_keep_alive",
        "user",
        "version",
    )

    def __init__(self, conn: ClientConnection, method: bytes, target: bytes, version: str,
                 headers: list[tuple[bytes, bytes]], keep_alive: bool,
                 content_length: int | None, chunked: bool) -> None:
        self.conn = conn
        self.server = conn.server
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked
        self.has_body = chunked or bool(content_length)
        self.body_complete = not self.has_body
        self.started = time.time()
        self.t0 = time.monotonic()
        # Request body bytes received before the exchange could forward them (auth, connecting).
        self.body_buffer: list[bytes] = []
        self.buffered = 0
        self.received = 0
        self.discarding = False
        self.discarded = 0
        self.forwarding = False
        # Authentication.
        self.user: str | None = None
        self.outcome = Outcome.NONE
        self.auth_info: str | None = None
        self.pending_body: PendingBody | None = None
        # Routing and response.
        self.dest: forward.Target | None = None
        self.connect_dest: tuple[str, int] = ("", 0)
        self.request_head = b""
        self.upstream: UpstreamConnection | None = None
        self.reused_upstream = False
        self.tunnel: TunnelUpstream | None = None
        self.status = 0
        self.head_sent = False
        self.chunked_out = False
        self.close_delimited = False
        self.upstream_keep_alive = False
        self.sent_bytes = 0
        self.peer: str | None = None
        self.done = False
        self.task: asyncio.Task[None] | None = None
        # Response bytes from one read of the origin, written together by upstream_flush.
        self._out: list[bytes] = []

    # == start: authenticate ==================================================================================
    @property
    def target_text(self) -> str:
        return self.target.decode("latin-1")

    def begin(self) -> None:
        if self.done:  # refused while its head's read was still being parsed (a malformed body, a limit)
            return
        limit = self.server.config.max_body_size
        if limit and (self.content_length or 0) > limit:
            self.outcome = Outcome.BAD_REQUEST
            self.refuse(413, f"the request body is larger than this proxy accepts ({limit} bytes)",
                        error="http_request_denied", close=True)
            return
        throttle = self.server.throttle
        if throttle is not None:
            wait = throttle.check(self.conn.client, None, time.monotonic())
            if wait is not None:
                self._locked_out(wait, "too many failed sign-ins from your address")
                return
        try:
            if self.method == b"CONNECT":
                self.connect_dest = forward.parse_authority(self.target)
            else:
                self.dest = forward.parse_absolute_target(self.target)
            authorization = self._proxy_authorization()
            step = self.server.auth.start(self.method.decode("ascii"), self.target_text, authorization)
        except AuthProxyError as exc:
            self.outcome = Outcome.BAD_REQUEST
            self.refuse(exc.status_hint, exc.message, error="http_request_error", close=True)
            return
        self.on_auth_step(step)

    def _proxy_authorization(self) -> str | None:
        values = [v for n, v in self.headers if n.lower() == b"proxy-authorization"]
        if not values:
            return None
        if len(values) > 1:
            raise ProtocolError("more than one Proxy-Authorization field")
        try:
            return values[0].decode("utf-8")
        except UnicodeDecodeError:
            return values[0].decode("latin-1")

    def on_auth_step(self, step: Step) -> None:
        if self.done:
            return
        if isinstance(step, Allow | Reject) and self._throttled(step):
            return
        if isinstance(step, Allow):
            self.user, self.outcome, self.auth_info = step.user, Outcome.OK, step.auth_info
            self.route()
        elif isinstance(step, Reject):
            self.user, self.outcome = step.user, step.outcome
            self.challenge(step.stale)
        elif isinstance(step, PendingBody):
            self.pending_body = step
            limit = self.server.config.auth_int_max_body
            if self.buffered > limit or (self.content_length or 0) > limit:
                self.outcome = Outcome.BAD_REQUEST
                self.refuse(413, f"a request authenticated with qop=auth-int may carry at most {limit} bytes",
                            error="http_request_denied", close=True)
            elif self.body_complete:
                self._resume_body()
        elif isinstance(step, PendingPassword):
            self.conn.pause_reading("auth")
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(None, self.server.auth.check_slow_password, step)
            future.add_done_callback(lambda f: self._password_checked(step, f))

    def _throttled(self, step: Allow | Reject) -> bool:
        """Credential guessing (issue: throttle per address and per user name). True if answered 429 here.

        A request with no credentials is the normal start of the 407 exchange and never counts.
        """
        throttle = self.server.throttle
        if throttle is None or step.user is None:
            return False
        now = time.monotonic()
        wait = throttle.check(self.conn.client, step.user, now)
        if wait is not None:
            # Locked: the answer must not depend on whether these credentials were right.
            self.user = step.user
            self._locked_out(wait, "too many failed sign-ins for this user name")
            return True
        if isinstance(step, Allow):
            throttle.record_success(self.conn.client, step.user, now)
        elif step.outcome.failed:
            throttle.record_failure(self.conn.client, step.user, now)
        return False

    def _locked_out(self, wait: float, why: str) -> None:
        self.outcome = Outcome.THROTTLED
        self.refuse(429, f"{why}; try again in {retry_after(wait)} s", error="http_request_denied",
                    extra=[("Retry-After", retry_after(wait))])

    def _password_checked(self, pending: PendingPassword, future: asyncio.Future[bool]) -> None:
        self.conn.resume_reading("auth")
        if self.done or self.conn.closed:
            return
        try:
            ok = future.result()
        except Exception:
            ok = False
        self._guarded(lambda: self.on_auth_step(self.server.auth.resume_password(pending, ok)))

    def _resume_body(self) -> None:
        pending, self.pending_body = self.pending_body, None
        assert pending is not None
        body = b"".join(self.body_buffer)
        self._guarded(lambda: self.on_auth_step(self.server.auth.resume_body(pending, body)))

    def _guarded(self, action: Callable[[], None]) -> None:
        try:
            action()
        except AuthProxyError as exc:
            self.outcome = Outcome.BAD_REQUEST
            self.refuse(exc.status_hint, exc.message, error="http_request_error", close=True)

    def challenge(self, stale: bool) -> None:
        """407 with a fresh challenge (RFC 9110 section 15.5.8: at least one Proxy-Authenticate)."""
        detail = f"{self.outcome.client_text(self.server.auth.role)} (realm {self.server.auth.realm!r})"
        self.refuse(407, detail, extra=self.server.auth.challenge_fields(stale))

    # == made-up responses ====================================================================================
    def refuse(self, status: int, detail: str, *, error: str | None = None, close: bool = False,
               extra: list[tuple[str, str]] | None = None) -> None:
        """Answer the request ourselves. A request body still on its way is read and dropped, or we close."""
        if self.done:
            return
        if self.head_sent:  # the response already started: all we can do is cut the connection
            self.finish(reusable=False, keep_client=False)
            return
        keep = self.keep_alive and not close and not self.conn.draining
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
            status, detail, proxy_name=self.server.config.via_pseudonym,
            error=error, keep_alive=keep, extra_headers=extra or (), head_only=self.method == b"HEAD",
        )
        self.status = status
        self.head_sent = True
        self.sent_bytes += len(data)
        self.conn.transport.write(data)
        self.finish(reusable=False, keep_client=keep)

    # == routing ==============================================================================================
    def route(self) -> None:
        """Decide where the request may go (the destination policy), then tunnel or forward it."""
        if self.method == b"CONNECT":
            host, port = self.connect_dest
            self.conn.expect_tunnel(self)  # bytes after the CONNECT head are tunnel data, not a request
        else:
            assert self.dest is not None
            host, port = self.dest.host, self.dest.port
            hop_limit = None
            if self.method in (b"TRACE", b"OPTIONS"):
                try:
                    hop_limit = forward.max_forwards(self.headers)
                except ProtocolError as exc:
                    self.outcome = Outcome.BAD_REQUEST
                    self.refuse(400, exc.message, error="http_request_error", close=True)
                    return
                if hop_limit == 0:
                    self._answer_max_forwards()
                    return
            tokens = forward.connection_tokens(self.headers)
            self.request_head = forward.build_request_head(
                self.method, self.dest, forward.end_to_end(self.headers, tokens),
                via=self.server.via(self.version), content_length=self.content_length,
                chunked=self.chunked, hop_limit=hop_limit,
            )
        is_connect = self.method == b"CONNECT"
        if forward.via_lists(self.headers, self.server.via_name):
            self._go(Refused(508, "proxy_loop_detected", "this request has already passed through this proxy "
                             "(its Via names it): forwarding it again would loop"), host, port)
            return
        decision = self.server.decide_now(self.user, host, port, is_connect)
        if decision is not None:
            self._go(decision, host, port)
            return
        self.conn.pause_reading("connect")
        self.task = asyncio.get_running_loop().create_task(self._decide_then_go(host, port, is_connect))

    async def _decide_then_go(self, host: str, port: int, is_connect: bool) -> None:
        decision = await self.server.decide(self.user, host, port, is_connect)
        self.conn.resume_reading("connect")
        if not self.done and not self.conn.closed:
            self._go(decision, host, port)

    def _go(self, decision: Decision, host: str, port: int) -> None:
        if isinstance(decision, Refused):
            self.refuse(decision.status, decision.detail, error=decision.error)
            return
        address = decision.address  # connect to the address that was checked: no second lookup, no rebinding
        if self.method == b"CONNECT":
            self.conn.pause_reading("connect")
            self.task = asyncio.get_running_loop().create_task(self._open_tunnel(host, address, port))
            return
        upstream = self.server.pool.get((host, port))
        if upstream is not None:
            self.reused_upstream = True
            self._send_request(upstream)
        else:
            self._connect_upstream(address)

    def _answer_max_forwards(self) -> None:
        """Max-Forwards reached zero here: this proxy is the final recipient (RFC 9110 section 7.6.2)."""
        if self.method == b"TRACE":
            body = forward.trace_echo(self.method, self.target, self.version, self.headers)
            ctype = b"message/http"
        else:
            body, ctype = b"", b"text/plain"
        head = forward.build_response_head(
            200, b"OK", [(b"Content-Type", ctype), (b"Allow", b"GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE")],
            via=self.server.via("1.1"), content_length=len(body), chunked=False, keep_alive=self.keep_alive,
        )
        self.status = 200
        self.head_sent = True
        self.sent_bytes = len(head) + len(body)
        self.conn.transport.write(head + body)
        self.finish(reusable=False, keep_client=self.keep_alive)

    def _connect_upstream(self, address: str) -> None:
        assert self.dest is not None
        self.conn.pause_reading("connect")
        self.task = asyncio.get_running_loop().create_task(
            self._open_upstream(self.dest.host, address, self.dest.port))

    async def _open_upstream(self, host: str, address: str, port: int) -> None:
        server = self.server
        try:
            _, upstream = await asyncio.wait_for(
                asyncio.get_running_loop().create_connection(
                    lambda: UpstreamConnection((host, port), server.pool), address, port
                ),
                server.config.connect_timeout,
            )
        except Exception as exc:  # every failure becomes a 502/504 that names the hop
            self.conn.resume_reading("connect")
            self._connect_failed(host, port, exc)
            return
        self.conn.resume_reading("connect")
        if self.done or self.conn.closed:
            upstream.close()
            return
        self._send_request(upstream)

    def _connect_failed(self, host: str, port: int, exc: BaseException) -> None:
        where = f"{host}:{port}"
        if isinstance(exc, TimeoutError):
            self.refuse(504, f"the origin {where} did not accept a connection within "
                        f"{self.server.config.connect_timeout:g} s", error="connection_timeout")
        elif isinstance(exc, socket.gaierror):
            self.refuse(502, f"the origin's name {host!r} could not be resolved", error="dns_error")
        elif isinstance(exc, ConnectionRefusedError):
            self.refuse(502, f"the origin {where} refused the connection", error="connection_refused")
        else:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            self.refuse(502, f"the origin {where} could not be reached: {reason}",
                        error="destination_unavailable")

    def _send_request(self, upstream: UpstreamConnection) -> None:
        assert self.dest is not None
        self.upstream = upstream
        self.peer = self.dest.authority
        if self.conn.writing_paused:
            self.conn.hold_source()  # the client is not reading: this origin waits too
        upstream.last_activity = time.monotonic()  # read_timeout runs from the request (a pooled one sat idle)
        upstream.start(self, head_only=self.method == b"HEAD")
        upstream.write(self.request_head)
        self.forwarding = True
        if self.body_buffer:
            for chunk in self.body_buffer:
                self._write_body(chunk)
            self.body_buffer.clear()
            self.buffered = 0
            self.conn.resume_reading("body")
        if self.body_complete and self.chunked:
            upstream.write(b"0\r\n\r\n")

    # == the request body =====================================================================================
    def request_body(self, data: bytes) -> None:
        self.received += len(data)
        limit = self.server.config.max_body_size
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
            self._write_body(data)
            return
        self.body_buffer.append(data)
        self.buffered += len(data)
        if self.pending_body is not None:
            limit = self.server.config.auth_int_max_body
            if self.buffered > limit:
                self.outcome = Outcome.BAD_REQUEST
                self.refuse(413, f"a request authenticated with qop=auth-int may carry at most {limit} bytes",
                            error="http_request_denied", close=True)
                return
        if self.buffered > 256 * 1024:
            self.conn.pause_reading("body")

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
            self.upstream.last_activity = time.monotonic()  # the origin's turn to answer starts now
            if self.chunked:
                self.upstream.write(b"0\r\n\r\n")
        elif self.pending_body is not None:
            self._resume_body()
        if self.done:
            self.conn.exchange_body_done(self)

    # == the response (upstream.ResponseSink) ==================================================================
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
        keep = self.keep_alive and not self.conn.draining
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
        head = forward.build_response_head(
            status, reason, fields, via=self.server.via("1.1"), content_length=send_length,
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
        """Write what the last read from the origin produced, in one go: a small response is one syscall."""
        out = self._out
        if out:
            # One contiguous write for a small response (cheaper than writev of its pieces); big bodies go
            # as they are, without copying.
            if len(out) == 1:
                self.conn.transport.write(out[0])
            elif len(out) <= 8 and sum(map(len, out)) <= 16384:
                self.conn.transport.write(b"".join(out))
            else:
                self.conn.transport.writelines(out)
            out.clear()

    def upstream_complete(self) -> None:
        if self.chunked_out:
            self._out.append(b"0\r\n\r\n")
        self.upstream_flush()
        self.finish(reusable=self.upstream_keep_alive and self.body_complete, keep_client=self.keep_alive)

    def upstream_lost(self, exc: Exception | None) -> None:
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
        """The origin sent nothing for read_timeout seconds (called by the server's housekeeping)."""
        if self.head_sent:
            self.finish(reusable=False, keep_client=False, abort=True)
        else:
            self.refuse(504, f"the origin {self.peer} sent no response within "
                        f"{self.server.config.read_timeout:g} s", error="http_response_timeout")

    # == CONNECT ==============================================================================================
    async def _open_tunnel(self, host: str, address: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, tunnel = await asyncio.wait_for(
                loop.create_connection(lambda: TunnelUpstream(self.conn), address, port),
                self.server.config.connect_timeout,
            )
        except Exception as exc:
            self.conn.resume_reading("connect")
            self._connect_failed(host, port, exc)
            return
        if self.done or self.conn.closed:
            tunnel.close()
            return
        self.tunnel = tunnel
        self.peer = f"{host}:{port}"
        self.status = 200
        self.head_sent = True
        # RFC 9110 section 9.3.6: a 2xx answer to CONNECT carries no Content-Length or Transfer-Encoding.
        head = b"HTTP/1.1 200 Connection established\r\n"
        if self.auth_info is not None:
            head += b"Proxy-Authentication-Info: " + self.auth_info.encode("latin-1") + b"\r\n"
        head += b"\r\n"
        self.sent_bytes += len(head)
        self.conn.transport.write(head)
        self.conn.start_tunnel(self, tunnel)
        self.conn.resume_reading("connect")

    # == the end ==============================================================================================
    def finish(self, *, reusable: bool, keep_client: bool, abort: bool = False) -> None:
        if self.done:
            return
        self.done = True
        if self.upstream is not None:
            self.upstream.release(reusable)
            self.upstream = None
        self.log()
        self.conn.exchange_done(self, keep_client=keep_client, abort=abort)

    def log(self, extra_bytes: int = 0) -> None:
        if not self.server.access_log.enabled:
            return
        self.server.access_log.write(
            AccessRecord(
                started=self.started,
                duration=time.monotonic() - self.t0,
                client=self.conn.client,
                user=self.user,
                method=self.method.decode("latin-1"),
                target=self.target_text,
                status=self.status,
                sent_bytes=self.sent_bytes + extra_bytes,
                outcome=self.outcome,
                peer=self.peer,
                tunnel=self.tunnel is not None,
            )
        )

    def abandon(self) -> None:
        """The client went away: release the origin side."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None
        if not self.done:
            self.done = True
            self.log()
