"""A hostile origin any user may visit (issue 9 items 2 and 7, and the framing item): over real sockets, an
origin of the test's own on 127.0.0.1 answers the proxy (run through its CLI, --allow-private) with
- response heads without end: one huge field, too many fields, a status line without end, endless 1xx heads,
  a head trickled a byte at a time; chunked bodies with endless chunk extensions or trailers. Each gets 502
  (504 for the trickle) naming the origin, the origin connection is cut and never pooled, memory stays flat;
- this hop's own fields (Proxy-Authenticate, Proxy-Authentication-Info, Proxy-Status) in any letter case or
  named by Connection: none reaches the client, the proxy's own Proxy-Authentication-Info still does, and
  authproxy's client library is not misled by a fake nextnonce;
- framing RFC 9112 section 6 forbids or cannot delimit: repaired or refused, never relayed as it came.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from authproxy.client import ProxyTransport

from helpers import (
    USERS,
    ProxyProcess,
    ScriptedOrigin,
    basic_authorization,
    challenges_of,
    digest_authorization,
    header_of,
    read_response,
    rss_bytes,
    start_proxy,
    status_of,
)

ALICE = basic_authorization("alice", "wonderland")
Answer = Callable[[socket.socket, str], bool]


@pytest.fixture(scope="module")
def proxy(session_tmp: Path, users_file: Path) -> Iterator[ProxyProcess]:
    """Defaults, except a short header_timeout so that the slow-head test runs in seconds; read_timeout stays
    well above the trickle's pace, so only the head's own timer can end it."""
    config = session_tmp / "hostile-origin.toml"
    config.write_text("header_timeout = 2\nread_timeout = 30\nthrottle_max_failures = 0\n")
    proc = start_proxy(session_tmp, users_file, "--config", str(config))
    yield proc
    proc.stop()


@pytest.fixture
def origin() -> Iterator[Callable[[Answer], ScriptedOrigin]]:
    made: list[ScriptedOrigin] = []

    def make(answer: Answer) -> ScriptedOrigin:
        made.append(ScriptedOrigin(answer))
        return made[-1]

    yield make
    for server in made:
        server.close()


def sends(data: bytes, *, keep: bool = True) -> Answer:
    def answer(conn: socket.socket, path: str) -> bool:
        conn.sendall(data)
        return keep

    return answer


def request(origin: ScriptedOrigin, path: str = "/", *, version: str = "1.1", auth: str = ALICE) -> bytes:
    return (f"GET http://{origin.authority}{path} HTTP/{version}\r\nHost: {origin.authority}\r\n"
            f"Proxy-Authorization: {auth}\r\n\r\n").encode()


def ask(proxy: ProxyProcess, origin: ScriptedOrigin, path: str = "/", *, version: str = "1.1") -> bytes:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as sock:
        sock.sendall(request(origin, path, version=version))
        return read_response(sock)


def final_response(sock: socket.socket) -> bytes:
    """The next final response on ``sock``, past any interim (1xx) heads relayed before it."""
    response = read_response(sock)
    while response.startswith(b"HTTP/1.1 1"):
        response = read_response(sock)
    return response


def read_to_close(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def read_chunked(sock: socket.socket) -> tuple[bytes, bytes]:
    """One response with a chunked body from ``sock``: (head, decoded body). Fails if the chunking is broken."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, buf
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    body = b""
    while True:
        while b"\r\n" not in rest:
            chunk = sock.recv(65536)
            assert chunk, (head, body, rest)
            rest += chunk
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        while len(rest) < size + 2:
            chunk = sock.recv(65536)
            assert chunk, (head, body, rest)
            rest += chunk
        if size == 0:
            assert rest[:2] == b"\r\n", rest  # no trailer section: the proxy does not relay trailers
            return head, body
        assert rest[size:size + 2] == b"\r\n"
        body, rest = body + rest[:size], rest[size + 2:]


def names(response: bytes) -> list[str]:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    return [line.split(":", 1)[0].strip().lower() for line in head.split("\r\n")[1:]]


