"""Proxies that are not ours, scripted over raw sockets: several challenges with unknown schemes first, a
chunked 407, a 407 that closes the connection, a malformed 407, a proxy that answers 401, a wrong rspauth;
each with httpx (sync and async) and requests, over plain HTTP and CONNECT to the TLS origin."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from authproxy.auth.digest import DigestCredentials, compute_ha1, request_digest, response_auth
from authproxy.auth.headers import parse_credentials
from authproxy.client import ProxyAuthError

from client_support import CLIENTS, FakeProxy, Seen, fetch, urls
from helpers import OriginServer

MakeFake = Callable[[Callable[[Seen], tuple[bytes, bool, bool]]], FakeProxy]
USER, PASSWORD, REALM = "carol", "s3cret: with colon", "fake-realm"
CHALLENGES = [
    "Negotiate",
    f'NTLM, Digest realm="{REALM}", nonce="n-1", algorithm=SHA-1, qop="auth"',
    f'Basic realm="{REALM}", Digest realm="{REALM}", nonce="n-1", algorithm=MD5, qop="auth", '
    f'Digest realm="{REALM}", nonce="n-1", algorithm=SHA-256, qop="auth", opaque="op aque"',
]


def check_digest(seen: Seen) -> DigestCredentials | None:
    """The Digest credentials of ``seen`` when they are right for carol, else None."""
    value = seen.headers.get("proxy-authorization")
    if value is None or not value.startswith("Digest "):
        return None
    creds = DigestCredentials.from_credentials(parse_credentials(value))
    ha1 = compute_ha1(creds.algorithm.base, USER, REALM, PASSWORD)
    expected = request_digest(creds.algorithm, ha1=ha1, nonce=creds.nonce, nc=creds.nc, cnonce=creds.cnonce,
                              qop=creds.qop, method=seen.method, uri=creds.uri)
    ok = expected == creds.response and creds.uri == seen.target and creds.opaque == "op aque"
    return creds if ok else None


def head(status: str, *fields: str, body: bytes = b"", framing: str = "length") -> tuple[bytes, bool]:
    lines = [f"HTTP/1.1 {status}", *fields]
    if framing == "length":
        lines.append(f"Content-Length: {len(body)}")
        payload = body
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        payload = b"".join(b"%x\r\n%b\r\n" % (len(part), part) for part in (body[:5], body[5:]) if part)
        payload += b"0\r\n\r\n"
    else:  # until close
        lines.append("Connection: close")
        payload = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload, framing == "close"


def scripted(framing: str, *, rspauth: str | None = None,
             info_lines: Callable[[str], list[str]] | None = None) -> Callable[[Seen], tuple[bytes, bool, bool]]:
    """A proxy offering CHALLENGES; ``rspauth`` (a value) or ``info_lines`` (the right field value in, the
    Proxy-Authentication-Info values to send out) for its answer to right credentials."""

    def respond(seen: Seen) -> tuple[bytes, bool, bool]:
        creds = check_digest(seen)
        if creds is None:
            fields = [f"Proxy-Authenticate: {c}" for c in CHALLENGES]
            data, close = head("407 Proxy Authentication Required", *fields, body=b"who goes there?\n",
                               framing=framing)
            return data, close, False
        assert creds.algorithm.name == "SHA-256"  # the strongest known, though offered last
        info = []
        if rspauth is not None:
            info = [f'Proxy-Authentication-Info: qop=auth, rspauth="{rspauth}", cnonce="{creds.cnonce}", '
                    f"nc={creds.nc}"]
        if info_lines is not None:
            good = f'qop=auth, rspauth="{right_rspauth(creds)}", cnonce="{creds.cnonce}", nc={creds.nc}'
            info = [f"Proxy-Authentication-Info: {value}" for value in info_lines(good)]
        if seen.method == "CONNECT":
            return ("HTTP/1.1 200 Connection established\r\n" + "".join(f"{i}\r\n" for i in info)
                    + "\r\n").encode(), False, True
        data, close = head("200 OK", *info, body=b"fake proxy says hi")
        return data, close, False
    return respond


def right_rspauth(seen_creds: DigestCredentials) -> str:
    ha1 = compute_ha1("SHA-256", USER, REALM, PASSWORD)
    return response_auth(seen_creds.algorithm, ha1=ha1, nonce=seen_creds.nonce, nc=seen_creds.nc,
                         cnonce=seen_creds.cnonce, qop=seen_creds.qop, uri=seen_creds.uri)


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_407_framings_and_several_challenges(kind: str, framing: str, fake_proxy: MakeFake,
                                             origin: OriginServer, tls_origin: tuple[OriginServer, Path]) -> None:
    fake = fake_proxy(scripted(framing))
    plain, tls = urls(origin, tls_origin, "/odd")
    replies = fetch(kind, fake.url, [("GET", plain, None), ("GET", tls, None)], auth=(USER, PASSWORD),
                    ca=tls_origin[1])
    assert replies[0].status == 200 and replies[0].text == "fake proxy says hi"
    assert replies[1].status == 200 and replies[1].json()["path"] == "/odd"
    first, answer = fake.seen[0], fake.seen[1]
    assert "proxy-authorization" not in first.headers and check_digest(answer) is not None
    # A kept-open 407 is answered on the same connection; a closing one on a new connection.
    assert (answer.connection == first.connection) == (framing != "close")
    # The CONNECT went with credentials at once: the nonce was reused (preemptive), nc 2.
    connect = fake.seen[2]
    assert connect.method == "CONNECT" and (c := check_digest(connect)) is not None and c.nc == "00000002"
    assert len(fake.seen) == 3


@pytest.mark.parametrize("kind", CLIENTS)
def test_rspauth_checked(kind: str, fake_proxy: MakeFake, origin: OriginServer) -> None:
    plain = f"http://127.0.0.1:{origin.port}/rsp"
    good = scripted("length")

    def right(seen: Seen) -> tuple[bytes, bool, bool]:
        creds = check_digest(seen)
        return scripted("length", rspauth=right_rspauth(creds))(seen) if creds else good(seen)

    assert [r.status for r in fetch(kind, fake_proxy(right).url, [("GET", plain, None)], auth=(USER, PASSWORD))] \
        == [200]
    wrong = fake_proxy(scripted("length", rspauth="0" * 64))
    with pytest.raises(ProxyAuthError, match="rspauth") as info:
        fetch(kind, wrong.url, [("GET", plain, None)], auth=(USER, PASSWORD))
    assert info.value.reason == "rspauth-mismatch"


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("variant", ["repeated rspauth", "repeated nextnonce", "two fields", "unparsable",
                                     "rspauth also as rspauth*", "nextnonce as nextnonce*"])
def test_untrusted_proxy_authentication_info(kind: str, variant: str, fake_proxy: MakeFake, origin: OriginServer,
                                             tls_origin: tuple[OriginServer, Path]) -> None:
    """A Proxy-Authentication-Info that cannot be trusted fails the request, on plain HTTP and on CONNECT,
    the same way for every malformed form (it used to be skipped in silence)."""
    variants: dict[str, Callable[[str], list[str]]] = {
        "repeated rspauth": lambda good: [good + ', rspauth="' + "0" * 64 + '"'],
        "repeated nextnonce": lambda good: [good + ', nextnonce="a", nextnonce="b"'],
        "two fields": lambda good: [good, good],
        "unparsable": lambda good: [good + ', rspauth="unterminated'],
        "rspauth also as rspauth*": lambda good: [good + ", rspauth*=UTF-8''" + "0" * 64],
        "nextnonce as nextnonce*": lambda good: [good + ", nextnonce*=UTF-8''evil"],
    }
    fake = fake_proxy(scripted("length", info_lines=variants[variant]))
    for url in urls(origin, tls_origin, "/info"):
        with pytest.raises(ProxyAuthError, match="the proxy's Proxy-Authentication-Info field cannot be trusted") \
                as info:
            fetch(kind, fake.url, [("GET", url, None)], auth=(USER, PASSWORD), ca=tls_origin[1])
        assert info.value.reason == "untrusted-auth-info" and info.value.hop == "proxy"
    assert not any(entry["path"] == "/info" for entry in tls_origin[0].seen)


@pytest.mark.parametrize("kind", CLIENTS)
def test_malformed_407(kind: str, fake_proxy: MakeFake, origin: OriginServer,
                       tls_origin: tuple[OriginServer, Path]) -> None:
    def respond(seen: Seen) -> tuple[bytes, bool, bool]:
        data, close = head("407 Proxy Authentication Required", 'Proxy-Authenticate: Digest realm="open',
                           "Proxy-Authenticate: =garbage", body=b"broken proxy\n", framing="chunked")
        return data, close, False

    fake = fake_proxy(respond)
    for url in urls(origin, tls_origin, "/m"):
        with pytest.raises(ProxyAuthError, match="could not be parsed") as info:
            fetch(kind, fake.url, [("GET", url, None)], auth=(USER, PASSWORD), ca=tls_origin[1])
        assert info.value.reason == "malformed-challenge" and info.value.body_text == "broken proxy\n"
    assert len(fake.seen) == 2  # one attempt each, no loop


@pytest.mark.parametrize("kind", CLIENTS)
def test_proxy_that_answers_401(kind: str, fake_proxy: MakeFake, origin: OriginServer,
                                tls_origin: tuple[OriginServer, Path]) -> None:
    def respond(seen: Seen) -> tuple[bytes, bool, bool]:
        data, close = head("401 Unauthorized", f'WWW-Authenticate: Basic realm="{REALM}"', body=b"no\n")
        return data, close, False

    fake = fake_proxy(respond)
    plain, tls = urls(origin, tls_origin, "/401")
    with pytest.raises(ProxyAuthError, match="401 instead of 407") as info:
        fetch(kind, fake.url, [("GET", tls, None)], auth=(USER, PASSWORD), ca=tls_origin[1])
    assert info.value.reason == "answered-401" and info.value.challenges[0].scheme == "Basic"
    # On plain HTTP a 401 may be the origin's: it goes to the caller, never answered with the proxy password.
    assert [r.status for r in fetch(kind, fake.url, [("GET", plain, None)], auth=(USER, PASSWORD))] == [401]
    assert all("authorization" not in s.headers for s in fake.seen)
    assert len(fake.seen) == 2


@pytest.mark.parametrize("kind", CLIENTS)
def test_only_unanswerable_schemes(kind: str, fake_proxy: MakeFake, origin: OriginServer) -> None:
    def respond(seen: Seen) -> tuple[bytes, bool, bool]:
        data, close = head("407 Proxy Authentication Required", "Proxy-Authenticate: Negotiate",
                           f'Proxy-Authenticate: Digest realm="{REALM}", nonce="x", algorithm=SHA-1, qop="auth"')
        return data, close, False

    with pytest.raises(ProxyAuthError, match="the proxy offers only Negotiate, Digest SHA-1") as info:
        fetch(kind, fake_proxy(respond).url, [("GET", f"http://127.0.0.1:{origin.port}/", None)],
              auth=(USER, PASSWORD))
    assert info.value.reason == "no-usable-challenge"
