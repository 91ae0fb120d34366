"""`authproxy diagnose`: each failure explained in one paragraph naming the hop; JSON; the exit status."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from authproxy.cli import main

from client_support import FakeProxy, Proxies, Seen, TLSFront
from helpers import USERS, OriginServer, ProxyProcess

MakeFake = Callable[[Callable[[Seen], tuple[bytes, bool, bool]]], FakeProxy]


def diagnose(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str,
             password: str | None = None) -> tuple[int, str]:
    if password is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(password + "\n"))
        argv = ("--password-stdin", *argv)
    code = main(["diagnose", "--timeout", "5", *argv])
    return code, capsys.readouterr().out


def verdict_of(out: str) -> str:
    paragraph = out.rstrip("\n").split("\n\n")[-1]
    assert "\n" not in paragraph  # one paragraph
    return paragraph


def test_reached_through_digest(proxy: ProxyProcess, tls_origin: tuple[OriginServer, Path],
                                monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = diagnose(monkeypatch, capsys, "--proxy", proxy.url, "--user", "alice", "--cacert",
                         str(tls_origin[1]), f"https://localhost:{tls_origin[0].port}/diag", password=USERS["alice"])
    assert code == 0, out
    assert 'Digest SHA-256 (qop auth, auth-int; realm "authproxy-test"; userhash): the credentials work' in out
    assert "Basic (realm \"authproxy-test\"): the credentials work (sends the password in clear text" in out
    assert verdict_of(out).startswith(f"Reached. The target https://localhost:{tls_origin[0].port}/diag was "
                                      "reached through")
    assert "with Digest SHA-256: the origin answered 200" in out


def test_wrong_password(proxy: ProxyProcess, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:
    code, out = diagnose(monkeypatch, capsys, "--proxy", proxy.url, "--user", "alice", "https://localhost:1/",
                         password="not the password")
    assert code == 1
    verdict = verdict_of(out)
    print(verdict)
    assert f"The proxy {proxy.url} answers and asks for Digest SHA-256" in verdict
    assert 'it rejected the password for alice in realm "authproxy-test"' in verdict
    assert "Failed hop: the proxy (authentication)" in verdict and "Likeliest cause: a wrong password" in verdict
    assert "the credentials fail (password rejected)" in out


def test_scheme_mismatch(fake_proxy: MakeFake, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    def respond(seen: Seen) -> tuple[bytes, bool, bool]:
        return (b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Negotiate\r\n"
                b"Proxy-Authenticate: NTLM\r\nContent-Length: 0\r\n\r\n"), False, False

    fake = fake_proxy(respond)
    code, out = diagnose(monkeypatch, capsys, "--proxy", f"http://bob:x@127.0.0.1:{fake.port}", "https://a.test/")
    assert code == 1
    verdict = verdict_of(out)
    print(verdict)
    assert "asks only for Negotiate, NTLM, none of which this client can answer" in verdict
    assert "Failed hop: the proxy (authentication scheme mismatch)" in verdict
    assert "curl --proxy-negotiate" in verdict
    assert "Negotiate: cannot be answered (a scheme this client does not speak)" in out


def test_scheme_mismatch_basic_refused_json(proxies: Proxies, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    proxy = proxies.get("--schemes", "basic")
    code, out = diagnose(monkeypatch, capsys, "--json", "--proxy", f"http://127.0.0.1:{proxy.port}",
                         "https://localhost:1/")
    data = json.loads(out)
    assert code == 1 and data["reachable"] and data["needs_auth"] and not data["reached"]
    assert data["challenges"][0]["scheme"] == "Basic" and data["failed_hop"] == "proxy"
    assert "no credentials were given" in data["verdict"]


def test_unreachable_origin(proxy: ProxyProcess, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    code, out = diagnose(monkeypatch, capsys, "--proxy", proxy.url, "--user", "bob", "https://127.0.0.1:9/",
                         password=USERS["bob"])
    assert code == 1
    verdict = verdict_of(out)
    print(verdict)
    assert "The proxy accepted the credentials for bob (Digest SHA-256)" in verdict
    assert "could not get through to 127.0.0.1:9: it refused the connection" in verdict
    assert "Failed hop: the origin" in verdict and "Try: check the port in the URL" in verdict


def test_unreachable_proxy_from_the_command_line() -> None:
    run = subprocess.run([sys.executable, "-m", "authproxy", "diagnose", "--proxy", "http://127.0.0.1:9",
                          "--timeout", "3"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 1
    assert "could not be reached: nothing listens at 127.0.0.1:9 (connection refused)" in run.stdout
    assert "Failed hop: the proxy itself" in run.stdout


def test_usage_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagnose", "--proxy", "http://u:%zz@127.0.0.1:9"]) == 2
    assert "not followed by two hex digits" in capsys.readouterr().err
    assert main(["diagnose", "--proxy", "http://127.0.0.1:9", "--user", "x"]) == 2


def test_reached_through_an_https_proxy(tls_front: TLSFront, tls_origin: tuple[OriginServer, Path],
                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = diagnose(monkeypatch, capsys, "--proxy", f"https://localhost:{tls_front.port}", "--proxy-cacert",
                         str(tls_front.ca), "--user", "jösé", "--cacert", str(tls_origin[1]),
                         f"https://localhost:{tls_origin[0].port}/tls-in-tls", password=USERS["jösé"])
    assert code == 0, out
    assert "Basic (realm \"authproxy-test\"): the credentials work\n" in out  # not cleartext over TLS
    code, out = diagnose(monkeypatch, capsys, "--proxy", f"https://localhost:{tls_front.port}", "https://a.test/")
    assert code == 1 and "the proxy's TLS certificate was refused" in out
