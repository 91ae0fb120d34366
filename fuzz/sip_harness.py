"""The SIP fuzz check and its seeds (no atheris here: fuzz_sip.py instruments it, write_seeds.py writes the seeds).

Invariant (h11's): any bytes are a SIP message or a SipError, through both framings; a parsed message builds
back to what parses the same; a parsed request is challenged (401 and 407) and verified, or refused with our
own error (SipError, AuthHeaderError, or ValueError for ACK/CANCEL, which are never challenged), never anything
else; the challenge parses back to its offers; the proxy (authproxy.sip.proxy) takes the bytes from a client and from
its next hop and never raises, and everything it sends parses.
"""

from __future__ import annotations

import contextlib

from authproxy.auth.digest import BASE_ALGORITHMS, compute_ha1
from authproxy.auth.errors import AuthHeaderError
from authproxy.auth.nonces import NonceIssuer
from authproxy.auth.policy import AuthPolicy
from authproxy.auth.roles import ORIGIN, PROXY
from authproxy.auth.store import UserEntry
from authproxy.auth.verifier import Verifier
from authproxy.sip.actions import Send
from authproxy.sip.challenge import NEVER_CHALLENGED, challenge_response, offers_for, parse_offers
from authproxy.sip.fields import SipError
from authproxy.sip.message import SipRequest
from authproxy.sip.parse import parse_datagram, parse_stream
from authproxy.sip.proxy import SipProxy
from authproxy.sip.routing import NextHop
from authproxy.sip.verify import authenticate
from authproxy.state import MemoryNonceCounterStore
from authproxy.users.memory import MemoryUserStore

REALM = "fuzz.example"
NOW = 1_800_000_000.0
_VERIFIERS = [Verifier(AuthPolicy(REALM, schemes=("digest",), digest_algorithms=("SHA-256", "MD5")),
                       NonceIssuer(b"f" * 32, REALM, 300.0), role) for role in (PROXY, ORIGIN)]
_STORE = MemoryUserStore([UserEntry("alice", REALM,
                                    {a: compute_ha1(a, "alice", REALM, "pw") for a in BASE_ALGORITHMS})])
_HOP = NextHop("192.0.2.99", 5060)
_PROXY = SipProxy(_VERIFIERS[0], _STORE, MemoryNonceCounterStore(), next_hop=_HOP,
                  local={"udp": ("192.0.2.10", 5060)}, random=lambda n: b"k" * n)
# The same proxy (same key: its flow tokens hold) for what the next hop sends: a trusted peer, routed by its Route
# and Request-URI. Its own transaction table, so a message is not a retransmission of the client's copy.
_PROXY_FROM_HOP = SipProxy(_VERIFIERS[0], _STORE, MemoryNonceCounterStore(), next_hop=_HOP,
                           local={"udp": ("192.0.2.10", 5060)}, random=lambda n: b"k" * n)


def check_sip(data: bytes) -> None:
    messages = []
    for parse in (parse_datagram, parse_stream):
        try:
            result = parse(data)
        except SipError:
            continue
        message = result[0] if isinstance(result, tuple) else result
        if message is not None:
            messages.append(message)
    for message in messages:
        assert parse_datagram(message.to_bytes()) == message
        if not isinstance(message, SipRequest) or message.method in NEVER_CHALLENGED:
            continue
        for verifier in _VERIFIERS:
            offers = offers_for(verifier, now=NOW, rand=b"r" * 16, transport="udp")
            response = challenge_response(message, verifier.role, offers, to_tag="fz", transport="udp")
            assert parse_offers(parse_datagram(response.to_bytes()).get_all(verifier.role.challenge_field)) == \
                list(offers)
            with contextlib.suppress(AuthHeaderError):
                authenticate(verifier, message, _STORE, MemoryNonceCounterStore(), NOW, transport="udp")
    for proxy, source in ((_PROXY, ("192.0.2.1", 5060)), (_PROXY_FROM_HOP, _HOP.address)):
        for action in proxy.datagram(data, source, "udp", NOW):
            if isinstance(action, Send):
                parse_datagram(action.data)  # what the proxy sends is well formed: this raises otherwise


