"""The responder flow driven by hand against the real verifier (no sockets): every algorithm, -sess, auth
and auth-int, userhash, non-ASCII names, stale, nextnonce, rspauth, preemptive reuse with nc per nonce under
concurrency, choice among several challenges, and every refusal in words. Then the same responder in the origin
role, answering a 401 in memory and from an origin over 127.0.0.1 (driven by httpx)."""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Callable, Generator
from http.server import ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from authproxy.auth import driver
from authproxy.auth.basic import basic_challenge
from authproxy.auth.describe import describe_challenge
from authproxy.auth.digest import BASE_ALGORITHMS, DigestCredentials, compute_ha1, response_auth
from authproxy.auth.errors import ProxyAuthError
from authproxy.auth.flow import drive
from authproxy.auth.headers import build_challenge, parse_auth_params, parse_credentials
from authproxy.auth.messages import ProxyRequest, ProxyResponse, Send
from authproxy.auth.nonces import NonceIssuer
from authproxy.auth.responder import Responder
from authproxy.auth.roles import ORIGIN, PROXY, Role
from authproxy.auth.store import UserEntry
from authproxy.auth.verifier import Allow, AuthPolicy, Verifier
from authproxy.state import MemoryNonceCounterStore
from authproxy.users.memory import MemoryUserStore

from helpers import OriginHandler, OriginServer

REALM = "responder-test"
USERS = {"alice": "wonderland", "jösé": "pässwörd€", "bob": "pa:ss:word"}
ALL_ALGS = ("MD5", "MD5-sess", "SHA-256", "SHA-256-sess", "SHA-512-256", "SHA-512-256-sess")
CONNECT = ProxyRequest("CONNECT", "origin.test:443")
GET = ProxyRequest("GET", "http://origin.test/a?b=1")


class FakeProxy:
    """A proxy's auth decision, in memory: the verifier with a user table, a nonce store and a clock. With
    ``role=ORIGIN`` it is an origin's: the same decision, answered with 401 and the origin's fields."""

    def __init__(self, role: Role = PROXY, **policy: Any) -> None:
        self.role = role
        self.policy = AuthPolicy(realm=REALM, **policy)
        self.issuer = NonceIssuer(b"k" * 32, REALM, self.policy.nonce_lifetime)
        self.verifier = Verifier(self.policy, self.issuer)
        self.store = MemoryNonceCounterStore()
        self.now = 1_700_000_000.0
        self.sent: list[str | None] = []
        self.users = MemoryUserStore(
            UserEntry(name, REALM, {a: compute_ha1(a, name, REALM, pw) for a in BASE_ALGORITHMS})
            for name, pw in USERS.items()
        )
        self.lock = threading.Lock()

    def challenge_response(self, stale: bool = False) -> ProxyResponse:
        values = self.verifier.challenges(self.now, secrets.token_bytes(16), stale=stale)
        return ProxyResponse(self.role.status, tuple((self.role.challenge_field, v) for v in values), b"auth needed")

    def __call__(self, request: ProxyRequest) -> Callable[[Send], ProxyResponse]:
        def send(step: Send) -> ProxyResponse:
            self.sent.append(step.authorization)
            flow = self.verifier.verify(request.method, request.target, step.authorization, self.now)
            with self.lock:  # the nonce counts are shared by the concurrent requests of some tests
                result = driver.run(flow, self.users, self.store, self.now, request.body or b"")
            if isinstance(result, Allow):
                headers = ((self.role.info_field, result.auth_info),) if result.auth_info else ()
                return ProxyResponse(200, headers)
            return self.challenge_response(stale=result.stale)
        return send


def responder(user: str = "alice", password: str | None = None, **kw: Any) -> Responder:
    return Responder(user, USERS[user] if password is None else password, random=secrets.token_bytes, **kw)


def run(proxy: FakeProxy, r: Responder, request: ProxyRequest) -> ProxyResponse:
    response: ProxyResponse = drive(r.flow(request), proxy(request))
    return response


