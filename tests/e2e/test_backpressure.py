"""Back-pressure: a fast sender on either side of a tunnel or a forwarded body never grows the proxy's memory.

Each test lets one side send as fast as it can while the other side does not read, then checks that the amount
accepted is bounded by socket buffers (not by the proxy's memory) and that the proxy's RSS barely moved.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from helpers import ProxyProcess, basic_authorization, read_response, rss_bytes, status_of

ALICE = basic_authorization("alice", "wonderland")
LIMIT = 64 << 20  # far below what 2 s of unbounded buffering at loopback speed would reach


@pytest.fixture
def silent_origin() -> Iterator[tuple[int, list[socket.socket]]]:
    """A TCP server that accepts and never reads."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                accepted.append(conn)
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1], accepted
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


def push_until_blocked(sock: socket.socket, seconds: float = 2.0) -> int:
    """Send as much as the peer accepts within ``seconds``; return the byte count."""
    sock.setblocking(False)
    block = b"u" * 65536
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and sent < 4 * LIMIT:
        try:
            sent += sock.send(block)
        except BlockingIOError:
            time.sleep(0.01)
    return sent


def open_tunnel(proxy: ProxyProcess, port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                 f"Proxy-Authorization: {ALICE}\r\n\r\n".encode())
    assert status_of(read_response(sock)) == 200
    return sock


def test_tunnel_upload_to_an_origin_that_does_not_read(proxy: ProxyProcess,
                                                       silent_origin: tuple[int, list[socket.socket]]) -> None:
    port, _ = silent_origin
    before = rss_bytes(proxy.proc.pid)
    with open_tunnel(proxy, port) as sock:
        sent = push_until_blocked(sock)
        grown = rss_bytes(proxy.proc.pid) - before
    assert sent < LIMIT, f"the proxy accepted {sent} bytes the origin never read"
    assert grown < 32 << 20, f"proxy RSS grew by {grown} bytes"


def test_tunnel_download_to_a_client_that_does_not_read(proxy: ProxyProcess,
                                                        silent_origin: tuple[int, list[socket.socket]]) -> None:
    port, accepted = silent_origin
    before = rss_bytes(proxy.proc.pid)
    with open_tunnel(proxy, port) as sock:
        deadline = time.monotonic() + 5
        while not accepted:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        sent = push_until_blocked(accepted[-1])  # the origin floods; the client reads nothing
        grown = rss_bytes(proxy.proc.pid) - before
        assert sent < LIMIT, f"the proxy accepted {sent} bytes the client never read"
        assert grown < 32 << 20, f"proxy RSS grew by {grown} bytes"
        # Nothing was lost: the client can still read the stream from its first byte.
        sock.setblocking(True)
        assert sock.recv(5) == b"uuuuu"


def test_forwarded_download_to_a_slow_client(proxy: ProxyProcess) -> None:
    """A 1 GiB response through the proxy to a client that stops reading: the origin is paused, not buffered."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    sent_by_origin = [0]

    def origin() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1 << 30))
            sent_by_origin[0] = push_until_blocked(conn, 3.0)

    thread = threading.Thread(target=origin, daemon=True)
    thread.start()
    before = rss_bytes(proxy.proc.pid)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(f"GET http://127.0.0.1:{port}/huge HTTP/1.1\r\nHost: x\r\n"
                     f"Proxy-Authorization: {ALICE}\r\n\r\n".encode())
        thread.join(10)
        grown = rss_bytes(proxy.proc.pid) - before
    listener.close()
    assert 0 < sent_by_origin[0] < LIMIT
    assert grown < 32 << 20, f"proxy RSS grew by {grown} bytes"


def test_a_body_in_tiny_chunks_to_clients_that_do_not_read(proxy: ProxyProcess) -> None:
    """An origin's body in 1-byte chunks: what the proxy owes a client that does not read was kept as three small
    objects per chunk, ~40 bytes of memory per byte past the 64 KiB mark (20 such clients: +153 MB); it goes as
    one piece per read now."""
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=flood, args=(conn,), daemon=True).start()

    def flood(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            with contextlib.suppress(OSError):
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1\r\nz\r\n" * 3_000_000)
            stop.wait(30)

    threading.Thread(target=serve, daemon=True).start()
    port = listener.getsockname()[1]
    before = rss_bytes(proxy.proc.pid)
    socks: list[socket.socket] = []
    try:
        for _ in range(20):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", proxy.port))
            sock.sendall(f"GET http://127.0.0.1:{port}/tiny HTTP/1.1\r\nHost: x\r\n"
                         f"Proxy-Authorization: {ALICE}\r\n\r\n".encode())
            socks.append(sock)
        time.sleep(5)  # the origins flood; the clients read nothing
        grown = rss_bytes(proxy.proc.pid) - before
        assert grown < 50 << 20, f"proxy RSS grew by {grown / (1 << 20):.1f} MiB"
        socks[0].setblocking(True)
        socks[0].settimeout(10)
        assert socks[0].recv(15) == b"HTTP/1.1 200 OK"  # nothing was lost: the stream is read from its start
    finally:
        stop.set()
        listener.close()
        for sock in socks:
            sock.close()
