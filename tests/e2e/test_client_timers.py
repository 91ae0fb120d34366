"""Timers on every state of a client connection (issue 9 item 3), over sockets, with short configured timeouts.

The proxy here has read_timeout and write_timeout of 1 s but header_timeout and idle_timeout of 30 s: a connection
that ends within a few seconds was ended by the timer of its state, not by the idle one nor by that of a head
whose end the proxy has not parsed yet. (The same rules are
checked state by state with a fake clock in tests/proxy/test_connection_timers.py.)
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from helpers import (
    OriginServer,
    ProxyProcess,
    ScriptedOrigin,
    basic_authorization,
    header_of,
    read_response,
    start_proxy,
    status_of,
)

ALICE = basic_authorization("alice", "wonderland")
ENDS_WITHIN = 6.0  # 1 s timers, a once-a-second check, and a loaded machine; the others are 30 s


@pytest.fixture(scope="module")
def quick(session_tmp: Path, users_file: Path) -> Iterator[ProxyProcess]:
    config = session_tmp / "quick-timers.toml"
    config.write_text("read_timeout = 1\nwrite_timeout = 1\nheader_timeout = 30\nidle_timeout = 30\n"
                      "throttle_max_failures = 0\n")
    proxy = start_proxy(session_tmp, users_file, "--config", str(config))
    yield proxy
    proxy.stop()


def ends_within(sock: socket.socket, seconds: float) -> bytes:
    """Everything the proxy still sends, which must end (FIN or reset) within ``seconds``."""
    sock.settimeout(seconds)
    started = time.monotonic()
    rest = b""
    try:
        while chunk := sock.recv(65536):
            rest += chunk
            sock.settimeout(max(0.01, seconds - (time.monotonic() - started)))
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the connection was still open after {seconds} s", pytrace=False)
    return rest


REFUSED_BODIES = {
    "content-length-nothing-sent": (b"Content-Length: 1000\r\n", b"", None),
    "content-length-half-sent": (b"Content-Length: 1000\r\n", b"x" * 500, None),
    "chunked-stopped": (b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n", None),
    "wrong-password": (b"Content-Length: 1000\r\n", b"", basic_authorization("alice", "nope")),
}


@pytest.mark.parametrize(("framing", "body", "auth"), REFUSED_BODIES.values(), ids=REFUSED_BODIES.keys())
def test_refused_request_whose_body_never_arrives_is_closed(quick: ProxyProcess, framing: bytes, body: bytes,
                                                             auth: str | None) -> None:
    head = b"POST http://a/ HTTP/1.1\r\nHost: a\r\n" + framing
    if auth:
        head += f"Proxy-Authorization: {auth}\r\n".encode()
    with socket.create_connection(("127.0.0.1", quick.port), timeout=5) as sock:
        sock.sendall(head + b"\r\n" + body)
        response = read_response(sock)
        assert status_of(response) == 407
        assert header_of(response, "Connection") == "keep-alive"  # it waits for the body to find the next request
        assert ends_within(sock, ENDS_WITHIN) == b""


def test_forwarded_body_that_stops_gets_408(quick: ProxyProcess, origin: OriginServer) -> None:
    seen = len(origin.seen)
    with socket.create_connection(("127.0.0.1", quick.port), timeout=5) as sock:
        sock.sendall(f"POST http://127.0.0.1:{origin.port}/slow HTTP/1.1\r\nHost: x\r\n"
                     f"Proxy-Authorization: {ALICE}\r\nContent-Length: 1000\r\n\r\n".encode() + b"y" * 10)
        rest = ends_within(sock, ENDS_WITHIN)
    assert status_of(rest) == 408, rest[:300]
    # The origin's connection is cut: it may record what it read, never the whole body.
    assert all(len(s["body"]) < 1000 for s in origin.seen[seen:]), "the origin got a complete request"


def test_client_that_reads_nothing_is_cut_off(quick: ProxyProcess) -> None:
    count = 20_000  # 700 KB of requests, 19 MB of 407s: far past the kernel's buffers
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", quick.port))
        sock.sendall(b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n" * count)
        time.sleep(3.5)  # the point: write_timeout (1 s) passes with the client reading nothing
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        rest = ends_within(sock, 30.0)
    assert rest.count(b"HTTP/1.1 407 ") < count


def test_read_timeout_counts_from_the_request_on_a_pooled_connection(session_tmp: Path, users_file: Path) -> None:
    """A pooled origin connection idle for longer than read_timeout: the timer starts when the request is sent.

    read_timeout 2 s; the connection sits idle in the pool for 3.5 s; the origin then takes 1.2 s to answer. The
    once-a-second check runs at least once in those 1.2 s: timed from the pool, it would answer 504.
    """
    config = session_tmp / "read-timeout-2.toml"
    config.write_text("read_timeout = 2\nthrottle_max_failures = 0\n")
    proxy = start_proxy(session_tmp, users_file, "--config", str(config))
    answered: list[str] = []

    def answer(conn: socket.socket, path: str) -> bool:
        if answered:
            time.sleep(1.2)  # a slow origin, within read_timeout
        answered.append(path)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    origin = ScriptedOrigin(answer)
    request = (f"GET http://{origin.authority}/r HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {ALICE}\r\n\r\n").encode()
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(request)
            assert status_of(read_response(sock)) == 200
        time.sleep(3.5)  # the point: the origin connection sits in the pool for longer than read_timeout
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(request)
            response = read_response(sock)
        assert status_of(response) == 200, response[:300]
        assert origin.connections == 1, "the pooled connection was not reused"
    finally:
        origin.close()
        proxy.stop()


def test_body_of_a_queued_request_waits_with_it(quick: ProxyProcess, origin: OriginServer) -> None:
    """A request's body is not timed while the proxy holds it back behind a request still being answered."""
    def answer(conn: socket.socket, path: str) -> bool:
        # An answer trickled over 2.5 s, a byte every 0.5 s (within read_timeout, 1 s): the queued body's gap is
        # then longer than read_timeout, and the proxy's doing, not the client's.
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        for byte in b"okay!":
            time.sleep(0.5)
            conn.sendall(bytes([byte]))
        return True

    slow = ScriptedOrigin(answer)
    first = f"GET http://{slow.authority}/slow HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {ALICE}\r\n\r\n"
    second = (f"POST http://127.0.0.1:{origin.port}/p HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {ALICE}\r\n"
              "Content-Length: 10\r\n\r\n12345")
    try:
        with socket.create_connection(("127.0.0.1", quick.port), timeout=10) as sock:
            sock.sendall((first + second).encode())
            assert status_of(read_response(sock)) == 200
            sock.sendall(b"67890")  # the rest of the body, once the first answer is in
            response = read_response(sock)
        assert status_of(response) == 200, response[:300]
        assert origin.seen[-1]["body"] == b"1234567890"
    finally:
        slow.close()


