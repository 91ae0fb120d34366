"""The proxy over raw sockets: framing, hop-by-hop fields, Host, Via, keep-alive, Digest details, failures."""

from __future__ import annotations

import json
import socket
import time

import pytest

from helpers import (
    REALM,
    Echo,
    OriginServer,
    ProxyProcess,
    basic_authorization,
    challenges_of,
    digest_authorization,
    header_of,
    raw_exchange,
    read_response,
    status_of,
)

ALICE = basic_authorization("alice", "wonderland")


def get(origin: OriginServer, path: str = "/", *, auth: str | None = ALICE, extra: str = "",
        method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} http://127.0.0.1:{origin.port}{path} HTTP/{version}", f"Host: 127.0.0.1:{origin.port}"]
    if auth is not None:
        lines.append(f"Proxy-Authorization: {auth}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode("utf-8")


def body_json(response: bytes) -> Echo:
    result: Echo = json.loads(response.split(b"\r\n\r\n", 1)[1])
    return result


def test_forwarded_head_is_rewritten(proxy: ProxyProcess, origin: OriginServer) -> None:
    extra = ("Connection: keep-alive, X-Hop\r\nX-Hop: secret-hop\r\nKeep-Alive: timeout=5\r\n"
             "Proxy-Connection: keep-alive\r\nAuthorization: Bearer origin-token\r\nX-End: kept\r\n")
    raw = f"GET http://127.0.0.1:{origin.port}/path?q=1 HTTP/1.1\r\nHost: evil.example\r\n" \
          f"Proxy-Authorization: {ALICE}\r\n{extra}\r\n"
    response = raw_exchange(proxy.port, raw.encode())
    assert status_of(response) == 200
    seen = body_json(response)
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert seen["path"] == "/path?q=1"
    assert headers["host"] == f"127.0.0.1:{origin.port}"  # regenerated from the URI, RFC 9112 section 3.2.2
    assert "proxy-authorization" not in headers
    assert "x-hop" not in headers and "keep-alive" not in headers and "proxy-connection" not in headers
    assert headers["authorization"] == "Bearer origin-token"  # passes untouched
    assert headers["x-end"] == "kept"
    assert headers["via"] == "1.1 authproxy"
    assert header_of(response, "Via") == "1.1 authproxy"


def test_keep_alive_authenticates_every_request(proxy: ProxyProcess, origin: OriginServer) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(get(origin, "/first"))
        assert status_of(read_response(sock)) == 200
        sock.sendall(get(origin, "/second", auth=None))  # same socket, no credentials: refused
        assert status_of(read_response(sock)) == 407
        sock.sendall(get(origin, "/third"))
        assert status_of(read_response(sock)) == 200


def test_pipelined_requests_answered_in_order(proxy: ProxyProcess, origin: OriginServer) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(get(origin, "/p1") + get(origin, "/p2", auth=None) + get(origin, "/p3"))
        first, second, third = (read_response(sock) for _ in range(3))
    assert body_json(first)["path"] == "/p1"
    assert status_of(second) == 407
    assert body_json(third)["path"] == "/p3"


def test_http10_client(proxy: ProxyProcess, origin: OriginServer) -> None:
    response = raw_exchange(proxy.port, get(origin, "/chunked", version="1.0"), read_until_close=True)
    assert status_of(response) == 200
    assert response.endswith(b"hello chunked world\n")
    assert header_of(response, "Transfer-Encoding") is None


def test_chunked_and_until_close_responses(proxy: ProxyProcess, origin: OriginServer) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(get(origin, "/chunked"))
        response = sock.recv(65536)
        while not response.endswith(b"0\r\n\r\n"):
            response += sock.recv(65536)
        assert header_of(response, "Transfer-Encoding") == "chunked"
        # Read-until-close from the origin becomes chunked to an HTTP/1.1 client: the connection stays usable.
        sock.sendall(get(origin, "/until-close"))
        response = sock.recv(65536)
        while not response.endswith(b"0\r\n\r\n"):
            response += sock.recv(65536)
        assert b"body ends when the connection closes\n" in response
        sock.sendall(get(origin, "/after"))
        assert status_of(read_response(sock)) == 200


def test_head_response_has_no_body(proxy: ProxyProcess, origin: OriginServer) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(get(origin, "/h", method="HEAD") + get(origin, "/after-head"))
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        first, _, rest = head.partition(b"\r\n\r\n")
        assert status_of(first) == 200
        assert int(header_of(first + b"\r\n\r\n", "Content-Length") or 0) > 0
        sock.settimeout(5)
        while b"\r\n\r\n" not in rest:
            rest += sock.recv(65536)
        assert status_of(rest) == 200


def test_request_body_chunked_is_forwarded(proxy: ProxyProcess, origin: OriginServer) -> None:
    extra = "Transfer-Encoding: chunked\r\n"
    data = get(origin, "/upload", method="POST", extra=extra) + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    response = raw_exchange(proxy.port, data)
    assert body_json(response)["body"] == "hello world"


def test_407_with_body_keeps_connection(proxy: ProxyProcess, origin: OriginServer) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(get(origin, "/x", method="POST", auth=None, extra="Content-Length: 5\r\n") + b"abcde")
        assert status_of(read_response(sock)) == 407
        sock.sendall(get(origin, "/y"))
        assert body_json(read_response(sock))["path"] == "/y"


@pytest.mark.parametrize("algorithm_index, algorithm", [(0, "SHA-256"), (1, "MD5")])
@pytest.mark.parametrize("qop", ["auth", "auth-int"])
def test_digest_raw(proxy: ProxyProcess, origin: OriginServer, algorithm_index: int, algorithm: str,
                    qop: str) -> None:
    uri = f"http://127.0.0.1:{origin.port}/d"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(get(origin, "/d", auth=None))
        challenge = challenges_of(read_response(sock))[algorithm_index]
        assert f"algorithm={algorithm}" in challenge
        body = b"payload"
        auth = digest_authorization(challenge, "jösé", "pässwörd€ ok", "POST", uri, qop=qop, body=body)
        sock.sendall(get(origin, "/d", method="POST", auth=auth, extra="Content-Length: 7\r\n") + body)
        response = read_response(sock)
        assert status_of(response) == 200
        info = header_of(response, "Proxy-Authentication-Info")
        assert info is not None and f"qop={qop}" in info
        # rspauth for auth-int would cover the response body, which the proxy has not seen when it sends the
        # head (RFC 7616 section 3.5), so only qop=auth carries it.
        assert ("rspauth=" in info) == (qop == "auth")
        # The same nc again is a replay: refused, with a fresh challenge.
        sock.sendall(get(origin, "/d", method="POST", auth=auth, extra="Content-Length: 7\r\n") + body)
        assert status_of(read_response(sock)) == 407


def test_digest_userhash(proxy: ProxyProcess, origin: OriginServer) -> None:
    uri = f"http://127.0.0.1:{origin.port}/uh"
    challenge = challenges_of(raw_exchange(proxy.port, get(origin, "/uh", auth=None)))[0]
    assert "userhash=true" in challenge
    auth = digest_authorization(challenge, "alice", "wonderland", "GET", uri, userhash=True)
    assert "alice" not in auth
    assert status_of(raw_exchange(proxy.port, get(origin, "/uh", auth=auth))) == 200


def test_digest_out_of_order_nc_across_connections(proxy: ProxyProcess, origin: OriginServer) -> None:
    uri = f"http://127.0.0.1:{origin.port}/nc"
    challenge = challenges_of(raw_exchange(proxy.port, get(origin, "/nc", auth=None)))[0]
    for nc in (3, 1, 2):
        auth = digest_authorization(challenge, "alice", "wonderland", "GET", uri, nc=nc)
        assert status_of(raw_exchange(proxy.port, get(origin, "/nc", auth=auth))) == 200
    auth = digest_authorization(challenge, "alice", "wonderland", "GET", uri, nc=2)
    assert status_of(raw_exchange(proxy.port, get(origin, "/nc", auth=auth))) == 407


def test_digest_uri_mismatch_is_400(proxy: ProxyProcess, origin: OriginServer) -> None:
    challenge = challenges_of(raw_exchange(proxy.port, get(origin, "/a", auth=None)))[0]
    auth = digest_authorization(challenge, "alice", "wonderland", "GET", f"http://127.0.0.1:{origin.port}/b")
    assert status_of(raw_exchange(proxy.port, get(origin, "/a", auth=auth))) == 400


def test_digest_wrong_realm_and_forged_nonce(proxy: ProxyProcess, origin: OriginServer) -> None:
    uri = f"http://127.0.0.1:{origin.port}/f"
    challenge = challenges_of(raw_exchange(proxy.port, get(origin, "/f", auth=None)))[0]
    forged = digest_authorization(challenge, "alice", "wonderland", "GET", uri, nonce="AAAAforged")
    response = raw_exchange(proxy.port, get(origin, "/f", auth=forged))
    assert status_of(response) == 407
    assert "stale=true" not in " ".join(challenges_of(response))
    other_realm = challenge.replace(f'realm="{REALM}"', 'realm="other"')
    wrong = digest_authorization(other_realm, "alice", "wonderland", "GET", uri)
    assert status_of(raw_exchange(proxy.port, get(origin, "/f", auth=wrong))) == 407


def test_malformed_credentials_are_400(proxy: ProxyProcess, origin: OriginServer) -> None:
    for bad in ("Basic !!!notbase64", 'Digest username="a", realm="unterminated', "Basic " + "QQ==" * 5000):
        response = raw_exchange(proxy.port, get(origin, "/", auth=bad))
        assert status_of(response) in (400, 431)
        assert b"notbase64" not in response.split(b"\r\n\r\n", 1)[1]


def test_malformed_request_is_400_and_oversized_head_431(proxy: ProxyProcess) -> None:
    assert status_of(raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")) == 400
    assert status_of(raw_exchange(proxy.port, b"GARBAGE\r\n\r\n")) == 400
    big = b"GET http://127.0.0.1/ HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n"
    assert status_of(raw_exchange(proxy.port, big)) == 431


def test_connect_port_not_allowed_is_403(session_tmp: object, users_file: object) -> None:
    from pathlib import Path

    from helpers import start_proxy

    proc = start_proxy(Path(str(session_tmp)), Path(str(users_file)), "--connect-ports", "443")
    try:
        raw = f"CONNECT 127.0.0.1:8443 HTTP/1.1\r\nHost: 127.0.0.1:8443\r\nProxy-Authorization: {ALICE}\r\n\r\n"
        response = raw_exchange(proc.port, raw.encode())
        assert status_of(response) == 403
        assert "error=http_request_denied" in (header_of(response, "Proxy-Status") or "")
    finally:
        proc.stop()


def test_max_forwards_zero_answered_by_proxy(proxy: ProxyProcess, origin: OriginServer) -> None:
    response = raw_exchange(proxy.port, get(origin, "/t", method="TRACE", extra="Max-Forwards: 0\r\n"))
    assert status_of(response) == 200
    assert b"TRACE" in response and b"Proxy-Authorization" not in response
    forwarded = raw_exchange(proxy.port, get(origin, "/o", method="OPTIONS", extra="Max-Forwards: 3\r\n"))
    headers = {k.lower(): v for k, v in body_json(forwarded)["headers"]}
    assert headers["max-forwards"] == "2"


def test_access_log_has_outcomes_and_no_credentials(proxy: ProxyProcess, origin: OriginServer) -> None:
    raw_exchange(proxy.port, get(origin, "/logme?token=SECRET", auth=basic_authorization("alice", "nope")))
    raw_exchange(proxy.port, get(origin, "/logme2"))
    log = proxy.access_log()
    assert "auth=bad-password" in log and "auth=ok" in log
    assert "SECRET" not in log and "nope" not in log and "wonderland" not in log
    assert ALICE.split()[1] not in log


def test_tunnel_is_logged_once_with_its_bytes(proxy: ProxyProcess, tls_origin: tuple[OriginServer, object]) -> None:
    server, _ = tls_origin
    raw = (f"CONNECT localhost:{server.port} HTTP/1.1\r\nHost: localhost:{server.port}\r\n"
           f"Proxy-Authorization: {ALICE}\r\n\r\n").encode()
    def tunnel_lines() -> list[str]:
        return [line for line in proxy.access_log().splitlines() if f"CONNECT localhost:{server.port}" in line]

    before = len(tunnel_lines())
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(raw)
        assert status_of(read_response(sock)) == 200
        sock.sendall(b"\x16\x03\x01\x00\x05hello")  # not a real ClientHello: the origin answers and hangs up
        while sock.recv(65536):
            pass
    time.sleep(0.3)
    lines = tunnel_lines()[before:]
    assert len(lines) == 1 and "TCP_TUNNEL/200" in lines[0]


def test_via_names_the_version_received(proxy: ProxyProcess, origin: OriginServer) -> None:
    response = raw_exchange(proxy.port, get(origin, "/v10", version="1.0"), read_until_close=True)
    headers = {k.lower(): v for k, v in body_json(response)["headers"]}
    assert headers["via"] == "1.0 authproxy"  # RFC 9110 section 7.6.3: the protocol it arrived in
    assert header_of(response, "Via") == "1.1 authproxy"
