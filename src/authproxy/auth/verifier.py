"""The proxy's side of HTTP authentication as a sans-IO generator flow (RFC 9110 section 11.7, RFC 7616,
RFC 7617).

``Verifier.verify`` is a generator in the style of httpx's ``Auth.auth_flow``: it yields a *need* (a user
lookup, a password check, the hash of the request body, a nonce-count update), the caller does whatever IO
that takes, sync or async, and sends the answer back in; the generator finally returns :class:`Allow` or
:class:`Reject`. Malformed credentials raise :class:`~authproxy.auth.errors.AuthHeaderError` (status hint
400): a client that sends garbage gets a 400, not another challenge to answer with more garbage.

Order of the Digest checks, and why:

1. grammar and parameters (400), realm (``wrong-realm``), ``uri`` against the request-target (400, RFC 7616
   section 3.4: the uri is what the digest covers, a mismatch means the credentials are for another request);
2. algorithm, qop and userhash must be ones we offered (``unsupported-scheme``); a response without qop (the
   RFC 2069 form) is refused the same way: it has no ``nc``, so replays could not be detected;
3. opaque and nonce authenticity (``bad-nonce``) before any user lookup, so forged nonces cost nothing;
4. the user and their HA1 (``unknown-user``, ``no-digest-secret``), the body hash for auth-int;
5. the response, compared in constant time (``bad-password``);
6. only then nonce expiry (``stale-nonce`` with stale=true: the client knew the password, RFC 7616 section
   3.3) and the nonce count (``replay`` for a count already used; ``stale-nonce`` again when the count table
   no longer knows the nonce, so a full table fails safe). Recording the count only after the digest is right
   keeps a guesser from burning a legitimate client's counts.
"""

from __future__ import annotations

import hmac
import math
import re
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from authproxy.auth.basic import basic_challenge, decode_basic
from authproxy.auth.digest import (
    QOP_VALUES,
    DigestAlgorithm,
    DigestChallenge,
    DigestCredentials,
    compute_userhash,
    get_algorithm,
    request_digest,
    response_auth,
)
from authproxy.auth.errors import AuthHeaderError, ConfigError
from authproxy.auth.headers import Credentials, build_challenge, parse_credentials, quote_string
from authproxy.auth.nonces import NonceIssuer, NonceStatus, NonceUse
from authproxy.auth.outcomes import REJECT_OUTCOMES, Outcome
from authproxy.auth.store import UserEntry
from authproxy.auth.text import realm_problem

SCHEMES: tuple[str, ...] = ("digest", "basic")


def _equal(a: str, b: str) -> bool:
    # hmac.compare_digest refuses non-ASCII str; compare the UTF-8 bytes instead (surrogatepass: never raise).
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True)
class AuthPolicy:
    """What the proxy offers in its 407 and accepts back. Names are normalised (schemes lower-case,
    algorithms to their wire spelling); anything unknown is a ConfigError naming the field."""

    realm: str
    schemes: tuple[str, ...] = ("digest", "basic")
    digest_algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    qop: tuple[str, ...] = ("auth", "auth-int")
    userhash: bool = True
    nonce_lifetime: float = 300.0

    def __post_init__(self) -> None:
        problem = realm_problem(self.realm)
        if problem is not None:
            raise ConfigError(f"realm: {problem}: {self.realm!r}")
        schemes = tuple(s.lower() for s in self.schemes)
        if not schemes:
            raise ConfigError("schemes: at least one scheme must be offered")
        for scheme in schemes:
            if scheme not in SCHEMES:
                raise ConfigError(f"schemes: unknown scheme {scheme!r} (known: {', '.join(SCHEMES)})")
        if len(set(schemes)) != len(schemes):
            raise ConfigError("schemes: listed twice")
        algorithms: list[str] = []
        for name in self.digest_algorithms:
            alg = get_algorithm(name)
            if alg is None:
                raise ConfigError(f"digest_algorithms: unknown algorithm {name!r}")
            algorithms.append(alg.name)
        if len(set(algorithms)) != len(algorithms):
            raise ConfigError("digest_algorithms: listed twice")
        qop = tuple(q.lower() for q in self.qop)
        for value in qop:
            if value not in QOP_VALUES:
                raise ConfigError(f"qop: unknown value {value!r} (known: {', '.join(QOP_VALUES)})")
        if len(set(qop)) != len(qop):
            raise ConfigError("qop: listed twice")
        if "digest" in schemes:
            if not algorithms:
                raise ConfigError("digest_algorithms: Digest is offered but no algorithm is configured")
            if not qop:
                # Without qop there is no nc, and without nc no replay protection: we never offer that.
                raise ConfigError("qop: Digest is offered but no qop is configured")
        if not (self.nonce_lifetime > 0 and math.isfinite(self.nonce_lifetime)):
            raise ConfigError(
                f"nonce_lifetime: must be a positive number of seconds, got {self.nonce_lifetime!r}"
            )
        object.__setattr__(self, "schemes", schemes)
        object.__setattr__(self, "digest_algorithms", tuple(algorithms))
        object.__setattr__(self, "qop", qop)


