"""Request bodies read before their request can be authenticated (qop=auth-int, RFC 7616 section 3.4.3).

The digest covers the body, so the proxy reads it whole before it can check the credentials, an unknown user's
too. Past 256 KiB such a body used to wait for reads the proxy had paused (it never completed); and each
connection of a client with no valid password could hold 1 MiB of it. Now one body is read whole up to
auth_int_max_body, and all of them are bounded together (engine.budget: 64 bodies' worth in all, 8 per client
address), past which the answer is 503. Real proxy processes, real sockets, RSS measured.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from authproxy.engine.budget import PER_CLIENT_BODIES, HeldBodies

from helpers import (
    OriginServer,
    ProxyProcess,
    challenges_of,
    digest_authorization,
    raw_exchange,
    read_response,
    rss_bytes,
    start_proxy,
    status_of,
)

MIB = 1 << 20


@pytest.fixture(scope="module")
def auth_int_proxy(session_tmp: Path, users_file: Path) -> Iterator[ProxyProcess]:
    config = session_tmp / "auth-int-bodies.toml"
    config.write_text('qop = ["auth", "auth-int"]\nthrottle_max_failures = 0\n')
    proxy = start_proxy(session_tmp, users_file, "--config", str(config))
    yield proxy
    proxy.stop()


def post_head(proxy: ProxyProcess, uri: str, user: str, password: str, body: bytes) -> bytes:
    challenge = next(c for c in challenges_of(raw_exchange(proxy.port, b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n"))
                     if "SHA-256" in c)
    auth = digest_authorization(challenge, user, password, "POST", uri, qop="auth-int", body=body)
    return (f"POST {uri} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"Proxy-Authorization: {auth}\r\n\r\n").encode()


@pytest.mark.parametrize("size", [300_000, MIB])
def test_an_auth_int_body_past_256_kib_is_read_and_forwarded(auth_int_proxy: ProxyProcess, origin: OriginServer,
                                                              size: int) -> None:
    uri = f"http://127.0.0.1:{origin.port}/big-auth-int"
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    with socket.create_connection(("127.0.0.1", auth_int_proxy.port), timeout=20) as sock:
        sock.sendall(post_head(auth_int_proxy, uri, "alice", "wonderland", body) + body)
        response = read_response(sock)
    assert status_of(response) == 200, response[:300]
    assert origin.seen[-1]["body"] == body


def test_bodies_held_before_authentication_are_bounded_across_connections(auth_int_proxy: ProxyProcess) -> None:
    """100 connections of an unknown user from one address, each holding 1 MiB less a byte: +106 MB before
    (the reads paused at 256 KiB, so not even all of it), now 8 MiB held and the rest answered 503 at once."""
    uri = "http://127.0.0.1:9/flood"
    body = b"z" * MIB
    head = post_head(auth_int_proxy, uri, "nobody", "guess", body)
    before = rss_bytes(auth_int_proxy.proc.pid)
    socks: list[socket.socket] = []
    try:
        for _ in range(100):
            sock = socket.create_connection(("127.0.0.1", auth_int_proxy.port), timeout=10)
            sock.sendall(head + body[:-1])
            socks.append(sock)
        refused = 0
        deadline = time.monotonic() + 10
        for sock in socks:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                answer = sock.recv(4096)
            except TimeoutError:
                continue
            assert status_of(answer) == 503 and b"Retry-After: 1" in answer
            refused += 1
        assert refused == 100 - PER_CLIENT_BODIES
        grown = rss_bytes(auth_int_proxy.proc.pid) - before
        assert grown < 40 * MIB, f"RSS grew by {grown / MIB:.1f} MiB"
        # Another address still has room.
        other = socket.socket()
        other.bind(("127.0.0.2", 0))
        with other:
            other.settimeout(10)
            other.connect(("127.0.0.1", auth_int_proxy.port))
            other.sendall(head + body)
            assert status_of(read_response(other)) == 407  # its own answer: a wrong password
    finally:
        for sock in socks:
            sock.close()


def test_held_bodies_are_counted_per_client_and_in_all() -> None:
    held = HeldBodies(100)
    assert held.take("a", 800) and not held.take("a", 1)  # 8 bodies' worth per client
    for key in "bcdefgh":
        assert held.take(key, 800)
    assert held.total == 6400 and not held.take("i", 1)  # 64 in all
    held.give("a", 800)
    assert "a" not in held.per_client and held.take("i", 800) and held.total == 6400


def test_a_body_of_tiny_chunks_held_for_authentication_costs_its_size(auth_int_proxy: ProxyProcess,
                                                                       origin: OriginServer) -> None:
    """A held body in 1-byte chunks cost ~40 bytes of objects per byte (8 connections of 1 MiB: +67 MB); it is
    gathered in place now. And such a body still authenticates and arrives whole."""
    size = MIB - 1000
    uri = "http://127.0.0.1:9/tiny"
    head = post_head(auth_int_proxy, uri, "nobody", "guess", b"z" * size).replace(
        b"Content-Length: %d" % size, b"Transfer-Encoding: chunked")
    before = rss_bytes(auth_int_proxy.proc.pid)
    socks: list[socket.socket] = []
    try:
        for _ in range(PER_CLIENT_BODIES):
            sock = socket.create_connection(("127.0.0.1", auth_int_proxy.port), timeout=30)
            sock.sendall(head + b"1\r\nz\r\n" * size)
            socks.append(sock)
        time.sleep(1)  # the last bytes are read
        grown = rss_bytes(auth_int_proxy.proc.pid) - before
        assert grown < 8 * MIB + 12 * MIB, f"RSS grew by {grown / MIB:.1f} MiB for 8 MiB held"
    finally:
        for sock in socks:
            sock.close()
    good_uri = f"http://127.0.0.1:{origin.port}/tiny-chunks"
    body = bytes(range(256)) * 64
    good = post_head(auth_int_proxy, good_uri, "alice", "wonderland", body).replace(
        b"Content-Length: %d" % len(body), b"Transfer-Encoding: chunked")
    with socket.create_connection(("127.0.0.1", auth_int_proxy.port), timeout=20) as sock:
        sock.sendall(good + b"".join(b"1\r\n" + bytes([b]) + b"\r\n" for b in body) + b"0\r\n\r\n")
        assert status_of(read_response(sock)) == 200
    assert origin.seen[-1]["body"] == body
