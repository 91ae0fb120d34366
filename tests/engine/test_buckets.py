"""Token buckets per key (authproxy.engine.buckets): the bound on the SIP proxy's answers over UDP to one address."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authproxy.engine.buckets import Spend, TokenBuckets

T = 1_800_000_000.0


def test_a_burst_then_over_once_then_quietly_over() -> None:
    buckets = TokenBuckets(rate=10, burst=3)
    assert [buckets.take("10.0.0.1", T) for _ in range(6)] == [Spend.OK] * 3 + [Spend.OVER] + [Spend.STILL_OVER] * 2
    assert buckets.take("10.0.0.2", T) is Spend.OK  # every key has its own bucket


def test_refilled_at_the_rate_and_over_said_once_per_flood() -> None:
    buckets = TokenBuckets(rate=8, burst=3)  # times below in eighths of a second: exact in binary
    for _ in range(4):
        buckets.take("a", T)
    assert buckets.take("a", T + 0.0625) is Spend.STILL_OVER  # half a token
    assert buckets.take("a", T + 0.125) is Spend.OK  # one token back
    assert buckets.take("a", T + 0.125) is Spend.STILL_OVER  # the same flood, at the rate: said once only
    assert [buckets.take("a", T + 100) for _ in range(4)] == [Spend.OK] * 3 + [Spend.OVER]  # full, never more
    # (calm long enough to fill the bucket: the next run of drops is said again)


def test_a_clock_stepping_back_refills_nothing() -> None:
    buckets = TokenBuckets(rate=10, burst=2)
    buckets.take("a", T)
    buckets.take("a", T)
    assert buckets.take("a", T - 3600) is Spend.OVER
    assert buckets.take("a", T + 0.0625) is Spend.STILL_OVER  # measured from the later time, not the earlier one


def test_the_table_is_bounded_and_purged() -> None:
    buckets = TokenBuckets(rate=1, burst=1, max_keys=100)
    for n in range(1000):
        buckets.take(f"10.0.{n // 256}.{n % 256}", T)
    assert len(buckets) == 100
    assert buckets.take("10.0.3.231", T) is Spend.OVER  # the newest kept their state
    assert buckets.take("10.0.0.0", T) is Spend.OK  # the oldest were forgotten: a full bucket again
    assert buckets.purge(T + 0.5) == 0  # none full yet
    assert buckets.purge(T + 1) == 100
    assert len(buckets) == 0


def test_bad_settings_are_refused() -> None:
    for rate, burst, keys in ((0, 1, 1), (-1, 1, 1), (1, 0, 1), (1, 1, 0), (float("nan"), 1, 1)):
        with pytest.raises(ValueError):
            TokenBuckets(rate, burst, keys)


@given(st.lists(st.floats(min_value=0, max_value=5), max_size=200))
def test_never_more_than_the_burst_plus_the_rate_over_time(gaps: list[float]) -> None:
    buckets = TokenBuckets(rate=4, burst=5)
    now, allowed = T, 0
    for gap in gaps:
        now += gap
        allowed += buckets.take("a", now) is Spend.OK
    assert allowed <= 5 + 4 * (now - T) + 1e-6
