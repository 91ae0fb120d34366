"""Digest (RFC 7616) as a scheme of the verifier: its challenges and the flow that checks one request.

Order of the checks, and why:

1. grammar and parameters (400), realm (``wrong-realm``), ``uri`` against the request-target (400, RFC 7616
   section 3.4.6: the uri is what the digest covers, a mismatch means the credentials are for another request);
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
import re
from typing import TYPE_CHECKING

from authproxy.auth.digest import (
    DigestAlgorithm,
    DigestChallenge,
    DigestCredentials,
    compute_userhash,
    get_algorithm,
    request_digest,
    response_auth,
)
from authproxy.auth.errors import AuthHeaderError
from authproxy.auth.flow import (
    Allow,
    ConnectionAuth,
    Flow,
    NeedBodyHash,
    NeedNonceUse,
    NeedUser,
    NeedUserByHash,
    Reject,
)
from authproxy.auth.headers import build_challenge, parse_credentials, quote_string
from authproxy.auth.nonces import NonceIssuer, NonceStatus, NonceUse
from authproxy.auth.outcomes import Outcome
from authproxy.auth.roles import Role

if TYPE_CHECKING:
    from authproxy.auth.driver import NonceCounts
    from authproxy.auth.policy import AuthPolicy
    from authproxy.auth.store import UserEntry, UserStore

# Enum members read once: through their class each read costs a call of the metaclass's __getattr__ (Python
# 3.11), and these are read on every Digest request.
_INVALID, _EXPIRED = NonceStatus.INVALID, NonceStatus.EXPIRED
_FRESH, _UNKNOWN = NonceUse.FRESH, NonceUse.UNKNOWN


def _equal(a: str, b: str) -> bool:
    # hmac.compare_digest refuses non-ASCII str; compare the UTF-8 bytes instead (surrogatepass: never raise).
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


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
_NONCE_SPAN = re.compile(r'(?:^|[\s,])nonce\s*=\s*"([A-Za-z0-9+/=._~-]{1,256})"')
# The same three values where clients write them (``nc=...``, ``response="..."``, ``cnonce="..."``): found with
# str.find and matched where found, a tenth of the cost of the searches above, which are the fallback.
_NC_VALUE = re.compile(r"[0-9A-Fa-f]{8}(?=\s*(?:,|$))")
_RESPONSE_VALUE = re.compile(r'[0-9A-Fa-f]{32,128}(?=")')
_CNONCE_VALUE = re.compile(r'[A-Za-z0-9+/=._~-]{1,128}(?=")')
_NONCE_VALUE = re.compile(r'[A-Za-z0-9+/=._~-]{1,256}(?=")')


#: The nonce a challenge is first built with, to find where the real one goes (see DigestScheme.challenges): a
#: nonce's form (base64url), and found once in the text, since every other quote in it is escaped.
_STAND_IN = "authproxyNonceStandIn"
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")


class DigestScheme:
    """Digest, checked on every request (never connection-bound): nonces from ``issuer``, the answer in
    ``role``'s info field."""

    name = "digest"
    connection_bound = False

    def __init__(self, policy: AuthPolicy, issuer: NonceIssuer, role: Role) -> None:
        self.policy = policy
        self.issuer = issuer
        self.role = role
        # Digest credentials by shape (see _credentials): a memo, bounded, no state of its own.
        self._shapes: dict[str, DigestCredentials] = {}
        # The last field value read and its credentials: a caller may read one field more than once per request
        # (the SIP proxy: to pick its realm's line, to verify it, to remove it before forwarding).
        self._last: tuple[str, DigestCredentials] | None = None
        # The Allow of each user when it carries no info field (see _counted): a memo, bounded.
        self._allowed: dict[str, Allow] = {}
        #: Whether an Allow carries the info field's value (rspauth, nextnonce); see Verifier.
        self.auth_info = True
        # Each challenge's text before and after its nonce, by ``stale`` (see challenges).
        self._around_nonce: dict[bool, list[tuple[str, str]] | None] = {}

    def challenges(self, now: float, rand: bytes, stale: bool) -> list[str]:
        """One Digest challenge per algorithm in the configured order, which is the operator's preference (RFC
        7616 section 3.7: most preferred first; the default puts SHA-256 first, and MD5 first suits clients that
        read only the first challenge, such as urllib), all with one nonce.

        Only the nonce differs from one 407 to the next: each challenge is built once per ``stale`` with a
        stand-in nonce and kept as the text around it, into which a fresh nonce goes (base64url: quoted as it
        is). A 407 costs the nonce's HMAC, not a challenge's construction and checks again."""
        nonce = self.issuer.issue(now, rand)
        around = self._around_nonce.get(stale)
        if around is None:
            marker = f'nonce="{_STAND_IN}"'
            built = self._build_challenges(_STAND_IN, stale)
            # Where the stand-in is not found once (it always is: every other quote in the text is escaped),
            # each 407 builds its challenges as they are.
            around = [value.partition(marker)[::2] for value in built] \
                if all(value.count(marker) == 1 for value in built) else None
            self._around_nonce[stale] = around
        if around is None or not _BASE64URL.fullmatch(nonce):
            return self._build_challenges(nonce, stale)
        return [f'{before}nonce="{nonce}"{after}' for before, after in around]

    def _build_challenges(self, nonce: str, stale: bool) -> list[str]:
        policy = self.policy
        values: list[str] = []
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
        return values


    def _reject(self, outcome: Outcome, user: str | None, stale: bool, detail: str) -> Reject:
        return Reject(outcome, user, stale, detail, self.role)

    def credentials(self, authorization: str) -> DigestCredentials:
        """The Digest credentials of ``authorization``, parsed by shape (:meth:`_credentials_by_shape`), the last
        one remembered: for :meth:`verify` and for a caller that reads them before it does (the SIP proxy picks
        its own realm's field line)."""
        last = self._last
        if last is not None and last[0] == authorization:
            return last[1]
        dc = self._credentials_by_shape(authorization)
        self._last = (authorization, dc)
        return dc

    _credentials = credentials

    def _credentials_by_shape(self, authorization: str) -> DigestCredentials:
        """The Digest credentials of ``authorization``, parsed once per shape.

        A client sends the same field again and again with only ``nc``, ``response`` and perhaps ``cnonce``
        changed, and ``nonce`` after each 407 (a SIP user agent gets one per call). Those four values are cut
        out (each replaced by a NUL, which no valid field contains) to make a key; a field with a known key
        differs from the one parsed before only inside those four spans, by characters that are neither
        delimiters nor quotes, so it parses to the same parameters but for those four values, which are taken
        from the spans. A template is kept only when its spans are exactly the parsed nc, response, cnonce and
        nonce values. Every check after parsing still runs per request.
        """
        # Where nc, response and cnonce are: first where clients write them (found with str.find, matched where
        # found), else by the searches. A span found in the wrong place only forms a key no template is kept
        # under (a template is kept only when its spans are exactly the parsed values): a miss, never a wrong
        # answer. Written out, not looped: this runs on every Digest request.
        at = authorization.find("nc=")
        m_nc = _NC_VALUE.match(authorization, at + 3) if at >= 0 else None
        at = authorization.find('response="')
        m_response = _RESPONSE_VALUE.match(authorization, at + 10) if at >= 0 else None
        at = authorization.find('cnonce="')
        m_cnonce = _CNONCE_VALUE.match(authorization, at + 8) if at >= 0 else None
        at = authorization.find(' nonce="')  # the space: not the end of 'cnonce="'
        m_nonce = _NONCE_VALUE.match(authorization, at + 8) if at >= 0 else None
        if m_nc is None or m_response is None or m_cnonce is None or m_nonce is None:
            m_nc, m_response, m_cnonce, m_nonce = (
                _NC_SPAN.search(authorization), _RESPONSE_SPAN.search(authorization),
                _CNONCE_SPAN.search(authorization), _NONCE_SPAN.search(authorization))
            if m_nc is None or m_response is None or m_cnonce is None or m_nonce is None:
                return DigestCredentials.from_credentials(parse_credentials(authorization))
            (n0, n1), (r0, r1), (c0, c1), (o0, o1) = m_nc.span(1), m_response.span(1), m_cnonce.span(1), \
                m_nonce.span(1)
        else:
            (n0, n1), (r0, r1), (c0, c1), (o0, o1) = m_nc.span(), m_response.span(), m_cnonce.span(), \
                m_nonce.span()
        nc, response, cnonce = authorization[n0:n1], authorization[r0:r1], authorization[c0:c1]
        nonce = authorization[o0:o1]
        (a0, a1), (b0, b1), (y0, y1), (z0, z1) = sorted(((n0, n1), (r0, r1), (c0, c1), (o0, o1)))
        if a1 > b0 or b1 > y0 or y1 > z0:
            return DigestCredentials.from_credentials(parse_credentials(authorization))
        key = (f"{authorization[:a0]}\0{authorization[a1:b0]}\0{authorization[b1:y0]}\0{authorization[y1:z0]}"
               f"\0{authorization[z1:]}")
        template = self._shapes.get(key)
        # A response of another length than the algorithm's is the full parse's to refuse (400).
        if template is not None and len(response) == template.algorithm.hex_length:
            # The template's fields with the four changed: copied straight into a new instance's __dict__
            # (eleven frozen-dataclass setattr calls cost more than the rest of a hit; no __post_init__ to run).
            dc = object.__new__(DigestCredentials)
            dc.__dict__.update(template.__dict__, response=response.lower(), cnonce=cnonce, nc=nc, nonce=nonce)
            return dc
        dc = DigestCredentials.from_credentials(parse_credentials(authorization))
        if (dc.nc, dc.response, dc.cnonce, dc.nonce) == (nc, response.lower(), cnonce, nonce) \
                and dc.qop == "auth" and len(response) == dc.algorithm.hex_length:
            if len(self._shapes) >= 4096:
                self._shapes.clear()
            self._shapes[key] = dc
        return dc

    def verify(self, method: str, target: str, authorization: str, now: float,
               connection: ConnectionAuth | None) -> Flow:
        """The checks of one request, in the order of the module docstring, each need yielded to the driver."""
        dc = self._credentials(authorization)
        status = self._before_lookup(method, target, dc, now)
        if isinstance(status, Reject):
            return status
        alg = dc.algorithm
        if dc.userhash:
            entry = self._hashed_user(dc, (yield NeedUserByHash(alg.base, self.policy.realm, dc.username)))
        else:
            entry = yield NeedUser(dc.username)
        # Asked for whether or not the user exists: an unknown name answered before its body is read would tell
        # a guesser which names exist (the 407 would come before the body is sent; issue 9 item 9).
        body_hash = (yield NeedBodyHash(alg.base)) if dc.qop == "auth-int" else None
        ha1 = self._check_response(method, dc, entry, body_hash, status)
        if isinstance(ha1, Reject):
            return ha1
        assert entry is not None  # _check_response refuses a missing user
        assert dc.nc is not None  # from_credentials guarantees nc with qop
        use = yield NeedNonceUse(dc.nonce, int(dc.nc, 16), self.issuer.expires_at(dc.nonce), entry.name)
        return self._counted(dc, entry.name, ha1, use, now)

    def verify_inline(self, method: str, target: str, authorization: str, now: float, store: UserStore,
                      counters: NonceCounts, body: bytes) -> Allow | Reject:
        """What :meth:`verify` decides when its needs are answered at once by ``store`` and ``counters``, and
        the body hash from ``body``, as :func:`authproxy.auth.driver.run` answers them: the same checks (the
        same methods) in the same order, without a generator and the need records between them."""
        dc = self._credentials(authorization)
        status = self._before_lookup(method, target, dc, now)
        if isinstance(status, Reject):
            return status
        alg = dc.algorithm
        if dc.userhash:
            entry = self._hashed_user(dc, store.lookup_userhash(alg.base, self.policy.realm, dc.username))
        else:
            entry = store.lookup(dc.username)
        body_hash = alg.hexdigest(body) if dc.qop == "auth-int" else None  # the base's hash (-sess shares it)
        ha1 = self._check_response(method, dc, entry, body_hash, status)
        if isinstance(ha1, Reject):
            return ha1
        assert entry is not None  # _check_response refuses a missing user
        assert dc.nc is not None  # from_credentials guarantees nc with qop
        use = counters.use(dc.nonce, int(dc.nc, 16), self.issuer.expires_at(dc.nonce), now, entry.name)
        return self._counted(dc, entry.name, ha1, use, now)

    # -- the steps of verify and verify_inline, in order -------------------------------------------------------

    def _before_lookup(self, method: str, target: str, dc: DigestCredentials, now: float) -> NonceStatus | Reject:
        """Steps 1-3: realm, uri, what was offered, opaque and the nonce's authenticity; the nonce's status."""
        policy = self.policy
        shown = None if dc.userhash else dc.username
        if dc.realm != policy.realm:
            return self._reject(Outcome.WRONG_REALM, shown, False, "credentials for another realm")
        if dc.uri != target and not uri_matches(method, target, dc.uri):  # the first test of uri_matches, inline
            raise AuthHeaderError("Digest uri does not match the request-target")
        alg = dc.algorithm
        if alg.name not in policy.digest_algorithms:
            return self._reject(Outcome.UNSUPPORTED_SCHEME, shown, False, f"algorithm {alg.name} is not offered")
        if dc.qop is None:
            return self._reject(Outcome.UNSUPPORTED_SCHEME, shown, False,
                                "Digest without qop (RFC 2069) is not accepted")
        if dc.qop not in policy.qop:
            return self._reject(Outcome.UNSUPPORTED_SCHEME, shown, False, f"qop={dc.qop} is not offered")
        if dc.userhash and not policy.userhash:
            return self._reject(Outcome.UNSUPPORTED_SCHEME, None, False, "userhash is not offered")
        if dc.opaque is None or not _equal(dc.opaque, self.issuer.opaque):
            return self._reject(Outcome.BAD_NONCE, shown, False, "opaque missing or not ours")
        status = self.issuer.check(dc.nonce, now)
        if status is _INVALID:
            return self._reject(Outcome.BAD_NONCE, shown, False, "nonce not issued here")
        return status

    def _hashed_user(self, dc: DigestCredentials, entry: UserEntry | None) -> UserEntry | None:
        # Trust, but check: a store answering for the wrong user must not log someone in.
        if entry is not None and not _equal(compute_userhash(dc.algorithm, entry.name, self.policy.realm),
                                            dc.username):
            return None
        return entry

    def _check_response(self, method: str, dc: DigestCredentials, entry: UserEntry | None, body_hash: str | None,
                        status: NonceStatus) -> str | Reject:
        """Steps 4-5 and expiry: the user's HA1 when the response is right and the nonce not expired."""
        alg = dc.algorithm
        if entry is None or alg.base not in entry.digest_algorithms(self.policy.realm):
            # The response is computed all the same (with an HA1 nobody has), so that this refusal costs what
            # a wrong password costs and its timing does not tell a guesser which names exist (issue 9 item 9).
            request_digest(alg, ha1="0" * alg.hex_length, nonce=dc.nonce, nc=dc.nc, cnonce=dc.cnonce, qop=dc.qop,
                           method=method, uri=dc.uri, body_hash=body_hash)
            if entry is None:
                return self._reject(Outcome.UNKNOWN_USER, None if dc.userhash else dc.username, False,
                                    "no such user")
            return self._reject(Outcome.NO_DIGEST_SECRET, entry.name, False, f"no {alg.base} HA1 for this realm")
        ha1 = entry.ha1[alg.base].lower()
        expected = request_digest(alg, ha1=ha1, nonce=dc.nonce, nc=dc.nc, cnonce=dc.cnonce, qop=dc.qop,
                                  method=method, uri=dc.uri, body_hash=body_hash)
        # Both are ASCII hex (the response was checked to be): compared as they are, in constant time.
        if not hmac.compare_digest(expected, dc.response):
            return self._reject(Outcome.BAD_PASSWORD, entry.name, False, "wrong digest response")
        if status is _EXPIRED:
            return self._reject(Outcome.STALE_NONCE, entry.name, True, "nonce expired; the digest was right")
        return ha1

    def _counted(self, dc: DigestCredentials, user: str, ha1: str, use: NonceUse | bool,
                 now: float) -> Allow | Reject:
        """Step 6, the nonce count store's answer: Allow only for a count never used before."""
        if use is _UNKNOWN:
            # The store forgot this nonce's counts (a bounded table under pressure): fail safe with a new
            # challenge, which the client answers silently, rather than call it a replay and count a failure.
            return self._reject(Outcome.STALE_NONCE, user, True,
                                "nonce counts no longer known; the digest was right")
        if use is not _FRESH and use is not True:  # NonceUse.REPLAY, or False from a store that answers a bool
            return self._reject(Outcome.REPLAY, user, False, f"nonce count {dc.nc} already used")
        if self.auth_info:
            return Allow(user, "digest", self._auth_info(dc.algorithm, dc, ha1, now), self.role)
        # Without an info field the decision is the same value for every request of ``user``: one frozen record
        # each (a memo, bounded; only users who proved their password get in).
        allowed = self._allowed.get(user)
        if allowed is None:
            if len(self._allowed) >= 4096:
                self._allowed.clear()
            allowed = self._allowed[user] = Allow(user, "digest", None, self.role)
        return allowed

    def _auth_info(self, alg: DigestAlgorithm, dc: DigestCredentials, ha1: str, now: float) -> str:
        """The info field's value (RFC 7616 section 3.5; RFC 9110 sections 11.6.3 and 11.7.3)."""
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
