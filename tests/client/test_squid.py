"""Squid as a real peer: its Digest is MD5 with qop=auth (digest_file_auth), and the client library must
answer it with httpx (sync and async) and requests, over plain HTTP and CONNECT to the local TLS origin.

Squid is a required test tool (scripts/install-system-tools installs it): when it cannot be found or run these
tests FAIL with the reason; they never skip silently.
"""

from __future__ import annotations

import contextlib
import io
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from authproxy.cli import main
from authproxy.client import ProxyAuthError

from client_support import CLIENTS, fetch, urls
from helpers import OriginServer

# No colon in the password: digest_file_auth reads "user:realm:HA1" lines too.
USER, PASSWORD, REALM = "squiddy", "squid pass", "squid-realm"
DIGEST_HELPER = "/usr/lib/squid/digest_file_auth"


@dataclass
class Squid:
    proc: subprocess.Popen[bytes]
    port: int
    home: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cannot(reason: str) -> None:
    message = (f"SQUID TESTS CANNOT RUN: {reason}. Install Squid (`apt-get install squid`, or `make test` as "
               "root, which runs scripts/install-system-tools); these tests do not skip.")
    print("\n" + "!" * 100 + "\n" + message + "\n" + "!" * 100, file=sys.stderr)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="module")
def squid() -> Iterator[Squid]:
    binary = shutil.which("squid") or ("/usr/sbin/squid" if os.path.exists("/usr/sbin/squid") else None)
    if binary is None or not os.path.exists(DIGEST_HELPER):
        _cannot("the squid binary or its digest_file_auth helper is not installed")
    assert binary is not None
    # Squid drops to the user `proxy`: everything it touches lives in a directory that user owns, outside
    # pytest's private temporary tree (mode 700).
    home = Path(tempfile.mkdtemp(prefix="authproxy-squid-"))
    port = _free_port()
    (home / "passwd").write_text(f"{USER}:{PASSWORD}\nother:other\n", encoding="utf-8")
    (home / "squid.conf").write_text(f"""
http_port 127.0.0.1:{port}
visible_hostname authproxy-test-squid
pid_filename {home}/squid.pid
cache_log {home}/cache.log
access_log {home}/access.log
cache deny all
cache_mem 0 MB
pinger_enable off
shutdown_lifetime 0 seconds
workers 1
coredump_dir {home}
auth_param digest program {DIGEST_HELPER} {home}/passwd
auth_param digest children 2 startup=1
auth_param digest realm {REALM}
acl authed proxy_auth REQUIRED
http_access deny !authed
http_access allow authed
http_access deny all
""", encoding="utf-8")
    try:
        user = pwd.getpwnam("proxy")
        for path in (home, *home.iterdir()):
            os.chown(path, user.pw_uid, user.pw_gid)
    except (KeyError, PermissionError):
        pass  # not root: Squid keeps our user and can read our files
    home.chmod(0o755)
    proc = subprocess.Popen([binary, "-N", "-f", str(home / "squid.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
            log = (home / "cache.log").read_text(errors="replace") if (home / "cache.log").exists() else ""
            _cannot(f"squid exited at start ({proc.returncode}): {err[-800:]} {log[-800:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            break
        time.sleep(0.1)
    else:
        proc.kill()
        _cannot("squid did not start listening within 20 s")
    yield Squid(proc, port, home)
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("kind", CLIENTS)
def test_squid_digest_md5_plain_and_connect(kind: str, squid: Squid, origin: OriginServer,
                                            tls_origin: tuple[OriginServer, Path]) -> None:
    plain, tls = urls(origin, tls_origin, f"/squid-{kind}")
    calls = [("GET", plain, None), ("POST", plain, b"to squid"), ("GET", tls, None), ("GET", tls, None)]
    replies = fetch(kind, squid.url, calls, auth=(USER, PASSWORD), ca=tls_origin[1])
    assert [r.status for r in replies] == [200] * 4
    assert replies[1].json()["body"] == "to squid"
    for server in (origin, tls_origin[0]):
        for entry in server.seen:
            names = {k.lower() for k, _ in entry["headers"]}
            assert "proxy-authorization" not in names


@pytest.mark.parametrize("kind", CLIENTS)
def test_squid_wrong_password(kind: str, squid: Squid, origin: OriginServer) -> None:
    with pytest.raises(ProxyAuthError) as info:
        fetch(kind, squid.url, [("GET", f"http://127.0.0.1:{origin.port}/", None)], auth=(USER, "wrong"))
    assert info.value.reason == "wrong-credentials"
    assert f'rejected the password for {USER} in realm "{REALM}" (Digest MD5)' in str(info.value)


def test_squid_diagnose(squid: Squid, tls_origin: tuple[OriginServer, Path], monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    code = main(["diagnose", "--proxy", squid.url, "--user", USER, "--password-stdin", "--cacert",
                 str(tls_origin[1]), f"https://localhost:{tls_origin[0].port}/via-squid"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f'Digest MD5 (qop auth; realm "{REALM}"): the credentials work' in out
