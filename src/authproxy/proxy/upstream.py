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

    __slots__ = ("_pool", "_timer", "data_received", "key", "origin")

    # The Origin's own method, bound per connection before the transport looks it up (as ClientConnection does).
    data_received: Callable[[bytes], None]  # type: ignore[assignment]  # mypy takes the bound method for another type

    def __init__(self, key: tuple[str, int], pool: Pool, clock: Callable[[], float]) -> None:
        super().__init__()
        self.key = key
        self._pool = pool
        self._timer: asyncio.TimerHandle | None = None
        self.origin = Origin(key, self, clock, pool)
        self.data_received = self.origin.data_received

    # -- asyncio.Protocol: events for the Origin ------------------------------------------------------------
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
    """Idle keep-alive connections to origins, at most ``size`` per host:port and ``max_idle`` in all (the oldest
    closed to make room: each is a descriptor, and a client asking for many host:port pairs would otherwise pile
    them up), closed after ``idle_timeout``."""

    def __init__(self, size: int, idle_timeout: float = 30.0, limits: HeadLimits | None = None,
                 linger: float = 60.0, max_idle: int = 10_000) -> None:
        self.size = size
        self.max_idle = max_idle
        self._oldest: dict[UpstreamConnection, None] = {}  # every idle connection, oldest first
        self.linger = linger  # write_timeout: how long a closed connection may wait for an origin that reads nothing
        self.idle_timeout = idle_timeout
        self.limits = limits or HeadLimits()  # for each Origin, read at the start of each response
        self._idle: dict[tuple[str, int], list[UpstreamConnection]] = {}

    def get(self, key: tuple[str, int]) -> UpstreamConnection | None:
        idle = self._idle.get(key)
        if idle is None:
            return None
        conn = None
        while idle:
            candidate = idle.pop()
            del self._oldest[candidate]
            if not candidate.closed and candidate.transport is not None and not candidate.transport.is_closing():
                conn = candidate
                break
        if not idle:
            del self._idle[key]  # no empty list left behind per host:port ever asked for
        return conn

    def put(self, conn: UpstreamConnection) -> None:
        idle = self._idle.get(conn.key)
        if (idle is not None and len(idle) >= self.size) or self.size < 1 or self.max_idle < 1:
            conn.origin.close()
            return
        oldest = self._oldest
        if len(oldest) >= self.max_idle:
            victim = next(iter(oldest))
            self.forget(victim)
            victim.origin.close()
            idle = self._idle.get(conn.key)  # the victim may have been the last of this host:port
        if idle is None:
            idle = self._idle[conn.key] = []
        conn.origin.last_activity = conn.origin.clock()
        idle.append(conn)
        oldest[conn] = None

    def forget(self, conn: UpstreamConnection) -> None:
        if self._oldest.pop(conn, 0) is None:  # it was idle here
            idle = self._idle[conn.key]
            idle.remove(conn)
            if not idle:
                del self._idle[conn.key]

    def expire(self, now: float) -> None:
        """Close connections idle for longer than ``idle_timeout`` (called by the housekeeping timer): the oldest
        first, up to the first that is not (they went idle in that order)."""
        oldest = self._oldest
        while oldest:
            conn = next(iter(oldest))
            if now - conn.last_activity <= self.idle_timeout:
                break
            self.forget(conn)
            conn.origin.close()

    def close_all(self) -> None:
        for idle in list(self._idle.values()):
            for conn in list(idle):
                conn.origin.close()
        self._idle.clear()
        self._oldest.clear()
