"""One client connection: parse requests with httptools, run their exchanges in order, relay tunnels.

Every request on a keep-alive connection is authenticated and routed on its own: nothing is trusted because
an earlier request on the same socket passed. Requests pipelined behind the one in progress are parsed, queued
and started in order, by a loop (``_run``), never by recursion from one exchange's end into the next.

Flow control: input is parsed in slices, and parsing stops (the rest of the read is held, the transport stops
reading) while anything must wait: a request queued behind the one in progress, an exchange that is
authenticating or connecting, an origin that does not take the body, or a client that does not read what it
is owed (its write buffer above ``_WRITE_HIGH``, whatever filled it: made-up responses or relayed bodies).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
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

#: A read larger than this is parsed in slices of this size, so that parsing can stop in between (one read can
#: hold thousands of pipelined requests). llhttp accepts its input split anywhere.
_SLICE = 16384
#: What the client is owed (its transport's write buffer): above HIGH, pause_writing stops reading and parsing
#: for it and pauses whatever feeds it; below LOW, resume_writing starts them again.
_WRITE_HIGH = 64 * 1024
_WRITE_LOW = 16 * 1024
#: Reasons to stop reading that belong to the exchange in progress and end with it.
_EXCHANGE_REASONS = frozenset({"auth", "connect", "body", "upstream"})


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
        # Parsing state of one slice: an exchange waiting to begin, and whether we stopped the parser.
        self.ready: Exchange | None = None
        self.stopping = False
        self.head_new = False  # a request head began in the slice being parsed
        # Input read but not parsed yet (pending[pending_at:]), held while parsing must wait; see _run.
        self.pending = b""
        self.pending_at = 0
        self.running = False  # _run is on the stack
        self.wake: asyncio.Handle | None = None  # a _run scheduled by _wake
        self.reading = True  # whether the transport is reading
        self.last_request = False  # a request without keep-alive was parsed: nothing after it is processed
        self.closing_after = False  # the request being parsed is that last one
        self.connect_head = False  # the last head parsed was a CONNECT's
        self.refusal: tuple[int, str] | None = None  # a malformed request, answered after those ahead of it
        self.body_seen = False  # the slice being parsed carried request body bytes
        self.framing_gap = 0  # chunked-body bytes parsed since the last body byte: a trailer or chunk line
        # The client not reading: since when, and the origin (or tunnel) transport we paused for it.
        self.write_paused_at = 0.0
        self.answered_at = 0.0  # when the last exchange ended (its answer written)
        self.held_source: asyncio.Transport | None = None

    # == asyncio.Protocol =====================================================================================
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.use_transport(transport)
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if isinstance(peer, tuple) else "-"
        self.server.accepted(self)  # counted from accept, before any TLS handshake; or refused and closed

    def use_transport(self, transport: asyncio.BaseTransport) -> None:
        """Answer on ``transport`` (the accepted one, or the TLS one once its handshake is done), with our marks
        for what the client may be owed (the TLS layer's own default is 512 KiB)."""
        # uvloop's transports do not subclass asyncio.Transport, so this is a cast, not a check.
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=_WRITE_HIGH, low=_WRITE_LOW)

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.write(data)
            return
        if self.tunnel_exchange is not None:  # CONNECT accepted, origin not connected yet
            self.tunnel_pending.append(data)
            return
        if self.last_request:
            return  # read and dropped after the last request, so that our close is a clean FIN, not a reset
        if self.pending:
            self.pending = self.pending[self.pending_at:] + data
            self.pending_at = 0
        else:
            self.pending = data
        self._run()

    def _run(self) -> None:
        """Start queued exchanges and parse held input, in a loop, until something must wait.

        An exchange that ends at once (a 407) calls exchange_done, which comes back here and returns at once:
        this loop then starts the next, so a pipeline of any depth takes no stack (issue 9 item 6). Nothing
        new is started or parsed while the client's write buffer is above its mark (item 1).
        """
        if self.running:
            return
        self.running = True
        try:
            while not self.closed:
                if self.pending and not self.paused and not self.queue:
                    self._parse_slice()
                elif self.active is not None:
                    break
                elif self.queue:
                    if self.writing_paused:
                        break
                    ex = self.active = self.queue.popleft()
                    ex.begin()
                elif self.refusal is not None:
                    self._answer_refusal()
                else:
                    break
        finally:
            self.running = False
        if self.client_eof and not self.pending and (
                (self.active is None and not self.queue) or self.receiving is not None or self.in_head):
            self.close()  # the client sent its last byte: it has all its answers, or its last request is cut short
        elif self.reading == bool(self.paused or self.queue or self.pending):
            self._sync_reading()

    def _parse_slice(self) -> None:
        """Parse the next slice of held input. A request head found in it starts its exchange only once the
        whole slice is parsed, so a body that is malformed within it is refused before anything is forwarded."""
        data, at = self.pending, self.pending_at
        chunk: bytes | memoryview
        if at == 0 and len(data) <= _SLICE:
            chunk, self.pending = data, b""
        else:
            end = at + _SLICE
            chunk = memoryview(data)[at:end]
            if end >= len(data):
                self.pending, self.pending_at = b"", 0
            else:
                self.pending_at = end
        self.stopping = False
        self.head_new = False
        try:
            self.parser.feed_data(chunk)
        except httptools.HttpParserUpgrade as exc:
            # A CONNECT head ended at this offset: what follows is tunnel data if the CONNECT is accepted, the
            # next request if it is refused. Hold it until the CONNECT is decided (expect_tunnel, exchange_done).
            # (llhttp stops the same way after a request with Upgrade; this proxy upgrades nothing, so what
            # follows that one is simply the next request.)
            rest = bytes(chunk[exc.args[0]:])
            self.parser = httptools.HttpRequestParser(self)
            if rest:
                self.pending, self.pending_at = rest + self.pending[self.pending_at:], 0
            if self.connect_head:
                self.paused.add("upgrade")
        except httptools.HttpParserCallbackError:
            if not self.stopping:  # not our own stop: a bug in a callback, which must stay visible
                raise
        except httptools.HttpParserError as exc:
            if not self.last_request:  # else: bytes after the last request, which llhttp will not parse
                self._refuse_head(400, f"the request is not valid HTTP/1.1: {exc}")
        else:
            if self.in_head or self.receiving is not None:
                self._check_unfinished(len(chunk))
        ready, self.ready = self.ready, None
        if ready is not None and not self.closed:
            ready.begin()

    def _check_unfinished(self, fed: int) -> None:
        """Bound what httptools accumulates for a field not finished yet (it buffers a partial name or value).

        A head still open after this slice: if it began before the slice, all of the slice was head; if it
        began inside, count what is known of it (the body of the request before it is not head, issue 9 low).
        A chunked body: bytes without a single body byte are chunk lines or its trailer section.
        """
        config = self.server.config
        if self.in_head:
            self.head_bytes = self.header_size if self.head_new else self.head_bytes + fed
            if self.head_bytes > config.max_header_size:
                self._refuse_head(431, "the request head is larger than this proxy accepts")
            return
        receiving = self.receiving
        if receiving is not None and receiving.chunked:
            self.framing_gap = 0 if self.body_seen else self.framing_gap + fed
            self.body_seen = False
            if self.framing_gap > config.max_header_size:
                self._refuse_head(431, "the request's chunk framing or trailer section is larger than this "
                                       "proxy accepts")

    def eof_received(self) -> bool:
        tunnel = self.tunnel
        self.client_eof = True
        if tunnel is not None:
            if tunnel.eof:  # both directions are finished: the tunnel is over
                tunnel.close()
                return False
            tunnel.write_eof()
            return True  # keep relaying what the origin still sends (half-close)
        # A client may half-close after its last request (RFC 9112 section 9.6): answer the complete requests it
        # sent first; _run closes once the last answer is written. A request cut short can never be answered.
        if self.tunnel_exchange is not None or self.receiving is not None or self.in_head:
            return False
        return bool(self.active is not None or self.queue or self.pending)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pending = b""
        if self.wake is not None:
            self.wake.cancel()
        self.server.release(self)
        if self.tunnel is not None:
            self.tunnel.close()  # its connection_lost logs the tunnel, with the bytes relayed
        for ex in (self.active, self.receiving, *self.queue):
            if ex is not None and ex is not self.tunnel_exchange:
                ex.abandon()
        self.queue.clear()

    def pause_writing(self) -> None:
        """The client is owed more than _WRITE_HIGH bytes: stop what adds to it until it reads (issue 9 item 1).

        Stop reading the origin (or the tunnel's far end) that feeds it, start no new exchange, and stop
        reading and parsing the client's requests, each of which would add an answer.
        """
        self.writing_paused = True
        self.write_paused_at = time.monotonic()
        self.hold_source()
        if self.tunnel is None:  # a tunnel's two directions are independent: its upload goes on
            self.pause_reading("write")

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._release_source()
        self.resume_reading("write")

    def hold_source(self) -> None:
        """Pause reading what feeds the client (called again when the exchange attaches a new origin)."""
        source = self._source_transport()
        if source is not None and source is not self.held_source:
            self._release_source()
            source.pause_reading()
            self.held_source = source

    def _release_source(self) -> None:
        # Also when the exchange ends: its origin connection goes back to the pool, where it must be reading.
        held, self.held_source = self.held_source, None
        if held is not None and not held.is_closing():
            held.resume_reading()

    def _source_transport(self) -> asyncio.Transport | None:
        if self.tunnel is not None:
            return self.tunnel.transport
        if self.active is not None and self.active.upstream is not None:
            return self.active.upstream.transport
        return None

    # == flow control of our own reading =====================================================================
    def pause_reading(self, reason: str) -> None:
        self.paused.add(reason)
        if self.reading and not self.closed:
            self.reading = False
            self.transport.pause_reading()

    def resume_reading(self, reason: str) -> None:
        if reason in self.paused:
            self.paused.discard(reason)
            self._wake()

    def _wake(self) -> None:
        """Something that held us back is gone: go on parsing and starting exchanges, from the event loop.

        Not from here: the caller is an exchange half-way through a step of its own (say, writing its buffered
        body), which parsing more of its body now would overtake.
        """
        if self.running or self.closed:
            return  # the loop on the stack sees it
        if (self.active is None and self.queue and not self.writing_paused) or (
                self.pending and not self.paused and not self.queue) or self.client_eof:
            if self.wake is None:
                self.wake = asyncio.get_running_loop().call_soon(self._woken)
        else:
            self._sync_reading()

    def _woken(self) -> None:
        self.wake = None
        self._run()

    def _sync_reading(self) -> None:
        """The transport reads while nothing holds us back and nothing read is waiting to be parsed."""
        if self.closed:
            return
        reading = not (self.paused or self.queue or self.pending)
        if reading != self.reading:
            self.reading = reading
            if reading:
                self.last_activity = time.monotonic()  # a body's gap is the client's from here, not ours
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    # == httptools callbacks ==================================================================================
    def on_message_begin(self) -> None:
        self.in_head = True
        self.head_new = True
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
        if self.closed:  # an exchange closed the connection from a callback of this slice
            self.stopping = True
            raise _Stop
        keep_alive = parser.should_keep_alive() and not self.draining
        ex = Exchange(self, method, self.url, version, self.headers, keep_alive, framing.content_length,
                      framing.chunked)
        # Connection: close, or HTTP/1.0 without keep-alive: the last request (RFC 9112 section 9.6); bytes after
        # a CONNECT head belong to its tunnel instead.
        self.connect_head = method == b"CONNECT"
        self.closing_after = not keep_alive and not self.connect_head
        self.receiving = None if ex.body_complete else ex
        self.framing_gap = 0
        if self.active is None:
            self.active = ex
            self.ready = ex  # begun once this slice is parsed
        else:
            self.queue.append(ex)  # parsing stops after this slice (_run)

    def on_body(self, body: bytes) -> None:
        self.body_seen = True
        if self.receiving is not None:
            self.receiving.request_body(body)

    def on_message_complete(self) -> None:
        ex, self.receiving = self.receiving, None
        if ex is not None:
            ex.request_complete()
        if self.closing_after:
            # The last request on this connection: it is answered in full, then we close; what the client sent
            # after it is never parsed (Squid does the same). llhttp refuses any byte after it in this slice
            # (HPE_CLOSED_CONNECTION, ignored below): no exception is raised here for the usual close.
            self.last_request = True
            self.pending, self.pending_at = b"", 0

    # == exchanges ============================================================================================
    def exchange_done(self, ex: Exchange, *, keep_client: bool, abort: bool = False) -> None:
        if self.active is not ex:
            return
        self.last_activity = self.answered_at = time.monotonic()  # the idle timer starts when the answer is done
        if self.held_source is not None:
            self._release_source()
        if ex.method == b"CONNECT":
            self._connect_done(ex)
        if abort:
            self.transport.abort()
            return
        if not keep_client:
            self.close()
            return
        if ex.body_complete:
            self.active = None
        elif not ex.discarding:
            self.close()  # the origin answered before the body ended; we cannot find the next request
            return
        if self.paused:
            self.paused.difference_update(_EXCHANGE_REASONS)
        # The usual keep-alive case (nothing queued, held or paused) has nothing to run: skip the loop.
        if self.queue or self.pending or not self.reading or self.refusal is not None or self.client_eof:
            self._run()

    def _connect_done(self, ex: Exchange) -> None:
        self.paused.discard("upgrade")  # refused: what followed its head is the next request
        if self.tunnel_exchange is ex and self.tunnel is None:
            # Accepted, then the origin could not be reached: what followed its head is a new request.
            self.tunnel_exchange = None
            held, self.tunnel_pending = self.tunnel_pending, []
            if held:
                self.pending, self.pending_at = b"".join(held) + self.pending[self.pending_at:], 0

    def exchange_body_done(self, ex: Exchange) -> None:
        """A finished exchange's request body has now been read to its end."""
        if self.active is ex and ex.done:
            self.active = None
            self._run()

    def start_tunnel(self, ex: Exchange, tunnel: TunnelUpstream) -> None:
        self.tunnel = tunnel
        self.tunnel_exchange = ex
        pending, self.tunnel_pending = self.tunnel_pending, []
        for data in pending:
            tunnel.write(data)
        if self.writing_paused:
            self.hold_source()
        self.resume_reading("write")  # a tunnel's upload does not wait for its download

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
        if self.pending:
            self.tunnel_pending.append(bytes(self.pending[self.pending_at:]))
            self.pending, self.pending_at = b"", 0
        self.paused.discard("upgrade")

    # == endings ==============================================================================================
    def _refuse_head(self, status: int, detail: str) -> None:
        """A request we cannot even parse: answer and close (RFC 9112 section 11.2: no way to resync).

        Nothing after it is parsed. Requests ahead of it are answered first, in order (RFC 9112 section 9.3.2).
        """
        if self.closed:
            return
        self.last_request = True
        self.pending, self.pending_at = b"", 0
        active = self.active
        if active is None:
            self.refusal = (status, detail)
            self._answer_refusal()
        elif self.receiving is active:
            if not active.done and not active.head_sent:
                # The body of the request in progress is malformed: the origin has at most an incomplete
                # request, on a connection that is now cut; the client learns why.
                active.outcome = Outcome.BAD_REQUEST
                active.refuse(status, detail, error="http_request_error", close=True)
            self.close()
        else:
            self.refusal = (status, detail)  # _run answers it when the requests ahead of it are answered

    def _answer_refusal(self) -> None:
        assert self.refusal is not None
        status, detail = self.refusal
        data = made_up_response(status, detail, proxy_name=self.server.config.via_pseudonym,
                                error="http_request_error", keep_alive=False)
        self.transport.write(data)
        self.server.log_refusal(self, status, len(data))
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    # == timers: one per state (README, "Limits and their defaults") ==========================================
    def state(self) -> str:
        """The state the connection is in, which names the timer that applies (issue 9 item 3).

        The first that holds: the client is not reading what it is owed ("sending"); a request body is arriving
        and we are reading it, forwarded or held for authentication ("body"), or dropped after a refusal
        ("draining"); a request is with the origin ("origin") or still being resolved, connected or
        authenticated ("preparing"); a request head is arriving ("head"); nothing ("idle"). A CONNECT tunnel
        is "tunnel".
        """
        if self.tunnel is not None or self.tunnel_exchange is not None:
            return "tunnel"
        if self.writing_paused:
            return "sending"
        if self.receiving is not None and self.reading:  # not when we hold it back (a request queued, ...)
            # A body still arriving for a request already answered (a refusal) is read only to find the next
            # request: it gets read_timeout in all, not per byte, so a trickle cannot hold the connection.
            return "draining" if self.receiving.done else "body"
        ex = self.active
        if ex is not None and not ex.done:
            return "origin" if ex.upstream is not None else "preparing"
        if self.in_head:
            return "head"
        return "idle"

    def check_timeouts(self, now: float) -> None:
        """Called about once a second by the server: the timer of the connection's state, if it has run out."""
        if self.closed:
            return
        timer = _TIMERS.get(self.state())
        if timer is not None:
            option, since, expire = timer
            limit: float = getattr(self.server.config, option)
            if now - since(self) > limit:
                expire(self, limit)

    def _origin_since(self) -> float:
        # The origin's last byte, or when the request (or the end of its body) was sent to it: Exchange sets it.
        upstream = self.active.upstream if self.active is not None else None
        return upstream.last_activity if upstream is not None else self.last_activity

    def _head_expired(self, limit: float) -> None:
        self._refuse_head(408, f"the request head did not arrive within {limit:g} s")

    def _body_expired(self, limit: float) -> None:
        ex = self.receiving
        if ex is not None and ex is self.active and not ex.done and not ex.head_sent:
            # Whatever the origin received of this request is cut off with its connection (Exchange.refuse).
            ex.refuse(408, f"no byte of the request body arrived for {limit:g} s", error="http_request_error",
                      close=True)
        self.close()  # a refused request's body that stopped arriving: nothing more to say

    def _origin_expired(self, _limit: float) -> None:
        if self.active is not None:
            self.active.upstream_timed_out()

    def _sending_expired(self, _limit: float) -> None:
        self.closed = True
        self.transport.abort()  # what it is owed goes nowhere: drop it rather than flush it

    def _idle_expired(self, _limit: float) -> None:
        self.close()


#: Each state's timer: the config option holding its length, when it started, and what its end does.
#: "preparing" (DNS, connect) and "tunnel" are timed by their own steps (connect_timeout) or not at all.
_TIMERS: dict[str, tuple[str, Callable[[ClientConnection], float], Callable[[ClientConnection, float], None]]] = {
    "head": ("header_timeout", lambda c: c.head_started, ClientConnection._head_expired),
    "body": ("read_timeout", lambda c: c.last_activity, ClientConnection._body_expired),
    "draining": ("read_timeout", lambda c: c.answered_at, ClientConnection._body_expired),
    "origin": ("read_timeout", ClientConnection._origin_since, ClientConnection._origin_expired),
    "sending": ("write_timeout", lambda c: c.write_paused_at, ClientConnection._sending_expired),
    "idle": ("idle_timeout", lambda c: c.last_activity, ClientConnection._idle_expired),
}


class _Stop(Exception):
    """Raised out of a parser callback to stop parsing a connection we are closing."""
