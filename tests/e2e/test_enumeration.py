"""User names cannot be enumerated (issue 9 item 9), over real sockets against `authproxy serve`.

With an htpasswd store, a Digest answer for an existing user used to get "stored in a form that cannot answer
this Digest algorithm" and was not counted by the throttle, while an unknown user got "did not accept the user
name or password". Now the client sees the same 407 words for an unknown user, a wrong password and a user
whose hash cannot answer the scheme, the throttle counts all of them, and the access log still tells the
operator which it was. (That an unknown user pays a stand-in bcrypt check is observed in
tests/proxy/test_authn.py, without timing anything.)
"""

from __future__ import annotations

import socket
from pathlib import Path

import bcrypt

from authproxy.auth.passwords import md5_crypt

from helpers import (
    OriginServer,
    basic_authorization,
    challenges_of,
    digest_authorization,
    raw_exchange,
    read_response,
    start_proxy,
    status_of,
)


def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    crypt = bcrypt.hashpw(b"bcrypt-secret", bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"bc:{crypt}\napr:{md5_crypt(b'apr-secret', b'saltsalt')}\n")
    return path


def get(origin: OriginServer, auth: str | None = None) -> bytes:
    lines = [f"GET http://127.0.0.1:{origin.port}/ HTTP/1.1", "Host: x"]
    if auth:
        lines.append(f"Proxy-Authorization: {auth}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def body_of(response: bytes) -> bytes:
    return response.split(b"\r\n\r\n", 1)[1]


def digest_for(port: int, origin: OriginServer, user: str, password: str) -> str:
    challenge = challenges_of(raw_exchange(port, get(origin)))[0]
    return digest_authorization(challenge, user, password, "GET", f"http://127.0.0.1:{origin.port}/")


def test_the_client_cannot_tell_which_names_exist(tmp_path: Path, origin: OriginServer) -> None:
    proxy = start_proxy(tmp_path, htpasswd(tmp_path), "--config", str(_no_throttle(tmp_path)))
    try:
        answers = {
            "unknown-user (Basic)": basic_authorization("nobody", "guess"),
            "bad-password (Basic, bcrypt)": basic_authorization("bc", "guess"),
            "bad-password (Basic, apr1)": basic_authorization("apr", "guess"),
            "unknown-user (Digest)": digest_for(proxy.port, origin, "nobody", "guess"),
            "no-digest-secret (Digest, right password)": digest_for(proxy.port, origin, "bc", "bcrypt-secret"),
            "no-digest-secret (Digest, wrong password)": digest_for(proxy.port, origin, "apr", "guess"),
        }
        bodies = {}
        for what, auth in answers.items():
            response = raw_exchange(proxy.port, get(origin, auth))
            assert status_of(response) == 407, what
            bodies[what] = body_of(response)
        assert len(set(bodies.values())) == 1, bodies
        assert b"did not accept the user name or password" in bodies["unknown-user (Basic)"]
        # The operator still reads the precise outcome.
        log = proxy.access_log()
        for outcome in ("unknown-user", "bad-password", "no-digest-secret"):
            assert f"auth={outcome}" in log
    finally:
        proxy.stop()


def test_a_digest_answer_for_an_htpasswd_user_counts_as_a_failed_sign_in(tmp_path: Path,
                                                                         origin: OriginServer) -> None:
    config = tmp_path / "throttle.toml"
    config.write_text("throttle_max_failures = 3\nthrottle_lockout = 60\n")
    proxy = start_proxy(tmp_path, htpasswd(tmp_path), "--config", str(config))
    try:
        right_basic = basic_authorization("bc", "bcrypt-secret")
        assert status_of(raw_exchange(proxy.port, get(origin, right_basic))) == 200
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            for _ in range(3):  # the right password, but a scheme the stored hash cannot answer
                sock.sendall(get(origin, digest_for(proxy.port, origin, "bc", "bcrypt-secret")))
                assert status_of(read_response(sock)) == 407
            sock.sendall(get(origin, right_basic))  # counted like three wrong passwords: now even this waits
            assert status_of(read_response(sock)) == 429
        log = proxy.access_log()
        assert log.count("auth=no-digest-secret") == 3 and "auth=throttled" in log
    finally:
        proxy.stop()


def _no_throttle(tmp_path: Path) -> Path:
    config = tmp_path / "no-throttle.toml"
    config.write_text("throttle_max_failures = 0\n")
    return config


def test_auth_int_reads_the_body_for_an_unknown_user_too(tmp_path: Path, users_file: Path,
                                                         origin: OriginServer) -> None:
    """With qop=auth-int the digest covers the body, so a wrong password is answered only once the body is in;
    an unknown name must wait for it as well, or a 407 arriving before the body is sent tells that the name
    does not exist."""
    config = tmp_path / "auth-int.toml"
    config.write_text('qop = ["auth", "auth-int"]\nthrottle_max_failures = 0\n')
    proxy = start_proxy(tmp_path, users_file, "--config", str(config))
    uri = f"http://127.0.0.1:{origin.port}/upload"
    body = b"hello"
    try:
        for user in ("alice", "nobody"):
            challenge = challenges_of(raw_exchange(proxy.port, get(origin)))[0]
            auth = digest_authorization(challenge, user, "not-the-password", "POST", uri, qop="auth-int",
                                        body=body)
            head = (f"POST {uri} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                    f"Proxy-Authorization: {auth}\r\n\r\n").encode()
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
                sock.sendall(head)
                sock.settimeout(0.5)
                try:
                    early = sock.recv(65536)
                except TimeoutError:
                    early = b""
                assert early == b"", (user, early)  # nothing before the body: the digest needs it
                sock.settimeout(10)
                sock.sendall(body)
                assert status_of(read_response(sock)) == 407, user
        log = proxy.access_log()
        assert "auth=bad-password" in log and "auth=unknown-user" in log
    finally:
        proxy.stop()