@pytest.mark.parametrize("alg", ALL_ALGS)
@pytest.mark.parametrize("qop", ["auth", "auth-int"])
def test_every_algorithm_and_qop(alg: str, qop: str) -> None:
    proxy = FakeProxy(digest_algorithms=(alg,), qop=(qop,), schemes=("digest",))
    r = responder()
    post = ProxyRequest("POST", "http://origin.test/p", body=b"the body")
    assert run(proxy, r, post).status == 200
    creds = DigestCredentials.from_credentials(parse_credentials(proxy.sent[-1] or ""))
    assert creds.algorithm.name == alg and creds.qop == qop and creds.nc == "00000001"
    # Preemptive: the next request (and a CONNECT) carry credentials at once, nc incremented.
    before = len(proxy.sent)
    assert run(proxy, r, post).status == 200
    assert run(proxy, r, CONNECT).status == 200
    assert len(proxy.sent) == before + 2
    last = DigestCredentials.from_credentials(parse_credentials(proxy.sent[-1] or ""))
    assert last.nc == "00000003" and last.uri == "origin.test:443"


@pytest.mark.parametrize("user", list(USERS))
def test_userhash_and_non_ascii_names(user: str) -> None:
    for userhash in (True, False):
        proxy = FakeProxy(userhash=True)
        r = responder(user, userhash=userhash)
        assert run(proxy, r, GET).status == 200
        creds = parse_credentials(proxy.sent[-1] or "")
        assert (creds.param("userhash") == "true") == userhash
        if not userhash and user == "jösé":
            assert creds.param("username*") == "UTF-8''j%C3%B6s%C3%A9" and creds.param("username") is None


def test_strongest_challenge_wins_and_unknown_schemes_are_skipped() -> None:
    proxy = FakeProxy(digest_algorithms=("MD5", "SHA-512-256", "SHA-256"))
    r = responder()
    step = r.flow(GET)
    assert next(step) == Send(None)
    real = proxy.challenge_response()
    odd = ("Proxy-Authenticate", 'Negotiate, NTLM, Digest realm="x", nonce="n", algorithm=SHA-1, qop="auth"')
    broken = ("Proxy-Authenticate", 'Digest realm="unterminated')
    attempt = step.send(ProxyResponse(407, (odd, broken, *real.headers)))
    assert attempt.authorization is not None and "algorithm=SHA-512-256," in attempt.authorization


def test_wrong_password_stops_with_words() -> None:
    proxy = FakeProxy()
    with pytest.raises(ProxyAuthError) as info:
        run(proxy, responder(password="nope"), CONNECT)
    err = info.value
    assert err.reason == "wrong-credentials" and err.status == 407
    assert f'rejected the password for alice in realm "{REALM}"' in str(err)
    assert len(proxy.sent) == 2 and len(err.challenges) == 3 and err.body_text == "auth needed"


def test_wrong_basic_password() -> None:
    proxy = FakeProxy(schemes=("basic",))
    with pytest.raises(ProxyAuthError, match="rejected the password for bob") as info:
        run(proxy, responder("bob", password="x"), GET)
    assert info.value.reason == "wrong-credentials"


def test_basic_cleartext_warned_once_or_refused() -> None:
    proxy = FakeProxy(schemes=("basic",))
    warnings: list[str] = []
    r = responder("bob", warn=warnings.append)
    assert run(proxy, r, GET).status == 200
    assert run(proxy, r, GET).status == 200
    assert len(warnings) == 1 and "clear" in warnings[0]
    assert proxy.sent[-1] is not None and proxy.sent[-1].startswith("Basic ")
    assert len(proxy.sent) == 3  # Basic is preemptive once known
    refusing = responder("bob", allow_basic_cleartext=False)
    with pytest.raises(ProxyAuthError, match="offers only Basic") as info:
        run(proxy, refusing, GET)
    assert info.value.reason == "basic-refused"
    # Over TLS to the proxy Basic is fine even when cleartext Basic is refused.
    assert run(proxy, refusing, ProxyRequest("GET", GET.target, secure=True)).status == 200


def test_only_unknown_schemes() -> None:
    r = responder()
    flow = r.flow(CONNECT)
    next(flow)
    offered = ("Proxy-Authenticate", 'Negotiate, Digest realm="r", nonce="n", algorithm=SHA-1')
    with pytest.raises(ProxyAuthError, match="offers only Negotiate, Digest SHA-1") as info:
        flow.send(ProxyResponse(407, (offered,)))
    assert info.value.reason == "no-usable-challenge"


