"""The verifier flow, driven by hand: every algorithm, -sess, auth and auth-int, userhash, stale, replay,
out-of-order nc, realm and uri checks, Basic, the challenges of a 407, and the fuzz invariant."""

from __future__ import annotations

import base64
import contextlib
import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authproxy.auth import driver
from authproxy.auth.basic import encode_basic
from authproxy.auth.digest import (
    ALGORITHMS,
    BASE_ALGORITHMS,
    DigestChallenge,
    DigestCredentials,
    compute_ha1,
    compute_userhash,
    request_digest,
    response_auth,
)
from authproxy.auth.digest_scheme import DigestScheme
from authproxy.auth.errors import AuthHeaderError, ConfigError
from authproxy.auth.headers import build_credentials, parse_auth_params, parse_challenges
from authproxy.auth.nonces import NonceIssuer, NonceStatus
from authproxy.auth.outcomes import Outcome
from authproxy.auth.store import UserEntry
from authproxy.auth.text import realm_problem
from authproxy.auth.verifier import (
    Allow,
    AuthPolicy,
    Flow,
    NeedBodyHash,
    NeedNonceUse,
    NeedPasswordCheck,
    NeedUser,
    NeedUserByHash,
    Reject,
    Verifier,
    uri_matches,
)
from authproxy.state import MemoryNonceCounterStore
from authproxy.users.memory import MemoryUserStore

REALM = "proxy@example.org"
KEY = b"0123456789abcdef0123456789abcdef"
T0 = 1_700_000_000.0
RAND = b"r" * 16
ALL_ALGS = ("MD5", "MD5-sess", "SHA-256", "SHA-256-sess", "SHA-512-256", "SHA-512-256-sess")
TARGET = "http://www.example.org/dir/index.html?x=1"

VECTORS: dict[str, dict[str, Any]] = {
    v["id"]: v
    for v in json.loads(
        (Path(__file__).parent / "vectors" / "digest_vectors.json").read_text(encoding="utf-8")
    )
}


def entry(name: str, password: str, realm: str = REALM) -> UserEntry:
    return UserEntry(name, realm, {alg: compute_ha1(alg, name, realm, password) for alg in BASE_ALGORITHMS})


USERS: dict[str, UserEntry] = {
    e.name: e
    for e in (
        entry("Mufasa", "Circle of Life"),
        entry("Jäsøn Doe", "Secret, or not?"),
        entry("colon", "a:b:c"),
        UserEntry("crypt", password_hash=bcrypt.hashpw(b"hunter2", bcrypt.gensalt(4)).decode()),
        UserEntry("elsewhere", "other-realm", {"MD5": compute_ha1("MD5", "elsewhere", "other-realm", "pw")}),
        UserEntry("nosecret"),
    )
}


def digest_scheme(verifier: Verifier) -> DigestScheme:
    scheme = verifier.schemes["digest"]
    assert isinstance(scheme, DigestScheme)
    return scheme


def make_verifier(**policy: Any) -> Verifier:
    pol = AuthPolicy(realm=policy.pop("realm", REALM), **policy)
    return Verifier(pol, NonceIssuer(KEY, pol.realm, pol.nonce_lifetime))


def recorded(flow: Flow, needs: list[Any]) -> Flow:
    """``flow``, with every need it yields appended to ``needs``."""
    answer: Any = None
    try:
        while True:
            need = flow.send(answer)
            needs.append(need)
            answer = yield need
    except StopIteration as stop:
        result: Allow | Reject = stop.value
        return result


def _attempt(call: Callable[[], Allow | Reject]) -> Allow | Reject | Exception:
    try:
        return call()
    except Exception as exc:  # compared between the two paths, then raised again
        return exc


def _outcome(result: Allow | Reject | Exception) -> object:
    return (type(result), result.args) if isinstance(result, Exception) else result


class Driver:
    """Answers the flow's needs with the one driver (authproxy.auth.driver) from USERS in a MemoryUserStore and
    a MemoryNonceCounterStore, recording what was asked."""

    def __init__(self, users: dict[str, UserEntry] | None = None) -> None:
        self.store = MemoryUserStore((USERS if users is None else users).values())
        self.counters = MemoryNonceCounterStore()
        self.needs: list[Any] = []

    def run(
        self,
        verifier: Verifier,
        method: str,
        target: str,
        auth: str | None,
        now: float = T0,
        body: bytes = b"",
    ) -> Allow | Reject:
        self.needs = []
        # driver.decide (Digest without the generator) from a copy of the same counts must decide the same, or
        # raise the same: every test here checks the inline path against the flow.
        twin = copy.deepcopy(self.counters)
        inline = _attempt(lambda: driver.decide(verifier, method, target, auth, now, self.store, twin, body))
        flow = recorded(verifier.verify(method, target, auth, now), self.needs)
        result = _attempt(lambda: driver.run(flow, self.store, self.counters, now, body))
        assert _outcome(inline) == _outcome(result)
        if isinstance(result, Exception):
            raise result
        return result

    def asked(self, kind: type) -> bool:
        return any(isinstance(n, kind) for n in self.needs)


