"""The fuzz invariant on the sans-IO engine, in memory: any bytes from a client, cut into reads anyhow, with an
origin behaving any of the harness's ways, give a well-formed stream of responses (or a close), and never an
exception. No event loop and no sockets, so thousands of inputs run in seconds (the driver-level harness,
test_protocol_fuzz.py, keeps checking the asyncio side).
"""

from __future__ import annotations

import harness
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from authproxy.engine.commands import ConnectFailure
from authproxy.engine.decision import Allowed
from authproxy.engine.origin import Origin

from engine_support import ORIGIN_ADDRESS, Playbook
from request_strategies import request_heads

FAST = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
modes = st.integers(min_value=0, max_value=harness.ORIGIN_MODES - 1)
chunks = st.sampled_from([0, 0, 1, 2, 3, 7, 16, 64, 1000])
ends = st.sampled_from(["eof", "lost"])


def run(raw: bytes, mode: int, chunk: int, end: str = "eof") -> bytes:
    """Feed ``raw`` in reads of ``chunk`` bytes; complete every command as an origin in ``mode`` would; let time
    pass beyond every timeout; end the connection. Returns what the client was sent."""
    p = Playbook(max_header_size=8192, auth_int_max_body=4096, read_timeout=5, header_timeout=5, idle_timeout=5)
    conn, sink = p.conn, p.sink
    sent: list[bytes] = []
    origins: list[Origin] = []

    def settle() -> None:
        for _ in range(10_000):
            commands = sink.take()
            sent.extend(c[1] for c in commands if c[0] == "send")
            if ("wake",) in commands and not conn.closed:
                conn.woken()
                continue
            for origin in origins:
                writes = [c[1] for c in p.origin_take() if c[0] == "origin.write"]
                if any(w.split(b"\r\n", 1)[0].endswith(b" HTTP/1.1") for w in writes) and not origin.closed:
                    answer(origin)
            if not sink.asked:
                return
            kind, ex = sink.asked.pop(0)
            if kind == "open_origin":
                if mode == harness.MODE_REFUSED:
                    ex.connect_failed(ConnectFailure.REFUSED, "refused")
                else:
                    origin = p.origin()
                    origins[:] = [origin]
                    ex.upstream_connected(origin)
            elif kind == "open_tunnel":
                ex.tunnel_connected(p.origin("tunnel").io)
            elif kind == "check_password":
                ex.password_checked(sink.pending.pop(0), False)
            elif kind == "decide":
                ex.decided(Allowed(ORIGIN_ADDRESS, 2))
        raise AssertionError("the engine never settles")

    def answer(origin: Origin) -> None:
        if mode == harness.MODE_RESET:
            origin.connection_lost()
            return
        reply, close_after = harness.ORIGIN_ANSWERS[0 if mode == harness.MODE_REFUSED else mode]
        if reply is not None:
            origin.data_received(reply)
            if close_after and not origin.closed:
                origin.connection_lost()

    size = chunk or max(1, len(raw))
    for at in range(0, len(raw), size):
        if conn.closed:
            break
        if not conn.reading:
            settle()
            if not conn.reading:
                break  # a paused transport delivers nothing: the client is stuck, as a real one would be
        conn.data_received(raw[at:at + size])
        settle()
    if not conn.closed:
        p.clock.now += 60
        conn.timer(p.clock.now)
        settle()
    if not conn.closed and end == "eof" and not conn.eof_received():
        conn.close()
    settle()
    conn.connection_lost()
    settle()
    return b"".join(sent)


def check(raw: bytes, mode: int, chunk: int, end: str = "eof") -> None:
    out = run(raw, mode, chunk, end)
    problem = harness.check_response_stream(out)
    assert problem is None, f"{problem}; sent {out[:600]!r} for {raw[:300]!r}"


@FAST
@given(raw=request_heads("origin.test"), mode=modes, chunk=chunks, end=ends)
def test_request_heads_give_well_formed_responses(raw: bytes, mode: int, chunk: int, end: str) -> None:
    check(raw, mode, chunk, end)


@FAST
@given(raw=st.binary(max_size=600), mode=modes, chunk=chunks)
@example(raw=b"\r\n" * 50, mode=0, chunk=1)
@example(raw=b"CONNECT a:1 HTTP/1.1\r\n\r\n" * 3, mode=0, chunk=0)
def test_random_bytes_give_well_formed_responses(raw: bytes, mode: int, chunk: int) -> None:
    check(raw, mode, chunk)


def test_seed_requests_against_every_origin_behaviour() -> None:
    for mode in range(harness.ORIGIN_MODES):
        for chunk in (0, 1, 5):
            for seed in harness.seed_requests():
                check(seed, mode, chunk)
                check(seed * 3, mode, chunk, "lost")


def test_seeds_reach_the_origin() -> None:
    # The seeds must get past authentication, or the fuzzing never reaches routing and relaying.
    statuses = [run(seed, 0, 0)[9:12] for seed in harness.seed_requests()]
    assert statuses.count(b"200") >= 6, statuses
