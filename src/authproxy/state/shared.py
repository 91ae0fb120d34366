"""A nonce-count store in shared memory, so that every worker process refuses a replay (``--workers N``).

The same sliding-window rule as :mod:`authproxy.state.memory` (highest count plus a bitmap of the ``window``
counts below it), kept in a fixed table of slots in an anonymous shared mapping created before the workers
fork, and guarded by one process-shared lock (a POSIX record lock, which dies with its holder). A nonce
issued by one worker and answered at another is checked against the same counts: a replayed ``(nonce, nc)``
is refused by every worker.

The table is open-addressed on a 128-bit hash of (owner, nonce) with a short probe; each slot also records a
64-bit tag of its owner (the user the digest was verified for). When a probe finds no free or expired slot, a
slot must be forgotten, and the choice is one a user cannot aim at another: the inserting owner's own slot in
the probe expiring soonest, and only if the probe holds none of theirs, the slot expiring soonest. A user
burning fresh nonces therefore mostly recycles their own slots once they hold a share of the table (the chance
that a probe of 16 holds none of an owner holding a fraction f of the table is (1 - f)^16). There is no exact
per-owner quota as in the memory store: counting per owner in a fixed mapping would need a second table with
its own eviction. What makes the remaining evictions harmless is the answer: as in the memory store, unknown
nonces of the evicted slot's owner expiring no later than it are answered UNKNOWN (stale=true, a fresh
challenge, not a failure), never REPLAY and never FRESH. Those watermarks are kept per owner bucket (owner tag
modulo 256), so one user's evictions raise another's only on a bucket collision, and then only cost a stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import struct
import tempfile
from collections.abc import Iterator

from authproxy.state.base import NonceUse

_OWNER_BUCKETS = 256
_HEADER = struct.Struct(f"<{_OWNER_BUCKETS}d")  # evicted_until, per owner bucket
_WATERMARK = struct.Struct("<d")
_SLOT_HEAD = struct.Struct("<16sdQQ")  # key, expires_at, highest, owner tag
_PROBE = 16


def _hash(*parts: str) -> bytes:
    data = b"\x00".join(part.encode("utf-8", "surrogatepass") for part in parts)
    return hashlib.blake2b(data, digest_size=16).digest()


class SharedNonceCounterStore:
    """A :class:`~authproxy.state.base.NonceCounterStore` shared by processes forked after it is made."""

    def __init__(self, slots: int = 1 << 16, window: int = 1024) -> None:
        if slots < _PROBE or slots & (slots - 1):
            raise ValueError("slots must be a power of two, at least 16")
        if window < 8 or window % 8:
            raise ValueError("window must be a positive multiple of 8")
        self.window = window
        self.slots = slots
        self._bitmap_bytes = window // 8
        self._slot_size = _SLOT_HEAD.size + self._bitmap_bytes
        self._mask = (1 << window) - 1
        # MAP_SHARED | MAP_ANONYMOUS: one mapping, inherited by every forked worker; zero-filled (all empty).
        self._map = mmap.mmap(-1, _HEADER.size + slots * self._slot_size)
        # A POSIX record lock (fcntl.lockf) on a private file: owned per process, and released by the kernel
        # when its owner dies, so a worker killed while holding it cannot stop the others (a semaphore would
        # stay taken forever).
        self._lock_file = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the store
        _HEADER.pack_into(self._map, 0, *[float("-inf")] * _OWNER_BUCKETS)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = self._lock_file.fileno()
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)

    def _offset(self, index: int) -> int:
        return _HEADER.size + (index & (self.slots - 1)) * self._slot_size

    def use(self, nonce: str, nc: int, expires_at: float, now: float, owner: str = "") -> NonceUse:
        if nc < 1:
            return NonceUse.REPLAY  # counts start at 1 (RFC 7616 section 3.4): never valid
        if expires_at <= now:
            return NonceUse.UNKNOWN
        key = _hash(owner, nonce)
        tag = int.from_bytes(_hash(owner)[:8], "little")
        start = int.from_bytes(key[:8], "little")
        data = self._map
        with self._locked():
            free = -1
            soonest, soonest_at = -1, float("inf")
            own, own_at = -1, float("inf")
            for probe in range(_PROBE):
                offset = self._offset(start + probe)
                slot_key, slot_expires, highest, slot_owner = _SLOT_HEAD.unpack_from(data, offset)
                if slot_expires <= now:  # empty (0.0) or expired: reusable
                    if free < 0:
                        free = offset
                    continue
                if slot_key == key:
                    return self._update(offset, highest, nc)
                if slot_owner == tag and slot_expires < own_at:
                    own, own_at = offset, slot_expires
                if slot_expires < soonest_at:
                    soonest, soonest_at = offset, slot_expires
            if expires_at <= self._watermark(tag):
                return NonceUse.UNKNOWN
            if free < 0:
                # Forget a slot: the inserting owner's own if the probe holds one, else the soonest expiring.
                free = own if own >= 0 else soonest
                _, evicted_at, _, evicted_owner = _SLOT_HEAD.unpack_from(data, free)
                bucket = _WATERMARK.size * (evicted_owner % _OWNER_BUCKETS)
                if evicted_at > _WATERMARK.unpack_from(data, bucket)[0]:
                    _WATERMARK.pack_into(data, bucket, evicted_at)
                if expires_at <= self._watermark(tag):
                    return NonceUse.UNKNOWN
            _SLOT_HEAD.pack_into(data, free, key, expires_at, nc, tag)
            start_bits = free + _SLOT_HEAD.size
            data[start_bits:start_bits + self._bitmap_bytes] = (1).to_bytes(self._bitmap_bytes, "little")
            return NonceUse.FRESH

    def _watermark(self, tag: int) -> float:
        """Unknown nonces of owners in ``tag``'s bucket expiring at or before this may have been forgotten."""
        value: float = _WATERMARK.unpack_from(self._map, _WATERMARK.size * (tag % _OWNER_BUCKETS))[0]
        return value

    def _update(self, offset: int, highest: int, nc: int) -> NonceUse:
        data = self._map
        start_bits = offset + _SLOT_HEAD.size
        end_bits = start_bits + self._bitmap_bytes
        seen = int.from_bytes(data[start_bits:end_bits], "little")
        if nc > highest:
            seen = ((seen << (nc - highest)) | 1) & self._mask
            struct.pack_into("<Q", data, offset + 24, nc)
        else:
            shift = highest - nc
            if shift >= self.window:
                return NonceUse.UNKNOWN  # below the window: no longer known whether it was used
            if seen >> shift & 1:
                return NonceUse.REPLAY
            seen |= 1 << shift
        data[start_bits:end_bits] = seen.to_bytes(self._bitmap_bytes, "little")
        return NonceUse.FRESH