def digest_challenge(verifier: Verifier, algorithm: str, now: float = T0) -> DigestChallenge:
    for value in verifier.challenges(now, RAND):
        challenge = parse_challenges([value])[0]
        if challenge.scheme_key == "digest":
            dc = DigestChallenge.from_challenge(challenge)
            if dc is not None and dc.algorithm == algorithm:
                return dc
    raise AssertionError(f"no {algorithm} challenge")


def answer(
    ch: DigestChallenge,
    user: str,
    password: str,
    *,
    method: str = "GET",
    uri: str = TARGET,
    nc: int = 1,
    cnonce: str = "0a4f113b",
    qop: str | None = "auth",
    body: bytes = b"",
    userhash: bool = False,
    **override: Any,
) -> tuple[str, str]:
    """A client's Proxy-Authorization value for challenge ``ch``, and the rspauth it expects back."""
    alg = ch.alg
    ha1 = compute_ha1(alg.name, user, ch.realm, password)
    body_hash = alg.hexdigest(body) if qop == "auth-int" else None
    nc_text = f"{nc:08x}" if qop else None
    cn = cnonce if qop else None
    response = request_digest(
        alg,
        ha1=ha1,
        nonce=ch.nonce,
        nc=nc_text,
        cnonce=cn,
        qop=qop,
        method=method,
        uri=uri,
        body_hash=body_hash,
    )
    rspauth = ""
    if qop != "auth-int":
        rspauth = response_auth(alg, ha1=ha1, nonce=ch.nonce, nc=nc_text, cnonce=cn, qop=qop, uri=uri)
    fields: dict[str, Any] = dict(
        username=compute_userhash(alg, user, ch.realm) if userhash else user,
        userhash=userhash,
        realm=ch.realm,
        nonce=ch.nonce,
        uri=uri,
        response=response,
        algorithm=alg,
        cnonce=cn,
        nc=nc_text,
        qop=qop,
        opaque=ch.opaque,
    )
    fields.update(override)
    return build_credentials(DigestCredentials(**fields).to_credentials()), rspauth


# --- the 407 ------------------------------------------------------------------------------------------------


def test_challenges_in_the_configured_order_then_basic() -> None:
    """The configured order is the operator's preference (RFC 7616 section 3.7: most preferred first): the
    default puts SHA-256 first; MD5 first is for clients that read only the first challenge (urllib)."""
    default = [DigestChallenge.from_challenge(c) for c in parse_challenges(make_verifier().challenges(T0, RAND))[:-1]]
    assert [d.algorithm for d in default if d] == ["SHA-256", "MD5"]
    v = make_verifier(digest_algorithms=("MD5", "SHA-256-sess", "SHA-512-256", "sha-256"))
    values = v.challenges(T0, RAND)
    parsed = parse_challenges(values)
    assert [c.scheme for c in parsed] == ["Digest"] * 4 + ["Basic"]
    digests = [DigestChallenge.from_challenge(c) for c in parsed[:4]]
    assert [d.algorithm for d in digests if d] == ["MD5", "SHA-256-sess", "SHA-512-256", "SHA-256"]
    for d in digests:
        assert d is not None
        assert d.realm == REALM and d.qop == ("auth", "auth-int") and d.userhash and d.charset_utf8
        assert d.opaque == v.issuer.opaque and not d.stale
        assert v.issuer.check(d.nonce, T0) is NonceStatus.VALID
    assert values[-1] == f'Basic realm="{REALM}", charset="UTF-8"'


def test_challenges_stale_and_scheme_selection() -> None:
    stale = parse_challenges(make_verifier().challenges(T0, RAND, stale=True))
    assert [c.param("stale") for c in stale] == ["true", "true", None]
    assert make_verifier(schemes=("basic",)).challenges(T0, RAND) == [
        f'Basic realm="{REALM}", charset="UTF-8"'
    ]
    only_digest = make_verifier(schemes=("Digest",), userhash=False, qop=("auth",)).challenges(T0, RAND)
    assert len(only_digest) == 2
    assert all("userhash" not in c and 'qop="auth"' in c for c in only_digest)


def test_missing() -> None:
    d = Driver()
    assert d.run(make_verifier(), "GET", TARGET, None) == Reject(
        Outcome.MISSING, None, False, "no Proxy-Authorization field"
    )