def seed_messages() -> list[bytes]:
    """Real-looking requests and responses, some answering the harness's challenge (so the verifier runs deep)."""
    from authproxy.auth.digest import DigestCredentials, get_algorithm, request_digest
    from authproxy.auth.headers import build_credentials

    def request(method: str, extra: str = "", body: bytes = b"") -> bytes:
        return (f"{method} sip:bob@fuzz.example SIP/2.0\r\n"
                "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK74bf9;rport, "
                "SIP/2.0/TCP [2001:db8::1];branch=z9hG4bKx\r\n"
                'Max-Forwards: 70\r\nFrom: "Alice" <sip:alice@fuzz.example>;tag=9fxced76sl\r\n'
                f"To: sip:bob@fuzz.example\r\nCall-ID: 3848276298220188511@192.0.2.1\r\nCSeq: 2 {method}\r\n"
                f"Contact: <sip:alice@192.0.2.1>;expires=60, \"x, y\" <sip:a@b>\r\n{extra}"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    seeds = [request(m) for m in ("INVITE", "REGISTER", "OPTIONS", "ACK", "CANCEL", "MESSAGE")]
    seeds.append(request("MESSAGE", "c: text/plain\r\n", b"hello"))
    seeds.append(b"\r\n\r\n" + request("BYE").replace(b"Via:", b"v:").replace(b"CSeq", b"cseq  "))
    seeds.append(b"SIP/2.0 407 Proxy Authentication Required\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1;received=192.0.2.9"
                 b"\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n"
                 b'Proxy-Authenticate: Digest realm="fuzz.example", nonce="n", qop="auth", algorithm=MD5\r\n'
                 b"l: 0\r\n\r\n")
    # Routing (RFC 3261 section 16.4): a Route naming the proxy, a strict router's Request-URI, and the far
    # side's request back along the proxy's Record-Route (its flow token), from the client and from the next hop.
    own = "sip:192.0.2.10:5060;transport=udp;lr"
    token = _PROXY._flows.make("udp", ("192.0.2.1", 5060))
    seeds.append(request("OPTIONS", f"Route: <{own}>, <sip:192.0.2.7;lr>\r\nRecord-Route: <sip:192.0.2.7;lr>\r\n"))
    seeds.append(request("INVITE", "Route: <sip:192.0.2.7:5070>\r\nRoute: <sip:bob@192.0.2.8>\r\n")
                 .replace(b"INVITE sip:bob@fuzz.example", f"INVITE {own}".encode(), 1))
    seeds.append(request("BYE", f"Route: <sip:{token}@192.0.2.10:5060;transport=udp;lr>\r\n")
                 .replace(b"BYE sip:bob@fuzz.example", b"BYE sip:alice@192.0.2.1:5060;transport=tcp", 1))
    nonce = _VERIFIERS[0].issuer.issue(NOW, b"s" * 16)
    for verifier in _VERIFIERS:
        for algorithm in ("SHA-256", "MD5"):
            alg = get_algorithm(algorithm)
            assert alg is not None
            ha1 = compute_ha1(alg.base, "alice", REALM, "pw")
            response = request_digest(alg, ha1=ha1, nonce=nonce, nc="00000001", cnonce="abc", qop="auth",
                                      method="INVITE", uri="sip:bob@fuzz.example")
            creds = DigestCredentials("alice", False, REALM, nonce, "sip:bob@fuzz.example", response, alg, "abc",
                                      "00000001", "auth", verifier.issuer.opaque)
            field = f"{verifier.role.credentials_field}: {build_credentials(creds.to_credentials())}\r\n"
            seeds.append(request("INVITE", field))
    return seeds
