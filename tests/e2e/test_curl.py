"""curl against the proxy: every proxy-auth mode curl has, plain HTTP and CONNECT to a TLS origin."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import USERS, OriginServer, ProxyProcess

_CURL = shutil.which("curl")
if _CURL is None:  # the test command installs curl; say so loudly if it could not
    pytest.fail("curl is not installed: run `make test` as root on Debian, or install curl", pytrace=False)
CURL: str = _CURL


def curl(proxy: ProxyProcess, url: str, *args: str) -> tuple[int, str, str]:
    """Run curl through the proxy; return (HTTP status of the last response, body, verbose stderr)."""
    cmd = [CURL, "-sS", "-v", "--max-time", "20", "-x", proxy.url, "-w", "\n%{http_code}", *args, url]
    done = subprocess.run(cmd, capture_output=True, timeout=30)
    out = done.stdout.decode("utf-8", "replace")
    body, _, code = out.rpartition("\n")
    return int(code or 0), body, done.stderr.decode("utf-8", "replace")


MODES = ["--proxy-basic", "--proxy-digest", "--proxy-anyauth"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("user", list(USERS))
def test_plain_http_every_mode_and_user(proxy: ProxyProcess, origin: OriginServer, mode: str, user: str) -> None:
    status, body, _ = curl(proxy, f"http://127.0.0.1:{origin.port}/hello?x=1", mode,
                           "--proxy-user", f"{user}:{USERS[user]}")
    assert status == 200
    seen = json.loads(body)
    names = [k.lower() for k, _ in seen["headers"]]
    assert "proxy-authorization" not in names  # consumed by the proxy, never forwarded
    assert seen["path"] == "/hello?x=1"


@pytest.mark.parametrize("mode", MODES)
def test_connect_tunnel_to_tls_origin(proxy: ProxyProcess, tls_origin: tuple[OriginServer, Path],
                                      mode: str) -> None:
    server, ca = tls_origin
    status, body, _ = curl(proxy, f"https://localhost:{server.port}/secure", mode, "--proxytunnel",
                           "--cacert", str(ca), "--proxy-user", "bob:pa:ss:word")
    assert status == 200
    assert json.loads(body)["path"] == "/secure"


@pytest.mark.parametrize("mode", MODES)
def test_wrong_password_gets_407(proxy: ProxyProcess, origin: OriginServer, mode: str) -> None:
    status, body, verbose = curl(proxy, f"http://127.0.0.1:{origin.port}/", mode,
                                 "--proxy-user", "alice:not-the-password")
    assert status == 407
    assert "wonderland" not in body and "not-the-password" not in body
    assert "Proxy-Status: authproxy" in verbose


def test_no_credentials_gets_challenges_strongest_first(proxy: ProxyProcess, origin: OriginServer) -> None:
    status, body, verbose = curl(proxy, f"http://127.0.0.1:{origin.port}/")
    assert status == 407
    challenges = [line.split(":", 1)[1].strip() for line in verbose.splitlines()
                  if line.lower().startswith("< proxy-authenticate:")]
    assert [c.split()[0] for c in challenges] == ["Digest", "Digest", "Basic"]
    assert "algorithm=SHA-256" in challenges[0] and "algorithm=MD5" in challenges[1]
    assert 'charset="UTF-8"' in challenges[2]
    assert "requires credentials" in body


def test_unknown_user_gets_407(proxy: ProxyProcess, origin: OriginServer) -> None:
    status, _, _ = curl(proxy, f"http://127.0.0.1:{origin.port}/", "--proxy-anyauth",
                        "--proxy-user", "mallory:wonderland")
    assert status == 407


def test_origin_401_passes_through_untouched(proxy: ProxyProcess, origin: OriginServer) -> None:
    status, body, verbose = curl(proxy, f"http://127.0.0.1:{origin.port}/401", "--proxy-digest",
                                 "--proxy-user", "alice:wonderland")
    assert status == 401
    assert body == "origin says: who are you?\n"
    assert '< WWW-Authenticate: Basic realm="origin-realm"' in verbose


def test_origin_down_gives_502(proxy: ProxyProcess) -> None:
    status, body, verbose = curl(proxy, "http://127.0.0.1:9/", "--proxy-basic", "--proxy-user", "alice:wonderland")
    assert status == 502
    assert "refused" in body
    assert "error=connection_refused" in verbose


def test_post_body_with_digest_auth_int_is_not_offered_by_curl_but_auth_works(
        proxy: ProxyProcess, origin: OriginServer) -> None:
    status, body, _ = curl(proxy, f"http://127.0.0.1:{origin.port}/post", "--proxy-digest",
                           "--proxy-user", "alice:wonderland", "--data-binary", "a=1&b=2")
    assert status == 200
    assert json.loads(body)["body"] == "a=1&b=2"


def test_keep_alive_several_requests_each_authenticated(proxy: ProxyProcess, origin: OriginServer) -> None:
    url = f"http://127.0.0.1:{origin.port}/one"
    status, _, verbose = curl(proxy, url, "--proxy-digest", "--proxy-user", "alice:wonderland",
                                 "--next", "-x", proxy.url, "--proxy-digest", "--proxy-user", "alice:wonderland",
                                 f"http://127.0.0.1:{origin.port}/two")
    assert status == 200
    assert "Re-using existing connection" in verbose or "Reusing existing connection" in verbose