# --- Digest: the happy paths ------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALL_ALGS)
@pytest.mark.parametrize("qop", ["auth", "auth-int"])
def test_every_algorithm_and_qop(algorithm: str, qop: str) -> None:
    v = make_verifier(digest_algorithms=ALL_ALGS)
    ch = digest_challenge(v, algorithm)
    auth, rspauth = answer(ch, "Mufasa", "Circle of Life", method="POST", qop=qop, body=b"hello")
    d = Driver()
    result = d.run(v, "POST", TARGET, auth, body=b"hello")
    assert isinstance(result, Allow)
    assert (result.user, result.scheme) == ("Mufasa", "digest")
    assert d.asked(NeedBodyHash) is (qop == "auth-int")
    assert result.auth_info is not None
    info = dict(parse_auth_params(result.auth_info))
    assert info["qop"] == qop and info["nc"] == "00000001" and info["cnonce"] == "0a4f113b"
    if qop == "auth":
        assert info["rspauth"] == rspauth
    else:
        assert "rspauth" not in info  # a proxy cannot hash a response body it has not seen yet
    assert "nextnonce" not in info


def test_auth_int_with_wrong_body_is_bad_password() -> None:
    v = make_verifier()
    auth, _ = answer(
        digest_challenge(v, "SHA-256"),
        "Mufasa",
        "Circle of Life",
        method="POST",
        qop="auth-int",
        body=b"what the client signed",
    )
    result = Driver().run(v, "POST", TARGET, auth, body=b"what arrived")
    assert isinstance(result, Reject) and result.outcome == "bad-password"


def test_connect_uri_is_the_authority() -> None:
    v = make_verifier()
    ch = digest_challenge(v, "SHA-256")
    auth, _ = answer(ch, "Mufasa", "Circle of Life", method="CONNECT", uri="www.example.org:443")
    assert isinstance(Driver().run(v, "CONNECT", "www.example.org:443", auth), Allow)
    with pytest.raises(AuthHeaderError) as err:
        Driver().run(v, "CONNECT", "www.example.org:8443", auth)
    assert err.value.status_hint == 400
    wrong, _ = answer(ch, "Mufasa", "Circle of Life", method="CONNECT", uri="/")
    with pytest.raises(AuthHeaderError):
        Driver().run(v, "CONNECT", "www.example.org:443", wrong)


def test_origin_form_uri_accepted_for_absolute_target() -> None:
    v = make_verifier()
    ch = digest_challenge(v, "SHA-256")
    auth, _ = answer(ch, "Mufasa", "Circle of Life", uri="/dir/index.html?x=1")
    assert isinstance(Driver().run(v, "GET", TARGET, auth), Allow)


def test_wrong_uri_is_400() -> None:
    v = make_verifier()
    auth, _ = answer(digest_challenge(v, "SHA-256"), "Mufasa", "Circle of Life", uri="/dir/other.html")
    with pytest.raises(AuthHeaderError) as err:
        Driver().run(v, "GET", TARGET, auth)
    assert err.value.status_hint == 400


@pytest.mark.parametrize(
    ("method", "target", "uri", "ok"),
    [
        ("GET", "http://h/p?q", "http://h/p?q", True),
        ("GET", "http://h/p?q", "/p?q", True),
        ("GET", "http://h/p?q", "/p", False),
        ("GET", "http://h/p?q", "/P?q", False),
        ("GET", "http://h", "/", True),
        ("GET", "http://h?q", "/?q", True),
        ("GET", "http://h:80/p", "http://h/p", False),  # no normalisation
        ("GET", "http://h/p?q", "http://other/p?q", False),  # an absolute uri is tied to the target's host,
        ("GET", "http://h/p?q", "https://h/p?q", False),  # scheme,
        ("GET", "http://h/p?q", "http://h:8080/p?q", False),  # port,
        ("GET", "http://h/p?q", "http://h/p?r", False),  # and query
        ("GET", "http://other/p?q", "/p?q", True),  # origin-form: path and query only (curl sends it)
        ("GET", "http://h/p?q", "p?q", False),
        ("GET", "http://h/p?q", "//h/p?q", False),
        ("GET", "http://h/%7Ep", "/~p", False),
        ("CONNECT", "h:443", "h:443", True),
        ("CONNECT", "h:443", "/", False),
        ("OPTIONS", "*", "*", True),
    ],
)
def test_uri_matches(method: str, target: str, uri: str, ok: bool) -> None:
    assert uri_matches(method, target, uri) is ok


def test_userhash() -> None:
    v = make_verifier(digest_algorithms=("SHA-512-256",))
    ch = digest_challenge(v, "SHA-512-256")
    auth, _ = answer(ch, "Jäsøn Doe", "Secret, or not?", userhash=True)
    d = Driver()
    result = d.run(v, "GET", TARGET, auth)
    assert isinstance(result, Allow) and result.user == "Jäsøn Doe"
    assert d.asked(NeedUserByHash) and not d.asked(NeedUser)
    hashed = next(n for n in d.needs if isinstance(n, NeedUserByHash))
    assert hashed == NeedUserByHash("SHA-512-256", REALM, compute_userhash(ch.alg, "Jäsøn Doe", REALM))


