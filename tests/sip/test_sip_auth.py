"""The SIP challenge and its verification (authproxy.sip.challenge, authproxy.sip.verify): offers and 401/407
responses round trip through the SIP parser and the auth core's challenge parser; Basic is refused where RFC 3261
section 22.1 says so; the SIP Digest vectors of /work/shared/vectors (copied in tests/auth/vectors) pass through
the auth core's Verifier with the SIP method and Request-URI; a full challenge/answer/verify loop in memory."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sip_strategies import requests

from authproxy.auth.digest import ALGORITHMS, BASE_ALGORITHMS, DigestCredentials, compute_ha1, request_digest
from authproxy.auth.errors import AuthHeaderError, ConfigError
from authproxy.auth.headers import build_credentials, parse_auth_params, parse_challenges
from authproxy.auth.messages import ProxyRequest, ProxyResponse
from authproxy.auth.nonces import NonceIssuer
from authproxy.auth.outcomes import Outcome
from authproxy.auth.responder import Responder
from authproxy.auth.roles import ORIGIN, PROXY, Role
from authproxy.auth.store import UserEntry
from authproxy.auth.verifier import Allow, AuthPolicy, NeedBodyHash, Reject, Verifier
from authproxy.sip.challenge import (
    BasicOffer,
    DigestOffer,
    Offer,
    challenge_response,
    offers_for,
    parse_offers,
)
from authproxy.sip.message import SipRequest
from authproxy.sip.parse import parse_datagram
from authproxy.sip.verify import authenticate, own_credentials, verify_request, without_own_credentials
from authproxy.state import MemoryNonceCounterStore
from authproxy.users.memory import MemoryUserStore

# The verifier's tests hold the issuer that accepts a vector's own nonce; reuse it rather than copy it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "auth"))
from test_verifier import T0, FixedIssuer

VECTORS: dict[str, dict[str, Any]] = {
    v["id"]: v for v in json.loads(
        (Path(__file__).resolve().parents[1] / "auth" / "vectors" / "digest_vectors.json").read_text("utf-8"))
}
SIP_VECTORS = sorted(vid for vid, v in VECTORS.items() if v["uri"].startswith("sip:"))
KEY = b"k" * 32


def sip_request(method: str, uri: str, *, body: bytes = b"", extra: tuple[tuple[str, str], ...] = (),
                cseq: int = 1) -> SipRequest:
    wire = (f"{method} {uri} SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKa1;rport, SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa0\r\n"
            "Via: SIP/2.0/TCP 192.0.2.2;branch=z9hG4bKzz\r\n"
            "Max-Forwards: 70\r\n"
            "From: Bob <sip:bob@biloxi.com>;tag=a73kszlfl\r\n"
            "To: Bob <sip:bob@biloxi.com>\r\n"
            "Call-ID: 1j9FpLxk3uxtm8tn@biloxi.com\r\n"
            f"CSeq: {cseq} {method}\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in extra)
            + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    parsed = parse_datagram(wire)
    assert isinstance(parsed, SipRequest)
    return parsed


# --- offers and the 401/407 --------------------------------------------------------------------------------

realms = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'), min_size=1,
                 max_size=20)
printable = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20)
digest_offers = st.builds(
    DigestOffer, realm=realms, nonce=printable, opaque=st.none() | printable,
    algorithm=st.sampled_from([a.name for a in ALGORITHMS.values()]),
    qop=st.sampled_from([(), ("auth",), ("auth-int",), ("auth", "auth-int"), ("auth-int", "auth")]),
    stale=st.booleans(), userhash=st.booleans(), charset_utf8=st.booleans(),
    domain=st.lists(st.from_regex(r"sips?:[a-z0-9.]{1,10}(:[0-9]{1,5})?", fullmatch=True), max_size=3).map(tuple),
)
offer_lists = st.lists(digest_offers | st.builds(BasicOffer, realms), min_size=1, max_size=4)


@given(requests().filter(lambda r: r.method not in ("ACK", "CANCEL")), offer_lists, st.sampled_from([ORIGIN, PROXY]))
def test_challenge_round_trip(request: SipRequest, offers: list[Offer], role: Role) -> None:
    response = challenge_response(request, role, offers, to_tag="srv1", transport="tls", allow_basic=True)
    parsed = parse_datagram(response.to_bytes())
    assert parsed == response
    lines = parsed.get_all(role.challenge_field)
    assert [len(parse_challenges([line])) for line in lines] == [1] * len(offers)  # one challenge per field line
    assert parse_offers(lines) == offers
    # RFC 3261 section 8.2.6.2: Via (all, in order), From, Call-ID, CSeq copied; To tagged; no body.
    assert parsed.get_all("Via") == request.get_all("Via")
    assert (parsed.get("From"), parsed.call_id, parsed.cseq) == (request.get("From"), request.call_id, request.cseq)
    assert parsed.to.tag == (request.to.tag or "srv1")
    assert parsed.content_length == 0 and parsed.body == b""
    assert (getattr(parsed, "status", None), getattr(parsed, "reason", None)) == (role.status, role.reason)


def test_every_parameter_of_rvoip_and_more() -> None:
    offer = DigestOffer("atlanta.example.com", "f84f1cec41e6cbe5aea9c8e88d359", "42", "SHA-512-256-sess",
                        ("auth", "auth-int"), True, True, True, ("sip:ss1.example.com", "sip:ss2.example.com"))
    response = challenge_response(sip_request("INVITE", "sip:bob@biloxi.com"), PROXY, [offer], to_tag="t",
                                  transport="udp")
    assert response.get("Proxy-Authenticate") == (
        'Digest realm="atlanta.example.com", domain="sip:ss1.example.com sip:ss2.example.com", '
        'qop="auth, auth-int", algorithm=SHA-512-256-sess, nonce="f84f1cec41e6cbe5aea9c8e88d359", opaque="42", '
        'charset="UTF-8", userhash=true, stale=true')
    assert response.to_bytes().startswith(b"SIP/2.0 407 Proxy Authentication Required\r\n")
    assert response.get("To") == "Bob <sip:bob@biloxi.com>;tag=t"
    assert DigestOffer("r", "n", algorithm="sha-256").algorithm == "SHA-256"  # names normalised
    for bad in ({"algorithm": "SHA-1"}, {"qop": ("auth", "auth")}, {"qop": ("auth-conf",)}, {"realm": 'a"b'},
                {"nonce": ""}, {"domain": ("sip:a b",)}, {"opaque": "x\ny"}):
        with pytest.raises(ConfigError):
            DigestOffer(**{"realm": "r", "nonce": "n", **bad})  # type: ignore[arg-type]


def test_several_algorithms_each_its_own_field() -> None:
    issuer = NonceIssuer(KEY, "biloxi.com", 300.0)
    verifier = Verifier(AuthPolicy("biloxi.com", schemes=("digest",),
                                   digest_algorithms=("SHA-512-256", "SHA-256", "MD5", "MD5-sess")), issuer)
    offers = offers_for(verifier, now=T0, rand=b"r" * 16, transport="udp")
    response = challenge_response(sip_request("REGISTER", "sip:biloxi.com"), ORIGIN, offers, to_tag="t",
                                  transport="udp")
    lines = response.get_all("WWW-Authenticate")
    assert [c.param("algorithm") for c in parse_challenges(lines)] == ["SHA-512-256", "SHA-256", "MD5", "MD5-sess"]
    assert len(lines) == 4 and response.status == 401
    assert len({c.param("nonce") for c in parse_challenges(lines)}) == 1  # one nonce for all of them


def test_basic_only_over_tls_and_when_allowed() -> None:
    request = sip_request("INVITE", "sip:bob@biloxi.com")
    for transport, allow in (("udp", True), ("tcp", True), ("tls", False), ("udp", False)):
        with pytest.raises(ConfigError, match=r"RFC 3261 section 22\.1"):
            challenge_response(request, PROXY, [BasicOffer("r")], to_tag="t", transport=transport,
                               allow_basic=allow)
    ok = challenge_response(request, PROXY, [BasicOffer("r")], to_tag="t", transport="TLS", allow_basic=True)
    assert ok.get("Proxy-Authenticate") == 'Basic realm="r", charset="UTF-8"'
    verifier = Verifier(AuthPolicy("r", schemes=("digest", "basic")), NonceIssuer(KEY, "r", 300.0))
    with pytest.raises(ConfigError):
        offers_for(verifier, now=T0, rand=b"r" * 16, transport="udp", allow_basic=True)


def test_ack_and_cancel_are_never_challenged() -> None:
    for method in ("ACK", "CANCEL"):
        with pytest.raises(ValueError, match=r"22\.1"):
            challenge_response(sip_request(method, "sip:bob@biloxi.com"), PROXY, [DigestOffer("r", "n")],
                               to_tag="t", transport="udp")


def test_to_tag_kept_when_present() -> None:
    request = sip_request("BYE", "sip:bob@biloxi.com").replace_headers(
        [(n, "<sip:bob@biloxi.com>;tag=theirs" if n == "To" else v)
         for n, v in sip_request("BYE", "sip:bob@biloxi.com").headers])
    assert isinstance(request, SipRequest)
    response = challenge_response(request, PROXY, [DigestOffer("r", "n")], to_tag="mine", transport="udp")
    assert response.to.tag == "theirs"


# --- the vectors through the auth core's Verifier, as SIP requests -----------------------------------------


def vector_request(vec: dict[str, Any], role: Role, *, method: str | None = None, uri: str | None = None
                   ) -> SipRequest:
    alg = ALGORITHMS[vec["algorithm"].upper()]
    creds = DigestCredentials(
        username=vec["username"], userhash=False, realm=vec["realm"], nonce=vec["nonce"], uri=vec["uri"],
        response=vec["expected_response"], algorithm=alg, cnonce=vec["cnonce"], nc=vec["nc"], qop=vec["qop"],
        opaque=vec["opaque"] or "")
    body = (vec.get("entity_body") or "").encode()
    return sip_request(method or vec["method"], uri or vec["uri"], body=body,
                       extra=((role.credentials_field, build_credentials(creds.to_credentials())),))


def vector_verifier(vec: dict[str, Any], role: Role) -> tuple[Verifier, MemoryUserStore]:
    realm = vec["realm"]
    policy = AuthPolicy(realm, schemes=("digest",), digest_algorithms=(vec["algorithm"],))
    user = UserEntry(vec["username"], realm,
                     {a: compute_ha1(a, vec["username"], realm, vec["password"]) for a in BASE_ALGORITHMS})
    return Verifier(policy, FixedIssuer(realm, vec["nonce"], vec["opaque"] or ""), role), MemoryUserStore([user])


def run_vector(vec: dict[str, Any], role: Role, request: SipRequest) -> Allow | Reject:
    verifier, store = vector_verifier(vec, role)
    if "h_entity_body" not in vec:
        return authenticate(verifier, request, store, MemoryNonceCounterStore(), T0, transport="udp")
    # Only H(entity-body) is recorded for these: drive the flow by hand and answer the body-hash need with it.
    flow = verify_request(verifier, request, T0, transport="udp")
    from authproxy.auth import driver

    step = driver.advance(flow, None, store, MemoryNonceCounterStore(), T0)
    assert isinstance(step, driver.Suspended) and isinstance(step.need, NeedBodyHash)
    final = driver.advance(step.flow, vec["h_entity_body"], store, MemoryNonceCounterStore(), T0)
    assert not isinstance(final, driver.Suspended)
    return final


@pytest.mark.parametrize("vid", SIP_VECTORS)
@pytest.mark.parametrize("role", [ORIGIN, PROXY], ids=["401", "407"])
def test_sip_vectors_through_the_verifier(vid: str, role: Role) -> None:
    vec = VECTORS[vid]
    alg = ALGORITHMS[vec["algorithm"].upper()]
    ha1 = compute_ha1(alg.base, vec["username"], vec["realm"], vec["password"])
    body_hash = vec.get("h_entity_body") or alg.hexdigest((vec.get("entity_body") or "").encode())
    # The core's computation gives the published response for every SIP vector, the qop-less ones too ...
    assert request_digest(alg, ha1=ha1, nonce=vec["nonce"], nc=vec["nc"], cnonce=vec["cnonce"], qop=vec["qop"],
                          method=vec["method"], uri=vec["uri"], body_hash=body_hash) == vec["expected_response"]
    result = run_vector(vec, role, vector_request(vec, role))
    if vec["qop"] is None:
        # ... but an answer without qop has no nc, so a replay could not be told: the verifier refuses it.
        assert isinstance(result, Reject) and result.outcome is Outcome.UNSUPPORTED_SCHEME
        return
    assert isinstance(result, Allow), result
    assert result.user == vec["username"]
    if "expected_rspauth" in vec:
        assert result.auth_info is not None
        assert dict(parse_auth_params(result.auth_info))["rspauth"] == vec["expected_rspauth"]


def test_vector_fails_for_another_method_or_uri() -> None:
    vec = VECTORS["smith-3.3-sip-auth-md5"]
    # The digest covers the SIP method: the same answer on a REGISTER is a wrong password.
    result = run_vector(vec, PROXY, vector_request(vec, PROXY, method="REGISTER"))
    assert isinstance(result, Reject) and result.outcome is Outcome.BAD_PASSWORD
    # The digest uri must be the Request-URI, exactly (no origin-form fallback for SIP URIs): a 400.
    with pytest.raises(AuthHeaderError, match="uri"):
        run_vector(vec, PROXY, vector_request(vec, PROXY, uri="sip:bob@biloxi.com;transport=udp"))
    # Credentials in the other role's field are not looked at.
    result = run_vector(vec, ORIGIN, vector_request(vec, PROXY))
    assert isinstance(result, Reject) and result.outcome is Outcome.MISSING


# --- the whole exchange in memory: challenge, answer with the auth core's responder, verify ----------------


@pytest.mark.parametrize("role", [ORIGIN, PROXY], ids=["401", "407"])
@pytest.mark.parametrize("algorithm", ["SHA-512-256", "SHA-256", "MD5", "MD5-sess"])
def test_challenge_answer_verify(role: Role, algorithm: str) -> None:
    realm = "biloxi.com"
    verifier = Verifier(AuthPolicy(realm, schemes=("digest",), digest_algorithms=(algorithm,)),
                        NonceIssuer(KEY, realm, 300.0), role)
    store = MemoryUserStore([UserEntry("bob", realm, {a: compute_ha1(a, "bob", realm, "zanzibar")
                                                      for a in BASE_ALGORITHMS})])
    counters = MemoryNonceCounterStore()
    first = sip_request("INVITE", "sip:alice@atlanta.com", body=b"v=0\r\n")
    assert authenticate(verifier, first, store, counters, T0, transport="udp") == Reject(
        Outcome.MISSING, None, False, f"no {role.credentials_field} for this realm", role)
    challenge = challenge_response(first, role, offers_for(verifier, now=T0, rand=b"n" * 16, transport="udp"),
                                   to_tag="x", transport="udp")
    responder = Responder("bob", "zanzibar", random=lambda n: b"c" * n, role=role, allow_basic_cleartext=False)
    flow = responder.flow(ProxyRequest("INVITE", "sip:alice@atlanta.com", b"v=0\r\n"))
    assert next(flow).authorization is None
    answer = flow.send(ProxyResponse(challenge.status, challenge.headers)).authorization
    assert answer is not None
    # Another proxy's credentials before ours: left alone, ours found by realm (RFC 3261 section 22.3).
    other = 'Digest username="x", realm="elsewhere", nonce="n", uri="sip:alice@atlanta.com", response="' \
            + "0" * 32 + '"'
    second = sip_request("INVITE", "sip:alice@atlanta.com", body=b"v=0\r\n", cseq=2,
                         extra=((role.credentials_field, other), (role.credentials_field, answer)))
    assert own_credentials(second, role, realm) == answer
    result = authenticate(verifier, second, store, counters, T0 + 1, transport="udp")
    assert isinstance(result, Allow) and result.user == "bob"
    # The same answer again is a replay, from anywhere.
    replay = authenticate(verifier, second, store, counters, T0 + 2, transport="udp")
    assert isinstance(replay, Reject) and replay.outcome is Outcome.REPLAY
    # After the nonce's life the right answer gets a stale challenge.
    late = authenticate(verifier, sip_request("INVITE", "sip:alice@atlanta.com", body=b"v=0\r\n", cseq=3,
                                              extra=((role.credentials_field, answer),)),
                        store, MemoryNonceCounterStore(), T0 + 301, transport="udp")
    assert isinstance(late, Reject) and late.outcome is Outcome.STALE_NONCE and late.stale
    # What is forwarded keeps the other proxy's line and drops ours.
    forwarded = without_own_credentials(second, role, realm)
    assert forwarded.get_all(role.credentials_field) == [other]


def test_basic_credentials_only_over_tls() -> None:
    verifier = Verifier(AuthPolicy("r", schemes=("digest", "basic")), NonceIssuer(KEY, "r", 300.0))
    store = MemoryUserStore([UserEntry("bob", "r", {"MD5": compute_ha1("MD5", "bob", "r", "pw")})])
    request = sip_request("OPTIONS", "sip:r", extra=(("Proxy-Authorization", "Basic Ym9iOnB3"),))
    for transport, allow in (("udp", True), ("tls", False)):
        result = authenticate(verifier, request, store, MemoryNonceCounterStore(), T0, transport=transport,
                              allow_basic=allow)
        assert isinstance(result, Reject) and result.outcome is Outcome.UNSUPPORTED_SCHEME
    result = authenticate(verifier, request, store, MemoryNonceCounterStore(), T0, transport="tls",
                          allow_basic=True)
    assert isinstance(result, Allow) and result.user == "bob"
