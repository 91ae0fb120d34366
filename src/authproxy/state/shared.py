"""A nonce-count store in shared memory, so that every worker process refuses a replay (``--workers N``).

The same sliding-window rule as :mod:`authproxy.state.memory` (highest count plus a bitmap of the ``window``
counts below it), kept in a fixed table of slots in an anonymous shared mapping created before the workers
fork, and guarded by one process-shared lock (a POSIX record lock, which dies with its holder). A nonce
issued by one worker and answered at another is checked against the same counts: a replayed ``(nonce, nc)``
is refused by every worker.

The table is open-addressed on a 128-bit hash of the nonce with a short probe. When a probe finds no free or
expired slot, the slot expiring soonest is reused and, as in the memory store, unknown nonces expiring no later
than it are refused from then on (their counts may have been forgotten; the client gets a new challenge).
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

_HEADER = struct.Struct("<d")  # evicted_until
_SLOT_HEAD = struct.Struct("<16sdQ")  # key, expires_at, highest
_PROBE = 16


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
        _HEADER.pack_into(self._map, 0, float("-inf"))

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
        key = hashlib.blake2b(nonce.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        start = int.from_bytes(key[:8], "little")
        data = self._map
        with self._locked():
            free = -1
            soonest, soonest_at = -1, float("inf")
            for probe in range(_PROBE):
                offset = self._offset(start + probe)
                slot_key, slot_expires, highest = _SLOT_HEAD.unpack_from(data, offset)
                if slot_expires <= now:  # empty (0.0) or expired: reusable
                    if free < 0:
                        free = offset
                    continue
                if slot_key == key:
                    return self._update(offset, highest, nc)
                if slot_expires < soonest_at:
                    soonest, soonest_at = offset, slot_expires
            (evicted_until,) = _HEADER.unpack_from(data, 0)
            if expires_at <= evicted_until:
                return NonceUse.UNKNOWN
            if free < 0:
                evicted_until = max(evicted_until, soonest_at)
                _HEADER.pack_into(data, 0, evicted_until)
                if expires_at <= evicted_until:
                    return NonceUse.UNKNOWN
                free = soonest
            _SLOT_HEAD.pack_into(data, free, key, expires_at, nc)
            start_bits = free + _SLOT_HEAD.size
            data[start_bits:start_bits + self._bitmap_bytes] = (1).to_bytes(self._bitmap_bytes, "little")
            return NonceUse.FRESH

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
