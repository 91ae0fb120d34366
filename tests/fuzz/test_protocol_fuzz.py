"""The proxy's asyncio.Protocol fed hostile bytes in-process (fuzz/harness.py): it must handle everything itself.

Invariants (see fuzz/harness.py): no exception escapes data_received / eof_received / connection_lost, none
reaches the event loop, and what the client receives is a well-formed sequence of HTTP/1.1 responses.
The same harness runs under atheris (fuzz/fuzz_request_parser.py) for longer campaigns.
"""

from __future__ import annotations

from collections.abc import Iterator

import harness
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from authproxy.engine.connection import Connection

from request_strategies import auth_values, request_heads

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# 101 has a test of its own below (a known bug while it is open); random runs leave it out so as not to stop on it.
origin_modes = st.sampled_from([m for m in harness.ALLOWED_MODES if m != harness.MODE_SWITCHING_PROTOCOLS])
chunks = st.sampled_from([0, 0, 1, 2, 3, 7, 16, 64])
ends = st.sampled_from(["eof", "lost", "reset"])


@pytest.fixture(scope="module")
def proto() -> Iterator[harness.ProtocolHarness]:
    h = harness.ProtocolHarness()
    yield h
    h.close()


@FUZZ
@given(raw=request_heads("origin.test"), origin_mode=origin_modes, chunk=chunks, end=ends)
def test_request_heads_never_escape_the_protocol(proto: harness.ProtocolHarness, raw: bytes, origin_mode: int,
                                                 chunk: int, end: str) -> None:
    proto.run(raw, origin_mode=origin_mode, chunk=chunk, end=end)


@FUZZ
@given(raw=st.binary(max_size=400), origin_mode=origin_modes, chunk=chunks)
@example(raw=b"\r\n" * 50, origin_mode=0, chunk=1)
@example(raw=b"CONNECT a:1 HTTP/1.1\r\n\r\n" * 3, origin_mode=0, chunk=0)
def test_random_bytes_never_escape_the_protocol(proto: harness.ProtocolHarness, raw: bytes, origin_mode: int,
                                                chunk: int) -> None:
    proto.run(raw, origin_mode=origin_mode, chunk=chunk)


@FUZZ
@given(data=st.binary(max_size=300))
def test_atheris_input_layout(proto: harness.ProtocolHarness, data: bytes) -> None:
    # The exact entry point the atheris target uses (mode and read size from the first two bytes).
    proto.run_fuzz_input(data)


@pytest.mark.parametrize("origin_mode", harness.ALLOWED_MODES)
@pytest.mark.parametrize("chunk", [0, 1, 5])
def test_seed_requests_against_every_origin_behaviour(proto: harness.ProtocolHarness, origin_mode: int,
                                                      chunk: int) -> None:
    for seed in harness.seed_requests():
        for end in ("eof", "lost", "reset"):
            proto.run(seed, origin_mode=origin_mode, chunk=chunk, end=end)


def test_seed_requests_authenticate() -> None:
    # The seeds must get past authentication, or the fuzzers never reach routing and relaying. A fresh server:
    # the Digest seeds use nc=1, which a server that has seen them refuses as a replay.
    fresh = harness.ProtocolHarness()
    try:
        statuses = [b"".join(fresh.run(seed, origin_mode=0).writes)[9:12] for seed in harness.seed_requests()]
    finally:
        fresh.close()
    assert statuses.count(b"200") >= 8, statuses
    assert b"407" in statuses


def test_origin_answering_101_leaves_no_traceback(proto: harness.ProtocolHarness) -> None:
    # Found by this harness: httptools raises HttpParserUpgrade (not an HttpParserError) out of
    # UpstreamConnection.data_received when an origin answers 101; the client gets its 502, but the exception
    # escapes the protocol (uvloop logs "Fatal error on transport ... HttpParserUpgrade").
    proto.run(harness.seed_requests()[0], origin_mode=harness.MODE_SWITCHING_PROTOCOLS)


@FUZZ
@given(raw=auth_values | st.binary(max_size=200))
def test_credentials_parsers_accept_or_raise_auth_header_error(raw: bytes) -> None:
    harness.check_credentials(raw)


def test_every_seed_credential_passes_the_invariant() -> None:
    for raw in harness.seed_credentials():
        harness.check_credentials(raw)


# == the harness can fail ======================================================================================
def test_harness_reports_an_exception_escaping_data_received(proto: harness.ProtocolHarness,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Connection) -> None:
        raise ValueError("boom")

    monkeypatch.setattr(Connection, "_run", broken)
    with pytest.raises(harness.InvariantError, match="data_received raised ValueError"):
        proto.run(harness.seed_requests()[0])


def test_harness_reports_a_bad_write(proto: harness.ProtocolHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    def garbage(self: Connection) -> None:
        self.sink.send(b"HTTP/1.0 200 OK\r\n\r\n")

    monkeypatch.setattr(Connection, "_run", garbage)
    with pytest.raises(harness.InvariantError, match="no status line"):
        proto.run(harness.seed_requests()[0])


@pytest.mark.parametrize(("stream", "ok"), [
    (b"", True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n", True),  # cut mid-body
    (b"HTTP/1.1 407 X\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
    (b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03", True),
    (b"ok", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokk\r\n0\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nX: 1", False),
])
def test_response_stream_checker(stream: bytes, ok: bool) -> None:
    assert (harness.check_response_stream(stream) is None) is ok
