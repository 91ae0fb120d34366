"""SharedNonceCounterStore: the memory store's rules, and replay refused across forked processes."""

from __future__ import annotations

import multiprocessing
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from authproxy.state.base import NonceCounterStore, NonceUse
from authproxy.state.memory import MemoryNonceCounterStore
from authproxy.state.shared import SharedNonceCounterStore

NOW = 1000.0
EXP = 2000.0


def test_in_order_out_of_order_and_replay() -> None:
    store: NonceCounterStore = SharedNonceCounterStore(slots=64, window=64)
    order = list(range(1, 65))
    random.Random(3).shuffle(order)
    for nc in order:
        assert store.use("n", nc, EXP, NOW)
    for nc in order:
        assert store.use("n", nc, EXP, NOW) is NonceUse.REPLAY
    assert store.use("other", 5, EXP, NOW)


def test_window_edge_and_expiry() -> None:
    store = SharedNonceCounterStore(slots=64, window=64)
    assert store.use("n", 100, EXP, NOW)
    assert store.use("n", 37, EXP, NOW)  # 100 - 63: the last count inside the window
    assert store.use("n", 36, EXP, NOW) is NonceUse.UNKNOWN  # below the window: cannot be vouched for
    assert store.use("n", 0, EXP, NOW) is NonceUse.REPLAY
    assert store.use("x", 1, NOW, NOW) is NonceUse.UNKNOWN  # already expired
    assert store.use("n", 1, EXP + 10, EXP + 1)  # the old entry expired: its slot is free again


def test_full_table_refuses_rather_than_forgets() -> None:
    store = SharedNonceCounterStore(slots=16, window=8)
    for i in range(16):
        assert store.use(f"n{i}", 1, EXP + i, NOW)
    # The table is full: a new nonce evicts the soonest-expiring one, whose counts are forgotten, so a nonce
    # expiring no later than that one is refused rather than trusted.
    assert store.use("late", 1, EXP + 100, NOW)
    assert store.use("early", 1, EXP, NOW) is NonceUse.UNKNOWN  # stale, never a replay


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(1, 3000)), max_size=120))
def test_agrees_with_the_memory_store(ops: list[tuple[str, int]]) -> None:
    shared = SharedNonceCounterStore(slots=64, window=64)
    memory = MemoryNonceCounterStore(window=64)
    for nonce, nc in ops:
        assert shared.use(nonce, nc, EXP, NOW) == memory.use(nonce, nc, EXP, NOW)


def _worker(store: SharedNonceCounterStore, ncs: list[int], results: multiprocessing.Queue[list[bool]]) -> None:
    results.put([store.use("shared-nonce", nc, EXP, NOW) is NonceUse.FRESH for nc in ncs])


def test_replay_refused_across_processes() -> None:
    store = SharedNonceCounterStore()
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[list[bool]] = context.Queue()
    ncs = list(range(1, 201))
    workers = [context.Process(target=_worker, args=(store, ncs, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=20) for _ in workers]
    for worker in workers:
        worker.join(10)
    # Four processes each try every count: each count is accepted exactly once overall.
    assert [sum(column) for column in zip(*outcomes, strict=True)] == [1] * len(ncs)
    assert store.use("shared-nonce", 7, EXP, NOW) is NonceUse.REPLAY


def _die_holding_the_lock(store: SharedNonceCounterStore) -> None:
    import os
    import signal

    with store._locked():
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_killed_holding_the_lock_does_not_stop_the_others() -> None:
    store = SharedNonceCounterStore(slots=64, window=64)
    context = multiprocessing.get_context("fork")
    victim = context.Process(target=_die_holding_the_lock, args=(store,))
    victim.start()
    victim.join(10)
    assert victim.exitcode == -9
    result: multiprocessing.Queue[list[bool]] = context.Queue()
    survivor = context.Process(target=_worker, args=(store, [1, 2], result))
    survivor.start()
    assert result.get(timeout=5) == [True, True]  # a semaphore would have stayed taken: this would hang
    survivor.join(5)


def test_a_flood_by_one_owner_recycles_their_own_slots_and_never_answers_replay() -> None:
    store = SharedNonceCounterStore(slots=1024, window=64)
    victims = [f"v{i}" for i in range(50)]
    for name in victims:
        assert store.use("old-nonce", 1, EXP, NOW, name) is NonceUse.FRESH
    for i in range(110_000 // 10):  # alice burns fresh nonces, ten times the table
        assert store.use(f"a{i}", 1, EXP + 1 + i / 1000, NOW, "alice") is NonceUse.FRESH
    answers = [store.use("old-nonce", 2, EXP, NOW, name) for name in victims]
    assert NonceUse.REPLAY not in answers  # forgotten means stale (UNKNOWN), never a replay
    # Most victims were never evicted: once alice holds most of a probe, she recycles her own slots.
    assert answers.count(NonceUse.FRESH) >= len(victims) * 0.8
    kept = [name for name, answer in zip(victims, answers, strict=True) if answer is NonceUse.FRESH]
    assert [store.use("old-nonce", 2, EXP, NOW, name) for name in kept] == [NonceUse.REPLAY] * len(kept)


def test_owners_are_separate_counts() -> None:
    store = SharedNonceCounterStore(slots=64, window=64)
    assert store.use("n", 1, EXP, NOW, "alice") is NonceUse.FRESH
    assert store.use("n", 1, EXP, NOW, "bob") is NonceUse.FRESH  # another user's request on the same nonce
    assert store.use("n", 1, EXP, NOW, "alice") is NonceUse.REPLAY


def test_one_owners_evictions_leave_anothers_unseen_nonces_alone() -> None:
    from authproxy.state.shared import _OWNER_BUCKETS, _hash

    def bucket(owner: str) -> int:
        return int.from_bytes(_hash(owner)[:8], "little") % _OWNER_BUCKETS

    assert bucket("alice") != bucket("bob")  # else this test would show a (harmless) bucket collision
    store = SharedNonceCounterStore(slots=16, window=8)
    for i in range(200):  # alice overfills the table: her own slots are recycled, her watermark rises
        assert store.use(f"a{i}", 1, EXP + 100 + i, NOW, "alice") is NonceUse.FRESH
    assert store.use("a-unseen", 1, EXP + 150, NOW, "alice") is NonceUse.UNKNOWN  # stale: maybe forgotten
    assert store.use("b-old", 1, EXP, NOW, "bob") is NonceUse.FRESH  # bob's first use of an older nonce