def test_malformed_407() -> None:
    r = responder()
    flow = r.flow(CONNECT)
    next(flow)
    with pytest.raises(ProxyAuthError, match="could not be parsed") as info:
        flow.send(ProxyResponse(407, (("Proxy-Authenticate", 'Digest realm="x'),)))
    assert info.value.reason == "malformed-challenge"


def test_no_credentials_given() -> None:
    r = Responder(None, None, random=secrets.token_bytes)
    with pytest.raises(ProxyAuthError, match="none were given") as info:
        run(FakeProxy(), r, CONNECT)
    assert describe_challenge(info.value.challenges[0]).startswith("Digest SHA-256 (qop auth, auth-int")


def test_stale_retries_once_with_the_new_nonce() -> None:
    proxy = FakeProxy(nonce_lifetime=10)
    r = responder()
    assert run(proxy, r, GET).status == 200
    proxy.now += 60  # the cached nonce expired: cached -> stale 407 -> fresh answer
    proxy.sent.clear()
    assert run(proxy, r, GET).status == 200
    assert len(proxy.sent) == 2


def test_fresh_answer_called_stale_twice_is_an_error() -> None:
    r = responder()
    proxy = FakeProxy()
    flow = r.flow(GET)
    next(flow)
    flow.send(proxy.challenge_response())
    flow.send(proxy.challenge_response(stale=True))  # retried once
    with pytest.raises(ProxyAuthError) as info:
        flow.send(proxy.challenge_response(stale=True))
    assert info.value.reason == "stale-loop"


def test_never_loops() -> None:
    # A proxy that calls every nonce stale from a cache-less start: capped, never endless.
    r = responder(max_rounds=3)
    proxy = FakeProxy()
    flow = r.flow(GET)
    next(flow)
    flow.send(proxy.challenge_response())
    with pytest.raises(ProxyAuthError):
        for _ in range(5):
            flow.send(proxy.challenge_response(stale=True))


def test_nextnonce_is_taken() -> None:
    proxy = FakeProxy(nonce_lifetime=100)
    r = responder()
    assert run(proxy, r, GET).status == 200
    first = DigestCredentials.from_credentials(parse_credentials(proxy.sent[-1] or "")).nonce
    proxy.now += 60  # past half its life: the proxy hands out nextnonce
    assert run(proxy, r, GET).status == 200
    assert run(proxy, r, GET).status == 200
    last = DigestCredentials.from_credentials(parse_credentials(proxy.sent[-1] or ""))
    assert last.nonce != first and last.nc == "00000001"


def test_rspauth_mismatch_is_an_error() -> None:
    proxy = FakeProxy(qop=("auth",))
    r = responder()
    flow = r.flow(GET)
    next(flow)
    attempt = flow.send(proxy.challenge_response())
    creds = DigestCredentials.from_credentials(parse_credentials(attempt.authorization or ""))
    info = f'qop=auth, rspauth="{"0" * 64}", cnonce="{creds.cnonce}", nc={creds.nc}'
    with pytest.raises(ProxyAuthError, match="rspauth") as err:
        flow.send(ProxyResponse(200, (("Proxy-Authentication-Info", info),)))
    assert err.value.reason == "rspauth-mismatch"


@pytest.mark.parametrize("echo", ["qop=auth-int", "nc=00000009", 'cnonce="other"'])
def test_rspauth_over_echoed_values_other_than_sent_is_a_mismatch(echo: str) -> None:
    """RFC 7616 section 3.5: the qop, nc and cnonce a proxy echoes are the request's; a right rspauth next to
    others is not the proxy's answer to this request."""
    proxy = FakeProxy(qop=("auth",), digest_algorithms=("SHA-256",), userhash=False)
    r = responder()
    flow = r.flow(GET)
    next(flow)
    attempt = flow.send(proxy.challenge_response())
    creds = DigestCredentials.from_credentials(parse_credentials(attempt.authorization or ""))
    ha1 = compute_ha1("SHA-256", "alice", REALM, USERS["alice"])
    rspauth = response_auth(creds.algorithm, ha1=ha1, nonce=creds.nonce, nc=creds.nc, cnonce=creds.cnonce,
                            qop=creds.qop, uri=creds.uri)
    with pytest.raises(ProxyAuthError, match="rspauth") as err:
        flow.send(ProxyResponse(200, (("Proxy-Authentication-Info", f'rspauth="{rspauth}", {echo}'),)))
    assert err.value.reason == "rspauth-mismatch"