# --- what the flow asks for -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NeedUser:
    """Send back the ``UserEntry`` named ``name`` (exact, case-sensitive), or None."""

    name: str


@dataclass(frozen=True)
class NeedUserByHash:
    """Send back the ``UserEntry`` whose H(name:realm) under base ``algorithm`` is ``hashed``, or None
    (RFC 7616 section 3.4.4)."""

    algorithm: str
    realm: str
    hashed: str


@dataclass(frozen=True)
class NeedPasswordCheck:
    """Send back ``UserStore.check_password(entry, password, realm)``: whether ``password`` is ``entry``'s.

    ``entry`` None stands for a user who is not there (or has no secret that checks Basic): the store spends
    what a real check costs and answers False, so that a refusal takes as long whether the name exists or not
    (issue 9 item 9). Run the check off the event loop when ``UserStore.password_check_is_slow`` says so.
    """

    entry: UserEntry | None
    password: str
    realm: str


@dataclass(frozen=True)
class NeedBodyHash:
    """Send back the lower-case hex hash of the whole request body under base ``algorithm`` (qop=auth-int)."""

    algorithm: str


@dataclass(frozen=True)
class NeedNonceUse:
    """Send back ``NonceCounterStore.use(nonce, nc, expires_at, now, owner=user)``, a
    :class:`~authproxy.auth.nonces.NonceUse`: FRESH is accepted, UNKNOWN answered stale, REPLAY refused."""

    nonce: str
    nc: int
    expires_at: float
    user: str = ""  # the user the digest was verified for: the store's owner (its per-user quota)


Need = NeedUser | NeedUserByHash | NeedPasswordCheck | NeedBodyHash | NeedNonceUse


# --- what it decides --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Allow:
    """Authenticated. ``auth_info`` is the Proxy-Authentication-Info field value (Digest only)."""

    user: str
    scheme: str  # "digest" or "basic"
    auth_info: str | None


@dataclass(frozen=True)
class Reject:
    """Not authenticated: answer 407 with fresh challenges (``stale`` goes into the Digest ones).

    ``detail`` is for the log; it never holds a password.
    """

    outcome: Outcome
    user: str | None
    stale: bool
    detail: str

    def __post_init__(self) -> None:
        if self.outcome not in REJECT_OUTCOMES:
            raise ValueError(f"unknown reject outcome {self.outcome!r}")


Flow = Generator[Need, Any, Allow | Reject]


def _origin_form(target: str) -> str | None:
    """The origin-form (path and query) of an absolute-form target, without any normalisation."""
    sep = target.find("://")
    if sep <= 0:
        return None
    rest = target[sep + 3 :]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    origin = rest[cut:]
    if not origin:
        return "/"
    if origin.startswith("?"):
        return "/" + origin
    return origin


