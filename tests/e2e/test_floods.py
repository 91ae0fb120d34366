"""Floods against the sign-in throttle and the nonce-count table, over real sockets (issue 9 item 8).

Failures come from thousands of loopback addresses (Linux routes all of 127/8 to lo, so a client socket can
bind any of them), with junk user names, in a process of its own so that the latency probe in this process is
not slowed by the flood's Python. Timings are measured and printed, never asserted: what is asserted is
behaviour (a lockout holds, a familiar address stays open, nothing is called a replay) and memory (RSS).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import re
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from authproxy.auth.digest import compute_ha1

from helpers import (
    REALM,
    OriginServer,
    ProxyProcess,
    basic_authorization,
    challenges_of,
    digest_authorization,
    header_of,
    read_response,
    rss_bytes,
    start_proxy,
    status_of,
)

ALICE = basic_authorization("alice", "wonderland")
FAMILIAR = "127.0.0.1"  # where alice signs in
LOCKED = "127.0.0.3"  # an address locked out before the flood
NEW = "127.0.0.4"  # an address alice never used
BURN = 110_000  # fresh nonces one signed-in user burns: more than the whole count table (100,000)


def attacker(i: int) -> str:
    """The i-th flooding address: 127.1.0.1 upwards, far from the addresses above."""
    i += 1
    return f"127.1.{i // 256 % 256}.{i % 256}" if i < 65536 else f"127.{1 + i // 65536}.{i // 256 % 256}.{i % 256}"


def request(origin_port: int, authorization: str | None, path: str = "/f") -> bytes:
    lines = [f"GET http://127.0.0.1:{origin_port}{path} HTTP/1.1", "Host: x"]
    if authorization is not None:
        lines.append(f"Proxy-Authorization: {authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def exchange_from(source: str, port: int, data: bytes, count: int = 1) -> list[bytes]:
    """``count`` responses to ``data`` sent on one connection from the loopback address ``source``."""
    with socket.socket() as sock:
        sock.settimeout(30)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(data)
        return [read_response(sock) for _ in range(count)]


def _flood_one(port: int, origin_port: int, index: int, per_address: int, name: str | None) -> list[int]:
    """``per_address`` refused sign-ins from one address, pipelined on one connection: guesses of ``name``'s
    password, or junk user names (a new one each time) when ``name`` is None."""
    names = [name or f"junk-{index}-{n}" for n in range(per_address)]
    data = b"".join(request(origin_port, basic_authorization(user, "guess")) for user in names)
    return [status_of(r) for r in exchange_from(attacker(index), port, data, per_address)]


def _flood(port: int, origin_port: int, addresses: int, per_address: int, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """Junk from every address but the last few, which then guess alice's password: her name gets locked out
    by failures from elsewhere after the junk has gone through the tables (where it could have pushed out what
    the throttle knew of her)."""
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        statuses = Counter(s for batch in pool.map(lambda i: _flood_one(port, origin_port, i, per_address, None),
                                                   range(addresses - 3)) for s in batch)
    for i in range(addresses - 3, addresses):
        statuses.update(_flood_one(port, origin_port, i, per_address, "alice"))
    results.put((dict(statuses), time.monotonic() - started))


class LatencyProbe:
    """Asks the proxy for a 407 (answered by the loop itself, no origin, no throttle) every 20 ms."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.samples: list[float] = []
        self.errors: list[BaseException] = []  # the probe thread's failures, for the test to assert on
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LatencyProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
                while not self._stop.wait(0.02):
                    started = time.perf_counter()
                    sock.sendall(request(9, None))
                    status = status_of(read_response(sock))
                    self.samples.append(time.perf_counter() - started)
                    if status != 407:
                        raise AssertionError(f"probe answered {status}")
        except BaseException as exc:  # reported to the test, which asserts there is none
            self.errors.append(exc)

    def summary(self) -> str:
        ms = sorted(s * 1000 for s in self.samples)
        return (f"{len(ms)} probes, median {statistics.median(ms):.1f} ms, p99 {ms[int(len(ms) * 0.99)]:.1f} ms, "
                f"max {ms[-1]:.1f} ms")


@pytest.fixture
def small_tables_proxy(tmp_path: Path, users_file: Path) -> Iterator[ProxyProcess]:
    config = tmp_path / "floods.toml"
    config.write_text("throttle_max_entries = 2000\n")
    proxy = start_proxy(tmp_path, users_file, "--config", str(config), "--schemes", "basic")
    yield proxy
    proxy.stop()


