"""Connections to origins: an asyncio.Protocol per connection and a keep-alive pool per host:port.

An ``UpstreamConnection`` parses responses with httptools and hands each event to its current owner (the
exchange it serves). Between exchanges it sits in the ``Pool`` with no owner; if the origin speaks or closes
while idle, the connection is dropped from the pool (RFC 9112 section 9.3: an idle connection may be closed at
any time by either side).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

import httptools


class ResponseSink(Protocol):
    """What an UpstreamConnection reports to (the exchange it serves)."""

    def upstream_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                      keep_alive: bool) -> None: ...

    def upstream_body(self, data: bytes) -> None: ...

    def upstream_complete(self) -> None: ...

    def upstream_flush(self) -> None: ...

    def upstream_lost(self, exc: Exception | None) -> None: ...

    def upstream_error(self, message: str) -> None: ...

    def upstream_pause_writing(self) -> None: ...

    def upstream_resume_writing(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One connection to an origin, reused across requests while the origin keeps it open."""

    __slots__ = (
        "_head_only",
        "_headers",
        "_pool",
        "_reason",
        "closed",
        "key",
        "last_activity",
        "owner",
        "parser",
        "received_any",
        "transport",
    )

    def __init__(self, key: tuple[str, int], pool: Pool) -> None:
        self.key = key
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.owner: ResponseSink | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._head_only = False
        self.closed = False
        self.received_any = False
        self.last_activity = 0.0

    # -- asyncio.Protocol ----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so this is a cast, not a check.
        self.transport = transport  # type: ignore[assignment]
        self.last_activity = time.monotonic()

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        self.received_any = True
        if self.owner is None or self.parser is None:
            # An idle origin sent something unasked: the connection is no longer in a known state.
            self.close()
            return
        owner = self.owner
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # 101 Switching Protocols: upstream_head has already refused it (we never ask for an upgrade).
            self._fail("the origin switched protocols, which this proxy does not relay")
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _HeadDone):
                self._fail(f"the origin's response could not be relayed ({exc})")
        except httptools.HttpParserError as exc:
            self._fail(f"the origin sent a malformed response ({exc})")
        owner.upstream_flush()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.upstream_lost(exc)

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.upstream_resume_writing()

    # -- httptools callbacks ------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._headers = []
        self._reason = b""

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value.strip(b" \t")))

    def on_headers_complete(self) -> None:
        assert self.parser is not None and self.owner is not None
        status = self.parser.get_status_code()
        keep_alive = self.parser.should_keep_alive()
        self.owner.upstream_head(status, self._reason, self._headers, keep_alive)
        if self._head_only and status >= 200 and self.owner is not None:
            # A response to HEAD has no body whatever its Content-Length says (RFC 9110 section 9.3.2);
            # httptools cannot be told so, so the message ends here and the parser is dropped.
            owner = self.owner
            self.parser = None
            owner.upstream_complete()
            raise _HeadDone

    def on_body(self, body: bytes) -> None:
        if self.owner is not None:
            self.owner.upstream_body(body)

    def on_message_complete(self) -> None:
        if self.owner is not None and self.parser is not None and self.parser.get_status_code() >= 200:
            self.owner.upstream_complete()

    # -- used by the exchange -----------------------------------------------------------------------------
    def start(self, owner: ResponseSink, head_only: bool) -> None:
        """Serve ``owner``: the next response on this connection is theirs."""
        self.owner = owner
        self._head_only = head_only
        self.received_any = False
        if self.parser is None:  # llhttp resets itself after each complete message; reuse it
            self.parser = httptools.HttpResponseParser(self)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def release(self, reusable: bool) -> None:
        """The exchange is done with this connection: back to the pool, or closed."""
        self.owner = None
        if reusable and not self.closed:
            self._pool.put(self)
        else:
            self.close()

    def close(self) -> None:
        self.owner = None
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()
        self._pool.forget(self)

    def abort(self) -> None:
        self.owner = None
        if self.transport is not None:
            self.closed = True
            self.transport.abort()
        self._pool.forget(self)

    def _fail(self, message: str) -> None:
        owner, self.owner = self.owner, None
        self.abort()
        if owner is not None:
            owner.upstream_error(message)


class _HeadDone(Exception):
    """Raised out of the parser to stop reading a response to HEAD at the end of its head."""


class Pool:
    """Idle keep-alive connections to origins, at most ``size`` per host:port, closed after ``idle_timeout``."""

    def __init__(self, size: int, idle_timeout: float = 30.0) -> None:
        self.size = size
        self.idle_timeout = idle_timeout
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
            conn.close()
            return
        conn.last_activity = time.monotonic()
        idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def expire(self, now: float) -> None:
        """Close connections idle for longer than ``idle_timeout`` (called by the housekeeping timer)."""
        for idle in list(self._idle.values()):
            for conn in [c for c in idle if now - c.last_activity > self.idle_timeout]:
                conn.close()

    def close_all(self) -> None:
        for idle in list(self._idle.values()):
            for conn in list(idle):
                conn.close()
        self._idle.clear()

