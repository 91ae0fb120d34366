"""MemoryNonceCounterStore: in order, out of order, replay, window edge, expiry purge, memory bound."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authproxy.state import MemoryNonceCounterStore, NonceCounterStore, NonceUse

FRESH, REPLAY, UNKNOWN = NonceUse.FRESH, NonceUse.REPLAY, NonceUse.UNKNOWN

NOW = 1000.0
EXP = 2000.0


def test_satisfies_protocol() -> None:
    store: NonceCounterStore = MemoryNonceCounterStore()
    assert store.use("n", 1, EXP, NOW) is FRESH


def test_in_order_and_replay() -> None:
    s = MemoryNonceCounterStore()
    for nc in range(1, 50):
        assert s.use("n", nc, EXP, NOW) is FRESH
    for nc in range(1, 50):
        assert s.use("n", nc, EXP, NOW) is REPLAY


def test_out_of_order_each_once() -> None:
    s = MemoryNonceCounterStore(window=64)
    order = list(range(1, 65))
    random.Random(7).shuffle(order)
    for nc in order:
        assert s.use("n", nc, EXP, NOW) is FRESH
    for nc in order:
        assert s.use("n", nc, EXP, NOW) is REPLAY


def test_first_seen_count_need_not_be_one() -> None:
    s = MemoryNonceCounterStore(window=8)
    assert s.use("n", 5, EXP, NOW) is FRESH
    assert s.use("n", 1, EXP, NOW) is FRESH
    assert s.use("n", 3, EXP, NOW) is FRESH
    assert s.use("n", 3, EXP, NOW) is REPLAY


def test_window_edge() -> None:
    s = MemoryNonceCounterStore(window=8)
    assert s.use("n", 100, EXP, NOW) is FRESH
    assert s.use("n", 93, EXP, NOW) is FRESH  # 100 - 7: the oldest count still in the window
    assert s.use("n", 93, EXP, NOW) is REPLAY
    assert s.use("n", 92, EXP, NOW) is UNKNOWN  # 100 - 8: below the window: cannot be vouched for, stale
    assert s.use("n", 101, EXP, NOW) is FRESH  # slides the window: 93 falls out
    assert s.use("n", 93, EXP, NOW) is UNKNOWN  # now below the window
    assert s.use("n", 94, EXP, NOW) is FRESH
    assert s.use("n", 1000, EXP, NOW) is FRESH  # a jump far beyond the window clears it
    assert s.use("n", 101, EXP, NOW) is UNKNOWN
    assert s.use("n", 999, EXP, NOW) is FRESH


def test_nonces_are_independent() -> None:
    s = MemoryNonceCounterStore()
    assert s.use("a", 1, EXP, NOW) is FRESH
    assert s.use("b", 1, EXP, NOW) is FRESH
    assert s.use("a", 1, EXP, NOW) is REPLAY


def test_count_zero_and_expired_refused() -> None:
    s = MemoryNonceCounterStore()
    assert s.use("n", 0, EXP, NOW) is REPLAY
    assert s.use("n", 1, NOW, NOW) is UNKNOWN


def test_expiry_purge() -> None:
    s = MemoryNonceCounterStore()
    for i in range(100):
        assert s.use(f"n{i}", 1, NOW + 10 + i, NOW) is FRESH
    assert len(s) == 100
    assert s.use("late", 1, NOW + 1000, NOW + 50) is FRESH  # the call that purges
    assert len(s) == 100 - 41 + 1  # n0..n40 expired at or before NOW + 50
    assert s.use("other", 1, NOW + 1000, NOW + 500) is FRESH
    assert len(s) == 2


def test_bound_evicts_soonest_expiring_and_refuses_what_it_forgot() -> None:
    s = MemoryNonceCounterStore(max_nonces=3)
    assert s.use("a", 1, NOW + 10, NOW) is FRESH
    assert s.use("b", 1, NOW + 20, NOW) is FRESH
    assert s.use("c", 1, NOW + 30, NOW) is FRESH
    assert s.use("d", 1, NOW + 40, NOW) is FRESH  # evicts "a"
    assert len(s) == 3
    # "a" is forgotten: accepting would allow its replays, calling it a replay would count a failure against a
    # client that did nothing wrong: unknown, so the client gets stale=true and a new nonce.
    assert s.use("a", 2, NOW + 10, NOW) is UNKNOWN
    assert s.use("a", 1, NOW + 10, NOW) is UNKNOWN
    assert s.use("b", 1, NOW + 20, NOW) is REPLAY  # still remembered: a replay
    assert s.use("b", 2, NOW + 20, NOW) is FRESH


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        MemoryNonceCounterStore(window=0)
    with pytest.raises(ValueError):
        MemoryNonceCounterStore(max_nonces=0)


@given(st.lists(st.integers(1, 300), max_size=200), st.integers(1, 64))
def test_matches_a_reference_model(ncs: list[int], window: int) -> None:
    s = MemoryNonceCounterStore(window=window)
    seen: set[int] = set()
    highest = 0
    for nc in ncs:
        below = nc <= highest - window
        expected = UNKNOWN if below else REPLAY if nc in seen else FRESH
        assert s.use("n", nc, EXP, NOW) is expected
        if expected is FRESH:
            seen.add(nc)
            highest = max(highest, nc)


# == floods: one owner cannot push out another's counts, and what is forgotten is UNKNOWN, never REPLAY ===========


def test_an_owner_burning_nonces_only_evicts_their_own() -> None:
    s = MemoryNonceCounterStore(max_nonces=100, max_per_owner=3)
    assert s.use("victim-nonce", 1, EXP, NOW, "bob") is FRESH
    for i in range(1000):
        assert s.use(f"a{i}", 1, EXP + i, NOW, "alice") is FRESH
    assert len(s) == 4  # alice's three most recent, and bob's one
    assert s.use("victim-nonce", 2, EXP, NOW, "bob") is FRESH
    assert s.use("victim-nonce", 1, EXP, NOW, "bob") is REPLAY  # still a real replay
    assert s.use("a0", 2, EXP, NOW, "alice") is UNKNOWN  # alice's own evicted nonce: stale, not replay
    assert s.use("a999", 1, EXP + 999, NOW, "alice") is REPLAY


def test_a_full_table_evicts_from_the_largest_owner() -> None:
    s = MemoryNonceCounterStore(max_nonces=5, max_per_owner=100)
    assert s.use("b0", 1, EXP, NOW, "bob") is FRESH
    assert s.use("c0", 1, EXP, NOW, "carol") is FRESH
    for i in range(50):
        assert s.use(f"a{i}", 1, EXP + i, NOW, "alice") is FRESH
    assert len(s) == 5
    assert s.use("b0", 1, EXP, NOW, "bob") is REPLAY
    assert s.use("c0", 1, EXP, NOW, "carol") is REPLAY
    # Carol now takes more: the largest owner (alice) still pays.
    assert s.use("c1", 1, EXP, NOW, "carol") is FRESH
    assert s.use("b0", 2, EXP, NOW, "bob") is FRESH
    assert len(s) == 5


def test_an_owners_evictions_do_not_make_anothers_nonces_unknown() -> None:
    s = MemoryNonceCounterStore(max_nonces=10, max_per_owner=2)
    for i in range(20):
        s.use(f"a{i}", 1, EXP + 100 + i, NOW, "alice")
    # Bob's first use of a nonce issued long ago (expiring before alice's evicted ones) is simply fresh...
    assert s.use("b-old", 1, EXP, NOW, "bob") is FRESH
    # ...while alice's own unseen older nonce is UNKNOWN: it may be one she burned (stale, a new challenge).
    assert s.use("a-unseen", 1, EXP + 50, NOW, "alice") is UNKNOWN
    assert s.use("a-new", 1, EXP + 500, NOW, "alice") is FRESH


def test_the_nonce_in_use_is_kept_over_an_idle_one() -> None:
    s = MemoryNonceCounterStore(max_per_owner=2)
    assert s.use("busy", 1, EXP, NOW, "u") is FRESH
    assert s.use("idle", 1, EXP + 1, NOW, "u") is FRESH
    assert s.use("busy", 2, EXP, NOW, "u") is FRESH  # used last: the idle one goes first
    assert s.use("new", 1, EXP + 2, NOW, "u") is FRESH
    assert s.use("busy", 3, EXP, NOW, "u") is FRESH
    assert s.use("busy", 3, EXP, NOW, "u") is REPLAY


def test_memory_stays_bounded_under_a_flood_of_fresh_nonces() -> None:
    s = MemoryNonceCounterStore(max_nonces=1000, max_per_owner=100)
    for i in range(20_000):
        assert s.use(f"a{i}", 1, EXP + i / 1000, NOW, "alice") is FRESH
    assert len(s) == 100
    assert len(s._expiry) <= 2 * len(s) + 64  # stale heap items are compacted away
    # Everything expires: the table empties, owners included.
    s.use("late", 1, EXP + 10_000, EXP + 5000, "bob")
    assert len(s) == 1 and set(s._owners) == {"bob"}


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 5), st.integers(1, 20)), max_size=300),
       st.integers(1, 4), st.integers(1, 8))
def test_never_accepts_twice_never_calls_an_unseen_count_a_replay(
        ops: list[tuple[str, int, int]], per_owner: int, total: int) -> None:
    s = MemoryNonceCounterStore(window=8, max_nonces=total, max_per_owner=per_owner)
    accepted: set[tuple[str, int, int]] = set()
    for owner, nonce, nc in ops:
        answer = s.use(f"n{nonce}", nc, EXP + nonce, NOW, owner)
        if answer is FRESH:
            assert (owner, nonce, nc) not in accepted  # a replay is never accepted, even after evictions
            accepted.add((owner, nonce, nc))
        elif answer is REPLAY:
            assert (owner, nonce, nc) in accepted  # only a count really seen is a replay
        assert len(s) <= total
        assert all(len(r.nonces) <= per_owner for r in s._owners.values())


def test_no_owner_means_only_the_table_wide_bound() -> None:
    s = MemoryNonceCounterStore(max_nonces=5000, max_per_owner=10)
    for i in range(2000):
        assert s.use(f"n{i}", 1, EXP + i, NOW) is FRESH
    assert s.use("n0", 1, EXP, NOW) is REPLAY  # nothing evicted: the per-owner quota is for named users
