"""Connections to origins, the asyncio side: a Protocol per connection and a keep-alive pool per host:port.

An ``UpstreamConnection`` feeds what it reads to its ``authproxy.engine.origin.Origin`` (which parses responses
and hands them to the exchange it serves) and does what the Origin asks (write, pause, close, go back to the
pool). Between exchanges it sits in the ``Pool``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from authproxy.engine.origin import HeadLimits, Origin
from authproxy.proxy.linger import close_bounded
from authproxy.proxy.outgoing import OutgoingConnection


class UpstreamConnection(OutgoingConnection):
    """One connection to an origin, reused across requests while the origin keeps it open. The Origin's
    OriginSink."""

    __slots__ = ("_pool", "_timer", "key", "origin")

    def __init__(self, key: tuple[str, int], pool: Pool, clock: Callable[[], float]) -> None:
        super().__init__()
        self.key = key
        self._pool = pool
        self._timer: asyncio.TimerHandle | None = None
        self.origin = Origin(key, self, clock, pool)

    # -- asyncio.Protocol: events for the Origin ------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.origin.data_received(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.stop_timer()
        self._pool.forget(self)
        self.origin.connection_lost()

    def pause_writing(self) -> None:
        self.origin.writing_paused()

    def resume_writing(self) -> None:
        self.origin.writing_resumed()

    # -- OriginSink: commands from the Origin (write, pause_reading, resume_reading: OutgoingConnection's) --
    @property
    def last_activity(self) -> float:
        return self.origin.last_activity

    def start_timer(self, seconds: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(seconds, self._timer_fired)

    def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timer_fired(self) -> None:
        self._timer = None
        self.origin.timer_fired()

    def release(self, reusable: bool) -> None:
        if reusable and not self.closed:
            self._pool.put(self)
        else:
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            close_bounded(self.transport, self._pool.linger)
        self._pool.forget(self)

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.transport.abort()
        self._pool.forget(self)


class Pool:
    """Idle keep-alive connections to origins, at most ``size`` per host:port, closed after ``idle_timeout``."""

    def __init__(self, size: int, idle_timeout: float = 30.0, limits: HeadLimits | None = None,
                 linger: float = 60.0) -> None:
        self.size = size
        self.linger = linger  # write_timeout: how long a closed connection may wait for an origin that reads nothing
        self.idle_timeout = idle_timeout
        self.limits = limits or HeadLimits()  # for each Origin, read at the start of each response
        self._idle: dict[tuple[str, int], list[UpstreamConnection]] = {}

    def get(self, key: tuple[str, int]) -> UpstreamConnection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def put(self, conn: UpstreamConnection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.size:
            conn.origin.close()
            return
        conn.origin.last_activity = conn.origin.clock()
        idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def expire(self, now: float) -> None:
        """Close connections idle for longer than ``idle_timeout`` (called by the housekeeping timer)."""
        for idle in list(self._idle.values()):
            for conn in [c for c in idle if now - c.last_activity > self.idle_timeout]:
                conn.origin.close()

    def close_all(self) -> None:
        for idle in list(self._idle.values()):
            for conn in list(idle):
                conn.origin.close()
        self._idle.clear()