def test_userhash_store_answering_for_someone_else_is_refused() -> None:
    v = make_verifier()
    auth, _ = answer(digest_challenge(v, "SHA-256"), "Mufasa", "Circle of Life", userhash=True)
    liar = {"Mufasa": USERS["Mufasa"]}
    d = Driver(liar)
    flow = v.verify("GET", TARGET, auth, T0)
    need = next(flow)
    assert isinstance(need, NeedUserByHash)
    with pytest.raises(StopIteration) as stop:
        flow.send(USERS["Jäsøn Doe"])  # the wrong user for this hash
    assert stop.value.value.outcome == "unknown-user"
    assert isinstance(d.run(v, "GET", TARGET, auth), Allow)


def test_non_ascii_username_star() -> None:
    v = make_verifier()
    auth, _ = answer(digest_challenge(v, "SHA-256"), "Jäsøn Doe", "Secret, or not?")
    assert "username*=UTF-8''J%C3%A4s%C3%B8n%20Doe" in auth
    result = Driver().run(v, "GET", TARGET, auth)
    assert isinstance(result, Allow) and result.user == "Jäsøn Doe"


# --- the RFC examples, through the verifier ---------------------------------------------------------------


class FixedIssuer(NonceIssuer):
    """Accepts the RFC's own nonce and opaque, so the printed credentials can be checked verbatim."""

    def __init__(self, realm: str, nonce: str, opaque: str) -> None:
        super().__init__(KEY, realm, 300.0)
        self._fixed = (nonce, opaque)

    @property
    def opaque(self) -> str:
        return self._fixed[1]

    def check(self, nonce: str, now: float) -> NonceStatus:
        return NonceStatus.VALID if nonce == self._fixed[0] else NonceStatus.INVALID

    def issued_at(self, nonce: str) -> float:
        return T0

    def expires_at(self, nonce: str) -> float:
        return T0 + 300.0


@pytest.mark.parametrize(
    "vid",
    [
        "rfc7616-3.9.1-md5",
        "rfc7616-3.9.1-sha256",
        "rfc2617-3.5-md5-auth",
        "rfc5090-http-get",
        "rfc7616-3.9.2-sha512-256-userhash",
    ],
)
def test_rfc_vectors_through_the_verifier(vid: str) -> None:
    vec = VECTORS[vid]
    alg = ALGORITHMS[vec["algorithm"].upper()]
    realm = vec["realm"]
    users = {vec["username"]: entry(vec["username"], vec["password"], realm)}
    policy = AuthPolicy(realm=realm, digest_algorithms=(vec["algorithm"],))
    v = Verifier(policy, FixedIssuer(realm, vec["nonce"], vec["opaque"] or ""))
    username = vec["expected_username_hash"] if vec["userhash"] else vec["username"]
    creds = DigestCredentials(
        username=username,
        userhash=vec["userhash"],
        realm=realm,
        nonce=vec["nonce"],
        uri=vec["uri"],
        response=vec["expected_response"],
        algorithm=alg,
        cnonce=vec["cnonce"],
        nc=vec["nc"],
        qop=vec["qop"],
        opaque=vec["opaque"] or "",
    )
    target = "http://www.example.org" + vec["uri"]
    result = Driver(users).run(v, vec["method"], target, build_credentials(creds.to_credentials()))
    assert isinstance(result, Allow), result
    assert result.user == vec["username"]
    assert result.auth_info is not None
    if "expected_rspauth" in vec:
        assert dict(parse_auth_params(result.auth_info))["rspauth"] == vec["expected_rspauth"]


# --- Digest: the refusals ---------------------------------------------------------------------------------


def test_stale_nonce_only_when_digest_right() -> None:
    v = make_verifier(nonce_lifetime=60.0)
    ch = digest_challenge(v, "SHA-256")
    later = T0 + 61
    good, _ = answer(ch, "Mufasa", "Circle of Life")
    d = Driver()
    assert d.run(v, "GET", TARGET, good, now=later) == Reject(
        Outcome.STALE_NONCE, "Mufasa", True, "nonce expired; the digest was right"
    )
    assert not d.asked(NeedNonceUse)
    bad, _ = answer(ch, "Mufasa", "wrong")
    result = d.run(v, "GET", TARGET, bad, now=later)
    assert isinstance(result, Reject) and result.outcome == "bad-password" and not result.stale


def test_replay_and_out_of_order_nc() -> None:
    v = make_verifier()
    ch = digest_challenge(v, "SHA-256")
    d = Driver()
    results: dict[int, list[Allow | Reject]] = {}
    for nc in (3, 1, 2, 2, 3, 4):
        auth, _ = answer(ch, "Mufasa", "Circle of Life", nc=nc)
        r = d.run(v, "GET", TARGET, auth)
        results.setdefault(nc, []).append(r)
    assert [type(r) for r in results[1]] == [Allow]
    assert [type(r) for r in results[4]] == [Allow]
    for nc in (2, 3):
        first, second = results[nc]
        assert isinstance(first, Allow)
        assert isinstance(second, Reject) and second.outcome == "replay" and not second.stale


