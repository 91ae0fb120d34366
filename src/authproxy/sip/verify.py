"""Checking a SIP request's answer to a challenge with the auth core's verifier (RFC 3261 sections 22.2-22.4).

The :class:`~authproxy.auth.verifier.Verifier` serves SIP as it is: Digest in SIP is RFC 2617/7616 Digest with
the SIP method as the method and the Request-URI as the digest-uri (RFC 3261 section 22.4), and the verifier's
uri check compares the two exactly (a SIP URI has no origin-form to fall back to). What this module adds is
SIP's way of carrying credentials:

- the verifier's role says which field holds them: ``Authorization`` for a registrar or UAS (401),
  ``Proxy-Authorization`` for a proxy (407);
- several proxies may each have added theirs: a proxy takes only the field line of its own realm and leaves
  the others for the next hops (section 22.3), and removes its own before forwarding
  (:func:`without_own_credentials`);
- Basic is accepted only where it may be offered (TLS, and allowed: section 22.1);
- for qop=auth-int the body is the SIP message body (section 22.4: H(entity-body), empty when there is none).

ACK and CANCEL are never challenged (section 22.1); deciding to let them through is the caller's, as with
every other policy. Outcomes are the verifier's: :class:`~authproxy.auth.verifier.Allow` or
:class:`~authproxy.auth.verifier.Reject`; malformed credentials raise
:class:`~authproxy.auth.errors.AuthHeaderError` (400).
"""

from __future__ import annotations

from authproxy.auth import driver
from authproxy.auth.digest_scheme import DigestScheme
from authproxy.auth.driver import NonceCounts
from authproxy.auth.errors import AuthHeaderError
from authproxy.auth.headers import parse_credentials
from authproxy.auth.outcomes import Outcome
from authproxy.auth.roles import Role
from authproxy.auth.store import UserStore
from authproxy.auth.verifier import Allow, Flow, Reject, Verifier
from authproxy.sip.challenge import TLS_TRANSPORTS
from authproxy.sip.message import SipRequest


def _shape(value: str, verifier: Verifier | None) -> tuple[str, str | None]:
    """The scheme (lower-cased) and realm of a credentials field value; AuthHeaderError when it does not parse.

    Digest goes through the verifier's Digest memo (the HTTP side's, parsed once per shape: a UA sends the same
    field again with only nc, response and cnonce changed), which the verifier then reads again at no cost."""
    if verifier is not None:
        space = value.find(" ")
        scheme = verifier.schemes.get(value[:space].lower()) if space > 0 else None
        if isinstance(scheme, DigestScheme):
            try:
                return "digest", scheme.credentials(value).realm
            except AuthHeaderError:
                pass  # not complete Digest credentials (another hop's may be odd): the generic parse decides
    creds = parse_credentials(value)
    return creds.scheme_key, creds.param("realm")


def _is_own(scheme: str, field_realm: str | None, realm: str) -> bool:
    if scheme == "digest":
        return field_realm == realm
    # Basic carries no realm: it is meant for whoever asked for Basic, i.e. the first hop that takes it.
    return scheme == "basic"


def _own(request: SipRequest, role: Role, realm: str, verifier: Verifier | None) -> tuple[str, str] | None:
    for value in request.get_all(role.credentials_field):
        scheme, field_realm = _shape(value, verifier)
        if field_realm == realm if scheme == "digest" else scheme == "basic":  # _is_own, inline (every request)
            return value, scheme
    return None


def own_credentials(request: SipRequest, role: Role, realm: str, verifier: Verifier | None = None) -> str | None:
    """The value of the first ``role.credentials_field`` line that answers ``realm`` (section 22.3), or None.

    Every line is parsed, so one that does not parse is an AuthHeaderError even when it is another hop's: a
    request carrying garbage credentials is refused (400) rather than passed on. With ``verifier``, Digest
    lines are read through its memo.
    """
    own = _own(request, role, realm, verifier)
    return None if own is None else own[0]


def without_own_credentials(request: SipRequest, role: Role, realm: str) -> SipRequest:
    """``request`` without the credentials field lines of ``realm``: what a proxy forwards (section 22.3: the
    credentials of the proxies after it stay)."""
    key = role.credentials_field.lower()
    kept = tuple((name, value) for name, value in request.headers
                 if name.lower() != key or not is_own_field(value, realm))
    return request.replace_headers(kept)


def is_own_field(value: str, realm: str, verifier: Verifier | None = None) -> bool:
    """Whether a proxy removes the credentials field value ``value`` before forwarding: it answers ``realm``
    (Digest: its realm; Basic, which has none: whoever asked for Basic), or it does not parse. With
    ``verifier``, Digest is read through its memo.

    A line that does not parse reaches forwarding only on a request that was not verified (ACK and CANCEL, a
    trusted peer's): whose it is cannot be told, no hop would accept it (RFC 9110 section 11.4 grammar), and
    it may hold a secret, so it stops here rather than travel on."""
    try:
        return _is_own(*_shape(value, verifier), realm)
    except AuthHeaderError:
        return True


def verify_request(verifier: Verifier, request: SipRequest, now: float, *, transport: str,
                   allow_basic: bool = False) -> Flow:
    """The verifier's flow for ``request`` in the verifier's role (a ``Verifier(policy, issuer, ORIGIN)`` for a
    registrar's 401, ``PROXY`` for a proxy's 407): the SIP method and Request-URI, and the role's credentials
    field line for the verifier's realm. ``transport`` is where the request came in (Basic only over TLS, when
    allowed)."""
    value = _credentials(verifier, request, transport, allow_basic)
    if isinstance(value, Reject):
        return value
    return (yield from verifier.verify(request.method, request.uri, value, now))


def _credentials(verifier: Verifier, request: SipRequest, transport: str, allow_basic: bool) -> str | Reject:
    """The credentials field value :func:`verify_request` verifies, or its refusal before any verification."""
    role = verifier.role
    own = _own(request, role, verifier.policy.realm, verifier)
    if own is None:
        return Reject(Outcome.MISSING, None, False, f"no {role.credentials_field} for this realm", role)
    value, scheme = own
    if scheme == "basic" and not (
            allow_basic and transport.lower() in TLS_TRANSPORTS):
        return Reject(Outcome.UNSUPPORTED_SCHEME, None, False,
                      "Basic is accepted over TLS only, and only when allowed (RFC 3261 section 22.1)", role)
    return value


def authenticate(verifier: Verifier, request: SipRequest, store: UserStore, counters: NonceCounts,
                 now: float, *, transport: str, allow_basic: bool = False) -> Allow | Reject:
    """:func:`verify_request` run to the end with the one driver, every need answered inline (a memory store and
    counter table: a SIP server's usual case); the body is the request's, for qop=auth-int."""
    # verify_request's answer without its generator layer, and Digest without the verifier's (driver.decide).
    value = _credentials(verifier, request, transport, allow_basic)
    if isinstance(value, Reject):
        return value
    return driver.decide(verifier, request.method, request.uri, value, now, store, counters, request.body)
