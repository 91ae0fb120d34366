"""The client connection's flow (issue 9 items 1, 4 and the low items): what is owed to a client that does not
read stays bounded, a pipeline of any depth is answered in order, and the last request is answered in full.

Memory is measured as the RSS of a real proxy subprocess; every request goes over a real socket.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import (
    OriginServer,
    ProxyProcess,
    ScriptedOrigin,
    basic_authorization,
    read_response,
    rss_bytes,
    start_proxy,
    status_of,
    write_tls_files,
)

ALICE = basic_authorization("alice", "wonderland")
#: 35 bytes, no credentials: each is answered with a 407 of about 900 bytes (the amplification of item 1).
BARE_GET = b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n"
#: What the proxy may grow by while it holds back a client that reads nothing; unbounded buffering of the cases
#: below grows it by 50 MB and more.
GROWTH_LIMIT = 12 << 20


@pytest.fixture
def own_proxy(tmp_path: Path, users_file: Path) -> Iterator[ProxyProcess]:
    """A proxy of this test's own (memory is measured on it) without an access log to fill the disk."""
    proxy = start_proxy(tmp_path, users_file, "--access-log", "")
    yield proxy
    proxy.stop()


def fast_origin(size: int, *, close: bool = False) -> tuple[ScriptedOrigin, list[str]]:
    """An origin that answers each request with one write of head and a ``size``-byte body (with ``size`` 0,
    a body naming the path), closing after it if ``close``; and the paths it was asked for, in order.

    With ``close`` every request needs a new origin connection, so pausing the one in use is not enough.
    """
    asked: list[str] = []
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" + (b"Connection: close\r\n" if close else b"") + b"\r\n"
    fixed = head % size + b"x" * size

    def answer(conn: socket.socket, path: str) -> bool:
        asked.append(path)
        conn.sendall(fixed if size else head % len(path) + path.encode())
        return not close

    return ScriptedOrigin(answer), asked


def push(sock: socket.socket, data: bytes, seconds: float) -> int:
    """Send ``data`` as fast as the proxy takes it, for at most ``seconds``; return the bytes sent."""
    sock.setblocking(False)
    view = memoryview(data)
    sent = 0
    deadline = time.monotonic() + seconds
    while sent < len(data) and time.monotonic() < deadline:
        try:
            sent += sock.send(view[sent:sent + 65536])
        except BlockingIOError:
            time.sleep(0.005)
    sock.setblocking(True)
    return sent


def settled_rss(pid: int, quiet: float = 1.5, most: float = 30.0) -> int:
    """The proxy's RSS once it has stopped changing for ``quiet`` seconds (it has done all it will do)."""
    last = rss_bytes(pid)
    stable_since = time.monotonic()
    deadline = stable_since + most
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = rss_bytes(pid)
        if abs(now - last) > 128 << 10:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since > quiet:
            break
    return rss_bytes(pid)


def read_responses(sock: socket.socket, count: int, timeout: float = 30.0) -> list[bytes]:
    sock.settimeout(timeout)
    return [read_response(sock) for _ in range(count)]


