"""The auth-schemes a verifier knows, as a registry: each scheme gives its challenges and checks its credentials.

The verifier (:mod:`authproxy.auth.verifier`) looks a request's scheme up by name (case-insensitive, RFC 9110
section 11.1) instead of testing names in an if-chain; adding a scheme is adding an entry. A scheme is built
once per verifier from the verifier's policy, nonce issuer and role, so it answers in the role's fields.

Two kinds of scheme fit the same interface:

- per-request schemes (Basic, Digest): every request carries credentials that are checked on their own;
- connection-bound schemes (NTLM, Negotiate: RFC 4559 section 4): a handshake over several requests of one
  connection, after which the connection is signed in. Such a scheme says ``connection_bound = True`` and keeps
  its handshake state in the :class:`~authproxy.auth.flow.ConnectionAuth` the caller holds per connection; the
  verifier refuses it when the caller has none, and never lets a connection's sign-in stand in for the
  credentials of a per-request scheme. None is registered yet; tests/auth/test_schemes.py shows one working.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

from authproxy.auth.basic import basic_challenge, decode_basic
from authproxy.auth.digest_scheme import DigestScheme
from authproxy.auth.errors import AuthHeaderError
from authproxy.auth.flow import Allow, ConnectionAuth, Flow, NeedPasswordCheck, NeedUser, Reject
from authproxy.auth.headers import build_challenge, parse_credentials
from authproxy.auth.nonces import NonceIssuer
from authproxy.auth.outcomes import Outcome
from authproxy.auth.roles import Role

if TYPE_CHECKING:
    from authproxy.auth.policy import AuthPolicy


class Scheme(Protocol):
    """One auth-scheme's server side, built for one verifier."""

    #: The scheme's name, lower-case: its registry key and how credentials name it (case-insensitively).
    name: str
    #: True for a handshake over one connection (NTLM, Negotiate); False when each request stands alone.
    connection_bound: bool

    def challenges(self, now: float, rand: bytes, stale: bool) -> list[str]:
        """The challenge field values this scheme offers, most preferred first (``stale``: Digest's flag)."""
        ...

    def verify(self, method: str, target: str, authorization: str, now: float,
               connection: ConnectionAuth | None) -> Flow:
        """The flow for one request whose credentials field value is ``authorization`` (this scheme's).
        ``connection`` is the caller's state of this connection; only a connection-bound scheme uses it."""
        ...


#: Builds a scheme for a verifier: (policy, nonce issuer, role) -> scheme.
SchemeFactory = Callable[["AuthPolicy", NonceIssuer, Role], Scheme]


class BasicScheme:
    """Basic (RFC 7617), checked on every request."""

    name = "basic"
    connection_bound = False

    def __init__(self, policy: AuthPolicy, issuer: NonceIssuer, role: Role) -> None:
        self.policy = policy
        self.role = role

    def challenges(self, now: float, rand: bytes, stale: bool) -> list[str]:
        return [build_challenge(basic_challenge(self.policy.realm))]

    def verify(self, method: str, target: str, authorization: str, now: float,
               connection: ConnectionAuth | None) -> Flow:
        creds = parse_credentials(authorization)
        if creds.token68 is None:
            raise AuthHeaderError("Basic credentials must be a token68")
        name, password = decode_basic(creds.token68)
        realm = self.policy.realm
        entry = yield NeedUser(name)
        if entry is None or not entry.can_basic(realm):
            # Checked all the same, against the store's stand-in, so the refusal costs what a wrong password
            # costs: a quick answer would tell a guesser that the name does not exist (issue 9 item 9).
            yield NeedPasswordCheck(None, password, realm)
            if entry is None:
                return Reject(Outcome.UNKNOWN_USER, name, False, "no such user", self.role)
            return Reject(Outcome.NO_BASIC_SECRET, entry.name, False, "the store holds no secret that checks Basic",
                          self.role)
        ok = yield NeedPasswordCheck(entry, password, realm)
        if not ok:
            return Reject(Outcome.BAD_PASSWORD, entry.name, False, "wrong password", self.role)
        return Allow(entry.name, "basic", None, self.role)


#: The schemes authproxy knows, strongest first (RFC 9110 section 11.6.1 lets the client pick; the order is
#: the order of the challenges).
SCHEMES: Mapping[str, SchemeFactory] = MappingProxyType(
    {DigestScheme.name: DigestScheme, BasicScheme.name: BasicScheme})
