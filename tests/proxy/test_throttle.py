"""authproxy.engine.throttle: windows, lockouts, Retry-After, known addresses, the user-lockout cap, bounds, /64s."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from authproxy.engine.throttle import FailureThrottle, client_key, retry_after

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


def test_a_full_table_never_gives_up_a_lockout() -> None:
    t = FailureThrottle(max_failures=2, lockout=1000, max_entries=3, max_user_lockout=0)
    fail(t, A, None, 0, 2)  # A locked until 1000
    for i, client in enumerate(("10.0.0.1", "10.0.0.2")):
        t.record_failure(client, None, 10 + i)
    t.record_failure("10.0.0.3", None, 30)  # the table is full: the least recently failing one-failure entry goes
    assert t.check(A, None, 30) == pytest.approx(970)
    assert len(t) == 3
    t.record_failure("10.0.0.3", None, 31)  # 10.0.0.3 was tracked: this locks it
    assert t.check("10.0.0.3", None, 31) is not None
    for i in range(100):  # a flood of new addresses: two lockouts and one slot to churn, never a lockout lost
        t.record_failure(f"10.1.0.{i}", None, 40 + i)
    assert t.check(A, None, 140) == pytest.approx(860)
    assert t.check("10.0.0.3", None, 140) is not None
    assert len(t) == 3


def test_a_full_table_drops_the_fewest_failures_first() -> None:
    t = FailureThrottle(max_failures=5, window=60, lockout=300, max_entries=3, max_user_lockout=0)
    fail(t, A, None, 0, 4)  # one short of a lockout
    fail(t, B, None, 1, 2)
    for i in range(50):  # one-failure junk from many addresses churns among itself
        t.record_failure(f"10.2.0.{i}", None, 2)
    t.record_failure(A, None, 3)  # A's count was kept: its fifth failure locks it
    assert t.check(A, None, 3) == pytest.approx(300)
    t.record_failure(B, None, 3)
    assert t.check(B, None, 3) is None  # three failures, not locked, but counted
    fail(t, B, None, 4, 2)
    assert t.check(B, None, 5) is not None


def test_every_entry_locked_means_a_newcomer_is_not_tracked() -> None:
    t = FailureThrottle(max_failures=1, lockout=100, max_entries=2, max_user_lockout=100)
    t.record_failure(A, "u1", 0)
    t.record_failure(B, "u2", 0)
    t.record_failure(C, "u3", 1)  # no room: C is not tracked (not counted), the lockouts stay
    assert t.check(C, None, 1) is None
    assert t.check(A, None, 1) is not None and t.check(B, None, 1) is not None
    assert t.check(C, "u1", 1) is not None and t.check(C, "u3", 1) is None
    assert len(t) == 4


def test_junk_names_do_not_push_out_a_users_known_addresses_or_lockout() -> None:
    t = FailureThrottle(max_failures=3, window=60, lockout=300, max_user_lockout=300, max_entries=50)
    t.record_success(B, "alice", 0)  # alice's familiar address
    fail(t, "10.3.0.1", "bob", 1, 1)
    for i in range(3):
        t.record_failure(f"10.3.1.{i}", "bob", 2)  # bob's name locked by failures elsewhere
    assert t.check(C, "bob", 2) == pytest.approx(300)
    for i in range(10_000):  # 10,000 junk names from 1,000 addresses
        t.record_failure(f"10.4.{i // 2560}.{i // 10 % 256}", f"junk{i}", 3 + i / 1000)
    for i in range(3):
        t.record_failure(f"10.5.0.{i}", "alice", 14)  # now alice's name is attacked too
    assert t.check(C, "alice", 14) == pytest.approx(300)
    assert t.check(B, "alice", 14) is None  # her familiar address stays open
    assert t.check(C, "bob", 14) == pytest.approx(288)  # bob's lockout was not pushed out
    assert len(t) <= 2 * 50


def test_a_prefix_past_its_share_is_counted_as_one_client() -> None:
    t = FailureThrottle(max_failures=3, window=60, lockout=300, max_entries=1000, max_per_prefix=4,
                        max_user_lockout=0)
    for i in range(4):
        t.record_failure(f"2001:db8:7:{i:x}::1", f"u{i}", 0)  # four /64s of one /48: entries of their own
    for i in range(4, 7):  # more /64s of the same /48 share one entry: three failures lock them all...
        assert t.check(f"2001:db8:7:{i:x}::1", None, 1) is None
        t.record_failure(f"2001:db8:7:{i:x}::1", f"u{i}", 1)
    assert t.check("2001:db8:7:ffff::1", None, 1) == pytest.approx(300)
    assert t.check("2001:db8:7:0::1", None, 1) is None  # ...but not those with entries of their own
    assert t.check("2001:db8:8::1", None, 1) is None  # nor the next /48
    assert len(t._clients) == 5
    # IPv4: a /24 has 256 addresses, as many as the default share: never grouped.
    t = FailureThrottle(max_failures=2, max_entries=1000, max_user_lockout=0)
    for i in range(256):
        t.record_failure(f"192.0.2.{i}", None, 0)
    assert all(t.check(f"192.0.2.{i}", None, 0) is None for i in range(256))


def test_purge_drops_exactly_what_is_idle() -> None:
    """Purge walks the tables in the order entries go idle (no scan): it drops each entry once it is idle."""
    t = FailureThrottle(max_failures=3, window=60, lockout=300, max_entries=100_000)
    for i in range(50_000):
        t.record_failure(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", f"junk{i}", i / 1000)
    fail(t, "10.9.9.9", "x", 0, 3)  # one lockout, until 300
    assert t.purge(50.0) == 0
    assert t.purge(70.0) == 2 * 10_001  # failures at 0..10 s: their window ended; clients and names alike
    assert t.purge(200.0) == 2 * 39_999
    assert len(t) == 2  # the lockouts of 10.9.9.9 and of x
    assert t.purge(300.0) == 2
    assert len(t) == 0


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


@settings(max_examples=150, deadline=None)
@example(events=[("f", 0, "alice", 0.0), ("f", 0, "carol", 0.0), ("s", 2, "carol", 0.0), ("f", 1, "carol", 0.0),
                 ("s", 1, "alice", 0.0), ("f", 1, "alice", 0.0), ("s", 2, "bob", 0.0)])
@given(st.lists(st.tuples(st.sampled_from(["f", "f", "f", "s", "junk"]), st.integers(0, 11),
                          st.sampled_from(["alice", "bob", "carol"]), st.floats(0, 3)), max_size=120))
def test_floods_never_lift_a_lockout_nor_lock_a_familiar_address(
        events: list[tuple[str, int, str, float]]) -> None:
    """Whatever the mix of failures, junk names and successes in tiny tables: a lockout seen holds until it
    ends, a user's familiar address is never locked by the name's lockout, and memory stays bounded.

    The user table has room for the three real names twice over (a failure entry and a signed-in entry each):
    the promise is that failures, junk names included, never push out a known address. Other users signing in
    can, once every other entry is locked or signed in (the documented bound; with max_entries=4 a third name
    signing in while two are locked drops the least recent one's known addresses): that case has its own test,
    test_signed_in_names_and_failures_share_the_user_bound_but_failures_never_take_a_signed_in_names_room."""
    t = FailureThrottle(max_failures=2, window=10, lockout=50, max_user_lockout=30, max_entries=6,
                        max_per_prefix=2)
    addresses = [f"10.0.{i // 4}.{i % 4}" for i in range(12)]
    locked: dict[str, float] = {}  # address -> when its lockout seen by check ends
    familiar: set[tuple[str, str]] = set()
    now = 0.0
    for n, (kind, index, user, step) in enumerate(events):
        now += step
        client = addresses[index]
        if kind == "f":
            t.record_failure(client, user, now)
        elif kind == "junk":
            t.record_failure(client, f"junk{n}", now)
        elif t.check(client, user, now) is None:
            t.record_success(client, user, now)
            familiar.add((client, user))
        wait = t.check(client, None, now)
        if wait is not None:
            locked[client] = max(locked.get(client, 0.0), now + wait)
        t.purge(now)
        for address, until in locked.items():
            if until - now > 1e-6:
                assert t.check(address, None, now) is not None, (address, until, now)
        for address, name in familiar:
            assert t.check(address, name, now) == t.check(address, None, now)
        assert len(t) <= 12


def test_signed_in_names_and_failures_share_the_user_bound_but_failures_never_take_a_signed_in_names_room() -> None:
    t = FailureThrottle(max_failures=3, window=60, lockout=300, max_user_lockout=300, max_entries=4)
    for i in range(4):
        t.record_failure(f"10.6.0.{i}", f"junk{i}", 0)
    t.record_success(B, "alice", 1)  # takes the room of a junk entry
    t.record_success(C, "carol", 1)
    assert len(t._users) + len(t._trusted) == 4
    for i in range(100):  # more junk churns among the two failure entries left
        t.record_failure(f"10.7.0.{i}", f"more-junk{i}", 2)
    assert len(t._users) + len(t._trusted) == 4
    for i in range(3):
        t.record_failure(f"10.8.0.{i}", "alice", 3)  # alice's name attacked: it is tracked, and locked
    assert t.check("10.9.0.1", "alice", 3) == pytest.approx(300)
    assert t.check(B, "alice", 3) is None and t.check(C, "carol", 3) is None
    # Every name signed in: a new failure name is not tracked, and nobody's known address was given up.
    t = FailureThrottle(max_failures=1, max_entries=2, max_user_lockout=300)
    t.record_success(B, "alice", 0)
    t.record_success(C, "carol", 0)
    t.record_failure(A, "alice", 1)  # no room for alice's failures: not counted
    assert t.check("10.9.0.1", "alice", 1) is None
    assert len(t._trusted) == 2


def test_a_typo_at_a_known_address_neither_ends_nor_extends_the_names_lockout() -> None:
    t = FailureThrottle(max_failures=2, window=60, lockout=300, max_user_lockout=100)
    t.record_success(B, "alice", 0)
    fail(t, A, "alice", 1, 2)  # the name is locked until 101
    assert t.check(B, "alice", 2) is None  # her known address is let in...
    t.record_failure(B, "alice", 2)  # ...and mistypes
    t.record_failure(B, "alice", 3)
    assert t.check(C, "alice", 3) == pytest.approx(98)  # still locked elsewhere, not extended
    assert t.check(C, "alice", 101) is None