# == item 1: a client that does not read ======================================================================
def test_unread_pipelined_refusals_keep_memory_bounded(own_proxy: ProxyProcess) -> None:
    """50,000 credential-less GETs (1.75 MB) never read: each would queue a 407 of ~900 bytes (45 MB)."""
    count = 50_000
    pid = own_proxy.proc.pid
    before = rss_bytes(pid)
    with socket.create_connection(("127.0.0.1", own_proxy.port), timeout=30) as sock:
        sent = push(sock, BARE_GET * count, 20.0)
        grown = settled_rss(pid) - before
        assert grown < GROWTH_LIMIT, f"proxy RSS grew by {grown >> 20} MB for {sent} bytes of requests"
        # Nothing was lost by holding back: every request sent is answered, in order, once the client reads.
        partial = sent % len(BARE_GET)
        if partial:  # the push stopped inside a request: finish it
            sock.sendall(BARE_GET[partial:])
        answered = read_responses(sock, -(-sent // len(BARE_GET)))
    assert all(status_of(r) == 407 for r in answered)


def test_unread_pipelined_refusals_over_tls_keep_memory_bounded(tmp_path: Path, users_file: Path) -> None:
    """The same over the TLS listener: the TLS transport gets the same marks once its handshake is done."""
    cert, key, ca = write_tls_files(tmp_path)
    proxy = start_proxy(tmp_path, users_file, "--access-log", "", "--tls-cert", str(cert), "--tls-key", str(key))
    count = 30_000  # 1 MB of requests, 28 MB of 407s
    try:
        context = ssl.create_default_context(cafile=str(ca))
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(BARE_GET)  # the handshake is over and one answer is owed before we measure
            before = rss_bytes(proxy.proc.pid)
            sock.sendall(BARE_GET * (count - 1))
            grown = settled_rss(proxy.proc.pid) - before
            assert grown < GROWTH_LIMIT, f"proxy RSS grew by {grown >> 20} MB"
            answered = read_responses(sock, count)
        assert all(status_of(r) == 407 for r in answered)
    finally:
        proxy.stop()


@pytest.mark.parametrize("close", [True, False], ids=["origin-closes", "origin-keep-alive"])
def test_unread_relayed_answers_keep_memory_bounded(own_proxy: ProxyProcess, close: bool) -> None:
    """1,000 pipelined GETs of a 60 KB answer, never read: 60 MB if relayed without a bound."""
    origin, asked = fast_origin(60_000, close=close)
    count = 1_000
    request = (f"GET http://127.0.0.1:{origin.port}/60k HTTP/1.1\r\nHost: x\r\n"
               f"Proxy-Authorization: {ALICE}\r\n\r\n").encode()
    pid = own_proxy.proc.pid
    before = rss_bytes(pid)
    with socket.create_connection(("127.0.0.1", own_proxy.port), timeout=30) as sock:
        sent = push(sock, request * count, 20.0)
        assert sent == len(request) * count
        grown = settled_rss(pid) - before
        assert grown < GROWTH_LIMIT, f"proxy RSS grew by {grown >> 20} MB"
        assert len(asked) < count // 2, "the proxy kept asking the origin for answers nobody reads"
        answered = read_responses(sock, count, timeout=60)
    assert all(status_of(r) == 200 and len(r.split(b"\r\n\r\n", 1)[1]) == 60_000 for r in answered)
    origin.close()


def test_reading_resumes_after_the_client_catches_up(proxy: ProxyProcess, origin: OriginServer) -> None:
    """A client that stops reading and later reads again gets every answer, and the connection stays usable."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(BARE_GET * 3000)  # ~2.7 MB of 407s: past every buffer, so the proxy must have paused
        answered = read_responses(sock, 3000)
        assert all(status_of(r) == 407 for r in answered)
        sock.sendall(f"GET http://127.0.0.1:{origin.port}/after HTTP/1.1\r\nHost: x\r\n"
                     f"Proxy-Authorization: {ALICE}\r\n\r\n".encode())
        assert status_of(read_response(sock)) == 200


# == item 4: deep pipelining ===================================================================================
PIPELINED = {
    # What each of the 1,000 requests is, by the way it ends: a refusal that takes no body, one whose body is read
    # and dropped, a CONNECT (whose head ends llhttp's parse), and requests forwarded to the origin.
    "get-refused": (b"GET http://a/p HTTP/1.1\r\nHost: a\r\n\r\n", 407),
    "post-refused": (b"POST http://a/p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", 407),
    "connect-refused": (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 407),
    "get-bad-request": (b"GET /not-absolute HTTP/1.1\r\nHost: a\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n"
                        b"Connection: keep-alive\r\n\r\n", 400),
}


@pytest.mark.parametrize(("request_bytes", "status"), PIPELINED.values(), ids=PIPELINED.keys())
def test_a_thousand_pipelined_refusals_in_one_write(proxy: ProxyProcess, request_bytes: bytes,
                                                    status: int) -> None:
    before = len(proxy.stderr_lines)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
        sock.sendall(request_bytes * 1000)
        first = read_response(sock)
        assert status_of(first) == status, first[:300]
        if status == 400:  # a request the proxy cannot route closes the connection (RFC 9112 section 11.2)
            assert sock.recv(10) == b""
        else:
            assert all(status_of(r) == status for r in read_responses(sock, 999))
    assert "Traceback" not in "".join(proxy.stderr_lines[before:])


@pytest.mark.parametrize("credentials", [False, True], ids=["refused", "forwarded"])
def test_a_thousand_pipelined_requests_in_one_write(proxy: ProxyProcess, credentials: bool) -> None:
    origin, _ = fast_origin(0)  # answers with the path, in one write
    auth = f"Proxy-Authorization: {ALICE}\r\n" if credentials else ""
    data = b"".join(f"GET http://127.0.0.1:{origin.port}/p{i} HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode()
                    for i in range(1000))
    before = len(proxy.stderr_lines)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
        sock.sendall(data)
        answered = read_responses(sock, 1000)
    origin.close()
    if credentials:
        assert [r.split(b"\r\n\r\n", 1)[1] for r in answered] == [b"/p%d" % i for i in range(1000)]
    else:
        assert all(status_of(r) == 407 for r in answered)
    assert "Traceback" not in "".join(proxy.stderr_lines[before:])


# == low items: the last request, and the head limit ==========================================================
LAST = {
    "connection-close": ("HTTP/1.1", "Connection: close\r\n"),
    "connection-close-with-body": ("HTTP/1.1", "Connection: close\r\nContent-Length: 5\r\n\r\nhello"),
    "http10": ("HTTP/1.0", ""),
    "http10-with-body": ("HTTP/1.0", "Content-Length: 5\r\n\r\nhello"),
    "http10-connection-close": ("HTTP/1.0", "Connection: close\r\n"),
}


@pytest.mark.parametrize("credentials", [False, True], ids=["refused", "forwarded"])
@pytest.mark.parametrize(("version", "extra"), LAST.values(), ids=LAST.keys())
def test_request_after_the_last_one_is_not_processed(proxy: ProxyProcess, origin: OriginServer, version: str,
                                                     extra: str, credentials: bool) -> None:
    """Squid's behaviour: the last request is answered in full, then a clean close; what followed is dropped."""
    auth = f"Proxy-Authorization: {ALICE}\r\n" if credentials else ""
    method = "POST" if "Content-Length" in extra else "GET"
    head, _, body = extra.partition("\r\n\r\n")
    head = head + "\r\n" if body else extra
    first = f"{method} http://127.0.0.1:{origin.port}/first {version}\r\nHost: x\r\n{auth}{head}\r\n{body}"
    after = f"GET http://127.0.0.1:{origin.port}/after HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {ALICE}\r\n\r\n"
    seen = len(origin.seen)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall((first + after * 3).encode())
        response = read_response(sock)
        rest = b""
        while chunk := sock.recv(65536):  # a FIN, not a reset: ConnectionResetError would fail the test
            rest += chunk
    assert status_of(response) == (200 if credentials else 407), response[:200]
    assert rest == b"", rest[:200]
    assert [s["path"] for s in origin.seen[seen:]] == (["/first"] if credentials else [])


def test_half_closed_client_gets_every_answer(proxy: ProxyProcess, origin: OriginServer) -> None:
    request = f"GET http://127.0.0.1:{origin.port}/h HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {ALICE}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(request.encode() * 3 + BARE_GET)
        sock.shutdown(socket.SHUT_WR)
        answered = read_responses(sock, 4)
        assert sock.recv(10) == b""
    assert [status_of(r) for r in answered] == [200, 200, 200, 407]


def test_malformed_request_is_answered_after_those_ahead_of_it(proxy: ProxyProcess, origin: OriginServer) -> None:
    good = f"GET http://127.0.0.1:{origin.port}/ok HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {ALICE}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall((good + good + "GET http://x/ HTTP/1.1\r\nHost: x\r\nBad Field: 1\r\n\r\n" + good).encode())
        answered = read_responses(sock, 3)
        assert sock.recv(10) == b""
    assert [status_of(r) for r in answered] == [200, 200, 400]


def test_head_split_across_reads_then_a_large_body(proxy: ProxyProcess, origin: OriginServer) -> None:
    """The head limit counts head bytes only, not the body that follows the head in the same read."""
    body = b"b" * 100_000
    head = (f"POST http://127.0.0.1:{origin.port}/upload HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {ALICE}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(head[:30])
        time.sleep(0.1)  # two reads at the proxy: nothing to await, the point is that it has read the first
        sock.sendall(head[30:] + body)
        response = read_response(sock)
    assert status_of(response) == 200, response[:300]
    assert origin.seen[-1]["body"] == body


def test_head_split_across_many_reads_is_still_bounded(proxy: ProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"GET http://a/ HTTP/1.1\r\nHost: a\r\nX-Long: ")
        try:
            for _ in range(200):  # an endless field value, 1 KB a read: 431 once past max_header_size
                sock.sendall(b"v" * 1024)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = read_response(sock)
    assert status_of(response) == 431


@pytest.mark.parametrize("framing", [b"3\r\nabc\r\n0\r\nX-Endless: ", b"3;" + b"e" * 10], ids=["trailer", "ext"])
def test_endless_trailer_or_chunk_line_is_bounded(proxy: ProxyProcess, origin: OriginServer, framing: bytes) -> None:
    head = (f"POST http://127.0.0.1:{origin.port}/t HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {ALICE}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(head + framing)
        closed = False
        try:
            for _ in range(400):  # 400 KB of one trailer value or one chunk extension
                sock.sendall(b"v" * 1024)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        sock.settimeout(5)
        try:
            rest = sock.recv(65536)
            while chunk := sock.recv(65536):
                rest += chunk
        except ConnectionResetError:
            rest = b""
    assert closed or rest == b"" or status_of(rest) in (400, 431), rest[:200]


@pytest.mark.parametrize("credentials", [False, True], ids=["refused", "forwarded"])
def test_request_after_one_asking_for_an_upgrade(proxy: ProxyProcess, origin: OriginServer, credentials: bool) -> None:
    """llhttp stops after a request with Upgrade as it does after CONNECT; this proxy upgrades nothing (the field
    is hop-by-hop), so the bytes after it are the next request, answered in turn."""
    auth = f"Proxy-Authorization: {ALICE}\r\n" if credentials else ""
    upgrade = (f"GET http://127.0.0.1:{origin.port}/ws HTTP/1.1\r\nHost: x\r\n{auth}Connection: Upgrade\r\n"
               "Upgrade: websocket\r\n\r\n")
    after = f"GET http://127.0.0.1:{origin.port}/after HTTP/1.1\r\nHost: x\r\n{auth}\r\n"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall((upgrade + after).encode())
        answered = read_responses(sock, 2, timeout=10)
    assert [status_of(r) for r in answered] == ([200, 200] if credentials else [407, 407])