def test_forgotten_nonce_counts_are_stale_not_replay() -> None:
    """A full count table that forgot a nonce answers UNKNOWN: stale=true (a new challenge, not a failure)."""
    v = make_verifier()
    ch = digest_challenge(v, "SHA-256")
    d = Driver()
    d.counters = MemoryNonceCounterStore(max_nonces=1)
    first, _ = answer(ch, "Mufasa", "Circle of Life", nc=1)
    assert isinstance(d.run(v, "GET", TARGET, first), Allow)
    use = next(n for n in d.needs if isinstance(n, NeedNonceUse))
    assert use.user == "Mufasa"  # the store's owner: the user the digest was verified for
    # Another nonce pushes this one out of the one-entry table; its counts are no longer known.
    assert d.counters.use("another-nonce", 1, use.expires_at + 1, T0, "Mufasa")
    again, _ = answer(ch, "Mufasa", "Circle of Life", nc=2)
    assert d.run(v, "GET", TARGET, again) == Reject(
        Outcome.STALE_NONCE, "Mufasa", True, "nonce counts no longer known; the digest was right"
    )
    replayed = d.run(v, "GET", TARGET, first)
    assert isinstance(replayed, Reject) and replayed.outcome == "stale-nonce" and replayed.stale


def test_wrong_password_does_not_burn_the_count() -> None:
    v = make_verifier()
    ch = digest_challenge(v, "SHA-256")
    d = Driver()
    bad, _ = answer(ch, "Mufasa", "guess")
    result = d.run(v, "GET", TARGET, bad)
    assert isinstance(result, Reject) and result.outcome == "bad-password"
    assert not d.asked(NeedNonceUse)
    good, _ = answer(ch, "Mufasa", "Circle of Life")
    assert isinstance(d.run(v, "GET", TARGET, good), Allow)


def test_wrong_realm() -> None:
    v = make_verifier()
    ch = digest_challenge(v, "SHA-256")
    auth, _ = answer(ch, "Mufasa", "Circle of Life", realm="other@example.org")
    result = Driver().run(v, "GET", TARGET, auth)
    assert isinstance(result, Reject) and result.outcome == "wrong-realm"


def test_forged_nonce_and_opaque_cost_no_lookup() -> None:
    v = make_verifier()
    ch = digest_challenge(v, "SHA-256")
    other = Verifier(v.policy, NonceIssuer(b"x" * 32, REALM, 300.0))
    forged = digest_challenge(other, "SHA-256")
    cases = [
        answer(forged, "Mufasa", "Circle of Life", opaque=ch.opaque)[0],  # a nonce under another key
        answer(ch, "Mufasa", "Circle of Life", opaque="not-ours")[0],
        answer(ch, "Mufasa", "Circle of Life", opaque=None)[0],
    ]
    for auth in cases:
        d = Driver()
        result = d.run(v, "GET", TARGET, auth, now=T0 + 10_000)
        assert isinstance(result, Reject) and result.outcome == "bad-nonce" and not result.stale
        assert d.needs == []


def test_not_offered() -> None:
    v = make_verifier(digest_algorithms=("SHA-256",), qop=("auth",), userhash=False)
    sha = digest_challenge(v, "SHA-256")
    md5 = DigestChallenge(REALM, sha.nonce, sha.opaque, "MD5", sha.qop)
    cases = [
        answer(md5, "Mufasa", "Circle of Life")[0],
        answer(sha, "Mufasa", "Circle of Life", qop="auth-int")[0],
        answer(sha, "Mufasa", "Circle of Life", qop=None)[0],  # RFC 2069 form: no nc, no replay protection
        answer(sha, "Mufasa", "Circle of Life", userhash=True)[0],
    ]
    for auth in cases:
        d = Driver()
        result = d.run(v, "GET", TARGET, auth)
        assert isinstance(result, Reject) and result.outcome == "unsupported-scheme", auth
        assert d.needs == []


def test_unknown_user_and_missing_secret() -> None:
    v = make_verifier()
    ch = digest_challenge(v, "SHA-256")
    for user, outcome in [
        ("nobody", "unknown-user"),
        ("crypt", "no-digest-secret"),
        ("elsewhere", "no-digest-secret"),
        ("nosecret", "no-digest-secret"),
    ]:
        auth, _ = answer(ch, user, "pw")
        result = Driver().run(v, "GET", TARGET, auth)
        assert isinstance(result, Reject) and result.outcome == outcome, user


def test_store_without_this_algorithm() -> None:
    only_md5 = {"Mufasa": UserEntry("Mufasa", REALM, {"MD5": USERS["Mufasa"].ha1["MD5"]})}
    v = make_verifier()
    auth, _ = answer(digest_challenge(v, "SHA-256"), "Mufasa", "Circle of Life")
    result = Driver(only_md5).run(v, "GET", TARGET, auth)
    assert isinstance(result, Reject) and result.outcome == "no-digest-secret"
    auth, _ = answer(digest_challenge(v, "MD5"), "Mufasa", "Circle of Life")
    assert isinstance(Driver(only_md5).run(v, "GET", TARGET, auth), Allow)


