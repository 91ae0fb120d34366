"""The proxy's descriptors stay within the process's limit (RLIMIT_NOFILE), whatever clients do.

Past the limit, accept() and connect() fail with EMFILE for every client at once. At start the proxy raises its
soft limit to the hard one and fits max_connections (and the pool of idle origin connections) to what is left,
saying so on stderr; the pool of idle origin connections is bounded in all, not only per host:port.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from authproxy.proxy.server import RESERVED_FDS, fd_plan

from helpers import (
    REALM,
    OriginServer,
    ProxyProcess,
    _started,
    basic_authorization,
    read_response,
    start_proxy,
    status_of,
)

ALICE = basic_authorization("alice", "wonderland")


def test_the_plan_fits_two_descriptors_a_connection_and_half_as_many_idle() -> None:
    assert fd_plan(20_000, 1 << 20) == (plan := fd_plan(20_000, 1 << 20)) and plan.warning is None
    assert (plan.max_connections, plan.max_idle) == (20_000, 10_000)
    low = fd_plan(20_000, 4096)
    assert low.max_connections == (4096 - RESERVED_FDS) * 2 // 5 and low.max_idle == low.max_connections // 2
    assert 2 * low.max_connections + low.max_idle + RESERVED_FDS <= 4096
    assert low.warning is not None and "serving at most 1536 connections" in low.warning
    assert "ulimit -n" in low.warning and "4096" in low.warning


def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_max_connections_is_fitted_to_a_low_descriptor_limit(tmp_path: Path, users_file: Path,
                                                              origin: OriginServer) -> None:
    """A hard limit of 600 descriptors and the default max_connections (20,000): a flood of 700 connections gets
    503s past the fitted limit instead of exhausting the descriptors, and a client is served once some go."""
    prlimit = shutil.which("prlimit")
    assert prlimit is not None, "prlimit (util-linux) is needed"
    log = tmp_path / "access.log"
    proc, match, lines = _started(
        [prlimit, "--nofile=600:600", sys.executable, "-m", "authproxy", "serve", "--listen", "127.0.0.1:0",
         "--users", str(users_file), "--realm", REALM, "--access-log", str(log), "--allow-private",
         "--connect-ports", "any"], r"listening on [^ ]+:(\d+)")
    proxy = ProxyProcess(proc, int(match.group(1)), log, lines)
    fitted = fd_plan(20_000, 600).max_connections
    socks: list[socket.socket] = []
    try:
        # The warning follows the "listening on" line, and the lines after that one are read by a thread.
        deadline = time.monotonic() + 10
        while not any(f"serving at most {fitted} connections" in line for line in lines):
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)
        for _ in range(700):
            sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            socks.append(sock)
        refused = 0
        with selectors.DefaultSelector() as selector:
            for sock in socks:
                selector.register(sock, selectors.EVENT_READ)
            deadline = time.monotonic() + 10
            while refused < 700 - fitted and time.monotonic() < deadline:
                for key, _ in selector.select(0.5):
                    assert isinstance(key.fileobj, socket.socket)
                    selector.unregister(key.fileobj)
                    assert status_of(key.fileobj.recv(4096)) == 503
                    refused += 1
        assert refused == 700 - fitted
        assert fds_of(proc.pid) < 600
        for sock in socks:
            sock.close()
        socks.clear()
        time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(f"GET http://127.0.0.1:{origin.port}/after HTTP/1.1\r\nHost: x\r\n"
                         f"Proxy-Authorization: {ALICE}\r\n\r\n".encode())
            assert status_of(read_response(sock)) == 200
        assert not any("Too many open files" in line for line in lines), lines
    finally:
        for sock in socks:
            sock.close()
        proxy.stop()


class _KeepAliveOrigin(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for _ in range(data.count(b"\r\n\r\n")):
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # type: ignore[attr-defined]


@pytest.fixture()
def wildcard_origin() -> Iterator[int]:
    """A keep-alive origin on 0.0.0.0: every 127.x.y.z reaches it, each a host:port of its own to the proxy."""
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(_KeepAliveOrigin, "0.0.0.0", 0, backlog=4096))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield server.sockets[0].getsockname()[1]
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    server.close()
    loop.close()


def test_idle_origin_connections_are_bounded_in_all(tmp_path: Path, users_file: Path, wildcard_origin: int) -> None:
    """One client asking for 1,500 host:port pairs in a row held 1,500 idle origin connections (descriptors),
    for 30 s each: a few clients could exhaust the descriptors. The pool keeps max_connections / 2 in all."""
    config = tmp_path / "small.toml"
    config.write_text("max_connections = 200\nthrottle_max_failures = 0\n")
    proxy = start_proxy(tmp_path, users_file, "--config", str(config))
    try:
        before = fds_of(proxy.proc.pid)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            for i in range(1500):
                sock.sendall(f"GET http://127.0.{i // 250}.{i % 250 + 1}:{wildcard_origin}/ HTTP/1.1\r\nHost: x\r\n"
                             f"Proxy-Authorization: {ALICE}\r\n\r\n".encode())
                assert status_of(read_response(sock)) == 200
            held = fds_of(proxy.proc.pid) - before
        assert held <= 100 + 2, held  # the pool's 100, the client, the last origin
    finally:
        proxy.stop()
