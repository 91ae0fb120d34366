"""An in-process nonce-count store with a sliding window per nonce (RFC 7616 section 3.4 ``nc``).

Several connections may share one nonce (browsers and curl open parallel connections and reuse the
challenge), so counts arrive out of order. Like the IPsec anti-replay window (RFC 4303 section 3.4.3), each
nonce keeps its highest count and a bitmap of the ``window`` counts at and below it: a count inside the window
is accepted once, a count below the window is UNKNOWN (it can no longer be told apart from a replay: stale).

Counts are kept per owner, the user the digest was verified for. The digest covers the user name, so a replay
of a request always names the same owner, and the owner's own counts are all that is needed to refuse it.
Only users who proved their password ever reach this table.

Memory is bounded three ways, none of which one user can aim at another:

* entries go when their nonce expires (purged a few at a time on each call, from a heap ordered by expiry);
* each owner keeps at most ``max_per_owner`` nonces: a new one evicts that owner's least recently used nonce,
  so a signed-in user burning fresh nonces only pushes out their own (the verifier always names the owner; a
  caller that names none, ``""``, is held only by the next rule);
* at most ``max_nonces`` entries in all: when full, the owner holding the most entries loses its least recently
  used one (a user with few nonces is the last to lose any).

An evicted nonce's counts are forgotten, so rather than accept its replays the store answers UNKNOWN (the
verifier sends stale=true, a fresh challenge, not a failure) for every nonce of that owner it does not know and
that expires no later than the owner's latest eviction. Each operation costs O(1) amortised (the expiry heap is
rebuilt from the live entries when stale items make up half of it).

Not thread-safe: it belongs to one event loop.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass, field

from authproxy.state.base import NonceUse

_FRESH = NonceUse.FRESH  # read once: through the Enum class each read costs a __getattr__ call (Python 3.11)


@dataclass(slots=True)
class _Counts:
    highest: int
    seen: int  # bit i set: count ``highest - i`` was used
    expires_at: float


@dataclass(slots=True)
class _Owner:
    # Least recently used first: the order in which this owner's own nonces are evicted.
    nonces: OrderedDict[str, _Counts] = field(default_factory=OrderedDict)
    # This owner's unknown nonces expiring at or before this may have been evicted: UNKNOWN, never FRESH.
    evicted_until: float = float("-inf")


class MemoryNonceCounterStore:
    """A :class:`~authproxy.state.base.NonceCounterStore` in dicts, with a quota per owner."""

    def __init__(self, window: int = 1024, max_nonces: int = 100_000, max_per_owner: int = 1024) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        if max_nonces < 1 or max_per_owner < 1:
            raise ValueError("max_nonces and max_per_owner must be at least 1")
        self.window = window
        self.max_nonces = max_nonces
        self.max_per_owner = max_per_owner
        self._mask = (1 << window) - 1
        self._owners: dict[str, _Owner] = {}
        self._size = 0
        # (expires_at, owner, nonce), at least one per entry (items of evicted entries are skipped when popped):
        # the purge order.
        self._expiry: list[tuple[float, str, str]] = []
        # Owners by how many entries they hold, and the largest such number: the global eviction order.
        self._by_size: dict[int, dict[str, None]] = {}
        self._top = 0

    def __len__(self) -> int:
        return self._size

    # == the answer ====================================================================================================
    def use(self, nonce: str, nc: int, expires_at: float, now: float, owner: str = "") -> NonceUse:
        expiry = self._expiry
        if expiry and expiry[0][0] <= now:  # _purge's own first test, without the call when nothing expired
            self._purge(now)
        if nc < 1:
            return NonceUse.REPLAY  # counts start at 1 (RFC 7616 section 3.4): never valid
        if expires_at <= now:
            return NonceUse.UNKNOWN  # expired: nothing left to protect, the client needs a new nonce
        record = self._owners.get(owner)
        entry = None if record is None else record.nonces.get(nonce)
        if entry is None:
            return self._insert(record, owner, nonce, nc, expires_at)
        assert record is not None
        record.nonces.move_to_end(nonce)
        if nc > entry.highest:
            entry.seen = ((entry.seen << (nc - entry.highest)) | 1) & self._mask
            entry.highest = nc
            return _FRESH
        offset = entry.highest - nc
        if offset >= self.window:
            return NonceUse.UNKNOWN  # below the window: no longer known whether it was used
        bit = 1 << offset
        if entry.seen & bit:
            return NonceUse.REPLAY
        entry.seen |= bit
        return _FRESH

    def _insert(self, record: _Owner | None, owner: str, nonce: str, nc: int, expires_at: float) -> NonceUse:
        if record is None:
            record = self._owners[owner] = _Owner()
        elif expires_at <= record.evicted_until:
            return NonceUse.UNKNOWN
        if owner and len(record.nonces) >= self.max_per_owner:  # "": a caller that names no owner, no quota
            self._evict(owner, record)
        elif self._size >= self.max_nonces:
            largest = next(iter(self._by_size[self._top]))
            self._evict(largest, self._owners[largest])
        if expires_at <= record.evicted_until:
            return NonceUse.UNKNOWN  # this very nonce could have been the one just forgotten
        record.nonces[nonce] = _Counts(highest=nc, seen=1, expires_at=expires_at)
        self._resized(owner, len(record.nonces) - 1)
        heapq.heappush(self._expiry, (expires_at, owner, nonce))
        if len(self._expiry) > 2 * self._size + 64:
            # Evicted entries leave their heap items behind; rebuild so the heap stays proportional to the table.
            self._expiry = [(c.expires_at, o, n) for o, r in self._owners.items() for n, c in r.nonces.items()]
            heapq.heapify(self._expiry)
        return _FRESH

    # == bookkeeping ===================================================================================================
    def _evict(self, owner: str, record: _Owner) -> None:
        """Forget ``owner``'s least recently used nonce; its unknown nonces up to that expiry become UNKNOWN."""
        _, counts = record.nonces.popitem(last=False)
        record.evicted_until = max(record.evicted_until, counts.expires_at)
        self._resized(owner, len(record.nonces) + 1)

    def _resized(self, owner: str, before: int) -> None:
        """Move ``owner`` from the ``before`` size class to its current one (both O(1))."""
        after = len(self._owners[owner].nonces)
        self._size += after - before
        if before:
            bucket = self._by_size[before]
            del bucket[owner]
            if not bucket:
                del self._by_size[before]
                if self._top == before:
                    self._top = after  # nobody held more than ``before``; this owner now holds ``after``
        if after:
            self._by_size.setdefault(after, {})[owner] = None
            self._top = max(self._top, after)

    def _purge(self, now: float) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            _, owner, nonce = heapq.heappop(expiry)
            record = self._owners.get(owner)
            if record is None:
                continue
            if nonce in record.nonces:  # else evicted before it expired
                del record.nonces[nonce]
                self._resized(owner, len(record.nonces) + 1)
            if not record.nonces and record.evicted_until <= now:
                del self._owners[owner]  # nothing left to remember: every nonce it evicted has expired too