def test_auth_int_with_a_stream_body() -> None:
    stream = ProxyRequest("POST", "http://origin.test/p", body=None)
    with pytest.raises(ProxyAuthError, match="stream") as info:
        run(FakeProxy(qop=("auth-int",)), responder(), stream)
    assert info.value.reason == "body-not-replayable"
    # With both offered, auth-int is preferred only when the body can be hashed.
    proxy = FakeProxy()
    r = responder(prefer_auth_int=True)
    assert run(proxy, r, ProxyRequest("POST", "http://origin.test/p", body=b"x")).status == 200
    assert "qop=auth-int" in (proxy.sent[-1] or "")
    assert run(proxy, r, stream).status == 200  # preemptive, qop=auth: nothing to replay
    assert "qop=auth," in (proxy.sent[-1] or "")


def test_401_to_connect() -> None:
    r = responder()
    flow = r.flow(CONNECT)
    next(flow)
    with pytest.raises(ProxyAuthError, match="401 instead of 407") as info:
        flow.send(ProxyResponse(401, (("WWW-Authenticate", build_challenge(basic_challenge("t"))),)))
    assert info.value.reason == "answered-401"
    # A 401 on a plain request is the origin's: handed back, never answered with proxy credentials.
    flow = r.flow(GET)
    next(flow)
    with pytest.raises(StopIteration):
        flow.send(ProxyResponse(401, (("WWW-Authenticate", 'Basic realm="origin"'),)))


def test_concurrent_requests_never_share_an_nc() -> None:
    proxy = FakeProxy()
    r = responder()
    assert run(proxy, r, GET).status == 200
    proxy.sent.clear()
    results: list[int] = []

    def worker() -> None:
        for _ in range(50):
            results.append(run(proxy, r, GET).status)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 400
    ncs = [DigestCredentials.from_credentials(parse_credentials(s or "")).nc for s in proxy.sent]
    assert len(ncs) == 400 and len(set(ncs)) == 400


def test_accept_restricts_the_challenges_answered() -> None:
    proxy = FakeProxy(digest_algorithms=("SHA-256", "MD5"))
    r = responder(accept=lambda c: (c.param("algorithm") or "MD5") == "MD5")
    assert run(proxy, r, GET).status == 200
    assert "algorithm=MD5," in (proxy.sent[-1] or "")
    only_basic = responder(accept=lambda c: c.scheme_key == "basic")
    assert run(proxy, only_basic, GET).status == 200 and (proxy.sent[-1] or "").startswith("Basic ")


# --- the origin role: the same responder answers an origin's 401 ----------------------------------------------


def origin_responder(**kw: Any) -> Responder:
    return responder(role=ORIGIN, **kw)


@pytest.mark.parametrize("alg", ALL_ALGS)
def test_origin_role_answers_a_401(alg: str) -> None:
    origin = FakeProxy(ORIGIN, digest_algorithms=(alg,), qop=("auth",), schemes=("digest",))
    r = origin_responder()
    get = ProxyRequest("GET", "/private?x=1")
    answer = run(origin, r, get)
    assert answer.status == 200 and answer.get_all("Authentication-Info")  # its rspauth was checked
    assert sent_algorithms(origin.sent) == [None, alg]
    assert run(origin, r, get).status == 200  # the nonce is reused: one round trip
    assert sent_algorithms(origin.sent)[2:] == [alg]


def sent_algorithms(sent: list[str | None]) -> list[str | None]:
    return [None if s is None else DigestCredentials.from_credentials(parse_credentials(s)).algorithm.name
            for s in sent]


