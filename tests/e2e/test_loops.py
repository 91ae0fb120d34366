"""Loops: a request to the proxy's own listening socket, or one whose Via already names this proxy, is refused
508 (RFC 5842 section 7.2) with ``Proxy-Status: authproxy; error=proxy_loop_detected`` (RFC 9209 section 2.3)
before anything is opened, so a CONNECT to itself cannot nest tunnels without end.

Real proxies over 127.0.0.1 with --allow-private (a loop to loopback is otherwise refused earlier, as a private
address); the proxy's sockets are counted in /proc to show that nothing is left open.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import (
    USERS,
    OriginServer,
    ProxyProcess,
    basic_authorization,
    header_of,
    raw_exchange,
    read_response,
    start_proxy,
    status_of,
    usage,
)

ALICE = basic_authorization("alice", USERS["alice"])


def request(method: str, target: str, *extra: str, auth: str | None = ALICE) -> bytes:
    host = target if method == "CONNECT" else target.split("/")[2]
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *extra]
    if auth:
        lines.append(f"Proxy-Authorization: {auth}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def assert_loop_refused(response: bytes) -> None:
    assert status_of(response) == 508, response
    assert response.startswith(b"HTTP/1.1 508 Loop Detected\r\n"), response
    status = header_of(response, "Proxy-Status") or ""
    assert status.startswith("authproxy; error=proxy_loop_detected;"), status


def open_connections(proxy: ProxyProcess) -> int:
    """The proxy's TCP connections (accepted, or opened to itself), listening sockets left out."""
    return usage(proxy, proxy.port).client_sockets


def wait_for_no_connections(proxy: ProxyProcess, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (count := open_connections(proxy)) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling /proc: the kernel has no event for "the peer has closed its end"
    assert count == 0, f"{count} connections still open"


@pytest.fixture(scope="module")
def proxy_a(session_tmp: Path, users_file: Path) -> Iterator[ProxyProcess]:
    proxy = start_proxy(session_tmp, users_file)
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def proxy_b(session_tmp: Path, users_file: Path) -> Iterator[ProxyProcess]:
    proxy = start_proxy(session_tmp, users_file)
    yield proxy
    proxy.stop()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "2130706433"])
def test_connect_to_itself_is_refused_before_connecting(proxy_a: ProxyProcess, host: str) -> None:
    with socket.create_connection(("127.0.0.1", proxy_a.port), timeout=5) as sock:
        sock.sendall(request("CONNECT", f"{host}:{proxy_a.port}"))
        response = read_response(sock)
        assert_loop_refused(response)
        assert f":{proxy_a.port} is this proxy itself".encode() in response
        assert open_connections(proxy_a) == 1  # this test's connection only: nothing was opened to itself
        # The refusal keeps the connection usable for the next request (it was not a tunnel).
        sock.sendall(request("CONNECT", f"127.0.0.1:{proxy_a.port}"))
        assert_loop_refused(read_response(sock))
    wait_for_no_connections(proxy_a)


def test_plain_request_to_itself_is_refused(proxy_a: ProxyProcess) -> None:
    response = raw_exchange(proxy_a.port, request("GET", f"http://127.0.0.1:{proxy_a.port}/x"))
    assert_loop_refused(response)
    assert "auth=ok" in proxy_a.access_log().splitlines()[-1]


def test_curl_connect_to_the_proxy_itself(proxy_a: ProxyProcess) -> None:
    out = subprocess.run(
        ["curl", "-sS", "-p", "-x", f"http://alice:{USERS['alice']}@127.0.0.1:{proxy_a.port}",
         "-o", "/dev/null", "-w", "%{http_connect}", f"https://127.0.0.1:{proxy_a.port}/"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.stdout == "508", (out.stdout, out.stderr)
    assert out.returncode != 0 and "508" in out.stderr  # curl: CONNECT tunnel failed, response 508
    wait_for_no_connections(proxy_a)


def test_nested_connects_stop_where_they_reach_the_proxy_itself(proxy_a: ProxyProcess, proxy_b: ProxyProcess,
                                                                origin: OriginServer) -> None:
    """Through A to B, through B back to A (two different proxies: allowed), then through A to A: refused."""
    with socket.create_connection(("127.0.0.1", proxy_a.port), timeout=5) as sock:
        sock.sendall(request("CONNECT", f"127.0.0.1:{proxy_b.port}"))
        assert status_of(read_response(sock)) == 200
        sock.sendall(request("CONNECT", f"127.0.0.1:{proxy_a.port}"))  # spoken to B, inside the tunnel
        assert status_of(read_response(sock)) == 200
        sock.sendall(request("CONNECT", f"127.0.0.1:{proxy_a.port}"))  # spoken to A, inside both tunnels
        assert_loop_refused(read_response(sock))
        # The connection still works: the refused CONNECT did not open a tunnel.
        sock.sendall(request("GET", f"http://127.0.0.1:{origin.port}/after"))
        assert status_of(read_response(sock)) == 200
    wait_for_no_connections(proxy_a)
    wait_for_no_connections(proxy_b)


def test_via_naming_this_proxy_is_a_loop(proxy_a: ProxyProcess, origin: OriginServer) -> None:
    seen = len(origin.seen)
    for via in ("1.1 authproxy", "1.0 squid, 1.1 AuthProxy (looped)", "HTTP/1.1 authproxy", "1.1 authproxy:3128",
                "1.1 authproxy(no-space)", "1.1\tAUTHPROXY", "1.0 a,1.1 authproxy", "1.1 a\r\nVia: 1.1 authproxy"):
        response = raw_exchange(proxy_a.port, request("GET", f"http://127.0.0.1:{origin.port}/v", f"Via: {via}"))
        assert_loop_refused(response)
        assert b"already passed through this proxy" in response
    response = raw_exchange(proxy_a.port, request("CONNECT", f"127.0.0.1:{origin.port}", "Via: 1.1 authproxy"))
    assert_loop_refused(response)
    assert len(origin.seen) == seen  # nothing reached the origin
    # Another proxy's name, or ours inside a comment, is not a loop; our Via is added after theirs.
    response = raw_exchange(proxy_a.port, request("GET", f"http://127.0.0.1:{origin.port}/v",
                                                  "Via: 1.1 squid, 1.1 authproxy2 (authproxy)"))
    assert status_of(response) == 200
    assert b'["Via", "1.1 squid, 1.1 authproxy2 (authproxy)"], ["Via", "1.1 authproxy"]' in response


def test_a_wildcard_listener_refuses_every_local_address(session_tmp: Path, users_file: Path) -> None:
    proxy = start_proxy(session_tmp, users_file, "--listen", "0.0.0.0:0")
    try:
        for host in ("127.0.0.1", "127.0.0.2", "localhost", "0x7f.0.0.9"):
            assert_loop_refused(raw_exchange(proxy.port, request("CONNECT", f"{host}:{proxy.port}")))
        # The same port on IPv6 loopback is not this (IPv4-only) listener: the proxy tries it, nobody answers.
        response = raw_exchange(proxy.port, request("CONNECT", f"[::1]:{proxy.port}"))
        assert status_of(response) == 502 and "error=connection_refused" in (header_of(response, "Proxy-Status")
                                                                              or "")
        wait_for_no_connections(proxy)
    finally:
        proxy.stop()
