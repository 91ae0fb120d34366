"""Faults on either side: slow clients, idle clients, origins that hang, reset, or answer garbage."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers import ProxyProcess, basic_authorization, header_of, read_response, start_proxy, status_of

ALICE = basic_authorization("alice", "wonderland")


@pytest.fixture(scope="module")
def impatient_proxy(session_tmp: Path, users_file: Path) -> Iterator[ProxyProcess]:
    config = session_tmp / "impatient.toml"
    config.write_text("header_timeout = 1\nidle_timeout = 1\nread_timeout = 1\nthrottle_max_failures = 0\n")
    proxy = start_proxy(session_tmp, users_file, "--config", str(config))
    yield proxy
    proxy.stop()


def scripted_origin(behaviour: Callable[[socket.socket], None]) -> tuple[int, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            behaviour(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], listener


def get(port: int) -> bytes:
    return (f"GET http://127.0.0.1:{port}/f HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {ALICE}\r\n\r\n").encode()


def test_slow_request_head_gets_408(impatient_proxy: ProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", impatient_proxy.port), timeout=10) as sock:
        sock.sendall(b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: x\r\n")  # ... and never the end of the head
        started = time.monotonic()
        response = read_response(sock)
        assert status_of(response) == 408
        assert time.monotonic() - started < 5
        assert sock.recv(10) == b""


def test_empty_lines_do_not_keep_an_idle_connection_open(impatient_proxy: ProxyProcess) -> None:
    """A CRLF every 0.3 s starts no request (RFC 9112 section 2.2): idle_timeout (1 s) still ends the connection."""
    with socket.create_connection(("127.0.0.1", impatient_proxy.port), timeout=10) as sock:
        started = time.monotonic()
        ended = False
        while time.monotonic() - started < 6 and not ended:
            try:
                sock.sendall(b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sock.settimeout(0.3)
            try:
                ended = sock.recv(10) == b""
            except TimeoutError:
                pass
            except ConnectionResetError:
                ended = True
        assert time.monotonic() - started < 5, "the connection outlived idle_timeout"


def test_idle_keep_alive_connection_is_closed(impatient_proxy: ProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", impatient_proxy.port), timeout=10) as sock:
        started = time.monotonic()
        assert sock.recv(10) == b""
        assert time.monotonic() - started < 5


def test_origin_that_never_answers_gets_504(impatient_proxy: ProxyProcess) -> None:
    port, listener = scripted_origin(lambda conn: time.sleep(4))
    with listener, socket.create_connection(("127.0.0.1", impatient_proxy.port), timeout=10) as sock:
        sock.sendall(get(port))
        response = read_response(sock)
    assert status_of(response) == 504
    assert "error=http_response_timeout" in (header_of(response, "Proxy-Status") or "")


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST


@pytest.mark.parametrize(
    "name, behaviour, error",
    [
        ("reset", _reset, "connection_terminated"),
        ("garbage", lambda conn: conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"), "http_protocol_error"),
        ("bad-length", lambda conn: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
         "http_protocol_error"),
        ("closed-silently", lambda conn: None, "connection_terminated"),
    ],
)
def test_origin_faults_get_502(impatient_proxy: ProxyProcess, name: str, behaviour: Callable[[socket.socket], None],
                               error: str) -> None:
    port, listener = scripted_origin(behaviour)
    with listener, socket.create_connection(("127.0.0.1", impatient_proxy.port), timeout=10) as sock:
        sock.sendall(get(port))
        response = read_response(sock)
        assert status_of(response) == 502, (name, response)
        assert f"error={error}" in (header_of(response, "Proxy-Status") or "")
        # The client connection is in a defined state: it still works for the next request.
        sock.sendall(get(9))
        assert status_of(read_response(sock)) == 502
    assert "Traceback" not in "".join(impatient_proxy.stderr_lines)


def test_origin_dying_mid_body_cuts_the_client_connection(impatient_proxy: ProxyProcess) -> None:
    def half(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly part of it")
        _reset(conn)

    port, listener = scripted_origin(half)
    with listener, socket.create_connection(("127.0.0.1", impatient_proxy.port), timeout=10) as sock:
        sock.sendall(get(port))
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    # The client sees a response shorter than its Content-Length and a closed connection: it knows.
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"only part of it")