def test_origin_role_reads_only_the_origins_fields() -> None:
    r = origin_responder()
    # A 401 whose only challenge is in a proxy's field has nothing an origin asked for.
    flow = r.flow(ProxyRequest("GET", "/"))
    next(flow)
    with pytest.raises(ProxyAuthError, match="the origin answered 401 but it sent no WWW-Authenticate field") as info:
        flow.send(ProxyResponse(401, (("Proxy-Authenticate", 'Basic realm="p"'),)))
    assert info.value.hop == "origin"
    # A 407 is not this role's challenge: it goes back to the caller unanswered.
    flow = r.flow(ProxyRequest("GET", "/"))
    next(flow)
    with pytest.raises(StopIteration) as stop:
        flow.send(ProxyResponse(407, (("Proxy-Authenticate", 'Basic realm="p"'),)))
    assert stop.value.value.status == 407
    # Wrong password, in the origin's words.
    with pytest.raises(ProxyAuthError, match="the origin rejected the password for alice") as info:
        run(FakeProxy(ORIGIN), origin_responder(password="nope"), ProxyRequest("GET", "/"))
    assert info.value.status == 401 and info.value.hop == "origin"


class _VerifyingOrigin(OriginHandler):
    """An origin that asks for credentials: the in-memory origin-role decision, served over HTTP/1.1."""

    server: _AuthOrigin

    def _handle(self) -> None:
        body = self._body()
        if body is None:  # the client went away mid-body
            self.close_connection = True
            return
        self.server.seen.append({"method": self.command, "path": self.path, "headers": list(self.headers.items()),
                                 "body": body})
        decide = self.server.peer(ProxyRequest(self.command, self.path, body))
        answer = decide(Send(self.headers.get("Authorization")))
        self.send_response(answer.status)
        for name, value in answer.headers:
            self.send_header(name, value)
        payload = answer.body or b"welcome\n"
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _handle


class _AuthOrigin(OriginServer):
    def __init__(self, peer: FakeProxy) -> None:
        ThreadingHTTPServer.__init__(self, ("127.0.0.1", 0), _VerifyingOrigin)
        self.peer = peer
        self.seen = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()


class _ResponderAuth(httpx.Auth):
    """httpx's auth flow hook driving the responder in the origin role (the test's own glue: RFC 9110 section
    11.6 fields, the origin-form target as the Digest uri)."""

    requires_request_body = True
    requires_response_body = True

    def __init__(self, responder: Responder) -> None:
        self.responder = responder

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        target = request.url.raw_path.decode("ascii")
        flow = self.responder.flow(ProxyRequest(request.method, target, request.content))
        step = next(flow)
        while True:
            if step.authorization is not None:
                request.headers[ORIGIN.credentials_field] = step.authorization
            response = yield request
            try:
                step = flow.send(ProxyResponse(response.status_code, tuple(response.headers.multi_items()),
                                               response.content))
            except StopIteration:
                return


@pytest.mark.parametrize("qop", ["auth", "auth-int"])
def test_origin_role_over_sockets_with_httpx(qop: str) -> None:
    """A Digest 401 from an origin on 127.0.0.1, answered by the responder in the origin role, rspauth checked."""
    origin = _AuthOrigin(FakeProxy(ORIGIN, digest_algorithms=("SHA-256",), qop=(qop,), schemes=("digest",)))
    try:
        r = origin_responder(prefer_auth_int=True)
        with httpx.Client(auth=_ResponderAuth(r), timeout=10) as client:
            url = f"http://127.0.0.1:{origin.port}/private"
            first = client.post(url, content=b"some body")
            assert first.status_code == 200 and first.text == "welcome\n"
            # RFC 7616 section 3.5: rspauth for qop=auth; for auth-int it would cover the response body.
            assert ("rspauth=" in first.headers["Authentication-Info"]) == (qop == "auth")
            assert client.get(url).status_code == 200
        heads = [{k.lower(): v for k, v in entry["headers"]} for entry in origin.seen]
        assert ["authorization" in h for h in heads] == [False, True, True]  # one 401, then preemptive reuse
        assert f"qop={qop}," in heads[1]["authorization"] and "uri=\"/private\"" in heads[1]["authorization"]
        assert not any("proxy-authorization" in h for h in heads)
        # An origin whose Authentication-Info does not come from the password: refused, naming the field.
        origin.peer = _Tampered(FakeProxy(ORIGIN, qop=("auth",)))
        with httpx.Client(auth=_ResponderAuth(origin_responder()), timeout=10) as client, \
                pytest.raises(ProxyAuthError, match=r"the origin's rspauth \(Authentication-Info\)") as info:
            client.get(url)
        assert info.value.hop == "origin" and info.value.reason == "rspauth-mismatch"
    finally:
        origin.stop()


