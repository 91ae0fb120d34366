"""httpx (sync and async) and requests through our proxy with authproxy.client: every Digest algorithm, qop
auth and auth-int, userhash, non-ASCII names, stale and nextnonce, plain HTTP and CONNECT to a TLS origin,
TLS to the proxy, credentials that never reach an origin, and the errors."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import requests

from authproxy.client import AsyncProxyTransport, ProxyAdapter, ProxyAuthError, ProxyError, ProxyTransport

from client_support import (
    ALGORITHMS,
    CLIENTS,
    Call,
    Proxies,
    RedirectOrigin,
    TLSFront,
    fetch,
    origin_headers,
    urls,
)
from helpers import USERS, OriginServer, ProxyProcess


def no_credentials_at(*servers: OriginServer, path: str | None = None) -> None:
    for server in servers:
        for headers in origin_headers(server, path):
            assert "proxy-authorization" not in headers and "authorization" not in headers


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_plain_and_connect(kind: str, algorithm: str, proxies: Proxies, origin: OriginServer,
                                           tls_origin: tuple[OriginServer, Path]) -> None:
    proxy = proxies.get("--schemes", "digest", "--digest-algorithms", algorithm)
    plain, tls = urls(origin, tls_origin, f"/{kind}/{algorithm}")
    replies = fetch(kind, proxy.url, [("GET", plain, None), ("POST", plain, b"body"), ("GET", tls, None),
                                      ("GET", tls, None)], auth=("alice", USERS["alice"]), ca=tls_origin[1])
    assert [r.status for r in replies] == [200] * 4
    assert replies[1].json()["body"] == "body" and replies[2].json()["path"] == f"/{kind}/{algorithm}"
    no_credentials_at(origin, tls_origin[0], path=f"/{kind}/{algorithm}")


@pytest.mark.parametrize("kind", CLIENTS)
def test_auth_int_over_the_real_body(kind: str, proxies: Proxies, origin: OriginServer,
                                     tls_origin: tuple[OriginServer, Path]) -> None:
    proxy = proxies.get("--schemes", "digest", toml='qop = ["auth-int"]\ndigest_algorithms = ["SHA-256"]\n')
    plain, tls = urls(origin, tls_origin, "/auth-int")
    calls: list[Call] = [("POST", plain, b"x" * 5000), ("PUT", plain, b"{}"), ("GET", plain, None),
                         ("GET", tls, None)]
    replies = fetch(kind, proxy.url, calls, auth=("bob", USERS["bob"]), ca=tls_origin[1])
    assert [r.status for r in replies] == [200] * 4
    assert replies[0].json()["body"] == "x" * 5000


def test_auth_int_with_a_streaming_body_is_declined(proxies: Proxies, origin: OriginServer) -> None:
    proxy = proxies.get("--schemes", "digest", toml='qop = ["auth-int"]\ndigest_algorithms = ["SHA-256"]\n')

    def stream() -> Iterator[bytes]:
        yield b"part one, "
        yield b"part two"

    with httpx.Client(transport=ProxyTransport(proxy.url, ("alice", USERS["alice"])), timeout=10) as client:
        with pytest.raises(ProxyAuthError, match="stream") as info:
            client.post(f"http://127.0.0.1:{origin.port}/stream", content=stream())
        assert info.value.reason == "body-not-replayable"
        # With bytes it works, and afterwards a stream does too when qop=auth is on offer (default proxy).


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("user", ["jösé", "bob"])
@pytest.mark.parametrize("userhash", [True, False])
def test_userhash_and_non_ascii_users(kind: str, user: str, userhash: bool, proxy: ProxyProcess,
                                      origin: OriginServer, tls_origin: tuple[OriginServer, Path]) -> None:
    plain, tls = urls(origin, tls_origin, "/u")
    replies = fetch(kind, proxy.url, [("GET", plain, None), ("GET", tls, None)], auth=(user, USERS[user]),
                    ca=tls_origin[1], userhash=userhash)
    assert [r.status for r in replies] == [200, 200]


@pytest.mark.parametrize("kind", CLIENTS)
def test_userinfo_in_the_proxy_url_is_decoded_once(kind: str, proxy: ProxyProcess, origin: OriginServer,
                                                    tls_origin: tuple[OriginServer, Path]) -> None:
    user = "jösé"
    url = f"http://{quote(user, safe='')}:{quote(USERS[user], safe='')}@127.0.0.1:{proxy.port}"
    plain, tls = urls(origin, tls_origin, "/userinfo")
    assert [r.status for r in fetch(kind, url, [("GET", plain, None), ("GET", tls, None)], ca=tls_origin[1])] \
        == [200, 200]


@pytest.mark.parametrize("kind", CLIENTS)
def test_basic_only_proxy(kind: str, proxies: Proxies, origin: OriginServer,
                          tls_origin: tuple[OriginServer, Path], caplog: pytest.LogCaptureFixture) -> None:
    proxy = proxies.get("--schemes", "basic")
    plain, tls = urls(origin, tls_origin, "/basic")
    replies = fetch(kind, proxy.url, [("GET", plain, None), ("GET", tls, None)], auth=("bob", USERS["bob"]),
                    ca=tls_origin[1])
    assert [r.status for r in replies] == [200, 200]
    assert "clear" in caplog.text  # the warning about Basic over cleartext
    with pytest.raises(ProxyAuthError, match="offers only Basic") as info:
        fetch(kind, proxy.url, [("GET", tls, None)], auth=("bob", USERS["bob"]), ca=tls_origin[1],
              allow_basic_cleartext=False)
    assert info.value.reason == "basic-refused"


@pytest.mark.parametrize("kind", CLIENTS)
def test_wrong_password_is_one_clear_error(kind: str, proxy: ProxyProcess, origin: OriginServer,
                                           tls_origin: tuple[OriginServer, Path]) -> None:
    plain, tls = urls(origin, tls_origin, "/wrong")
    for url in (plain, tls):
        with pytest.raises(ProxyAuthError) as info:
            fetch(kind, proxy.url, [("GET", url, None)], auth=("alice", "not-it"), ca=tls_origin[1])
        err = info.value
        assert err.reason == "wrong-credentials" and err.status == 407
        assert 'the proxy rejected the password for alice in realm "authproxy-test"' in str(err)
        assert err.challenges and "Proxy-Authenticate" in dict(err.headers)


def test_steady_stream_costs_no_extra_round_trips(proxies: Proxies, origin: OriginServer,
                                                   tls_origin: tuple[OriginServer, Path]) -> None:
    proxy = proxies.get(toml="pool_size = 31\n")  # a proxy of its own: its log holds only this test
    plain, tls = urls(origin, tls_origin, "/steady")
    with httpx.Client(transport=ProxyTransport(proxy.url, ("alice", USERS["alice"]), verify=str(tls_origin[1]),
                                               keepalive_expiry=0.0001), timeout=10) as client:
        for _ in range(5):
            assert client.get(plain).status_code == 200
            time.sleep(0.002)  # the idle connection expires: later requests come on new connections
        assert client.get(tls).status_code == 200
        assert client.get(tls.replace("/steady", "/steady2")).status_code == 200
    # One 407 for the whole session: every later request and connection reused the nonce, nc incremented.
    log = proxy.access_log()
    assert log.count("auth=missing") == 1 and log.count("auth=ok") == 7, log


def test_stale_and_nextnonce(proxies: Proxies, origin: OriginServer, tls_origin: tuple[OriginServer, Path]) -> None:
    """With a 1 s nonce: past half its life the proxy hands out nextnonce, which the clients take (no 407);
    past its life the cached nonce is stale, and each client retries once and succeeds."""
    proxy = proxies.get(toml="nonce_lifetime = 1\n")
    plain, tls = urls(origin, tls_origin, "/stale")
    auth = ("alice", USERS["alice"])
    ca = str(tls_origin[1])
    sync_client = httpx.Client(transport=ProxyTransport(proxy.url, auth, verify=ca), timeout=10)
    session = requests.Session()
    session.mount("http://", adapter := ProxyAdapter(proxy.url, auth))
    session.mount("https://", adapter)

    async def run_async(client: httpx.AsyncClient, url: str, times: int) -> list[int]:
        return [(await client.get(url)).status_code for _ in range(times)]

    async def scenario() -> list[int]:
        transport = AsyncProxyTransport(proxy.url, auth, verify=ca)
        statuses: list[int] = []
        async with httpx.AsyncClient(transport=transport, timeout=10) as async_client:
            for url, times, pause in ((plain, 1, 0.6), (plain, 2, 1.3), (tls, 1, 0.0)):
                statuses += [sync_client.get(url).status_code for _ in range(times)]
                statuses += [session.get(url, verify=ca).status_code for _ in range(times)]
                statuses += await run_async(async_client, url, times)
                await asyncio.sleep(pause)
        return statuses

    try:
        assert asyncio.run(scenario()) == [200] * 12
    finally:
        sync_client.close()
        session.close()
    log = proxy.access_log()
    assert log.count("missing") == 3  # one 407 per client; nextnonce spared the second round its 407
    assert log.count("stale-nonce") == 3  # and the last round met a stale nonce once per client


def test_concurrent_async_requests(proxy: ProxyProcess, origin: OriginServer,
                                   tls_origin: tuple[OriginServer, Path]) -> None:
    plain, tls = urls(origin, tls_origin, "/many")

    async def run() -> list[int]:
        transport = AsyncProxyTransport(proxy.url, ("alice", USERS["alice"]), verify=str(tls_origin[1]))
        async with httpx.AsyncClient(transport=transport, timeout=10) as client:
            first = await client.get(plain)
            many = await asyncio.gather(*(client.get(plain if i % 2 else tls) for i in range(40)))
            return [first.status_code] + [r.status_code for r in many]

    assert asyncio.run(run()) == [200] * 41  # any replayed nc would have been a 407


@pytest.mark.parametrize("kind", CLIENTS)
def test_https_proxy_and_tls_inside_tls(kind: str, tls_front: TLSFront, origin: OriginServer,
                                        tls_origin: tuple[OriginServer, Path]) -> None:
    plain, tls = urls(origin, tls_origin, "/tls-proxy")
    url = f"https://localhost:{tls_front.port}"
    replies = fetch(kind, url, [("GET", plain, None), ("GET", tls, None)], auth=("alice", USERS["alice"]),
                    ca=tls_origin[1], proxy_verify=str(tls_front.ca))
    assert [r.status for r in replies] == [200, 200]
    # The proxy's certificate is checked against proxy_verify: without the proxy's CA the connection fails.
    with pytest.raises((ProxyError, httpx.ConnectError, requests.exceptions.ConnectionError)):
        fetch(kind, url, [("GET", tls, None)], auth=("alice", USERS["alice"]), ca=tls_origin[1])  # untrusted


@pytest.mark.parametrize("kind", CLIENTS)
def test_no_credential_reaches_an_origin_even_across_redirects(
        kind: str, proxy: ProxyProcess, redirect_origin: RedirectOrigin, origin: OriginServer,
        tls_origin: tuple[OriginServer, Path]) -> None:
    redirect_origin.seen.clear()
    tls_server, _ = tls_origin
    tls_server.seen.clear()
    origin.seen.clear()
    hop2 = f"https://localhost:{tls_server.port}/after-redirect"
    first = f"http://127.0.0.1:{redirect_origin.port}/redirect?to={hop2}"
    replies = fetch(kind, proxy.url, [("GET", first, None)], auth=("alice", USERS["alice"]), ca=tls_origin[1],
                    follow=True)
    assert replies[0].status == 200 and replies[0].json()["path"] == "/after-redirect"
    # Even a Proxy-Authorization the caller sets by hand never goes inside the tunnel.
    transport = ProxyTransport(proxy.url, ("alice", USERS["alice"]), verify=str(tls_origin[1]))
    with httpx.Client(transport=transport, timeout=10) as client:
        assert client.get(hop2, headers={"Proxy-Authorization": "Basic c2VjcmV0"}).status_code == 200
    assert redirect_origin.seen and tls_server.seen
    no_credentials_at(redirect_origin, tls_server)


def test_origin_407_inside_the_tunnel_goes_to_the_caller(proxy: ProxyProcess, origin: OriginServer,
                                                         tls_origin: tuple[OriginServer, Path]) -> None:
    # The TLS origin's /401 is its own answer; likewise its 407 would be: never answered with proxy creds.
    transport = ProxyTransport(proxy.url, ("alice", USERS["alice"]), verify=str(tls_origin[1]))
    with httpx.Client(transport=transport, timeout=10) as client:
        r = client.get(f"https://localhost:{tls_origin[0].port}/401")
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Basic realm="origin-realm"'
        r = client.get(f"http://127.0.0.1:{origin.port}/401")
        assert r.status_code == 401


def test_unreachable_origin_names_the_hop(proxy: ProxyProcess) -> None:
    transport = ProxyTransport(proxy.url, ("alice", USERS["alice"]))
    with httpx.Client(transport=transport, timeout=10) as client, pytest.raises(ProxyError) as info:
        client.get("https://127.0.0.1:9/")
    err = info.value
    assert not isinstance(err, ProxyAuthError)
    assert err.status == 502 and err.hop == "origin" and err.reason == "connection_refused"
    assert "could not get through to 127.0.0.1:9" in str(err)


def test_trust_env_and_netrc(proxy: ProxyProcess, origin: OriginServer, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login alice password {USERS['alice']}\n", encoding="utf-8")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost")
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    origin.seen.clear()
    with httpx.Client(transport=ProxyTransport(None, trust_env=True), timeout=10) as client:
        assert client.get(f"http://127.0.0.1:{origin.port}/env").status_code == 200
        assert client.get(f"http://localhost:{origin.port}/direct").status_code == 200
    via = [h.get("via") for h in origin_headers(origin)]
    assert via[0] is not None and via[1] is None  # the first went through the proxy, the second direct


def test_readme_examples_reach_https_through_a_digest_only_proxy(
        proxies: Proxies, tls_origin: tuple[OriginServer, Path], capsys: pytest.CaptureFixture[str]) -> None:
    proxy = proxies.get("--schemes", "digest", "--digest-algorithms", "SHA-256")
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Client library", 1)[1].split("\n## ", 1)[0]
    snippets = [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]
    assert len(snippets) == 2
    target = f"https://localhost:{tls_origin[0].port}/readme"
    for code in snippets:
        # Only the addresses change, and the test CA is trusted the way each library takes a CA file.
        code = code.replace("http://proxy:3128", proxy.url).replace('("alice", "secret")', '("alice", "wonderland")')
        ca = tls_origin[1]
        code = code.replace("transport=ProxyTransport(", f'transport=ProxyTransport(verify="{ca}", proxy_url=')
        code = code.replace('.get("https://example.org/")', f'.get("{target}"' + (
            f', verify="{tls_origin[1]}")' if "requests" in code else ")"))
        exec(compile(code, "README.md", "exec"), {})
    gc.collect()  # the snippets leave their clients open; their tunnels would hold the proxy's shutdown
    assert capsys.readouterr().out == "<Response [200 OK]>\n<Response [200]>\n"