def assert_refused(response: bytes, origin: ScriptedOrigin, error: str, status: int = 502) -> None:
    assert status_of(response) == status, response[:300]
    proxy_status = header_of(response, "Proxy-Status") or ""
    assert proxy_status.startswith("authproxy;") and f"error={error}" in proxy_status, proxy_status
    body = response.split(b"\r\n\r\n", 1)[1].decode()
    assert body.count("\n") == 2 and origin.authority in body.splitlines()[1], body


# == item 1: response heads without end ========================================================================
def streamed(prefix: bytes, filler: bytes, total: int) -> Answer:
    """Send ``prefix`` then ``filler`` until ``total`` bytes, as fast as the proxy takes them."""

    def answer(conn: socket.socket, path: str) -> bool:
        conn.sendall(prefix)
        block = filler * (65536 // len(filler))
        sent = len(prefix)
        while sent < total:
            conn.sendall(block)
            sent += len(block)
        return False

    return answer


HEAD_ATTACKS = {
    # name: (what the origin does, the Proxy-Status error)
    "one 200 KB field in one write": (
        sends(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200_000 + b"\r\nContent-Length: 2\r\n\r\nok"),
        "http_response_header_size"),
    "one field without end": (streamed(b"HTTP/1.1 200 OK\r\nX-Big: ", b"a", 50 << 20), "http_response_header_size"),
    "a field name without end": (streamed(b"HTTP/1.1 200 OK\r\n", b"X", 50 << 20), "http_response_header_size"),
    "a status line without end": (streamed(b"HTTP/1.1 200 ", b"O", 50 << 20), "http_response_header_size"),
    "a 200 KB reason phrase in one write": (
        sends(b"HTTP/1.1 200 " + b"O" * 200_000 + b"\r\nContent-Length: 2\r\n\r\nok"), "http_response_header_size"),
    "many small fields without end": (
        streamed(b"HTTP/1.1 200 OK\r\n", b"X-Many: 1\r\n", 50 << 20), "http_response_header_section_size"),
    "101 fields": (sends(b"HTTP/1.1 200 OK\r\n" + b"X-Many: 1\r\n" * 101 + b"Content-Length: 2\r\n\r\nok"),
                   "http_response_header_section_size"),
    "40 fields of 2 KB": (sends(b"HTTP/1.1 200 OK\r\n" + (b"X-Mid: " + b"m" * 2048 + b"\r\n") * 40
                                + b"Content-Length: 2\r\n\r\nok"), "http_response_header_section_size"),
    "endless interim 100 heads": (streamed(b"", b"HTTP/1.1 100 Continue\r\n\r\n", 50 << 20),
                                  "http_response_header_section_size"),
}


@pytest.mark.parametrize("name", HEAD_ATTACKS)
def test_response_head_limits(proxy: ProxyProcess, origin: Callable[[Answer], ScriptedOrigin], name: str) -> None:
    behaviour, error = HEAD_ATTACKS[name]
    server = origin(behaviour)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as sock:
        sock.sendall(request(server))
        response = final_response(sock)
        assert_refused(response, server, error)
        assert b"a" * 1000 not in response and b"X-Many" not in response
        # The origin connection was cut, not pooled: what the origin streamed stopped short.
        assert server.done.wait(10)
        # The client's connection is in a known state and carries on; the origin is asked on a new connection.
        sock.sendall(request(server))
        assert status_of(final_response(sock)) == 502
    assert server.connections == 2
    assert "Traceback" not in "".join(proxy.stderr_lines)


def test_a_head_just_under_the_limits_is_relayed(proxy: ProxyProcess,
                                                 origin: Callable[[Answer], ScriptedOrigin]) -> None:
    fields = b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 500) for i in range(98))  # 98 fields, about 50 KB
    server = origin(sends(b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\nok"))
    response = ask(proxy, server)
    assert status_of(response) == 200 and response.endswith(b"\r\n\r\nok")
    assert names(response).count("x-f97") == 1


@pytest.mark.parametrize("timeouts", ["module proxy", "header_timeout = 30\nread_timeout = 2\n"])
def test_a_head_trickled_a_byte_at_a_time_gets_504(proxy: ProxyProcess, origin: Callable[[Answer], ScriptedOrigin],
                                                    session_tmp: Path, users_file: Path, timeouts: str) -> None:
    """read_timeout restarts on every byte; the head's own timer does not. It runs from the head's first byte
    for header_timeout (2 s on the module's proxy, whose read_timeout is 30 s), or read_timeout if shorter."""
    if timeouts != "module proxy":
        config = session_tmp / "short-read-timeout.toml"
        config.write_text(timeouts)
        proxy = start_proxy(session_tmp, users_file, "--config", str(config))

    def trickle(conn: socket.socket, path: str) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        for _ in range(100):  # 30 s at most, if the proxy never gave up
            time.sleep(0.3)
            conn.sendall(b"s")
        return False

    server = origin(trickle)
    started = time.monotonic()
    try:
        response = ask(proxy, server)
    finally:
        if timeouts != "module proxy":
            proxy.stop()
    assert_refused(response, server, "http_response_timeout", status=504)
    assert time.monotonic() - started < 8
    assert server.done.wait(10) and server.errors  # the proxy closed its side: the trickle hit a dead socket


def test_a_100_mb_header_field_costs_no_memory(proxy: ProxyProcess, origin: Callable[[Answer], ScriptedOrigin]) -> None:
    sent = [0]

    def flood(conn: socket.socket, path: str) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Huge: ")
        block = b"h" * 65536
        while sent[0] < 100 << 20:
            conn.sendall(block)
            sent[0] += len(block)
        conn.sendall(b"\r\nContent-Length: 2\r\n\r\nok")
        return False

    server = origin(flood)
    before = rss_bytes(proxy.proc.pid)
    response = ask(proxy, server)
    assert server.done.wait(20)
    grown = rss_bytes(proxy.proc.pid) - before
    assert_refused(response, server, "http_response_header_size")
    assert server.errors, "the origin sent its 100 MB: the proxy kept reading"
    assert sent[0] < 16 << 20, sent[0]
    assert grown < 16 << 20, f"proxy RSS grew by {grown} bytes"


def chunked_then(tail: Callable[[socket.socket], None]) -> Answer:
    def answer(conn: socket.socket, path: str) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        tail(conn)
        return False

    return answer


def endless(prefix: bytes, filler: bytes, total: int = 50 << 20) -> Callable[[socket.socket], None]:
    def tail(conn: socket.socket) -> None:
        conn.sendall(prefix)
        block = filler * (65536 // len(filler))
        for _ in range(total // len(block)):
            conn.sendall(block)

    return tail


@pytest.mark.parametrize("name, tail", [
    ("endless chunk extensions", endless(b"5;", b"ext=val;")),
    ("a trailer field without end", endless(b"0\r\nX-Trailer: ", b"t")),
    ("endless trailer fields", endless(b"0\r\n", b"X-Trailer: t\r\n")),
])
def test_chunked_framing_without_end_is_cut(proxy: ProxyProcess, origin: Callable[[Answer], ScriptedOrigin],
                                            name: str, tail: Callable[[socket.socket], None]) -> None:
    server = origin(chunked_then(tail))
    before = rss_bytes(proxy.proc.pid)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as sock:
        sock.sendall(request(server))
        data = read_to_close(sock)
    assert server.done.wait(20)
    grown = rss_bytes(proxy.proc.pid) - before
    # The head and the first chunk went through; then the connection was cut without the last chunk, so the
    # client knows the response is incomplete.
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"5\r\nfirst\r\n"), data[-200:]
    assert server.errors, f"{name}: the origin sent everything"
    assert grown < 16 << 20, f"proxy RSS grew by {grown} bytes"


def test_trailers_are_not_merged_into_the_head(proxy: ProxyProcess,
                                               origin: Callable[[Answer], ScriptedOrigin]) -> None:
    server = origin(sends(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
                          b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\nSet-Cookie: evil=1\r\n\r\n"))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as sock:
        for _ in range(2):  # the same origin connection serves twice: the trailers left nothing behind
            sock.sendall(request(server))
            head, body = read_chunked(sock)
            assert body == b"hello"
            assert b"X-Checksum:" not in head and b"evil" not in head
    assert server.connections == 1


# == item 7: this hop's fields from an origin ==================================================================
HOP_FIELDS = (b"Proxy-Authenticate: Digest realm=\"origin\", nonce=\"evil\", qop=\"auth\"\r\n"
              b"PROXY-AUTHENTICATION-INFO: nextnonce=\"fake\"\r\n"
              b"proxy-status: evil-origin; error=http_request_denied\r\n"
              b"Proxy-AuthenticatE: Basic realm=\"origin\"\r\n"
              b"Connection: keep-alive, X-Named\r\nX-Named: gone\r\n")


@pytest.mark.parametrize("status", [b"200 OK", b"401 Unauthorized", b"404 Not Found"])
def test_an_origins_proxy_fields_are_removed(proxy: ProxyProcess, origin: Callable[[Answer], ScriptedOrigin],
                                             status: bytes) -> None:
    server = origin(sends(b"HTTP/1.1 " + status + b"\r\n" + HOP_FIELDS
                          + b"WWW-Authenticate: Basic realm=\"origin\"\r\nContent-Length: 2\r\n\r\nok"))
    response = ask(proxy, server)
    assert status_of(response) == int(status[:3]) and response.endswith(b"ok")
    seen = names(response)
    for name in ("proxy-authenticate", "proxy-authentication-info", "proxy-status", "x-named"):
        assert name not in seen, response
    assert "www-authenticate" in seen  # the origin's own challenge is the origin's to send
    assert challenges_of(response) == []


def test_an_origins_407_is_not_taken_for_the_proxys(proxy: ProxyProcess,
                                                    origin: Callable[[Answer], ScriptedOrigin]) -> None:
    """An origin's 407 asks for credentials this proxy never sends: relayed, a client would read it as this
    proxy refusing its password. It becomes a 502 naming the origin, and the client library says so."""
    server = origin(sends(b"HTTP/1.1 407 Proxy Authentication Required\r\n" + HOP_FIELDS
                          + b"Content-Length: 2\r\n\r\nno"))
    response = ask(proxy, server)
    assert_refused(response, server, "http_protocol_error")
    assert challenges_of(response) == [] and b"fake" not in response and b"evil" not in response
    with httpx.Client(transport=ProxyTransport(proxy.url, ("alice", USERS["alice"])), timeout=10) as client:
        reply = client.get(f"http://{server.authority}/")  # before: ProxyAuthError, "the proxy rejected ..."
    assert reply.status_code == 502 and server.authority in reply.text
    assert "bad-password" not in proxy.access_log()


def test_the_proxys_own_authentication_info_still_arrives(proxy: ProxyProcess,
                                                          origin: Callable[[Answer], ScriptedOrigin]) -> None:
    server = origin(sends(b"HTTP/1.1 200 OK\r\n" + HOP_FIELDS + b"Content-Length: 2\r\n\r\nok"))
    target = f"http://{server.authority}/"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {server.authority}\r\n\r\n".encode())
        challenge = challenges_of(read_response(sock))[0]
        auth = digest_authorization(challenge, "alice", USERS["alice"], "GET", target)
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {server.authority}\r\nProxy-Authorization: {auth}\r\n\r\n"
                     .encode())
        response = read_response(sock)
    assert status_of(response) == 200
    head = response.split(b"\r\n\r\n", 1)[0]
    infos = re.findall(rb"(?im)^proxy-authentication-info:(.*)$", head)
    assert len(infos) == 1 and b"rspauth" in infos[0] and b"fake" not in infos[0], head
    assert names(response).count("proxy-authenticate") == 0 and b"proxy-status" not in head.lower()


def test_a_fake_nextnonce_does_not_mislead_the_client_library(session_tmp: Path, users_file: Path,
                                                              origin: Callable[[Answer], ScriptedOrigin]) -> None:
    server = origin(sends(b"HTTP/1.1 200 OK\r\n" + HOP_FIELDS + b"Content-Length: 2\r\n\r\nok"))
    digest_only = start_proxy(session_tmp, users_file, "--schemes", "digest")
    try:
        transport = ProxyTransport(digest_only.url, ("alice", USERS["alice"]))
        with httpx.Client(transport=transport, timeout=10) as client:
            replies = [client.get(f"http://{server.authority}/{i}") for i in range(4)]
        assert [r.status_code for r in replies] == [200] * 4 and all(r.text == "ok" for r in replies)
        log = digest_only.access_log()
    finally:
        digest_only.stop()
    # One 407 to start, then every request signed in with the proxy's own nonce: no bad-nonce, no failure.
    assert log.count("auth=missing") == 1 and log.count("auth=ok") == 4, log
    assert "bad-nonce" not in log and "stale" not in log, log


# == framing RFC 9112 section 6 forbids or cannot delimit =======================================================
def test_no_body_statuses_lose_their_framing_fields(proxy: ProxyProcess,
                                                    origin: Callable[[Answer], ScriptedOrigin]) -> None:
    answers = {
        "/204": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
        "/304": b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\nETag: \"x\"\r\n\r\n",
        "/304cl": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n",
    }

    def answer(conn: socket.socket, path: str) -> bool:
        conn.sendall(answers[path])
        return True

    server = origin(answer)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as sock:
        for path in answers:
            sock.sendall(request(server, path))
            response = read_response(sock)
            assert status_of(response) == int(path[1:4])
            assert response.endswith(b"\r\n\r\n"), response
            seen = names(response)
            assert "content-length" not in seen and "transfer-encoding" not in seen, response
        # The client connection carries on in step: the next answer is the next response, not "hello".
        sock.sendall(request(server, "/304"))
        assert status_of(read_response(sock)) == 304
    # A bodiless status that announced a body leaves the origin connection in doubt: never reused.
    assert server.connections == 4


def test_an_interim_response_with_content_is_refused(proxy: ProxyProcess,
                                                     origin: Callable[[Answer], ScriptedOrigin]) -> None:
    for interim in (b"HTTP/1.1 199 Odd\r\nContent-Length: 3\r\n\r\nabc",
                    b"HTTP/1.1 150 Odd\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                    b"HTTP/1.1 103 Early Hints\r\nContent-Length: 3\r\n\r\n"):
        server = origin(sends(interim + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as sock:
            sock.sendall(request(server))
            response = read_response(sock)
            assert b"abc" not in response
            assert_refused(response, server, "http_protocol_error")


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n",
    # RFC 9112 section 6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing: close after.
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n",
])
def test_transfer_encoding_wins_over_content_length(proxy: ProxyProcess, origin: Callable[[Answer], ScriptedOrigin],
                                                   head: bytes) -> None:
    server = origin(sends(head + b"\r\nb\r\nhello world\r\n0\r\n\r\n"))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as sock:
        for _ in range(2):
            sock.sendall(request(server))
            head, body = read_chunked(sock)
            assert body == b"hello world" and b"content-length" not in head.lower()
    assert server.connections == 2  # RFC 9112 section 6.3 rule 3: closed after, never reused


@pytest.mark.parametrize("coding", [b"gzip", b"x-custom", b"gzip, chunked"])
def test_a_coding_other_than_chunked_reaches_a_1_1_client_rechunked(
        proxy: ProxyProcess, origin: Callable[[Answer], ScriptedOrigin], coding: bytes) -> None:
    chunked = coding.endswith(b"chunked")
    payload = b"\x1f\x8b coded bytes \r\n0\r\n\r\n as they were"  # chunk-like bytes inside must stay data
    framed = b"%x\r\n%b\r\n0\r\n\r\n" % (len(payload), payload) if chunked else payload
    server = origin(sends(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + coding + b"\r\n\r\n" + framed,
                          keep=chunked))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as sock:
        sock.sendall(request(server))
        head, body = read_chunked(sock)
        assert body == payload
        codings = [c.strip().lower() for v in re.findall(rb"(?im)^transfer-encoding:(.*)$", head)
                   for c in v.split(b",")]
        assert codings == [coding.split(b",")[0].strip(), b"chunked"], head
        assert b"content-length" not in head.lower()
        sock.sendall(request(server))  # the client's connection stays usable
        assert status_of(read_chunked(sock)[0]) == 200


@pytest.mark.parametrize("coding", [b"identity", b"gzip", b"gzip, chunked"])
def test_a_coding_other_than_chunked_towards_an_http_1_0_client(
        proxy: ProxyProcess, origin: Callable[[Answer], ScriptedOrigin], coding: bytes) -> None:
    payload = b"\x1f\x8b until close \r\n0\r\n\r\n"
    framed = b"%x\r\n%b\r\n0\r\n\r\n" % (len(payload), payload) if coding.endswith(b"chunked") else payload
    server = origin(sends(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: " + coding + b"\r\n\r\n"
                          + framed, keep=False))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as sock:
        sock.sendall(request(server, version="1.0"))
        data = read_to_close(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert status_of(data) == 200 and body == payload
    # No length claimed, no Transfer-Encoding to an HTTP/1.0 client: the close ends the body.
    assert b"content-length" not in head.lower() and b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower()


def test_a_bodiless_response_never_names_transfer_codings(proxy: ProxyProcess,
                                                          origin: Callable[[Answer], ScriptedOrigin]) -> None:
    server = origin(sends(b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: gzip\r\n\r\n", keep=False))
    response = ask(proxy, server)
    assert status_of(response) == 204 and "transfer-encoding" not in names(response)


@pytest.mark.parametrize("framing", [
    b"Content-Length: 2\r\nContent-Length: 3\r\n",
    b"Content-Length: 2\r\nContent-Length: 2\r\n",
    b"Content-Length: 2, 3\r\n",
    b"Transfer-Encoding: chunked, chunked\r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked, gzip\r\n",
])
def test_framing_without_a_trusted_end_is_refused(proxy: ProxyProcess, origin: Callable[[Answer], ScriptedOrigin],
                                                  framing: bytes) -> None:
    server = origin(sends(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n2\r\nok\r\n0\r\n\r\n"))
    assert_refused(ask(proxy, server), server, "http_protocol_error")


@pytest.mark.parametrize("code", [b"000", b"099", b"600", b"999"])
def test_an_invalid_status_code_is_refused(proxy: ProxyProcess, origin: Callable[[Answer], ScriptedOrigin],
                                           code: bytes) -> None:
    """RFC 9110 section 15: a status outside 100..599 is invalid. Relayed before as "HTTP/1.1 0 X" or "99 X"
    (not a status line at all), and one below 100 left the exchange waiting for a final response for ever."""
    server = origin(sends(b"HTTP/1.1 " + code + b" X\r\nContent-Length: 2\r\n\r\nok"))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as sock:
        sock.sendall(request(server))
        response = read_response(sock)
    assert_refused(response, server, "http_protocol_error")
    assert b"invalid status code " + code in response


def test_an_unasked_response_behind_the_answer_does_not_reach_the_next_request(
        proxy: ProxyProcess, origin: Callable[[Answer], ScriptedOrigin]) -> None:
    """An origin that sends a second response behind its answer, in the same write (the proxy never pipelines to
    origins): its connection went to the pool as reusable, and the next request on it, anyone's, got 502."""
    def answer(conn: socket.socket, path: str) -> bool:
        if path == "/first":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                         b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path.encode()))
        return True

    server = origin(answer)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as sock:
        sock.sendall(request(server, "/first"))
        assert read_response(sock).endswith(b"\r\n\r\nok")
        sock.sendall(request(server, "/second"))
        second = read_response(sock)
    assert status_of(second) == 200 and second.endswith(b"/second"), second[:300]
    assert server.connections == 2  # the first connection was not reused