def test_a_flood_of_junk_failures_bends_no_promise(small_tables_proxy: ProxyProcess, origin: OriginServer) -> None:
    proxy = small_tables_proxy
    port = proxy.port
    # Before: alice signs in from her familiar address, and an address under attack is locked out.
    assert status_of(exchange_from(FAMILIAR, port, request(origin.port, ALICE))[0]) == 200
    guesses = b"".join(request(origin.port, basic_authorization(f"u{n}", "guess")) for n in range(10))
    assert [status_of(r) for r in exchange_from(LOCKED, port, guesses, 10)] == [407] * 10
    assert status_of(exchange_from(LOCKED, port, request(origin.port, None))[0]) == 429
    rss_before = rss_bytes(proxy.proc.pid)

    # 30,000 refused sign-ins from 3,000 addresses: fifteen times the tables' 2,000 entries.
    results: multiprocessing.Queue = multiprocessing.get_context("fork").Queue()  # type: ignore[type-arg]
    flood = multiprocessing.get_context("fork").Process(target=_flood, args=(port, origin.port, 3000, 10, results))
    with LatencyProbe(port) as probe:
        flood.start()
        statuses, seconds = results.get(timeout=300)
        flood.join(10)
    rss_after = rss_bytes(proxy.proc.pid)
    print(f"\nflood: {sum(statuses.values())} requests in {seconds:.1f} s, {statuses}; "
          f"RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB; loop latency: {probe.summary()}")
    assert set(statuses) <= {407, 429}
    assert statuses[407] >= 29_000  # answered, counted (alice's guessers are locked out after ten)

    # (a) The lockout set before the flood holds.
    locked = exchange_from(LOCKED, port, request(origin.port, ALICE))[0]
    assert status_of(locked) == 429 and header_of(locked, "Retry-After") is not None
    # (b) The flood locked alice's name (from a new address she waits)...
    assert status_of(exchange_from(NEW, port, request(origin.port, ALICE))[0]) == 429
    # ...but her familiar address stays open.
    assert status_of(exchange_from(FAMILIAR, port, request(origin.port, ALICE))[0]) == 200
    # The flooding addresses themselves are locked out (each made ten failures).
    assert status_of(exchange_from(attacker(7), port, request(origin.port, ALICE))[0]) == 429
    # (c) Memory: bounded by the tables (2,000 entries each), not by the flood.
    assert rss_after - rss_before < 16 << 20
    # (d) The loop kept answering during the flood (latency printed above, not asserted).
    assert probe.errors == [] and len(probe.samples) > 0


# == nonces ===========================================================================================================


def _burn_nonces(port: int, count: int, batch: int = 100) -> Counter[int]:
    """alice takes ``count`` fresh nonces (pipelined 407s) and uses each once: a fresh count-table entry each.

    The requests name a loopback address, which this proxy refuses (403) once the credentials are accepted, so
    no origin is involved. The answers are computed here from a template made once with the auth core, only
    the nonce and the response changing (RFC 7616 section 3.4.1), so the client keeps up with the proxy."""
    statuses: Counter[int] = Counter()
    uri = "http://127.0.0.1:9/n"
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(request(9, None, "/n"))
        template_challenge = challenges_of(read_response(sock))[0]
        template = digest_authorization(template_challenge, "alice", "wonderland", "GET", uri)
        old_nonce = re.search(r'nonce="([^"]+)"', template_challenge).group(1)  # type: ignore[union-attr]
        old_response = re.search(r'response="([^"]+)"', template).group(1)  # type: ignore[union-attr]
        ha1 = compute_ha1("SHA-256", "alice", REALM, "wonderland")
        ha2 = hashlib.sha256(f"GET:{uri}".encode()).hexdigest()
        for start in range(0, count, batch):
            n = min(batch, count - start)
            sock.sendall(request(9, None, "/n") * n)
            nonces = [_NONCE.search(read_response(sock)).group(1).decode() for _ in range(n)]  # type: ignore[union-attr]
            answers = []
            for nonce in nonces:
                response = hashlib.sha256(f"{ha1}:{nonce}:00000001:0a4f113b:auth:{ha2}".encode()).hexdigest()
                answers.append(request(9, template.replace(old_nonce, nonce).replace(old_response, response), "/n"))
            sock.sendall(b"".join(answers))
            statuses.update(status_of(read_response(sock)) for _ in range(n))
    return statuses


_NONCE = re.compile(rb'nonce="([^"]+)"')  # only SHA-256 is offered: one challenge


def test_a_user_burning_nonces_cannot_make_anothers_request_a_replay(tmp_path: Path, users_file: Path) -> None:
    # Destinations on loopback are refused (403) after the credentials are accepted: 403 means signed in.
    proxy = start_proxy(tmp_path, users_file, "--schemes", "digest", "--digest-algorithms", "SHA-256",
                        allow_private=False)
    try:
        port = proxy.port
        uri = "http://127.0.0.1:9/b"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as bob:
            bob.sendall(request(9, None, "/b"))
            challenge = challenges_of(read_response(bob))[0]
            bob.sendall(request(9, digest_authorization(challenge, "bob", "pa:ss:word", "GET", uri, nc=1), "/b"))
            assert status_of(read_response(bob)) == 403

        started = time.monotonic()
        statuses = _burn_nonces(port, BURN)
        print(f"\nalice burned {BURN} fresh nonces in {time.monotonic() - started:.1f} s")
        assert statuses == Counter({403: BURN})  # every one accepted (then the loopback destination refused)

        # bob's next request on his old nonce: accepted, or at worst stale=true; never a replay.
        again = request(9, digest_authorization(challenge, "bob", "pa:ss:word", "GET", uri, nc=2), "/b")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as bob:
            bob.sendall(again)
            answer = read_response(bob)
            bob.sendall(again)  # and the same request again: that one is a replay
            replayed = read_response(bob)
        status = status_of(answer)
        assert status == 403 or (status == 407 and "stale=true" in challenges_of(answer)[0])
        assert status_of(replayed) == 407
        outcomes = re.findall(r" bob .* auth=(\S+)$", proxy.access_log(), re.MULTILINE)
        print(f"bob's outcomes: {outcomes}")
        assert len(outcomes) == 3 and outcomes[1] in ("ok", "stale-nonce") and outcomes[2] == "replay"
    finally:
        proxy.stop()