def uri_matches(method: str, target: str, uri: str) -> bool:
    """Whether the Digest ``uri`` names the request-target (RFC 7616 section 3.4.6: the uri is what the
    digest covers, so it must be the request-target, or the credentials are for another request).

    - CONNECT: the authority ``host:port``, exactly.
    - An absolute-form uri: the target exactly, so scheme, host, port, path and query all match. Nothing is
      normalised: the digest covers the bytes the client sent, and normalising would let a digest made for
      one URI pass for another.
    - An origin-form uri (path and query) for an absolute-form target: accepted when it is exactly the
      target's path and query, because clients send it: curl (7.88) answers a proxy's Digest challenge for
      ``GET http://h/p?q`` with ``uri="/p?q"``, as it would answer an origin, and Apache and Squid accept the
      same. Such a digest does not cover the host; what binds it to this request is the rest of the digest
      (method, path, query, a nonce of ours, an nc used once). Refusing it would lock curl users out of
      Digest through the proxy; a client that sends the absolute URI (authproxy.client, browsers, urllib)
      gets the host covered too.
    """
    if uri == target:
        return True
    if method == "CONNECT":
        return False
    origin = _origin_form(target)
    return origin is not None and uri == origin


# The three Digest values that change from request to request, each as a span of characters that are never
# delimiters: nc (8 hex digits), response (hex, quoted) and cnonce (quoted, base64/token-like characters).
_NC_SPAN = re.compile(r"(?:^|[\s,])nc\s*=\s*([0-9A-Fa-f]{8})(?=\s*(?:,|$))")
_RESPONSE_SPAN = re.compile(r'(?:^|[\s,])response\s*=\s*"([0-9A-Fa-f]{32,128})"')
_CNONCE_SPAN = re.compile(r'(?:^|[\s,])cnonce\s*=\s*"([A-Za-z0-9+/=._~-]{1,128})"')