def test_nextnonce_after_half_life() -> None:
    v = make_verifier(nonce_lifetime=100.0)
    ch = digest_challenge(v, "SHA-256")
    auth, _ = answer(ch, "Mufasa", "Circle of Life")
    d = Driver()
    result = d.run(v, "GET", TARGET, auth, now=T0 + 60)
    assert isinstance(result, Allow) and result.auth_info is not None
    nextnonce = dict(parse_auth_params(result.auth_info))["nextnonce"]
    assert v.issuer.check(nextnonce, T0 + 60) is NonceStatus.VALID
    assert v.issuer.issued_at(nextnonce) == T0 + 60
    fresh = DigestChallenge(REALM, nextnonce, ch.opaque, "SHA-256", ch.qop)
    auth2, _ = answer(fresh, "Mufasa", "Circle of Life")
    assert isinstance(d.run(v, "GET", TARGET, auth2, now=T0 + 130), Allow)


@pytest.mark.parametrize(
    "auth",
    [
        'Digest username="Mufasa"',  # missing parameters
        "Digest realm=",  # a token68
        'Digest username="a", username="b"',
        "Basic !!!",
        'Basic realm="x"',
        "Basic " + encode_basic("a", "b") + ", Basic x",
        'Digest realm="r\r\n"',
        "",
    ],
)
def test_malformed_is_400(auth: str) -> None:
    with pytest.raises(AuthHeaderError) as err:
        Driver().run(make_verifier(), "GET", TARGET, auth)
    assert err.value.status_hint == 400


def test_unknown_or_disabled_scheme() -> None:
    for auth, v in [
        ("Negotiate abc=", make_verifier()),
        ("Bearer abc", make_verifier()),
        ("Basic " + encode_basic("Mufasa", "Circle of Life"), make_verifier(schemes=("digest",))),
    ]:
        result = Driver().run(v, "GET", TARGET, auth)
        assert isinstance(result, Reject) and result.outcome == "unsupported-scheme"


# --- Basic --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "password", "expected"),
    [
        ("Mufasa", "Circle of Life", "allow"),
        ("colon", "a:b:c", "allow"),
        ("Jäsøn Doe", "Secret, or not?", "allow"),
        ("crypt", "hunter2", "allow"),
        ("crypt", "hunter3", "bad-password"),
        ("Mufasa", "Circle of life", "bad-password"),
        ("colon", "a", "bad-password"),
        ("nobody", "x", "unknown-user"),
        ("nosecret", "x", "no-basic-secret"),
        ("elsewhere", "pw", "no-basic-secret"),
    ],
)
def test_basic(user: str, password: str, expected: str) -> None:
    d = Driver()
    result = d.run(make_verifier(), "GET", TARGET, "basic " + encode_basic(user, password))
    if expected == "allow":
        assert result == Allow(user, "basic", None)
        assert NeedPasswordCheck(USERS[user], password, REALM) in d.needs
    else:
        assert isinstance(result, Reject) and result.outcome == expected and not result.stale


# --- policy -------------------------------------------------------------------------------------------------


def test_policy_normalises() -> None:
    p = AuthPolicy(realm="r", schemes=("Digest", "BASIC"), digest_algorithms=("sha-256-SESS",), qop=("AUTH",))
    assert (
        p.schemes == ("digest", "basic") and p.digest_algorithms == ("SHA-256-sess",) and p.qop == ("auth",)
    )
    assert AuthPolicy(realm="r", schemes=("basic",), digest_algorithms=(), qop=()).schemes == ("basic",)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"schemes": ()}, "schemes"),
        ({"schemes": ("ntlm",)}, "schemes"),
        ({"schemes": ("basic", "Basic")}, "schemes"),
        ({"digest_algorithms": ("SHA-1",)}, "digest_algorithms"),
        ({"digest_algorithms": ()}, "digest_algorithms"),
        ({"qop": ("auth-conf",)}, "qop"),
        ({"qop": ()}, "qop"),
        ({"nonce_lifetime": 0}, "nonce_lifetime"),
        ({"nonce_lifetime": -1.0}, "nonce_lifetime"),
        ({"nonce_lifetime": float("inf")}, "nonce_lifetime"),
        ({"realm": ""}, "realm"),
        ({"realm": "a\nb"}, "realm"),
    ],
)
def test_policy_errors_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    kwargs.setdefault("realm", "r")
    with pytest.raises(ConfigError, match=f"^{field}:"):
        AuthPolicy(**kwargs)


def test_verifier_refuses_mismatched_issuer() -> None:
    with pytest.raises(ConfigError, match="realm"):
        Verifier(AuthPolicy(realm="a"), NonceIssuer(KEY, "b", 300.0))
    with pytest.raises(ConfigError, match="nonce_lifetime"):
        Verifier(AuthPolicy(realm="a"), NonceIssuer(KEY, "a", 60.0))


