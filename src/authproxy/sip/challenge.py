"""The SIP challenge: its offers and the 401/407 response that carries them (RFC 3261 sections 8.2.6, 16.7 and
22.1-22.4; RFC 8760; RFC 7616 for Digest itself).

An offer is one challenge. :class:`DigestOffer` is the auth core's
:class:`~authproxy.auth.digest.DigestChallenge` (realm, nonce, opaque, algorithm MD5 / SHA-256 / SHA-512-256
and each -sess, qop auth / auth-int, stale, userhash, charset) plus ``domain`` (RFC 7616 section 3.3), checked
when it is made: rvoip-sip-core's ``proxy_authenticate_digest(realm, nonce, opaque, algorithm, qop, stale,
domain)`` and more. :class:`BasicOffer` is Basic, which RFC 3261 section 22.1 deprecates: a challenge carries it
only over TLS and only when the operator allows it, or :class:`~authproxy.auth.errors.ConfigError` says why.

:func:`challenge_response` builds the 401 (role ORIGIN, ``WWW-Authenticate``) or 407 (role PROXY,
``Proxy-Authenticate``) to a request (:func:`~authproxy.sip.message.response_to`: Via, From, To tagged, Call-ID
and CSeq copied, section 8.2.6.2), one field line per challenge (section 7.3.1 forbids joining these
fields with commas, and RFC 8760 section 2.4 offers each algorithm in its own challenge), ``Content-Length: 0``.
:func:`offers_for` makes the offers a :class:`~authproxy.auth.verifier.Verifier` will accept answers to, from the
verifier's own challenges (nonces from its :class:`~authproxy.auth.nonces.NonceIssuer`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from authproxy.auth.basic import basic_challenge
from authproxy.auth.digest import QOP_VALUES, DigestChallenge, get_algorithm
from authproxy.auth.errors import AuthHeaderError, ConfigError
from authproxy.auth.headers import Challenge, build_challenge, parse_challenges
from authproxy.auth.roles import Role
from authproxy.auth.text import has_control, realm_problem
from authproxy.auth.verifier import Verifier
from authproxy.sip.message import SipRequest, SipResponse, response_to

#: Transports on which Basic may be offered at all: those that are TLS (RFC 3261 section 26.2.1, SIPS; RFC 7118
#: WebSocket over TLS).
TLS_TRANSPORTS = frozenset({"tls", "wss"})
#: RFC 3261 section 22.1: ACK cannot be answered and CANCEL cannot be resubmitted, so neither is challenged.
NEVER_CHALLENGED = frozenset({"ACK", "CANCEL"})


def _check_text(what: str, value: str) -> None:
    if not value or has_control(value, field_value=True):
        raise ConfigError(f"{what}: must be non-empty text without control characters")


@dataclass(frozen=True)
class DigestOffer(DigestChallenge):
    """One Digest challenge for SIP: a :class:`DigestChallenge` with ``domain`` and SIP's defaults (MD5, which
    every SIP user agent answers, and qop auth, RFC 3261 section 22.4). ``domain`` lists the URIs the
    credentials are good for (RFC 7616 section 3.3; sent space-separated in one quoted value)."""

    qop: tuple[str, ...] = ("auth",)
    domain: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problem = realm_problem(self.realm)
        if problem is not None:
            raise ConfigError(f"realm: {problem}")
        _check_text("nonce", self.nonce)
        if self.opaque is not None:
            _check_text("opaque", self.opaque)
        alg = get_algorithm(self.algorithm)
        if alg is None:
            raise ConfigError(f"algorithm: unknown Digest algorithm {self.algorithm!r}")
        qop = tuple(q.lower() for q in self.qop)
        if any(q not in QOP_VALUES for q in qop) or len(set(qop)) != len(qop):
            raise ConfigError(f"qop: each of {', '.join(QOP_VALUES)} at most once")
        for uri in self.domain:
            _check_text("domain", uri)
            if any(ch in uri for ch in ' \t"'):
                raise ConfigError("domain: a URI cannot hold a space or a quote (the list is space-separated)")
        object.__setattr__(self, "algorithm", alg.name)
        object.__setattr__(self, "qop", qop)
        object.__setattr__(self, "domain", tuple(self.domain))

    def to_challenge(self) -> Challenge:
        challenge = DigestChallenge.to_challenge(self)
        if not self.domain:
            return challenge
        # RFC 7616 section 3.3 lists domain right after realm.
        params = (*challenge.params[:1], ("domain", " ".join(self.domain)), *challenge.params[1:])
        return Challenge(challenge.scheme, params=params)

    @classmethod
    def from_challenge(cls, c: Challenge) -> DigestOffer | None:
        """The offer of Digest challenge ``c``; None for an algorithm the core does not know; AuthHeaderError or
        ConfigError for a malformed one."""
        dc = DigestChallenge.from_challenge(c)
        if dc is None:
            return None
        domain = tuple((c.param("domain") or "").split())
        return cls(dc.realm, dc.nonce, dc.opaque, dc.algorithm, dc.qop, dc.stale, dc.userhash, dc.charset_utf8,
                   domain)


@dataclass(frozen=True)
class BasicOffer:
    """A Basic challenge (RFC 7617): ``Basic realm="..." charset="UTF-8"``. Which transports may carry it is
    decided where it is sent (:func:`challenge_response`, :func:`offers_for`)."""

    realm: str

    def __post_init__(self) -> None:
        problem = realm_problem(self.realm)
        if problem is not None:
            raise ConfigError(f"realm: {problem}")

    def to_challenge(self) -> Challenge:
        return basic_challenge(self.realm)


Offer = DigestOffer | BasicOffer


def check_basic_allowed(transport: str, allow_basic: bool) -> None:
    """ConfigError unless Basic may be offered on ``transport``: RFC 3261 section 22.1 deprecates Basic in SIP
    (the password would cross every hop in clear), so only over TLS and only when the operator opted in."""
    if not allow_basic:
        raise ConfigError("schemes: Basic is deprecated in SIP (RFC 3261 section 22.1) and not allowed here; "
                          "offer Digest, or allow Basic explicitly for TLS transports")
    if transport.lower() not in TLS_TRANSPORTS:
        raise ConfigError(f"schemes: Basic would send the password in clear over {transport.upper()}; SIP Basic "
                          "is offered over TLS only (RFC 3261 section 22.1)")


def parse_offers(values: Iterable[str]) -> list[Offer]:
    """The Digest and Basic offers of challenge field values, in order; other schemes and unknown algorithms
    are skipped (RFC 7616 section 3.3). AuthHeaderError for a field that does not parse."""
    offers: list[Offer] = []
    for challenge in parse_challenges(values):
        if challenge.scheme_key == "digest":
            try:
                offer = DigestOffer.from_challenge(challenge)
            except ConfigError as exc:
                raise AuthHeaderError(f"malformed Digest challenge: {exc.message}") from None
            if offer is not None:
                offers.append(offer)
        elif challenge.scheme_key == "basic":
            realm = challenge.param("realm")
            if realm is None:
                raise AuthHeaderError("Basic challenge without a realm")
            try:
                offers.append(BasicOffer(realm))
            except ConfigError as exc:
                raise AuthHeaderError(f"malformed Basic challenge: {exc.message}") from None
    return offers


def offers_for(verifier: Verifier, *, now: float, rand: bytes, transport: str, stale: bool = False,
               domain: Sequence[str] = (), allow_basic: bool = False) -> tuple[Offer, ...]:
    """The challenges ``verifier`` issues (one fresh nonce from ``now`` and ``rand``, one Digest challenge per
    configured algorithm in the operator's order, then Basic when its policy has it), as offers, with
    ``domain`` added to the Digest ones. They are the verifier's own, parsed back, so a SIP challenge and an
    HTTP one of the same policy never differ. Basic must be allowed on ``transport``
    (:func:`check_basic_allowed`); connection-bound schemes (NTLM, Negotiate) are not SIP's and are left out."""
    offers = parse_offers(verifier.challenges(now, rand, stale))
    if any(isinstance(offer, BasicOffer) for offer in offers):
        check_basic_allowed(transport, allow_basic)
    if domain:
        offers = [replace(offer, domain=tuple(domain)) if isinstance(offer, DigestOffer) else offer
                  for offer in offers]
    return tuple(offers)


def challenge_response(request: SipRequest, role: Role, offers: Sequence[Offer], *, to_tag: str,
                       transport: str, allow_basic: bool = False, reason: str | None = None,
                       extra_headers: Sequence[tuple[str, str]] = ()) -> SipResponse:
    """The 401 or 407 (``role.status``) to ``request``, carrying ``offers`` in ``role.challenge_field``.

    ``to_tag`` is the tag added to To when the request has none (a stateless proxy derives it from the request,
    so a retransmission gets the same one); ``transport`` is where the response goes, which decides whether a
    Basic offer may go out. ``extra_headers`` come before Content-Length (a Server, a Warning).
    """
    if request.method in NEVER_CHALLENGED:
        raise ValueError(f"{request.method} is never challenged (RFC 3261 section 22.1)")
    if not offers:
        raise ValueError("a challenge needs at least one offer")
    headers: list[tuple[str, str]] = []
    for offer in offers:
        if isinstance(offer, BasicOffer):
            check_basic_allowed(transport, allow_basic)
        headers.append((role.challenge_field, build_challenge(offer.to_challenge())))
    headers.extend(extra_headers)
    return response_to(request, role.status, role.reason if reason is None else reason, to_tag=to_tag,
                       headers=headers)
