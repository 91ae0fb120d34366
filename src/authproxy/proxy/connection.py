"""One client connection: parse requests with httptools, run their exchanges in order, relay tunnels.

Every request on a keep-alive connection is authenticated and routed on its own: nothing is trusted because
an earlier request on the same socket passed. Requests pipelined behind the one in progress are parsed, queued
and started in order; reading pauses while any are queued so the queue stays short.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import TYPE_CHECKING

import httptools

from authproxy.auth.errors import ProtocolError
from authproxy.auth.outcomes import Outcome
from authproxy.proxy import forward
from authproxy.proxy.exchange import Exchange
from authproxy.proxy.responses import made_up_response
from authproxy.proxy.tunnel import TunnelUpstream

if TYPE_CHECKING:
    from authproxy.proxy.server import ProxyServer


class ClientConnection(asyncio.Protocol):
    """asyncio.Protocol for a client of the proxy (uvicorn's httptools fast path is the model)."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client = "-"
        self.parser = httptools.HttpRequestParser(self)
        self.closed = False
        self.draining = False
        self.last_activity = time.monotonic()
        self.paused: set[str] = set()
        self.writing_paused = False
        # The request head being parsed.
        self.in_head = False
        self.head_started = 0.0
        self.head_bytes = 0
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_size = 0
        self.trailer_count = 0
        # Exchanges: the one running, the one whose body is arriving, and any pipelined behind.
        self.active: Exchange | None = None
        self.receiving: Exchange | None = None
        self.queue: collections.deque[Exchange] = collections.deque()
        # CONNECT.
        self.tunnel: TunnelUpstream | None = None
        self.tunnel_exchange: Exchange | None = None
        self.tunnel_pending: list[bytes] = []
        self.client_eof = False
        # Parsing state of one read: an exchange waiting to begin, and whether we stopped the parser.
        self.ready: Exchange | None = None
        self.stopping = False

    # == asyncio.Protocol =====================================================================================
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so this is a cast, not a check.
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if isinstance(peer, tuple) else "-"
        self.server.accepted(self)  # counted from accept, before any TLS handshake; or refused and closed

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.write(data)
            return
        if self.tunnel_exchange is not None:  # CONNECT accepted, origin not connected yet
            self.tunnel_pending.append(data)
            return
        if self.in_head:
            self.head_bytes += len(data)
            if self.head_bytes > self.server.config.max_header_size:
                self._refuse_head(431, "the request head is larger than this proxy accepts")
                return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Parse one read. A request head found in it starts its exchange only once the whole read is
        parsed, so a body that is malformed within the same read is refused before anything is forwarded."""
        while data and not self.closed:
            rest = b""
            self.stopping = False
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                # A CONNECT head ended at this offset; what follows is tunnel data or the next request.
                rest = data[exc.args[0]:]
                self.parser = httptools.HttpRequestParser(self)
                if self.tunnel_exchange is not None:
                    if rest:
                        self.tunnel_pending.append(rest)
                    rest = b""
            except httptools.HttpParserCallbackError:
                if not self.stopping:  # not our own stop: a bug in a callback, which must stay visible
                    raise
            except httptools.HttpParserError as exc:
                self._refuse_head(400, f"the request is not valid HTTP/1.1: {exc}")
            ready, self.ready = self.ready, None
            if ready is not None and not self.closed:
                ready.begin()
            data = rest

    def eof_received(self) -> bool:
        tunnel = self.tunnel
        if tunnel is not None:
            self.client_eof = True
            if tunnel.eof:  # both directions are finished: the tunnel is over
                tunnel.close()
                return False
            tunnel.write_eof()
            return True  # keep relaying what the origin still sends (half-close)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.release(self)
        if self.tunnel is not None:
            self.tunnel.close()  # its connection_lost logs the tunnel, with the bytes relayed
        for ex in (self.active, self.receiving, *self.queue):
            if ex is not None and ex is not self.tunnel_exchange:
                ex.abandon()
        self.queue.clear()

    def pause_writing(self) -> None:
        # The client reads slower than the origin sends: stop reading the origin until it catches up.
        self.writing_paused = True
        source = self._source_transport()
        if source is not None:
            source.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        source = self._source_transport()
        if source is not None:
            source.resume_reading()

    def _source_transport(self) -> asyncio.Transport | None:
        if self.tunnel is not None:
            return self.tunnel.transport
        if self.active is not None and self.active.upstream is not None:
            return self.active.upstream.transport
        return None

    # == flow control of our own reading =====================================================================
    def pause_reading(self, reason: str) -> None:
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason in self.paused:
            self.paused.discard(reason)
            if not self.paused and not self.closed:
                self.transport.resume_reading()

    # == httptools callbacks ==================================================================================
    def on_message_begin(self) -> None:
        self.in_head = True
        self.head_started = time.monotonic()
        self.head_bytes = 0
        self.url = b""
        self.headers = []
        self.header_size = 0
        self.trailer_count = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.header_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_size += len(name) + len(value) + 4
        if self.in_head:
            # llhttp leaves trailing whitespace on values; RFC 9110 section 5.5 says it is not part of the value.
            self.headers.append((name, value.rstrip(b" \t")))
            count = len(self.headers)
        else:
            # httptools reports a chunked body's trailer fields here too. RFC 9110 section 6.5.1: a trailer is
            # not to be merged into the head nor used to authenticate or route, so it is dropped (the origin
            # gets "0 CRLF CRLF"). It still counts against the head's limits: a trailer section is bounded.
            self.trailer_count += 1
            count = len(self.headers) + self.trailer_count
        if self.header_size > self.server.config.max_header_size:
            self._refuse_head(431, "the request head is larger than this proxy accepts")
            self.stopping = True
            raise _Stop
        if count > self.server.config.max_header_count:
            self._refuse_head(431, f"the request has more than {self.server.config.max_header_count} header fields")
            self.stopping = True
            raise _Stop

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        method = parser.get_method()
        version = parser.get_http_version()
        try:
            framing = forward.check_request_head(method, version, self.headers)
        except ProtocolError as exc:
            # Framing we cannot trust means we cannot find the next request either: answer and close.
            self._refuse_head(exc.status_hint, exc.message)
            self.stopping = True
            raise _Stop from None
        ex = Exchange(self, method, self.url, version, self.headers,
                      parser.should_keep_alive() and not self.draining, framing.content_length, framing.chunked)
        self.receiving = None if ex.body_complete else ex
        if self.active is None:
            self.active = ex
            if method == b"CONNECT":
                ex.begin()
            else:
                self.ready = ex  # begun by _feed once this read is parsed
        else:
            self.queue.append(ex)
            self.pause_reading("pipeline")
        if self.closed or (self.active is ex and ex.done and not ex.keep_alive):
            self.stopping = True
            raise _Stop

    def on_body(self, body: bytes) -> None:
        if self.receiving is not None:
            self.receiving.request_body(body)

    def on_message_complete(self) -> None:
        ex, self.receiving = self.receiving, None
        if ex is not None:
            ex.request_complete()

    # == exchanges ============================================================================================
    def exchange_done(self, ex: Exchange, *, keep_client: bool, abort: bool = False) -> None:
        if self.active is not ex:
            return
        pending: list[bytes] = []
        if self.tunnel_exchange is ex and self.tunnel is None:
            # CONNECT was refused after all (origin unreachable): what followed its head is a new request.
            self.tunnel_exchange = None
            pending, self.tunnel_pending = self.tunnel_pending, []
        if abort:
            self.transport.abort()
            return
        if not keep_client:
            self.close()
            return
        if not ex.body_complete and not ex.discarding:
            self.close()  # the origin answered before the body ended; we cannot find the next request
            return
        if ex.body_complete:
            self._next()
        for data in pending:
            if not self.closed:
                self._feed(data)

    def exchange_body_done(self, ex: Exchange) -> None:
        """A finished exchange's request body has now been read to its end."""
        if self.active is ex and ex.done:
            self._next()

    def _next(self) -> None:
        self.active = None
        if self.queue:
            ex = self.queue.popleft()
            self.active = ex
            if not self.queue:
                self.resume_reading("pipeline")
            ex.begin()
        else:
            self.resume_reading("pipeline")

    def start_tunnel(self, ex: Exchange, tunnel: TunnelUpstream) -> None:
        self.tunnel = tunnel
        self.tunnel_exchange = ex
        pending, self.tunnel_pending = self.tunnel_pending, []
        for data in pending:
            tunnel.write(data)
        if self.writing_paused and tunnel.transport is not None:
            tunnel.transport.pause_reading()

    def tunnel_closed(self) -> None:
        ex = self.tunnel_exchange
        if ex is not None and self.tunnel is not None:
            ex.sent_bytes += self.tunnel.down_bytes
            ex.done = True
            ex.log()
        self.tunnel_exchange = None
        self.close()

    def expect_tunnel(self, ex: Exchange) -> None:
        """CONNECT was accepted: bytes after its head belong to the tunnel, not to the parser."""
        self.tunnel_exchange = ex

    # == endings ==============================================================================================
    def _refuse_head(self, status: int, detail: str) -> None:
        """A request we cannot even parse: answer and close (RFC 9112 section 11.2: no way to resync)."""
        if self.closed:
            return
        active = self.active
        if active is None:
            data = made_up_response(status, detail, proxy_name=self.server.config.via_pseudonym,
                                    error="http_request_error", keep_alive=False)
            self.transport.write(data)
            self.server.log_refusal(self, status, len(data))
        elif not active.done and not active.head_sent and self.receiving is active:
            # The body of the request in progress is malformed: the origin has at most an incomplete
            # request, on a connection that is now cut; the client learns why.
            active.outcome = Outcome.BAD_REQUEST
            active.refuse(status, detail, error="http_request_error", close=True)
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    def check_timeouts(self, now: float) -> None:
        """Called about once a second by the server: idle, slow-header and slow-origin limits."""
        config = self.server.config
        if self.tunnel is not None or self.closed:
            return
        ex = self.active
        if ex is not None:
            up = ex.upstream
            if up is not None and not ex.done and now - up.last_activity > config.read_timeout:
                ex.upstream_timed_out()
            return
        if self.in_head:
            if now - self.head_started > config.header_timeout:
                self._refuse_head(408, f"the request head did not arrive within {config.header_timeout:g} s")
        elif now - self.last_activity > config.idle_timeout:
            self.close()


class _Stop(Exception):
    """Raised out of a parser callback to stop parsing a connection we are closing."""