def test_reject_outcome_is_checked() -> None:
    with pytest.raises(ValueError):
        Reject("nope", None, False, "")  # type: ignore[arg-type]  # what the check is there for


# --- the fuzz invariant -------------------------------------------------------------------------------------

_V = make_verifier(digest_algorithms=ALL_ALGS)
_CH = digest_challenge(_V, "SHA-256")
_GOOD = answer(_CH, "Mufasa", "Circle of Life")[0]


@settings(max_examples=300)
@given(
    st.text(max_size=80)
    | st.builds(
        lambda i, j, s: _GOOD[:i] + s + _GOOD[j:],
        st.integers(0, len(_GOOD)),
        st.integers(0, len(_GOOD)),
        st.text(max_size=5),
    )
    | st.none()
)
def test_any_authorization_gives_an_outcome_or_our_error(auth: str | None) -> None:
    with contextlib.suppress(AuthHeaderError):
        result = Driver().run(_V, "GET", TARGET, auth)
        assert isinstance(result, Allow | Reject)


@pytest.mark.parametrize(
    "auth",
    [
        "Basic !!!SECRET",
        "SECRET(",
        'Digest SECRET="a", SECRET="b"',
        'Digest username="a", realm="SECRET',
        'Digest username="a" SECRET',
        "Digest username=SECRET, realm=r, nonce=n, uri=/, response=00, algorithm=SECRET",
        "Digest username=u, realm=r, nonce=n, uri=/, response=00, qop=SECRET, nc=00000001, cnonce=c",
        "Digest username*=SECRET''x, realm=r, nonce=n, uri=/, response=00",
        "Digest username=u, realm=r, nonce=n, uri=/, response=00, userhash=SECRET",
        "Basic " + base64.b64encode(b"SECRET:SECRET\x01").decode(),
    ],
)
def test_errors_never_echo_the_credentials(auth: str) -> None:
    # The proxy puts the message into its 400 body; credentials must never come back in an error page.
    with pytest.raises(AuthHeaderError) as err:
        Driver().run(make_verifier(), "GET", TARGET, auth)
    assert "SECRET" not in str(err.value)


# --- Digest credentials parsed once per shape -------------------------------------------------------------------


def test_digest_shape_memo_sees_every_new_nc_cnonce_and_response() -> None:
    verifier = make_verifier()
    driver = Driver()
    ch = digest_challenge(verifier, "SHA-256")
    for nc, cnonce in ((1, "abc"), (2, "abc"), (3, "a-much-longer-cnonce+/="), (4, "abc")):
        auth, _ = answer(ch, "Mufasa", "Circle of Life", nc=nc, cnonce=cnonce)
        result = driver.run(verifier, "GET", TARGET, auth)
        assert isinstance(result, Allow), result
        assert f"nc={nc:08x}" in (result.auth_info or "") and cnonce in (result.auth_info or "")
    assert len(digest_scheme(verifier)._shapes) == 1  # one shape, whatever the cnonce
    # A new nonce (after a 407: a SIP user agent gets one per call) is the same shape too.
    fresh = digest_challenge(verifier, "SHA-256", now=T0 - 1)  # another nonce
    auth, _ = answer(fresh, "Mufasa", "Circle of Life", nc=1, cnonce="abc")
    result = driver.run(verifier, "GET", TARGET, auth)
    assert isinstance(result, Allow) and len(digest_scheme(verifier)._shapes) == 1
    # A known shape with a wrong response, or a replayed nc, is still refused.
    auth, _ = answer(ch, "Mufasa", "not-it", nc=5)
    assert driver.run(verifier, "GET", TARGET, auth).outcome == "bad-password"  # type: ignore[union-attr]
    auth, _ = answer(ch, "Mufasa", "Circle of Life", nc=2, cnonce="abc")
    assert driver.run(verifier, "GET", TARGET, auth).outcome == "replay"  # type: ignore[union-attr]
    # The uri is still checked against each request's target.
    auth, _ = answer(ch, "Mufasa", "Circle of Life", nc=6, cnonce="abc")
    with pytest.raises(AuthHeaderError):
        driver.run(verifier, "GET", "http://other.test/", auth)


_SPAN_TEXT = st.text(alphabet=st.sampled_from(list('0123456789abcdefABCDEF+/=._~-", \\')), max_size=70)


