"""The server's side of HTTP authentication as a sans-IO generator flow (RFC 9110 section 11, RFC 7616,
RFC 7617), for any role: a proxy (407, ``Proxy-Authorization``) or an origin (401, ``Authorization``).

``Verifier.verify`` is a generator in the style of httpx's ``Auth.auth_flow``: it yields a *need* (a user
lookup, a password check, the hash of the request body, a nonce-count update), the caller does whatever IO
that takes, sync or async, and sends the answer back in (:mod:`authproxy.auth.driver` does it); the generator
finally returns :class:`Allow` or :class:`Reject`. Malformed credentials raise
:class:`~authproxy.auth.errors.AuthHeaderError` (status hint 400): a client that sends garbage gets a 400,
not another challenge to answer with more garbage.

The verifier itself only dispatches: the schemes are a registry (:mod:`authproxy.auth.schemes`; Digest's
checks and their order are in :mod:`authproxy.auth.digest_scheme`), the needs and decisions are values
(:mod:`authproxy.auth.flow`), and what is offered is an :class:`AuthPolicy` (:mod:`authproxy.auth.policy`).
Those names are importable from here too.
"""

from __future__ import annotations

from authproxy.auth.digest_scheme import DigestScheme, uri_matches
from authproxy.auth.errors import ConfigError
from authproxy.auth.flow import (
    Allow,
    ConnectionAuth,
    Flow,
    Need,
    NeedBodyHash,
    NeedNonceUse,
    NeedPasswordCheck,
    NeedUser,
    NeedUserByHash,
    Reject,
)
from authproxy.auth.headers import parse_credentials
from authproxy.auth.nonces import NonceIssuer
from authproxy.auth.outcomes import Outcome
from authproxy.auth.policy import AuthPolicy
from authproxy.auth.roles import PROXY, Role
from authproxy.auth.schemes import SCHEMES, Scheme

__all__ = [
    "SCHEMES",
    "Allow",
    "AuthPolicy",
    "ConnectionAuth",
    "Flow",
    "Need",
    "NeedBodyHash",
    "NeedNonceUse",
    "NeedPasswordCheck",
    "NeedUser",
    "NeedUserByHash",
    "Reject",
    "Verifier",
    "uri_matches",
]


class Verifier:
    """Decides one request's credentials against ``policy`` in ``role``; issues the challenges of a refusal."""

    def __init__(self, policy: AuthPolicy, issuer: NonceIssuer, role: Role = PROXY, *,
                 auth_info: bool = True) -> None:
        """``auth_info=False``: no info field is computed (``Allow.auth_info`` is None), for a protocol whose
        proxy role has none: SIP defines no Proxy-Authentication-Info (RFC 3261 section 20)."""
        if issuer.realm != policy.realm:
            raise ConfigError("realm: the nonce issuer and the policy disagree")
        if issuer.lifetime != policy.nonce_lifetime:
            raise ConfigError("nonce_lifetime: the nonce issuer and the policy disagree")
        self.policy = policy
        self.issuer = issuer
        self.role = role
        # The offered schemes, in the registry's order (strongest first), each built once for this verifier.
        self.schemes: dict[str, Scheme] = {
            name: factory(policy, issuer, role)
            for name, factory in policy.known_schemes.items() if name in policy.schemes
        }
        for scheme in self.schemes.values():
            if isinstance(scheme, DigestScheme):
                scheme.auth_info = auth_info

    # -- the refusal ----------------------------------------------------------------------------------------

    def challenges(self, now: float, rand: bytes, stale: bool = False) -> list[str]:
        """The challenge field values (RFC 9110 sections 11.6.1 and 11.7.1): each offered scheme's, strongest
        scheme first."""
        values: list[str] = []
        for scheme in self.schemes.values():
            values.extend(scheme.challenges(now, rand, stale))
        return values

    # -- one request ----------------------------------------------------------------------------------------

    def verify(self, method: str, target: str, authorization: str | None, now: float,
               connection: ConnectionAuth | None = None) -> Flow:
        """The flow for one request. ``target`` is the request-target as received (absolute URI, or
        ``host:port`` for CONNECT); ``authorization`` the value of the role's credentials field (None when
        absent); ``connection`` the caller's state of this connection, needed only by connection-bound
        schemes."""
        role = self.role
        if authorization is None:
            if connection is not None and connection.signed_in is not None:
                # A connection-bound scheme signed this connection in (only such a scheme sets this).
                return connection.signed_in
            return Reject(Outcome.MISSING, None, False, f"no {role.credentials_field} field", role)
        space = authorization.find(" ")
        scheme = self.schemes.get(authorization[:space].lower()) if space > 0 else None
        if scheme is None:
            # Not "<offered scheme> <rest>": parse it all, so malformed credentials are a 400 whatever their
            # scheme, and find the scheme's name the long way (other whitespace, odd spacing).
            creds = parse_credentials(authorization)
            scheme = self.schemes.get(creds.scheme_key)
            if scheme is None:
                return Reject(Outcome.UNSUPPORTED_SCHEME, None, False, f"scheme {creds.scheme!r} is not offered",
                              role)
        if scheme.connection_bound:
            if connection is None:
                return Reject(Outcome.UNSUPPORTED_SCHEME, None, False,
                              f"{scheme.name} needs the connection's state, and the caller keeps none", role)
            result = yield from scheme.verify(method, target, authorization, now, connection)
            if isinstance(result, Allow):
                connection.signed_in = result
            return result
        return (yield from scheme.verify(method, target, authorization, now, connection))
