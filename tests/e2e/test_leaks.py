"""Thousands of aborted requests and tunnels, then the proxy's file descriptors and RSS are back to the baseline.

The proxy runs through its CLI; its /proc entries are read from here (Linux only). Sockets are told apart by
their TCP endpoints (/proc/PID/net/tcp): client-side sockets have the proxy's port as their local port, origin
sockets the origin's port as their remote port. The proxy runs with its origin pool off, so every socket and
file descriptor must return to the baseline.
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import (
    OriginServer,
    ProxyProcess,
    Usage,
    basic_authorization,
    raw_exchange,
    start_proxy,
    status_of,
    usage,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

ALICE = basic_authorization("alice", "wonderland")
RSS_BOUND = 20 * 1024 * 1024
FD_MARGIN = 4  # the access log, a resolver thread's socket, an epoll fd: a little slack, not a leak
WORKERS = 24

COUNTS = {"half-head-reset": 2000, "body-abort": 500, "tunnel-abort": 500, "response-abort": 500}
WARMUP = 40


@pytest.fixture(scope="module")
def proxy(session_tmp: Path, users_file: Path) -> Iterator[ProxyProcess]:
    """A proxy of this module's own, so that other tests' connections do not move its counts.

    Its origin pool is off (pool_size = 0): a response that completes before the client's reset (a few MB fit
    in the kernel's socket buffers on loopback) would otherwise leave an idle pooled connection for 30 s, and
    every origin socket still open afterwards is then a leak, with no need to wait for the pool to expire.
    """
    config = session_tmp / "leaks.toml"
    config.write_text("pool_size = 0\n", encoding="utf-8")
    proc = start_proxy(session_tmp, users_file, "--access-log", "", "--config", str(config))
    yield proc
    proc.stop()


# == the aborted conversations =================================================================================
def _reset(sock: socket.socket) -> None:
    """Close with RST, the way a crashed client or a cut network ends a connection."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def half_head_reset(proxy_port: int, origin_port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=5)
    sock.sendall(f"GET http://127.0.0.1:{origin_port}/ HTTP/1.1\r\nHost: 127.0.0.1\r\nProxy-Autho".encode())
    _reset(sock)


def body_abort(proxy_port: int, origin_port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=5)
    sock.sendall(f"POST http://127.0.0.1:{origin_port}/upload HTTP/1.1\r\nHost: 127.0.0.1:{origin_port}\r\n"
                 f"Proxy-Authorization: {ALICE}\r\nContent-Length: 100000\r\n\r\n".encode() + b"x" * 3000)
    time.sleep(0.002)  # let the proxy connect to the origin and start forwarding
    sock.close()  # an ordinary close, mid-body


def tunnel_abort(proxy_port: int, origin_port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=5)
    sock.sendall(f"CONNECT 127.0.0.1:{origin_port} HTTP/1.1\r\nHost: 127.0.0.1:{origin_port}\r\n"
                 f"Proxy-Authorization: {ALICE}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"CONNECT got {head!r}")
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    sock.sendall(b"GET /tunnelled HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")  # mid-stream
    _reset(sock)


def response_abort(proxy_port: int, origin_port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=5)
    sock.sendall(f"GET http://127.0.0.1:{origin_port}/bytes/4000000 HTTP/1.1\r\nHost: 127.0.0.1:{origin_port}\r\n"
                 f"Proxy-Authorization: {ALICE}\r\n\r\n".encode())
    got = sock.recv(65536)
    assert got.startswith(b"HTTP/1.1 200"), got[:200]
    _reset(sock)  # the origin is still sending its 4 MB


SCENARIOS: dict[str, Callable[[int, int], None]] = {
    "half-head-reset": half_head_reset,
    "body-abort": body_abort,
    "tunnel-abort": tunnel_abort,
    "response-abort": response_abort,
}


def run_all(proxy: ProxyProcess, origin: OriginServer, scale: float) -> dict[str, int]:
    failures: dict[str, int] = {}
    with ThreadPoolExecutor(WORKERS) as pool:
        for name, action in SCENARIOS.items():
            count = max(1, int(COUNTS[name] * scale))
            futures = [pool.submit(action, proxy.port, origin.port) for _ in range(count)]
            errors = [f.exception() for f in futures]
            failures[name] = sum(e is not None for e in errors)
            first = next((e for e in errors if e is not None), None)
            assert failures[name] <= count // 50, f"{name}: {failures[name]}/{count} failed, e.g. {first!r}"
    return failures


def settle(proxy: ProxyProcess, origin_port: int, baseline: Usage, timeout: float = 12.0) -> Usage:
    """Wait (housekeeping runs once a second) until no client socket is left beyond the baseline."""
    deadline = time.monotonic() + timeout
    now = usage(proxy, origin_port)
    while time.monotonic() < deadline:
        if (now.client_sockets <= baseline.client_sockets and now.origin_sockets <= baseline.origin_sockets
                and now.fds <= baseline.fds + FD_MARGIN):
            break
        time.sleep(0.25)
        now = usage(proxy, origin_port)
    return now


def test_aborted_requests_and_tunnels_leak_nothing(proxy: ProxyProcess, origin: OriginServer) -> None:
    # Warm up: first-use allocations (parsers, caches, the pool's dicts, thread stacks) are not leaks.
    run_all(proxy, origin, WARMUP / 500)
    empty = Usage(0, 0, 0, 0, 0)
    baseline = settle(proxy, origin.port, empty, timeout=6.0)
    assert baseline.client_sockets == 0, f"warm-up left client sockets open: {baseline}"

    started = time.monotonic()
    failures = run_all(proxy, origin, 1.0)
    elapsed = time.monotonic() - started
    after = settle(proxy, origin.port, baseline)
    report = (f"{sum(COUNTS.values())} aborted conversations {COUNTS} in {elapsed:.1f} s "
              f"(client-side errors {failures})\n  baseline: {baseline}\n  after:    {after}")
    print(report)

    assert proxy.proc.poll() is None, "the proxy died"
    assert after.client_sockets == baseline.client_sockets, "client sockets leaked:\n" + report
    # Every aborted exchange and tunnel must release its origin side (no pool: nothing may stay open).
    assert after.origin_sockets == baseline.origin_sockets, "origin sockets leaked:\n" + report
    assert after.fds <= baseline.fds + FD_MARGIN, "file descriptors leaked:\n" + report
    assert after.rss - baseline.rss <= RSS_BOUND, "RSS grew:\n" + report

    # And the proxy still works.
    raw = (f"GET http://127.0.0.1:{origin.port}/after HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n"
           f"Proxy-Authorization: {ALICE}\r\n\r\n").encode()
    assert status_of(raw_exchange(proxy.port, raw)) == 200
    assert "Traceback" not in "".join(proxy.stderr_lines)
