"""An in-process nonce-count store with a sliding window per nonce (RFC 7616 section 3.4 ``nc``).

Several connections may share one nonce (browsers and curl open parallel connections and reuse the
challenge), so counts arrive out of order. Like the IPsec anti-replay window (RFC 4303 section 3.4.3), each
nonce keeps its highest count and a bitmap of the ``window`` counts at and below it: a count inside the window
is accepted once, a count below the window is refused (it can no longer be told apart from a replay).

Memory is bounded twice: entries go when their nonce expires (purged a few at a time on each call, from a heap
ordered by expiry), and at most ``max_nonces`` entries are kept, evicting the one expiring soonest. An evicted
nonce's counts are forgotten, so rather than accept its replays the store refuses every unknown nonce that
expires no later than the latest eviction (the client gets a fresh challenge and carries on).

Not thread-safe: it belongs to one event loop.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from authproxy.state.base import NonceUse


@dataclass
class _Counts:
    highest: int
    seen: int  # bit i set: count ``highest - i`` was used
    expires_at: float


class MemoryNonceCounterStore:
    """A :class:`~authproxy.state.base.NonceCounterStore` in a dict."""

    def __init__(self, window: int = 1024, max_nonces: int = 100_000) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        if max_nonces < 1:
            raise ValueError("max_nonces must be at least 1")
        self.window = window
        self.max_nonces = max_nonces
        self._mask = (1 << window) - 1
        self._entries: dict[str, _Counts] = {}
        # (expires_at, nonce), one per entry: the purge and eviction order.
        self._expiry: list[tuple[float, str]] = []
        # Unknown nonces expiring at or before this may have been evicted: refuse them.
        self._evicted_until = float("-inf")

    def __len__(self) -> int:
        return len(self._entries)

    def _purge(self, now: float) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            _, nonce = heapq.heappop(expiry)
            del self._entries[nonce]

    def use(self, nonce: str, nc: int, expires_at: float, now: float, owner: str = "") -> NonceUse:
        self._purge(now)
        if nc < 1:
            return NonceUse.REPLAY  # counts start at 1 (RFC 7616 section 3.4): never valid
        if expires_at <= now:
            return NonceUse.UNKNOWN  # expired: nothing left to protect, the client needs a new nonce
        entry = self._entries.get(nonce)
        if entry is None:
            if expires_at <= self._evicted_until:
                return NonceUse.UNKNOWN
            if len(self._entries) >= self.max_nonces:
                evicted_at, evicted = heapq.heappop(self._expiry)
                del self._entries[evicted]
                self._evicted_until = max(self._evicted_until, evicted_at)
                if expires_at <= self._evicted_until:
                    return NonceUse.UNKNOWN
            self._entries[nonce] = _Counts(highest=nc, seen=1, expires_at=expires_at)
            heapq.heappush(self._expiry, (expires_at, nonce))
            return NonceUse.FRESH
        if nc > entry.highest:
            entry.seen = ((entry.seen << (nc - entry.highest)) | 1) & self._mask
            entry.highest = nc
            return NonceUse.FRESH
        offset = entry.highest - nc
        if offset >= self.window:
            return NonceUse.UNKNOWN  # below the window: no longer known whether it was used
        bit = 1 << offset
        if entry.seen & bit:
            return NonceUse.REPLAY
        entry.seen |= bit
        return NonceUse.FRESH
