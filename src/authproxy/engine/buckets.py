"""Token buckets by key (a client address): at most ``rate`` events a second for each key, in bursts of up to
``burst``, in a table of bounded size.

The SIP proxy spends them on its own answers over UDP (:mod:`authproxy.sip.answers`): a UDP source address can
be forged, and an answer (a 407 carrying its challenges) is several times the request that asked for it, so
without a bound per address the proxy would send a victim whatever a forger asks for, amplified (RFC 3261
sections 26.1.5 and 26.3.2.4: denial of service and amplification, the 401/407 to a forged source).
"""

from __future__ import annotations

from enum import Enum


class Spend(Enum):
    """What :meth:`TokenBuckets.take` says of one event."""

    OK = "ok"  #: within the rate: a token taken
    #: over it, the first time since the key's bucket was last full (worth one log line: a flood at any pace
    #: gets one, until it stops long enough for the bucket to fill)
    OVER = "over"
    STILL_OVER = "still over"  #: over it again (quietly)


class TokenBuckets:
    """A bucket of ``burst`` tokens per key, refilled at ``rate`` a second. ``max_keys`` bounds the table: the key
    used least recently is forgotten first (it starts again with a full bucket, so a flood of new keys cannot
    grow memory, only cost the keys it pushes out their memory of being over)."""

    def __init__(self, rate: float, burst: int, max_keys: int = 10_000) -> None:
        if not rate > 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be positive, burst and max_keys at least 1")
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        # key -> [tokens, time of the last take, over since the bucket was last full]; in the order of use (a take
        # moves its key to the end), so the first is the least recently used.
        self._buckets: dict[str, list[float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> Spend:
        """Spend a token of ``key``'s bucket at time ``now`` (seconds; a clock that steps back refills nothing)."""
        buckets = self._buckets
        bucket = buckets.pop(key, None)
        if bucket is None:
            if len(buckets) >= self.max_keys:
                del buckets[next(iter(buckets))]
            bucket = [float(self.burst), now, 0.0]
        else:
            elapsed = now - bucket[1]
            if elapsed > 0:
                bucket[1] = now
                bucket[0] += elapsed * self.rate
                if bucket[0] >= self.burst:
                    bucket[0] = float(self.burst)
                    bucket[2] = 0.0  # calm again: the next run of drops is news
        buckets[key] = bucket
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return Spend.OK
        if bucket[2]:
            return Spend.STILL_OVER
        bucket[2] = 1.0
        return Spend.OVER

    def purge(self, now: float) -> int:
        """Forget the keys whose buckets are full again by ``now`` (as good as never seen); how many."""
        rate, burst = self.rate, float(self.burst)
        full = [key for key, (tokens, last, _) in self._buckets.items() if tokens + (now - last) * rate >= burst]
        for key in full:
            del self._buckets[key]
        return len(full)