class _Tampered(FakeProxy):
    """The same origin, but its rspauth is wrong (someone who does not know the password)."""

    def __init__(self, inner: FakeProxy) -> None:
        self.__dict__.update(inner.__dict__)

    def __call__(self, request: ProxyRequest) -> Callable[[Send], ProxyResponse]:
        send = super().__call__(request)

        def tampered(step: Send) -> ProxyResponse:
            answer = send(step)
            wrong = f'rspauth="{"0" * 64}"'
            headers = tuple((k, re.sub(r'rspauth="?[0-9a-f]+"?', wrong, v)) for k, v in answer.headers)
            return ProxyResponse(answer.status, headers, answer.body)
        return tampered


# --- an info field that cannot be trusted is a failure (issue 9) ----------------------------------------------

UNTRUSTED: dict[str, Callable[[str], list[str]]] = {
    "repeated rspauth": lambda good: [good + ', rspauth="' + "0" * 64 + '"'],
    "repeated rspauth, same value": lambda good: [good + ", " + good.split(", ")[1]],
    "repeated nextnonce": lambda good: [good + ', nextnonce="a", nextnonce="b"'],
    "two fields": lambda good: [good, good],
    "two fields, different parameters": lambda good: [good, 'nextnonce="n2"'],
    "unparsable": lambda good: [good + ', rspauth="unterminated'],
    "not an auth-param list": lambda good: ["=garbage"],
}


@pytest.mark.parametrize("role", [PROXY, ORIGIN], ids=["proxy", "origin"])
@pytest.mark.parametrize("variant", UNTRUSTED)
def test_an_untrusted_info_field_fails_the_same_way(variant: str, role: Role) -> None:
    peer = FakeProxy(role, qop=("auth",), nonce_lifetime=100)
    r = responder(role=role)
    request = ProxyRequest("GET", "/p" if role == ORIGIN else "http://origin.test/p")
    flow = r.flow(request)
    next(flow)
    attempt = flow.send(peer.challenge_response())
    peer.now += 60  # past half the nonce's life: the genuine field carries a nextnonce too
    genuine = peer(request)(attempt)
    (good,) = genuine.get_all(role.info_field)
    assert "rspauth=" in good and "nextnonce=" in good
    fields = tuple((role.info_field, value) for value in UNTRUSTED[variant](good))
    with pytest.raises(ProxyAuthError) as info:
        flow.send(ProxyResponse(200, fields))
    err = info.value
    assert err.reason == "untrusted-auth-info" and err.hop == role.name and err.status == 200
    assert str(err).startswith(f"the {role.name}'s {role.info_field} field cannot be trusted: ")
    assert r.in_use is None  # the nonce is forgotten: the next request starts afresh


def test_a_genuine_info_field_with_nextnonce_is_taken() -> None:
    """The control for the test above: the same exchange with the field untouched succeeds."""
    peer = FakeProxy(qop=("auth",), nonce_lifetime=100)
    r = responder()
    flow = r.flow(GET)
    next(flow)
    attempt = flow.send(peer.challenge_response())
    peer.now += 60
    genuine = peer(GET)(attempt)
    with pytest.raises(StopIteration) as stop:
        flow.send(genuine)
    assert stop.value.value.status == 200
    nextnonce = dict(parse_auth_params(genuine.get_all("Proxy-Authentication-Info")[0]))["nextnonce"]
    assert run(peer, r, GET).status == 200  # preemptive, with the next nonce
    sent = DigestCredentials.from_credentials(parse_credentials(peer.sent[-1] or ""))
    assert sent.nonce == nextnonce and sent.nc == "00000001" and len(peer.sent) == 2  # no challenge between