@settings(max_examples=300, deadline=None)
@given(nc=_SPAN_TEXT, response=_SPAN_TEXT, cnonce=_SPAN_TEXT, nonce=_SPAN_TEXT, order=st.permutations(range(4)))
def test_digest_shape_memo_agrees_with_parsing_every_time(nc: str, response: str, cnonce: str, nonce: str,
                                                          order: list[int]) -> None:
    """Whatever the four varying values hold, the memo gives what a full parse gives (or the same error)."""
    from authproxy.auth.headers import parse_credentials

    verifier = make_verifier()
    base = ['username="alice"', f'realm="{REALM}"', f'uri="{TARGET}"', "qop=auth", "algorithm=SHA-256"]
    known = ['nc=00000001', 'response="' + "ab" * 32 + '"', 'cnonce="c1"', 'nonce="n0nce"']
    varied = [f"nc={nc}", f'response="{response}"', f'cnonce="{cnonce}"', f'nonce="{nonce}"']
    for fields in (known, varied, known):  # the known shape first, then the varied one against the memo
        value = "Digest " + ", ".join(base + [fields[i] for i in order])
        try:
            expected: object = DigestCredentials.from_credentials(parse_credentials(value))
        except AuthHeaderError:
            expected = "error"
        try:
            got: object = digest_scheme(verifier)._credentials(value)
        except AuthHeaderError:
            got = "error"
        assert got == expected


def test_digest_shape_memo_refuses_a_response_of_the_wrong_length_as_parsing_does() -> None:
    """A known shape whose response is hex of another length than the algorithm's (and values found where the
    quick span finder looks first: a username holding ``nc=``) gives the full parse's 400, not a memo hit."""
    from authproxy.auth.headers import parse_credentials

    verifier = make_verifier()
    for username in ("alice", "nc=00000001"):
        base = (f'Digest username="{username}", realm="{REALM}", nonce="n0nce", uri="{TARGET}", qop=auth, '
                'algorithm=SHA-256, nc=00000001, cnonce="c1", response="')
        good = base + "ab" * 32 + '"'
        assert digest_scheme(verifier)._credentials(good) == DigestCredentials.from_credentials(
            parse_credentials(good))
        for length in (32, 66, 128):
            with pytest.raises(AuthHeaderError):
                DigestCredentials.from_credentials(parse_credentials(base + "c" * length + '"'))
            with pytest.raises(AuthHeaderError):
                digest_scheme(verifier)._credentials(base + "c" * length + '"')


def test_a_digest_refusal_computes_the_response_whether_the_name_exists_or_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 9 item 9: an unknown user, a user without an HA1 here and a wrong password each cost one response
    computation (observed, not timed), and the first two read alike to the client."""
    import authproxy.auth.digest_scheme as digest_scheme_module

    computed: list[str] = []
    real = request_digest

    def counting(*args: Any, **kwargs: Any) -> str:
        computed.append(kwargs["method"])
        return real(*args, **kwargs)

    monkeypatch.setattr(digest_scheme_module, "request_digest", counting)
    v = make_verifier()
    ch = digest_challenge(v, "SHA-256")
    outcomes = []
    for user, password in (("nobody", "x"), ("crypt", "hunter2"), ("Mufasa", "wrong")):
        computed.clear()
        auth, _ = answer(ch, user, password)
        result = Driver().run(v, "GET", TARGET, auth)
        assert isinstance(result, Reject) and result.outcome.failed
        assert computed == ["GET", "GET"], user  # once each by driver.decide and by the flow (Driver runs both)
        outcomes.append(result.outcome)
    assert outcomes == [Outcome.UNKNOWN_USER, Outcome.NO_DIGEST_SECRET, Outcome.BAD_PASSWORD]
    assert len({o.client_text(v.role) for o in outcomes}) == 1


@given(realm=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF, blacklist_characters='"\\\x7f'),
                     min_size=1, max_size=30).filter(lambda r: realm_problem(r) is None),
       algorithms=st.lists(st.sampled_from(["MD5", "SHA-256", "SHA-512-256", "MD5-sess", "SHA-256-sess"]),
                           min_size=1, max_size=3, unique=True),
       qop=st.sampled_from([("auth",), ("auth", "auth-int"), ("auth-int",)]), userhash=st.booleans(),
       stale=st.booleans(), rand=st.binary(min_size=16, max_size=16))
def test_challenges_kept_around_their_nonce_are_what_building_them_gives(
        realm: str, algorithms: list[str], qop: tuple[str, ...], userhash: bool, stale: bool, rand: bytes) -> None:
    """DigestScheme.challenges builds each challenge once with a stand-in nonce and puts every fresh nonce into
    the text around it: the same text as building the challenge with that nonce."""
    policy = AuthPolicy(realm, schemes=("digest",), digest_algorithms=tuple(algorithms), qop=qop, userhash=userhash)
    issuer = NonceIssuer(b"k" * 32, realm, policy.nonce_lifetime)
    scheme = Verifier(policy, issuer).schemes["digest"]
    assert isinstance(scheme, DigestScheme)
    for now, is_stale in ((1.8e9, stale), (1.8e9 + 1.5, stale), (1.8e9 + 2, not stale), (1.8e9 + 3, stale)):
        # The first call of each kind keeps the text, the next ones use it.
        expected = scheme._build_challenges(issuer.issue(now, rand), is_stale)
        assert scheme.challenges(now, rand, is_stale) == expected
        assert ("stale=true" in expected[0]) is is_stale
