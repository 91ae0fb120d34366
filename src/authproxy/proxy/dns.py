"""A small positive DNS cache in front of ``loop.getaddrinfo``.

The destination policy resolves a name once per request and connects to the address it checked; without a
cache every request to a named origin would wait for a resolver thread. Answers are kept ``ttl`` seconds
(getaddrinfo does not report the record's TTL; Squid keeps positive answers far longer by default). Failures
are not cached. Concurrent lookups of one name share one resolver call.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

AddrInfo = list[tuple[Any, ...]]


class DnsCache:
    def __init__(self, ttl: float = 30.0, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._answers: dict[str, tuple[float, AddrInfo]] = {}
        self._inflight: dict[str, asyncio.Future[AddrInfo]] = {}

    def cached(self, host: str) -> AddrInfo | None:
        entry = self._answers.get(host)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        return None

    async def cached_only(self, host: str, port: int, *, type: int = socket.SOCK_STREAM) -> AddrInfo:
        """A resolver that never waits: the cached answer, or NotCached."""
        answer = self.cached(host)
        if answer is None:
            raise NotCached(host)
        return answer

    async def resolve(self, host: str, port: int, *, type: int = socket.SOCK_STREAM) -> AddrInfo:
        """Same contract as ``loop.getaddrinfo(host, port, type=type)``; answers for any port are reused."""
        answer = self.cached(host)
        if answer is not None:
            return answer
        future = self._inflight.get(host)
        if future is None:
            loop = asyncio.get_running_loop()
            future = asyncio.ensure_future(loop.getaddrinfo(host, port, type=type))
            self._inflight[host] = future
            future.add_done_callback(lambda done: self._store(host, done))
        # Shielded: one waiter giving up (a closed client) must not cancel the lookup the others share.
        return await asyncio.shield(future)

    def _store(self, host: str, future: asyncio.Future[AddrInfo]) -> None:
        self._inflight.pop(host, None)
        if future.cancelled() or future.exception() is not None:
            return
        if len(self._answers) >= self.max_entries:
            self._answers.clear()  # rare; a full purge is simpler than an LRU and costs one lookup per name
        self._answers[host] = (time.monotonic() + self.ttl, future.result())


class NotCached(Exception):
    """Raised by ``DnsCache.cached_only`` when answering would mean waiting for a resolver."""