@pytest.fixture()
def silent_far_end() -> Iterator[tuple[int, list[socket.socket]]]:
    """A TCP server that accepts and never says a word (nor reads): the far end of a tunnel."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1], accepted
    listener.close()
    for conn in accepted:
        conn.close()


def test_a_tunnel_silent_both_ways_is_cut_after_tunnel_idle_timeout(
        session_tmp: Path, users_file: Path, silent_far_end: tuple[int, list[socket.socket]]) -> None:
    """Neither end says a word: the client's slot and the far end's descriptor are given back (issue 9 item 3)."""
    port, accepted = silent_far_end
    config = session_tmp / "tunnel-idle-2.toml"
    config.write_text("tunnel_idle_timeout = 2\nthrottle_max_failures = 0\n")
    proxy = start_proxy(session_tmp, users_file, "--config", str(config))
    connect = (f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               f"Proxy-Authorization: {ALICE}\r\n\r\n").encode()
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as quiet, \
                socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as chatty:
            for sock in (quiet, chatty):
                sock.sendall(connect)
                assert sock.recv(4096).startswith(b"HTTP/1.1 200 "), "the tunnel did not open"
            started = time.monotonic()
            for _ in range(5):  # 5 s of a byte a second up the chatty tunnel: longer than the timeout, never idle
                time.sleep(1)
                chatty.sendall(b".")
            assert ends_within(quiet, 1.0) == b""  # the quiet one was cut meanwhile
            assert time.monotonic() - started > 2
            chatty.settimeout(0.2)
            with pytest.raises(TimeoutError):
                chatty.recv(1)  # still open
            assert len(accepted) == 2
            accepted[0].settimeout(5)
            assert accepted[0].recv(1) == b""  # the far end of the quiet tunnel saw its connection end
    finally:
        proxy.stop()


def test_a_slow_password_check_is_answered_503_after_connect_timeout(session_tmp: Path) -> None:
    """bcrypt at a cost that takes longer than connect_timeout: the client is not held for the whole check."""
    users = session_tmp / "slow.htpasswd"
    started = time.monotonic()
    users.write_text("slow:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=16)).decode() + "\n")
    cost = time.monotonic() - started  # the check will cost as much
    assert cost > 3, f"bcrypt rounds=16 took only {cost:.1f} s here"
    config = session_tmp / "slow-check.toml"
    config.write_text("connect_timeout = 1\nthrottle_max_failures = 0\nschemes = [\"basic\"]\n")
    proxy = start_proxy(session_tmp, users, "--config", str(config))
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(f"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: "
                         f"{basic_authorization('slow', 'pw')}\r\n\r\n".encode())
            t0 = time.monotonic()
            rest = ends_within(sock, cost - 0.5)
        assert status_of(rest) == 503 and time.monotonic() - t0 < cost - 0.5, rest[:300]
        assert b"could not check the credentials" in rest
    finally:
        proxy.stop()


def loopback_capacity() -> int:
    """Bytes the kernel holds between two loopback sockets when the receiver (SO_RCVBUF 4096) reads nothing."""
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(listener.getsockname())
        sender, _ = listener.accept()
        with sender:
            sender.setblocking(False)
            total = 0
            for _ in range(3):
                with contextlib.suppress(BlockingIOError):
                    while True:
                        total += sender.send(b"x" * 65536)
                time.sleep(0.1)
            return total


def test_the_last_answer_to_a_client_that_reads_nothing_does_not_hold_its_connection(quick: ProxyProcess) -> None:
    """The answer to a `Connection: close` request fits the kernel's buffers and the proxy's mark, so the proxy
    finishes the exchange and closes: asyncio's close then waits for the client to read the rest, with no engine
    state left to time it. write_timeout (1 s) bounds it too: the connection is cut, not held for ever."""
    size = loopback_capacity()

    def answer(conn: socket.socket, path: str) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size)
        return True

    origin = ScriptedOrigin(answer)
    try:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", quick.port))
            sock.sendall(f"GET http://{origin.authority}/big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                         f"Proxy-Authorization: {ALICE}\r\n\r\n".encode())
            time.sleep(4)  # the point: write_timeout passes, and more, with the client reading nothing
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            rest = ends_within(sock, 30.0)
        assert status_of(rest) == 200 and len(rest) < size, "the proxy held the connection until it was read"
    finally:
        origin.close()