class Verifier:
    """Decides one request's Proxy-Authorization against ``policy``; issues the challenges of a 407."""

    def __init__(self, policy: AuthPolicy, issuer: NonceIssuer) -> None:
        if issuer.realm != policy.realm:
            raise ConfigError("realm: the nonce issuer and the policy disagree")
        if issuer.lifetime != policy.nonce_lifetime:
            raise ConfigError("nonce_lifetime: the nonce issuer and the policy disagree")
        self.policy = policy
        self.issuer = issuer
        # Digest credentials by shape (see _digest_credentials): a memo, bounded, no state of its own.
        self._shapes: dict[str, DigestCredentials] = {}

    # -- the 407 --------------------------------------------------------------------------------------------

    def challenges(self, now: float, rand: bytes, stale: bool = False) -> list[str]:
        """The Proxy-Authenticate field values: one Digest challenge per algorithm in the configured order, which
        is the operator's preference (RFC 7616 section 3.7: most preferred first; the default puts SHA-256
        first, and MD5 first suits clients that read only the first challenge, such as urllib), then Basic."""
        policy = self.policy
        values: list[str] = []
        if "digest" in policy.schemes:
            nonce = self.issuer.issue(now, rand)
            for alg in (get_algorithm(name) for name in policy.digest_algorithms):
                if alg is None:
                    continue
                challenge = DigestChallenge(
                    realm=policy.realm,
                    nonce=nonce,
                    opaque=self.issuer.opaque,
                    algorithm=alg.name,
                    qop=policy.qop,
                    stale=stale,
                    userhash=policy.userhash,
                    charset_utf8=True,
                )
                values.append(build_challenge(challenge.to_challenge()))
        if "basic" in policy.schemes:
            values.append(build_challenge(basic_challenge(policy.realm)))
        return values

    # -- one request ----------------------------------------------------------------------------------------

    def verify(self, method: str, target: str, authorization: str | None, now: float) -> Flow:
        """The flow for one request. ``target`` is the request-target as received (absolute URI, or
        ``host:port`` for CONNECT); ``authorization`` the Proxy-Authorization value (None when absent)."""
        if authorization is None:
            return Reject(Outcome.MISSING, None, False, "no Proxy-Authorization field")
        if authorization[:7].lower() == "digest " and "digest" in self.policy.schemes:
            return (yield from self._digest(method, target, self._digest_credentials(authorization), now))
        creds = parse_credentials(authorization)
        scheme = creds.scheme_key
        if scheme not in self.policy.schemes:
            return Reject(Outcome.UNSUPPORTED_SCHEME, None, False, f"scheme {creds.scheme!r} is not offered")
        if scheme == "basic":
            return (yield from self._basic(creds))
        return (yield from self._digest(method, target, DigestCredentials.from_credentials(creds), now))

    def _digest_credentials(self, authorization: str) -> DigestCredentials:
        """The Digest credentials of ``authorization``, parsed once per shape.

        A client sends the same field again and again with only ``nc``, ``response`` and perhaps ``cnonce``
        changed. Those three values are cut out (each replaced by a NUL, which no valid field contains) to
        make a key; a field with a known key differs from the one parsed before only inside those three
        spans, by characters that are neither delimiters nor quotes, so it parses to the same parameters but
        for those three values, which are taken from the spans. A template is kept only when its spans are
        exactly the parsed nc, response and cnonce values. Every check after parsing still runs per request.
        """
        spans = [m for m in (_NC_SPAN.search(authorization), _RESPONSE_SPAN.search(authorization),
                             _CNONCE_SPAN.search(authorization)) if m is not None]
        if len(spans) != 3:
            return DigestCredentials.from_credentials(parse_credentials(authorization))
        nc, response, cnonce = (m.group(1) for m in spans)
        cuts = sorted(m.span(1) for m in spans)
        if cuts[0][1] > cuts[1][0] or cuts[1][1] > cuts[2][0]:
            return DigestCredentials.from_credentials(parse_credentials(authorization))
        key = "\0".join((authorization[: cuts[0][0]], authorization[cuts[0][1]: cuts[1][0]],
                          authorization[cuts[1][1]: cuts[2][0]], authorization[cuts[2][1]:]))
        template = self._shapes.get(key)
        if template is not None:
            return DigestCredentials(
                username=template.username, userhash=template.userhash, realm=template.realm,
                nonce=template.nonce, uri=template.uri, response=response.lower(), algorithm=template.algorithm,
                cnonce=cnonce, nc=nc, qop=template.qop, opaque=template.opaque,
            )
        dc = DigestCredentials.from_credentials(parse_credentials(authorization))
        if (dc.nc, dc.response, dc.cnonce) == (nc, response.lower(), cnonce) and dc.qop == "auth" \
                and len(response) == dc.algorithm.hex_length:
            if len(self._shapes) >= 4096:
                self._shapes.clear()
            self._shapes[key] = dc
        return dc

    def _basic(self, creds: Credentials) -> Flow:
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
                return Reject(Outcome.UNKNOWN_USER, name, False, "no such user")
            return Reject(Outcome.NO_BASIC_SECRET, entry.name, False, "the store holds no secret that checks Basic")
        ok = yield NeedPasswordCheck(entry, password, realm)
        if not ok:
            return Reject(Outcome.BAD_PASSWORD, entry.name, False, "wrong password")
        return Allow(entry.name, "basic", None)

    def _digest(self, method: str, target: str, dc: DigestCredentials, now: float) -> Flow:
        policy = self.policy
        shown = None if dc.userhash else dc.username
        if dc.realm != policy.realm:
            return Reject(Outcome.WRONG_REALM, shown, False, "credentials for another realm")
        if not uri_matches(method, target, dc.uri):
            raise AuthHeaderError("Digest uri does not match the request-target")
        alg = dc.algorithm
        if alg.name not in policy.digest_algorithms:
            return Reject(Outcome.UNSUPPORTED_SCHEME, shown, False, f"algorithm {alg.name} is not offered")
        if dc.qop is None:
            return Reject(Outcome.UNSUPPORTED_SCHEME, shown, False, "Digest without qop (RFC 2069) is not accepted")
        if dc.qop not in policy.qop:
            return Reject(Outcome.UNSUPPORTED_SCHEME, shown, False, f"qop={dc.qop} is not offered")
        if dc.userhash and not policy.userhash:
            return Reject(Outcome.UNSUPPORTED_SCHEME, None, False, "userhash is not offered")
        if dc.opaque is None or not _equal(dc.opaque, self.issuer.opaque):
            return Reject(Outcome.BAD_NONCE, shown, False, "opaque missing or not ours")
        status = self.issuer.check(dc.nonce, now)
        if status is NonceStatus.INVALID:
            return Reject(Outcome.BAD_NONCE, shown, False, "nonce not issued here")

        if dc.userhash:
            entry = yield NeedUserByHash(alg.base, policy.realm, dc.username)
            # Trust, but check: a store answering for the wrong user must not log someone in.
            if entry is not None and not _equal(compute_userhash(alg, entry.name, policy.realm), dc.username):
                entry = None
        else:
            entry = yield NeedUser(dc.username)
        if entry is None:
            return Reject(Outcome.UNKNOWN_USER, shown, False, "no such user")
        if alg.base not in entry.digest_algorithms(policy.realm):
            return Reject(Outcome.NO_DIGEST_SECRET, entry.name, False, f"no {alg.base} HA1 for this realm")
        ha1 = entry.ha1[alg.base].lower()

        body_hash: str | None = None
        if dc.qop == "auth-int":
            body_hash = yield NeedBodyHash(alg.base)
        expected = request_digest(
            alg,
            ha1=ha1,
            nonce=dc.nonce,
            nc=dc.nc,
            cnonce=dc.cnonce,
            qop=dc.qop,
            method=method,
            uri=dc.uri,
            body_hash=body_hash,
        )
        if not _equal(expected, dc.response):
            return Reject(Outcome.BAD_PASSWORD, entry.name, False, "wrong digest response")
        if status is NonceStatus.EXPIRED:
            return Reject(Outcome.STALE_NONCE, entry.name, True, "nonce expired; the digest was right")
        nc = dc.nc_value
        assert nc is not None  # from_credentials guarantees nc with qop
        use = yield NeedNonceUse(dc.nonce, nc, self.issuer.expires_at(dc.nonce), entry.name)
        if use is NonceUse.UNKNOWN:
            # The store forgot this nonce's counts (a bounded table under pressure): fail safe with a new
            # challenge, which the client answers silently, rather than call it a replay and count a failure.
            return Reject(Outcome.STALE_NONCE, entry.name, True, "nonce counts no longer known; the digest was right")
        if not use:  # NonceUse.REPLAY (or False from a store that answers a bool)
            return Reject(Outcome.REPLAY, entry.name, False, f"nonce count {dc.nc} already used")
        return Allow(entry.name, "digest", self._auth_info(alg, dc, ha1, now))

    def _auth_info(self, alg: DigestAlgorithm, dc: DigestCredentials, ha1: str, now: float) -> str:
        """Proxy-Authentication-Info (RFC 7616 section 3.5, RFC 9110 section 11.7.3)."""
        assert dc.qop is not None and dc.nc is not None and dc.cnonce is not None
        # Formatted by hand rather than by build_auth_params: this runs on every Digest request, and every
        # value is known in shape (qop and nc are tokens, rspauth hex, the nonces ours); only cnonce comes from
        # the client, and it is quoted properly.
        info = f"qop={dc.qop}"
        if dc.qop == "auth":
            rspauth = response_auth(
                alg, ha1=ha1, nonce=dc.nonce, nc=dc.nc, cnonce=dc.cnonce, qop=dc.qop, uri=dc.uri
            )
            info += f', rspauth="{rspauth}"'
        # For auth-int, rspauth covers the *response* body (RFC 7616 section 3.5), which a proxy has not
        # seen when it sends its head (the body streams from upstream afterwards): no rspauth then.
        info += f", cnonce={quote_string(dc.cnonce)}, nc={dc.nc}"
        issued_at = self.issuer.issued_at(dc.nonce)
        if now >= issued_at + self.issuer.lifetime / 2:
            # Past half its life: hand the client the next nonce now, so it never has to take a stale 407.
            info += f', nextnonce="{self.issuer.next_nonce(dc.nonce, now, f"{dc.nc}:{dc.cnonce}")}"'
        return info
