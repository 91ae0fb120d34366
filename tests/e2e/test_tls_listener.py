"""The TLS listener under a flood of connections that never finish a handshake (issue 9 item 4).

A connection counts against ``max_connections`` and ``max_connections_per_client`` from accept, handshake or not;
one over a limit is closed at once; a handshake has ``tls_handshake_timeout``. Real proxy processes (uvloop),
real sockets, curl as the legitimate client; and the proxy's server run in-process on both event loops for the
hand-over of a request that arrives in the same read as the end of the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import selectors
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from authproxy.config import Config
from authproxy.proxy import tls
from authproxy.proxy.server import build_server

from helpers import (
    REALM,
    OriginServer,
    ProxyProcess,
    basic_authorization,
    start_proxy,
    status_of,
    write_tls_files,
)

ALICE = basic_authorization("alice", "wonderland")


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    return write_tls_files(tmp_path)


def tls_proxy(tmp_path: Path, users_file: Path, tls_files: tuple[Path, Path, Path], options: str) -> ProxyProcess:
    config = tmp_path / "tls.toml"
    config.write_text(options)
    cert, key, _ = tls_files
    return start_proxy(tmp_path, users_file, "--config", str(config), "--tls-cert", str(cert), "--tls-key", str(key))


def silent(port: int, count: int, source: str = "127.0.0.1") -> list[socket.socket]:
    """``count`` TCP connections to the proxy that never send a byte."""
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        socks.append(sock)
    return socks


def wait_closed(socks: list[socket.socket], count: int, timeout: float) -> list[socket.socket]:
    """Wait until ``count`` of ``socks`` have been closed by the proxy (EOF or reset); return those."""
    closed: list[socket.socket] = []
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while len(closed) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"only {len(closed)} of the {count} expected connections were closed"
            for key, _ in selector.select(left):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                try:
                    data = ready.recv(1024)
                except ConnectionResetError:
                    data = b""
                assert data == b"", f"the proxy sent {data!r} before any handshake"
                selector.unregister(ready)
                closed.append(ready)
    return closed


def still_open(socks: list[socket.socket], within: float = 0.3) -> bool:
    """None of ``socks`` is closed (or sent anything) within ``within`` seconds."""
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        return not selector.select(within)


def curl_via(proxy: ProxyProcess, ca: Path, origin: OriginServer, source: str) -> subprocess.CompletedProcess[bytes]:
    curl = shutil.which("curl")
    assert curl is not None
    return subprocess.run(
        [curl, "-sS", "--max-time", "10", "--interface", source, "--proxy", f"https://127.0.0.1:{proxy.port}",
         "--proxy-cacert", str(ca), "--proxy-user", "alice:wonderland", "--proxy-basic", "-o", "/dev/null",
         "-w", "%{http_code}", f"http://127.0.0.1:{origin.port}/tls-listener"],
        capture_output=True, timeout=30)


def fd_count(proxy: ProxyProcess) -> int:
    return len(os.listdir(f"/proc/{proxy.proc.pid}/fd"))


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def test_silent_connections_over_the_per_client_limit_are_closed(
        tmp_path: Path, users_file: Path, origin: OriginServer, tls_files: tuple[Path, Path, Path]) -> None:
    proxy = tls_proxy(tmp_path, users_file, tls_files,
                      "max_connections_per_client = 20\ntls_handshake_timeout = 30.0\n")
    socks: list[socket.socket] = []
    try:
        socks = silent(proxy.port, 60)
        closed = wait_closed(socks, 40, timeout=10)
        held = [sock for sock in socks if sock not in closed]
        assert len(held) == 20 and still_open(held)
        # Another address is not held back by this one's flood...
        done = curl_via(proxy, tls_files[2], origin, "127.0.0.2")
        assert done.stdout == b"200", done.stderr
        # ...while this address's next connection, even a good one, is over its limit and closed.
        done = curl_via(proxy, tls_files[2], origin, "127.0.0.1")
        assert done.returncode != 0 and done.stdout == b"000"
        assert still_open(held)
        log = proxy.access_log()
        refusals = [line for line in log.splitlines() if line.endswith("auth=over-limit")]
        assert len(refusals) == 41 and all(" 127.0.0.1 NONE_NONE/503 0 " in line for line in refusals), log
        # Closing them gives their places back.
        close_all(held)
        deadline = time.monotonic() + 5
        while (done := curl_via(proxy, tls_files[2], origin, "127.0.0.1")).stdout != b"200":
            assert time.monotonic() < deadline, done.stderr
    finally:
        close_all(socks)
        proxy.stop()


def test_silent_handshakes_do_not_starve_the_proxy(
        tmp_path: Path, users_file: Path, origin: OriginServer, tls_files: tuple[Path, Path, Path]) -> None:
    proxy = tls_proxy(tmp_path, users_file, tls_files, "max_connections = 10\ntls_handshake_timeout = 2.0\n")
    socks: list[socket.socket] = []
    try:
        socks = silent(proxy.port, 10)
        started = time.monotonic()
        # While they hold every place a legitimate client is refused (the limit counts them)...
        done = curl_via(proxy, tls_files[2], origin, "127.0.0.2")
        assert time.monotonic() - started < 2.0, "too slow to see the proxy full: raise tls_handshake_timeout"
        assert done.stdout == b"000"
        # ...until their handshakes time out, and then it gets through.
        wait_closed(socks, 10, timeout=10)
        assert time.monotonic() - started >= 1.5
        done = curl_via(proxy, tls_files[2], origin, "127.0.0.2")
        assert done.stdout == b"200", done.stderr
    finally:
        close_all(socks)
        proxy.stop()


def test_a_handshake_is_timed_out(
        tmp_path: Path, users_file: Path, origin: OriginServer, tls_files: tuple[Path, Path, Path]) -> None:
    proxy = tls_proxy(tmp_path, users_file, tls_files, "tls_handshake_timeout = 1.0\n")
    socks: list[socket.socket] = []
    try:
        context = ssl.create_default_context(cafile=str(tls_files[2]))
        started = time.monotonic()
        socks = silent(proxy.port, 2)
        socks[1].sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, and then nothing
        finished = context.wrap_socket(socket.create_connection(("127.0.0.1", proxy.port)),
                                       server_hostname="127.0.0.1")  # a handshake done, then quiet
        wait_closed(socks, 2, timeout=5)
        elapsed = time.monotonic() - started
        assert 0.9 <= elapsed < 3.0, elapsed
        # The timer is the handshake's: a connection past it is not closed by it.
        time.sleep(max(0.0, started + 1.5 - time.monotonic()))
        with finished:
            finished.sendall(f"GET http://127.0.0.1:{origin.port}/after HTTP/1.1\r\nHost: x\r\n"
                             f"Proxy-Authorization: {ALICE}\r\nConnection: close\r\n\r\n".encode())
            response = b""
            while chunk := finished.recv(65536):
                response += chunk
        assert status_of(response) == 200
    finally:
        close_all(socks)
        proxy.stop()


def test_descriptors_stay_bounded_under_a_flood_of_silent_connections(
        tmp_path: Path, users_file: Path, tls_files: tuple[Path, Path, Path]) -> None:
    proxy = tls_proxy(tmp_path, users_file, tls_files,
                      "max_connections_per_client = 20\ntls_handshake_timeout = 30.0\n")
    socks: list[socket.socket] = []
    try:
        before = fd_count(proxy)
        peak = before
        for _ in range(10):
            socks += silent(proxy.port, 200)
            peak = max(peak, fd_count(proxy))
        wait_closed(socks, 2000 - 20, timeout=30)
        after = fd_count(proxy)
        print(f"\nproxy descriptors with 2,000 silent TLS connections, max_connections_per_client=20: "
              f"before {before}, peak {peak}, after {after}")
        assert after <= before + 20
        assert peak <= before + 20 + 200  # at most one batch accepted and not yet refused at a time
    finally:
        close_all(socks)
        proxy.stop()


def test_ipv6_clients_are_counted(tmp_path: Path, users_file: Path, tls_files: tuple[Path, Path, Path]) -> None:
    config = tmp_path / "v6.toml"
    config.write_text("max_connections_per_client = 3\ntls_handshake_timeout = 30.0\n")
    cert, key, _ = tls_files
    proxy = start_proxy(tmp_path, users_file, "--config", str(config), "--tls-cert", str(cert), "--tls-key",
                        str(key), "--listen", "[::1]:0")
    socks: list[socket.socket] = []
    try:
        for _ in range(5):
            sock = socket.socket(socket.AF_INET6)
            sock.connect(("::1", proxy.port))
            socks.append(sock)
        closed = wait_closed(socks, 2, timeout=10)
        assert still_open([sock for sock in socks if sock not in closed])
    finally:
        close_all(socks)
        proxy.stop()


# == the hand-over, on both event loops ========================================================================
@contextlib.contextmanager
def in_process_proxy(config: Config, loop: asyncio.AbstractEventLoop) -> Iterator[int]:
    """The proxy's server on ``loop`` in a thread; yields its port."""
    server = build_server(config)
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield server.sockets_addresses[0][1]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(server.stop(0.1))
        loop.close()


