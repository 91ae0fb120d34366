"""authproxy.proxy.throttle: windows, lockouts, Retry-After, known addresses, the user-lockout cap, bounds, /64s."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authproxy.proxy.throttle import FailureThrottle, client_key, retry_after

A, B, C = "192.0.2.1", "198.51.100.2", "203.0.113.3"


def fail(t: FailureThrottle, client: str, user: str | None, now: float, times: int, step: float = 0.0) -> float:
    for _ in range(times):
        t.record_failure(client, user, now)
        now += step
    return now


def test_client_key() -> None:
    assert client_key("192.0.2.1") == "192.0.2.1"
    assert client_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:2:ffff::1") == client_key("2001:db8:1:2::9")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key("-") == "-"


def test_retry_after_rounds_up() -> None:
    assert retry_after(0.2) == "1"
    assert retry_after(1.0) == "1"
    assert retry_after(299.01) == "300"


def test_below_the_threshold_nothing_happens() -> None:
    t = FailureThrottle(max_failures=3, window=60, lockout=300)
    fail(t, A, "alice", 0, 2)
    assert t.check(A, "alice", 1) is None
    assert t.check(A, None, 1) is None


def test_client_lockout_and_retry_after() -> None:
    t = FailureThrottle(max_failures=3, window=60, lockout=300)
    fail(t, A, "u1", 10, 1)
    fail(t, A, "u2", 11, 1)
    fail(t, A, "u3", 12, 1)  # three different names: the address is what is counted
    assert t.check(A, "anyone", 12) == pytest.approx(300)
    assert t.check(A, None, 112) == pytest.approx(200)  # also without credentials: the address is locked
    assert t.check(B, "anyone", 12) is None  # another address is not
    assert t.check(A, "anyone", 312) is None  # lockout over
    # A fresh start: one more failure does not lock again.
    t.record_failure(A, "u1", 313)
    assert t.check(A, "u1", 313) is None


def test_window_is_sliding() -> None:
    t = FailureThrottle(max_failures=3, window=60, lockout=300, max_user_lockout=0)
    fail(t, A, "alice", 0, 2)
    t.record_failure(A, "alice", 61)  # the first two are older than the window
    assert t.check(A, "alice", 61) is None
    t.record_failure(A, "alice", 62)  # the last three, at 0, 61 and 62, are not within one window
    assert t.check(A, "alice", 62) is None
    t.record_failure(A, "alice", 63)
    assert t.check(A, "alice", 63) == pytest.approx(300)


def test_failures_during_lockout_do_not_extend_it() -> None:
    t = FailureThrottle(max_failures=2, window=60, lockout=100)
    fail(t, A, "x", 0, 2)
    fail(t, A, "x", 50, 5)
    assert t.check(A, "x", 50) == pytest.approx(50)


def test_missing_credentials_are_never_counted() -> None:
    """The caller never records outcome 'missing'; check() with user None is how a first request is asked."""
    t = FailureThrottle(max_failures=2)
    for now in range(1000):
        assert t.check(A, None, float(now)) is None  # a browser starting the 407 exchange, 1000 times
    assert len(t) == 0


def test_failures_without_a_user_name_count_for_the_address() -> None:
    t = FailureThrottle(max_failures=2, lockout=30)
    fail(t, A, None, 0, 2)
    assert t.check(A, None, 1) == pytest.approx(29)


def test_user_lockout_across_addresses() -> None:
    """A distributed guess at one name: each address below its own limit, the name locked."""
    t = FailureThrottle(max_failures=4, window=60, lockout=300, max_user_lockout=120)
    for i in range(4):
        t.record_failure(f"10.0.0.{i}", "alice", float(i))
    assert t.check("10.0.0.0", None, 4) is None  # no address reached its limit
    assert t.check("10.0.0.9", "alice", 3) == pytest.approx(120)  # the capped user lockout
    assert t.check("10.0.0.9", "Alice", 3) == pytest.approx(120)  # names are case-folded
    assert t.check("10.0.0.9", "bob", 3) is None
    assert t.check("10.0.0.9", "alice", 123) is None  # no longer than max_user_lockout


def test_user_lockout_is_capped_by_max_user_lockout() -> None:
    t = FailureThrottle(max_failures=3, lockout=600, max_user_lockout=60)
    fail(t, A, "alice", 0, 3)
    assert t.check(A, "alice", 0) == pytest.approx(600)  # the attacking address: the full lockout
    assert t.check(B, "alice", 0) == pytest.approx(60)  # the victim elsewhere: at most max_user_lockout
    assert t.check(B, "alice", 60) is None


def test_max_user_lockout_zero_disables_name_lockout() -> None:
    t = FailureThrottle(max_failures=3, max_user_lockout=0)
    fail(t, A, "alice", 0, 3)
    assert t.check(B, "alice", 0) is None
    assert t.check(A, "alice", 0) is not None


def test_known_address_is_not_locked_out_by_an_attacker_elsewhere() -> None:
    t = FailureThrottle(max_failures=3, window=60, lockout=300, max_user_lockout=300)
    t.record_success(B, "alice", 0)  # alice signs in from her usual address
    for i in range(3):
        t.record_failure(f"10.9.0.{i}", "alice", 10 + i)  # an attacker, spread over addresses
    assert t.check(C, "alice", 13) == pytest.approx(299)  # a new address: locked out (from 12, capped)
    assert t.check(B, "alice", 13) is None  # her usual address: not locked out
    # Known addresses expire.
    short = FailureThrottle(max_failures=1, trust_period=100)
    short.record_success(B, "alice", 0)
    short.record_failure(A, "alice", 150)
    assert short.check(B, "alice", 150) is not None


def test_attacker_cannot_lock_a_victim_out_indefinitely() -> None:
    """Re-locking the name takes max_failures new failures, and each attacking address locks itself first."""
    t = FailureThrottle(max_failures=3, window=60, lockout=600, max_user_lockout=60)
    attacker = A
    fail(t, attacker, "alice", 0, 3)
    assert t.check(B, "alice", 0) == pytest.approx(60)
    fail(t, attacker, "alice", 61, 3)  # the attacker is still locked out: these are not counted
    assert t.check(B, "alice", 61) is None
    # Over the attacker's whole lockout the victim waited at most max_user_lockout.
    locked = sum(t.check(B, "alice", float(s)) is not None for s in range(600))
    assert locked <= 60


def test_success_forgives_only_the_same_pair() -> None:
    t = FailureThrottle(max_failures=3, window=60, lockout=300, max_user_lockout=300)
    fail(t, A, "alice", 0, 2)  # alice's typos
    t.record_success(A, "alice", 1)
    fail(t, A, "alice", 2, 2)
    assert t.check(A, "alice", 3) is None  # the typos were forgiven: 2 failures, not 4

    # An attacker holding a valid account cannot launder guesses against other names.
    t = FailureThrottle(max_failures=3, window=60, lockout=300, max_user_lockout=0)
    fail(t, A, "victim", 0, 2)
    t.record_success(A, "attacker", 1)
    t.record_failure(A, "victim", 2)
    assert t.check(A, "attacker", 2) == pytest.approx(300)

    # A success from another address does not reset the name's counter the attacker is running up.
    t = FailureThrottle(max_failures=3, window=60, lockout=300, max_user_lockout=100)
    fail(t, A, "alice", 0, 2)
    t.record_success(B, "alice", 1)
    t.record_failure(C, "alice", 2)
    assert t.check("192.0.2.200", "alice", 2) == pytest.approx(100)


def test_success_does_not_end_an_active_lockout() -> None:
    t = FailureThrottle(max_failures=2, lockout=100, max_user_lockout=100)
    fail(t, A, "alice", 0, 2)
    t.record_success(B, "alice", 1)  # B becomes a known address...
    assert t.check(B, "alice", 1) is None  # ...and is let in,
    assert t.check(C, "alice", 1) == pytest.approx(99)  # but the name stays locked elsewhere
    assert t.check(A, "alice", 1) == pytest.approx(99)  # and the attacking address too


def test_ipv6_clients_are_aggregated_by_64() -> None:
    t = FailureThrottle(max_failures=3, lockout=300, max_user_lockout=0)
    for i in range(3):
        t.record_failure(f"2001:db8:aa:bb::{i + 1:x}", f"user{i}", float(i))  # rotating addresses in one /64
    assert t.check("2001:db8:aa:bb:dead:beef::1", None, 3) == pytest.approx(299)
    assert t.check("2001:db8:aa:bc::1", None, 3) is None  # the next /64 is someone else
    t.record_failure("::ffff:192.0.2.7", "x", 0)
    t.record_failure("192.0.2.7", "x", 0)
    t.record_failure("::ffff:192.0.2.7", "x", 0)
    assert t.check("192.0.2.7", None, 0) is not None  # IPv4-mapped is the same client


def test_memory_is_bounded() -> None:
    t = FailureThrottle(max_failures=3, max_entries=100)
    for i in range(10_000):
        t.record_failure(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", f"user{i}", float(i))
        t.record_success(f"10.200.{i // 256 % 256}.{i % 256}", f"ok{i}", float(i))
    assert len(t) <= 200  # at most max_entries client keys and max_entries user names


def test_eviction_drops_the_oldest_first() -> None:
    t = FailureThrottle(max_failures=2, lockout=1000, max_entries=3, max_user_lockout=0)
    fail(t, A, None, 0, 2)  # A locked until 1000
    for i, client in enumerate(("10.0.0.1", "10.0.0.2")):
        t.record_failure(client, None, 10 + i)
    assert t.check(A, None, 20) is not None  # three entries: nothing evicted yet
    t.record_failure("10.0.0.3", None, 30)
    assert t.check(A, None, 30) is None  # the entry with the oldest activity went first
    assert len(t) == 3


def test_purge() -> None:
    t = FailureThrottle(max_failures=2, window=60, lockout=100, trust_period=1000)
    fail(t, A, "alice", 0, 2)
    t.record_failure(B, "bob", 0)
    t.record_success(C, "carol", 0)
    assert t.purge(50) == 0  # a lockout and a window still running, a known address remembered
    assert t.purge(101) == 4  # A, alice, B and bob are idle; carol is still known
    assert t.check(C, "carol", 101) is None
    assert t.purge(2000) == 1
    assert len(t) == 0


@pytest.mark.parametrize("kwargs", [{"max_failures": 0}, {"window": 0}, {"lockout": -1},
                                    {"max_user_lockout": -1}, {"max_entries": 0}])
def test_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FailureThrottle(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["f", "s", "c"]), st.sampled_from([A, B, "2001:db8::1", "2001:db8::2"]),
                          st.sampled_from(["alice", "bob", None]), st.floats(0, 5)), max_size=60))
def test_check_never_exceeds_the_configured_lockouts(events: list[tuple[str, str, str | None, float]]) -> None:
    t = FailureThrottle(max_failures=3, window=10, lockout=50, max_user_lockout=20, max_entries=3)
    now = 0.0
    for kind, client, user, step in events:
        now += step
        if kind == "f":
            t.record_failure(client, user, now)
        elif kind == "s" and user is not None:
            t.record_success(client, user, now)
        wait = t.check(client, user, now)
        assert wait is None or 0 < wait <= 50 + 1e-9
        if wait is not None and t.check(client, None, now) is None:
            assert wait <= 20 + 1e-9  # a wait that comes from the user name alone is capped
    assert len(t) <= 6
