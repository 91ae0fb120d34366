"""One client connection as a state machine: bytes and completions in, commands out (no IO here).

The driver (``authproxy.proxy.connection``) feeds it what the client's transport reports (``data_received``,
``eof_received``, ``connection_lost``, ``writing_paused``/``writing_resumed``), what a tunnel's far end reports
(``tunnel_*``), the housekeeping tick (``timer``) and its own wake-up call (``woken``); it executes what the
engine asks of its ``ClientSink``.

Every request on a keep-alive connection is authenticated and routed on its own: nothing is trusted because an
earlier request on the same connection passed. Requests pipelined behind the one in progress are parsed, queued
and started in order by one loop (``_run``), never by recursion from one exchange's end into the next (RFC 9112
section 9.3.2). Input is parsed in slices, and parsing stops (the rest is held, reading pauses) while anything
must wait: a queued request, an exchange authenticating or connecting, an origin that does not take the body,
or a client that does not read what it is owed.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

import httptools

from authproxy.auth.flow import ConnectionAuth
from authproxy.auth.outcomes import Outcome
from authproxy.engine.exchange import Exchange
from authproxy.engine.responses import made_up_response
from authproxy.engine.states import TIMERS, ConnState, Timer
from authproxy.engine.tunnel import TunnelRelay
from authproxy.observe.accesslog import AccessRecord

if TYPE_CHECKING:
    from authproxy.engine.commands import ClientSink, ProxyState

#: Reasons to stop reading that belong to the exchange in progress and end with it.
_EXCHANGE_REASONS = frozenset({"auth", "connect", "body", "upstream"})


class Connection(TunnelRelay):
    """The protocol logic of one client connection (uvicorn's httptools fast path is the model)."""

    # One per client connection, and 10,000 idle ones are a figure the bench measures: no __dict__ each.
    __slots__ = (
        "answered_at",
        "auth_state",
        "client",
        "client_eof",
        "closed",
        "draining",
        "paused",
        "prep_at",
        "queue",
        "reading",
        "refusal",
        "running",
        "shared",
        "sink",
        "tunnel_seen",
        "wake_asked",
        "write_paused_at",
        "writing_paused_now",
    )

    def __init__(self, shared: ProxyState, sink: ClientSink, client: str) -> None:
        self.shared = shared
        self.sink = sink
        self.client = client
        self.parser = httptools.HttpRequestParser(self)
        self.closed = False
        self.draining = False
        self.last_activity = shared.monotonic()
        self.paused: set[str] = set()
        self.reading = True  # whether the transport is reading
        self.writing_paused_now = False
        self.write_paused_at = 0.0  # since when the client has not been reading what it is owed
        # When the last exchange ended (its answer written, its body read), or the accept: IDLE counts from here,
        # not from the last byte, so bytes that start no request (the empty lines RFC 9112 section 2.2 lets a
        # server skip, sent one every few seconds) cannot hold an idle connection.
        self.answered_at = self.last_activity
        self.prep_at = 0.0  # when the exchange's current slow step began (a password check, resolving, connecting)
        # A tunnel's download seen by the last tick (bytes, when): its idle timer costs nothing per read.
        self.tunnel_seen = (0, 0.0)
        # Whether a request head is being parsed. What is parsed of it (url, headers, their sizes, when it began)
        # is set by on_message_begin, before anything reads it.
        self.in_head = False
        # Exchanges: the one running, the one whose body is arriving, and any pipelined behind.
        self.active: Exchange | None = None
        self.receiving: Exchange | None = None
        self.queue: collections.deque[Exchange] = collections.deque()
        self.client_eof = False
        # Parsing state of one slice: an exchange waiting to begin, and whether we stopped the parser.
        self.ready: Exchange | None = None
        self.stopping = False
        self.head_new = False  # a request head began in the slice being parsed
        # Input read but not parsed yet (pending[pending_at:]), held while parsing must wait; see _run.
        self.pending = b""
        self.pending_at = 0
        self.running = False  # _run is on the stack
        self.wake_asked = False  # a woken() is due from the driver
        # A connection-bound scheme's handshake and sign-in (NTLM, Negotiate): made on first use, gone with the
        # connection. Basic and Digest never touch it: each of their requests is checked on its own.
        self.auth_state: ConnectionAuth | None = None
        self.last_request = False  # a request without keep-alive was parsed: nothing after it is processed
        self.closing_after = False  # the request being parsed is that last one
        self.connect_head = False  # the last head parsed was a CONNECT's
        self.refusal: tuple[int, str] | None = None  # a malformed request, answered after those ahead of it
        self.body_seen = False  # the slice being parsed carried request body bytes
        self.framing_gap = 0  # chunked-body bytes parsed since the last body byte: a trailer or chunk line
        TunnelRelay.__init__(self)

    # == the state, by name, and its timer ====================================================================
    @property
    def conn_state(self) -> ConnState:
        """The state the connection is in, which names the timer that applies (TIMERS)."""
        if self.closed:
            return ConnState.CLOSED
        if self.tunnel is not None:  # a tunnel being opened is PREPARING: connect_timeout, not the idle timer
            return ConnState.TUNNEL
        if self.writing_paused_now:
            return ConnState.SENDING
        if self.receiving is not None and self.reading:  # not when we hold it back (a request queued, ...)
            # A body still arriving for a request already answered (a refusal) is read only to find the next
            # request: it gets read_timeout in all, not per byte, so a trickle cannot hold the connection.
            return ConnState.DRAINING if self.receiving.done else ConnState.BODY
        ex = self.active
        if ex is not None and not ex.done:
            return ConnState.ORIGIN if ex.upstream is not None else ConnState.PREPARING
        return ConnState.HEAD if self.in_head else ConnState.IDLE

    def timer(self, now: float) -> None:
        """Event: the housekeeping tick (about once a second). Fires the timer of the current state if it ran out."""
        state = self.conn_state
        timer = TIMERS[state]
        if timer is Timer.NONE:
            return
        limit: float = getattr(self.shared.config, timer.value)
        if now - self._since(state) <= limit:
            return
        if state is ConnState.HEAD:
            self._refuse_head(408, f"the request head did not arrive within {limit:g} s")
        elif state is ConnState.BODY or state is ConnState.DRAINING:
            ex = self.receiving
            if ex is not None and ex is self.active and not ex.done and not ex.head_sent:
                # Whatever the origin received of this request is cut off with its connection (Exchange.refuse).
                ex.refuse(408, f"no byte of the request body arrived for {limit:g} s", error="http_request_error",
                          close=True)
            self.close()  # a refused request's body that stopped arriving: nothing more to say
        elif state is ConnState.ORIGIN:
            assert self.active is not None
            self.active.upstream_timed_out()
        elif state is ConnState.SENDING:
            self.closed = True
            self.sink.abort()  # what it is owed goes nowhere: drop it rather than flush it
        elif state is ConnState.PREPARING:
            assert self.active is not None
            self.active.step_timed_out(limit)
        elif state is ConnState.TUNNEL:
            # Silent both ways, or stuck (one end not reading): a close would wait on what is unsent; cut both.
            self.closed = True
            self.sink.abort()
            self.tunnel_abort()
        else:
            self.close()

    def _since(self, state: ConnState) -> float:
        if state is ConnState.HEAD:
            return self.head_started
        if state is ConnState.SENDING:
            return self.write_paused_at
        if state is ConnState.DRAINING or state is ConnState.IDLE:
            return self.answered_at
        if state is ConnState.BODY:
            receiving = self.receiving
            if receiving is not None and receiving.pending_body is not None:
                # A body read before the request can be authenticated (qop=auth-int; an unknown user's too, item
                # 9): read_timeout in all, from when it was asked for, as a refused body is: a client without a
                # valid password must not hold a connection by trickling a byte a minute.
                return self.prep_at
            return self.last_activity
        if state is ConnState.PREPARING:
            return self.prep_at
        if state is ConnState.TUNNEL:
            # The client's last byte (data_received), or the far end's: tunnel_down seen to move by a tick.
            down, seen_at = self.tunnel_seen
            if down != self.tunnel_down:
                seen_at = self.shared.monotonic()
                self.tunnel_seen = (self.tunnel_down, seen_at)
            return max(seen_at, self.last_activity)
        if state is ConnState.ORIGIN:
            # The origin's last byte, or when the request (or the end of its body) was sent to it.
            upstream = self.active.upstream if self.active is not None else None
            return upstream.last_activity if upstream is not None else self.last_activity
        return self.last_activity

    # == events from the client's transport ===================================================================
    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:  # the tunnel's fast path, inline
            self.last_activity = self.shared.monotonic()
            tunnel.write(data)
            return
        if self.tunnel_exchange is not None and self.tunnel_data_from_client(data):
            return
        if self.last_request:
            return  # read and dropped after the last request, so that our close is a clean FIN, not a reset
        if self.pending:
            self.pending = self.pending[self.pending_at:] + data
            self.pending_at = 0
        else:
            self.pending = data
        self._run()

    def eof_received(self) -> bool:
        """The client half-closed. Returns whether to keep the connection open (to answer, or to tunnel)."""
        self.client_eof = True
        keep = self.tunnel_client_eof()
        if keep is not None:
            return keep
        if self.tunnel_exchange is not None or self.receiving is not None or self.in_head:
            return False  # a request cut short can never be answered: close
        # A client may half-close after its last request (RFC 9112 section 9.6): answer what it sent first;
        # _run closes once the last answer is written.
        return bool(self.active is not None or self.queue or self.pending)

    def connection_auth(self) -> ConnectionAuth:
        """This connection's state for connection-bound schemes."""
        if self.auth_state is None:
            self.auth_state = ConnectionAuth()
        return self.auth_state

    def connection_lost(self) -> None:
        self.closed = True
        self.pending = b""
        self.auth_state = None
        if self.tunnel is not None:
            self.tunnel_lost()
        if self.active is not None or self.receiving is not None or self.queue:
            for ex in (self.active, self.receiving, *self.queue):
                if ex is not None and ex is not self.tunnel_exchange:
                    ex.abandon()
            self.queue.clear()
        if self.tunnel_exchange is None:
            # Nothing more is parsed or started here (a tunnel's far end still reports to its exchange). Drop what
            # refers back to this object, the parser (its callbacks) and the exchanges, so that a closed connection
            # is freed at once by reference counting instead of waiting, with a few dozen objects hanging off it,
            # for the cyclic garbage collector (Connection: close load makes one per request).
            self.active = self.receiving = self.ready = None
            del self.parser

    def writing_paused(self) -> None:
        """The client is owed more than the driver's high-water mark: stop what adds to it until it reads.

        Stop reading the origin (or the tunnel's far end) that feeds it, start no new exchange, and stop
        reading and parsing the client's requests, each of which would add an answer.
        """
        self.writing_paused_now = True
        self.write_paused_at = self.shared.monotonic()
        self.hold_source()
        if self.tunnel is None:  # a tunnel's two directions are independent: its upload goes on
            self.pause_reading("write")

    def writing_resumed(self) -> None:
        self.writing_paused_now = False
        self.release_source()
        self.resume_reading("write")

    def woken(self) -> None:
        """Event: the wake-up asked for with ``ClientSink.wake``."""
        self.wake_asked = False
        self._run()

    def drain(self) -> None:
        """Event: the proxy is stopping. Answer what is in progress without keep-alive; close if idle."""
        self.draining = True
        if self.active is None and self.tunnel is None:
            self.close()

    # == the loop =============================================================================================
    def _run(self) -> None:
        """Start queued exchanges and parse held input, in a loop, until something must wait.

        An exchange that ends at once (a 407) calls exchange_done, which comes back here and returns at once:
        this loop then starts the next, so a pipeline of any depth takes no stack. Nothing new is started or
        parsed while the client's write buffer is above its mark.
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
                    if self.writing_paused_now:
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

    # == flow control of our own reading =====================================================================
    def pause_reading(self, reason: str) -> None:
        if reason == "auth" or reason == "connect":  # a slow step of the exchange starts: PREPARING's timer
            self.prep_at = self.shared.monotonic()
        self.paused.add(reason)
        if self.reading and not self.closed:
            self.reading = False
            self.sink.pause_reading()

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
        if (self.active is None and self.queue and not self.writing_paused_now) or (
                self.pending and not self.paused and not self.queue) or self.client_eof:
            if not self.wake_asked:
                self.wake_asked = True
                self.sink.wake()
        else:
            self._sync_reading()

    def _sync_reading(self) -> None:
        """The transport reads while nothing holds us back and nothing read is waiting to be parsed."""
        if self.closed:
            return
        reading = not (self.paused or self.queue or self.pending)
        if reading != self.reading:
            self.reading = reading
            if reading:
                self.last_activity = self.shared.monotonic()  # a body's gap is the client's from here, not ours
                self.sink.resume_reading()
            else:
                self.sink.pause_reading()

    # == from the exchanges ===================================================================================
    def exchange_done(self, ex: Exchange, *, keep_client: bool, abort: bool = False) -> None:
        if self.active is not ex:
            return
        self.last_activity = self.answered_at = self.shared.monotonic()  # the idle timer starts when answered
        if self.held_source is not None:
            self.release_source()
        if ex.method == b"CONNECT":
            self.connect_refused(ex)
        if abort:
            self.closed = True
            self.sink.abort()
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

    def exchange_body_done(self, ex: Exchange) -> None:
        """A finished exchange's request body has now been read to its end."""
        if self.active is ex and ex.done:
            self.active = None
            self.answered_at = self.shared.monotonic()  # idle from here
            self._run()

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
        data = made_up_response(status, detail, proxy_name=self.shared.config.via_pseudonym,
                                error="http_request_error", keep_alive=False)
        self.sink.send(data)
        if self.shared.logging:
            # A request refused before it could be parsed: logged with what little is known.
            self.sink.log(AccessRecord(started=self.shared.wall(), duration=0.0, client=self.client, user=None,
                                       method=None, target=None, status=status, sent_bytes=len(data),
                                       outcome=Outcome.BAD_REQUEST))
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sink.close()
