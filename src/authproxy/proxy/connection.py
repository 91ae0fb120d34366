"""The asyncio side of a client connection: feed the engine what the transport reports, do what it asks.

``ClientConnection`` is the ``asyncio.Protocol`` of one client (uvicorn's httptools fast path is the model) and
the ``ClientSink`` of its ``authproxy.engine.connection.Connection``. It holds no protocol logic: every decision
is the engine's; this class writes, closes, pauses, opens origin connections and tunnels, resolves names, runs
password checks in a thread and writes the access log, and reports each completion back as an event.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from authproxy.engine.commands import ConnectFailure
from authproxy.engine.connection import Connection
from authproxy.proxy.linger import close_bounded
from authproxy.proxy.tunnel import TunnelUpstream
from authproxy.proxy.upstream import UpstreamConnection

if TYPE_CHECKING:
    from authproxy.engine.authenticate import Authentication
    from authproxy.engine.authn import PendingPassword
    from authproxy.engine.decision import Decision
    from authproxy.engine.exchange import Exchange
    from authproxy.engine.origin import Origin
    from authproxy.observe.accesslog import AccessRecord
    from authproxy.proxy.server import ProxyServer

#: What the client is owed (its transport's write buffer): above HIGH, pause_writing stops reading and parsing
#: for it and pauses whatever feeds it; below LOW, resume_writing starts them again.
WRITE_HIGH = 64 * 1024
WRITE_LOW = 16 * 1024


class ClientConnection(asyncio.Protocol):
    """asyncio.Protocol for a client of the proxy, and the engine's ClientSink."""

    __slots__ = ("_wake", "client", "closed", "data_received", "engine", "send", "server", "tasks", "transport")

    # asyncio.Protocol's data_received is the engine's own, bound per connection: no frame of ours on every read.
    # Bound here, not in connection_made: uvloop looks it up once, when it makes the transport, before that.
    data_received: Callable[[bytes], None]  # type: ignore[assignment]  # mypy takes the bound method for another type

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client = "-"
        self.closed = False
        # Work started for this connection (connects, lookups, password checks), cancelled when it goes: a
        # password check still queued for a thread is then never run. Made for the first (most have none).
        self.tasks: set[asyncio.Future[Any]] | None = None
        self._wake: asyncio.Handle | None = None
        engine = self.engine = Connection(server, self, "-")  # its client is set in connection_made
        self.data_received = engine.data_received

    # == asyncio.Protocol: events for the engine ==============================================================
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.use_transport(transport)
        peer = transport.get_extra_info("peername")
        self.client = self.engine.client = peer[0] if isinstance(peer, tuple) else "-"
        self.server.accepted(self)  # counted from accept, before any TLS handshake; or refused and closed

    def use_transport(self, transport: asyncio.BaseTransport) -> None:
        """Answer on ``transport`` (the accepted one, or the TLS one once its handshake is done), with our marks
        for what the client may be owed (the TLS layer's own default is 512 KiB)."""
        # uvloop's transports do not subclass asyncio.Transport, so this is a cast, not a check.
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        # ClientSink.send is the transport's own write: no frame of ours on every response and tunnel read.
        self.send: Callable[[bytes], None] = self.transport.write

    def eof_received(self) -> bool:
        return self.engine.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._wake is not None:
            self._wake.cancel()
        self.server.release(self)
        self.engine.connection_lost()
        if self.tasks:
            for task in self.tasks:
                task.cancel()
        # This object and its engine refer to each other: part them, so that both are freed at once by reference
        # counting (see Connection.connection_lost). Nothing calls the engine through this object once closed.
        del self.engine, self.data_received

    def pause_writing(self) -> None:
        self.engine.writing_paused()

    def resume_writing(self) -> None:
        self.engine.writing_resumed()

    # == ClientSink: commands from the engine =================================================================
    def send_many(self, parts: list[bytes]) -> None:
        self.transport.writelines(parts)

    def write_eof(self) -> bool:
        transport = self.transport
        if transport.can_write_eof() and not transport.is_closing():
            transport.write_eof()
            return True
        return False

    def pause_reading(self) -> None:
        if not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        close_bounded(self.transport, self.server.config.write_timeout)

    def abort(self) -> None:
        self.closed = True
        self.transport.abort()

    def wake(self) -> None:
        self._wake = asyncio.get_running_loop().call_soon(self._woken)

    def _woken(self) -> None:
        self._wake = None
        if not self.closed:
            self.engine.woken()

    def log(self, record: AccessRecord) -> None:
        self.server.access_log.write(record)

    def decide(self, ex: Exchange, user: str | None, host: str, port: int, is_connect: bool) -> Decision | None:
        decision = self.server.decide_now(user, host, port, is_connect)
        if decision is None:
            self._start(self._decide(ex, user, host, port, is_connect))
        return decision

    async def _decide(self, ex: Exchange, user: str | None, host: str, port: int, is_connect: bool) -> None:
        ex.decided(await self.server.decide(user, host, port, is_connect))

    def pooled_origin(self, host: str, port: int) -> Origin | None:
        upstream = self.server.pool.get((host, port))
        return upstream.origin if upstream is not None else None

    def open_origin(self, ex: Exchange, host: str, address: str, port: int) -> None:
        self._start(self._open_origin(ex, host, address, port))

    async def _open_origin(self, ex: Exchange, host: str, address: str, port: int) -> None:
        server = self.server
        try:
            _, upstream = await asyncio.wait_for(
                asyncio.get_running_loop().create_connection(
                    lambda: UpstreamConnection((host, port), server.pool, server.monotonic), address, port),
                server.config.connect_timeout,
            )
        except Exception as exc:  # every failure becomes a 502/504 that names the hop
            ex.connect_failed(*_failure(exc))
            return
        ex.upstream_connected(upstream.origin)

    def open_tunnel(self, ex: Exchange, host: str, address: str, port: int) -> None:
        self._start(self._open_tunnel(ex, address, port))

    async def _open_tunnel(self, ex: Exchange, address: str, port: int) -> None:
        try:
            _, tunnel = await asyncio.wait_for(
                asyncio.get_running_loop().create_connection(
                    lambda: TunnelUpstream(self.engine, self.server.config.write_timeout), address, port),
                self.server.config.connect_timeout,
            )
        except Exception as exc:
            ex.connect_failed(*_failure(exc))
            return
        ex.tunnel_connected(tunnel)

    def check_password(self, ex: Authentication, pending: PendingPassword) -> None:
        future = asyncio.get_running_loop().run_in_executor(None, self.server.auth.check_slow_password, pending)
        future.add_done_callback(lambda f: ex.password_checked(pending, not f.cancelled()
                                                               and f.exception() is None and f.result()))
        self._track(future)

    def _start(self, coro: Coroutine[object, object, None]) -> None:
        self._track(asyncio.ensure_future(coro))

    def _track(self, future: asyncio.Future[Any]) -> None:
        """Keep ``future`` until it is done, to cancel it if the connection goes first."""
        if self.tasks is None:
            self.tasks = set()
        self.tasks.add(future)
        future.add_done_callback(self.tasks.discard)

    # == for the server =======================================================================================
    def check_timeouts(self, now: float) -> None:
        """Called about once a second by the server's housekeeping."""
        if not self.closed:
            self.engine.timer(now)


def _failure(exc: BaseException) -> tuple[ConnectFailure, str]:
    """What the engine is told about a connect that failed."""
    if isinstance(exc, TimeoutError):
        return ConnectFailure.TIMEOUT, "timeout"
    if isinstance(exc, socket.gaierror):
        return ConnectFailure.DNS, str(exc)
    if isinstance(exc, ConnectionRefusedError):
        return ConnectFailure.REFUSED, "refused"
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
    return ConnectFailure.OTHER, reason