def handshake_then_request(port: int, ca: Path, request: bytes) -> bytes:
    """A TLS client whose request leaves in the same write as its Finished, so the proxy reads both at once."""
    context = ssl.create_default_context(cafile=str(ca))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        while True:
            try:
                client.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                data = sock.recv(65536)
                assert data, "the proxy closed the connection during the handshake"
                incoming.write(data)
        client.write(request)
        sock.sendall(outgoing.read())
        response = b""
        while True:
            try:
                chunk = client.read(65536)
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                if not data:
                    return response
                incoming.write(data)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return response
            else:
                if not chunk:  # the proxy's close_notify
                    return response
                response += chunk


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_a_request_in_the_same_read_as_the_handshake_end(
        loop_name: str, users_file: Path, origin: OriginServer, tls_files: tuple[Path, Path, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    early: list[bytes] = []
    held = tls._Handshaking.data_received

    def spy(self: tls._Handshaking, data: bytes) -> None:
        if not self.handed_over:
            early.append(data)
        held(self, data)

    monkeypatch.setattr(tls._Handshaking, "data_received", spy)
    cert, key, ca = tls_files
    config = Config(listen="127.0.0.1:0", users=str(users_file), realm=REALM, access_log="", allow_private=True,
                    tls_cert=str(cert), tls_key=str(key))
    loop = asyncio.new_event_loop() if loop_name == "asyncio" else uvloop.new_event_loop()
    request = (f"GET http://127.0.0.1:{origin.port}/same-read HTTP/1.1\r\nHost: x\r\n"
               f"Proxy-Authorization: {ALICE}\r\nConnection: close\r\n\r\n").encode()
    with in_process_proxy(config, loop) as port:
        response = handshake_then_request(port, ca, request)
    assert status_of(response) == 200 and b"/same-read" in response
    if loop_name == "asyncio":  # asyncio hands the request over before start_tls returns: the case under test
        assert early and early[0].startswith(b"GET ")


def test_the_plain_listener_counts_from_accept_too(tmp_path: Path, users_file: Path, origin: OriginServer) -> None:
    config = tmp_path / "plain.toml"
    config.write_text("max_connections_per_client = 5\n")
    proxy = start_proxy(tmp_path, users_file, "--config", str(config))
    socks: list[socket.socket] = []
    try:
        socks = silent(proxy.port, 8)
        with selectors.DefaultSelector() as selector:  # the three over the limit get a 503 at once, unasked
            for sock in socks:
                selector.register(sock, selectors.EVENT_READ)
            answered: list[socket.socket] = []
            deadline = time.monotonic() + 5
            while len(answered) < 3 and time.monotonic() < deadline:
                for key, _ in selector.select(0.1):
                    assert isinstance(key.fileobj, socket.socket)
                    selector.unregister(key.fileobj)
                    answered.append(key.fileobj)
        assert len(answered) == 3
        for sock in answered:
            assert status_of(sock.recv(4096)) == 503
        assert still_open([sock for sock in socks if sock not in answered])
        with socket.socket() as other:  # another address is served
            other.bind(("127.0.0.2", 0))
            other.connect(("127.0.0.1", proxy.port))
            other.sendall(f"GET http://127.0.0.1:{origin.port}/plain HTTP/1.1\r\nHost: x\r\n"
                          f"Proxy-Authorization: {ALICE}\r\n\r\n".encode())
            assert status_of(other.recv(65536)) == 200
        assert proxy.access_log().count(" 127.0.0.1 NONE_NONE/503 ") == 3
    finally:
        close_all(socks)
        proxy.stop()


def wait_for_lines(proxy: ProxyProcess, pattern: str, count: int, seconds: float = 10) -> list[str]:
    """The proxy's stderr lines matching ``pattern``, once there are ``count`` of them (or ``seconds`` passed)."""
    deadline = time.monotonic() + seconds
    while True:
        found = [line for line in list(proxy.stderr_lines) if re.search(pattern, line)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_failed_handshakes_are_logged_in_one_line_each(tmp_path: Path, users_file: Path,
                                                      tls_files: tuple[Path, Path, Path]) -> None:
    proxy = tls_proxy(tmp_path, users_file, tls_files, "tls_handshake_timeout = 1\n")
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:  # plain HTTP, a credential
            sock.sendall(f"GET http://a/ HTTP/1.1\r\nHost: a\r\nProxy-Authorization: {ALICE}\r\n\r\n".encode())
            sock.recv(4096)  # closed by the proxy
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock, \
                pytest.raises(ssl.SSLCertVerificationError):  # a client that distrusts it
            ssl.create_default_context().wrap_socket(sock, server_hostname="127.0.0.1")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:  # silent: timed out
            lines = wait_for_lines(proxy, "TLS handshake with", 3)
        assert len(lines) == 3, proxy.stderr_lines
        assert any("127.0.0.1 failed: the client spoke plain HTTP to the TLS listener (HTTP_REQUEST)" in line
                   for line in lines)
        assert any("does not trust this proxy's certificate (TLSV1_ALERT_UNKNOWN_CA)" in line for line in lines)
        assert any("not finished within tls_handshake_timeout (1 s)" in line for line in lines)
        assert all(line.count("\n") <= 1 and ALICE.split()[1] not in line and "Proxy-Authorization" not in line
                   for line in lines)
    finally:
        proxy.stop()


def test_a_flood_of_failed_handshakes_is_logged_within_a_bound(tmp_path: Path, users_file: Path,
                                                              tls_files: tuple[Path, Path, Path]) -> None:
    """At most 10 lines a second; the rest counted in a summary line, so a flood fills neither disk nor loop."""
    proxy = tls_proxy(tmp_path, users_file, tls_files, "max_connections_per_client = 0\n")
    flood = 600
    try:
        started = time.monotonic()
        for _ in range(flood):
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
                sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
                sock.recv(4096)  # the proxy's close
        elapsed = time.monotonic() - started
        shown = wait_for_lines(proxy, "TLS handshake with", flood, seconds=3)
        summaries = wait_for_lines(proxy, "more TLS handshake failures not shown", 1)
        counted = sum(int(line.split()[1]) for line in summaries)  # "authproxy: N more ..."
        assert len(shown) <= 10 * (elapsed + 3), (len(shown), elapsed)
        assert len(shown) + counted == flood
    finally:
        proxy.stop()
