"""The client's side of HTTP authentication as a sans-IO generator flow (RFC 9110 section 11, RFC 7616,
RFC 7617), for either role: a proxy's 407 (the default) or an origin's 401.

The mirror of :mod:`authproxy.auth.verifier`. A :class:`~authproxy.auth.roles.Role` names the status and the
three fields of the exchange: ``PROXY`` (407, ``Proxy-Authenticate``, ``Proxy-Authorization``,
``Proxy-Authentication-Info``; RFC 9110 sections 11.7.1-11.7.3) or ``ORIGIN`` (401, ``WWW-Authenticate``,
``Authorization``, ``Authentication-Info``; sections 11.6.1-11.6.3). Below, "the peer" is whoever asks: the
proxy or the origin, and "its challenge field" the role's. The rules are the same for both.

:meth:`Responder.flow` is a generator in the style of httpx's ``Auth.auth_flow``: it yields :class:`Send`
(the credentials field value to put on the next attempt, or None), the caller sends the request to the peer
and sends back the :class:`ProxyResponse`; the generator either yields the next attempt or returns the response
the caller should use. Failures raise :class:`ProxyAuthError`, which carries everything a person needs to
understand the refusal (its ``hop`` is the role's name).

What the flow does, and why:

- Every challenge of every challenge field is read (RFC 9110 sections 11.6.1 and 11.7.1, several per field
  and several fields); a field line that does not parse is skipped, not fatal, so one odd challenge cannot hide
  a good one. Unknown schemes and algorithms are skipped (RFC 7616 section 3.3).
- The strongest answerable challenge wins: Digest SHA-512-256 > SHA-256 > MD5 (each with -sess), then Basic.
  Among equals the peer's order stands (it lists its preference first). Basic on a cleartext connection to the
  peer is used only when allowed, since it shows the password to every hop on the path.
- A known nonce is reused, with a fresh nc per request (RFC 7616 section 3.4), on later requests and
  connections, so a steady stream of requests costs no extra round trip. The nc counter is per nonce and taken
  under a lock: concurrent requests never send the same nc twice (httpx shares one counter and races).
- ``stale=true`` (RFC 7616 section 3.3) after a right answer: retry once with the new nonce. A challenge
  without ``stale`` after credentials answering this very exchange's challenge: the credentials are wrong;
  stop. A challenge after *cached* credentials only means the nonce went away (a restart): answer it once.
- ``nextnonce`` and ``rspauth`` from the role's info field (RFC 7616 section 3.5): the next nonce replaces
  the cached one; an rspauth that does not match means the peer does not know the password: an error.
- The rounds are capped; the flow never loops on 407 (or 401).

Randomness (the cnonce) comes from the caller, like the verifier's clock: this package does no IO.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass

from authproxy.auth.basic import encode_basic
from authproxy.auth.challenges import Judged, Option, judge
from authproxy.auth.describe import answered_401, offered
from authproxy.auth.digest import (
    DigestAlgorithm,
    DigestChallenge,
    DigestCredentials,
    compute_ha1,
    compute_userhash,
    request_digest,
    response_auth,
)
from authproxy.auth.errors import AuthHeaderError
from authproxy.auth.errors import ProxyAuthError as ProxyAuthError  # re-exported: its import path before
from authproxy.auth.errors import ProxyError as ProxyError  # re-exported: its import path before
from authproxy.auth.headers import Challenge, build_credentials, parse_auth_params
from authproxy.auth.messages import ProxyRequest, ProxyResponse, Send
from authproxy.auth.roles import ORIGIN, PROXY, Role

#: Rounds of one exchange: cached credentials, a fresh answer, one stale retry, and one spare.
MAX_ROUNDS = 4



# --- choosing what to answer ------------------------------------------------------------------------------


@dataclass
class _Session:
    """A Digest nonce known to work, kept for the next requests (preemptive authentication)."""

    challenge: DigestChallenge
    ha1: str
    nc: int = 0


@dataclass(frozen=True)
class _Sent:
    """What one attempt sent, to check the answer against."""

    header: str
    from_cache: bool
    scheme: str  # "digest" or "basic"
    realm: str | None
    alg: DigestAlgorithm | None = None
    ha1: str | None = None
    nonce: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    qop: str | None = None
    uri: str | None = None


#: The parameters of (Proxy-)Authentication-Info this client reads or checks (RFC 7616 section 3.5).
_INFO_PARAMS = ("rspauth", "nextnonce", "cnonce", "nc", "qop")


class Responder:
    """Answers one peer's challenges for one user: a proxy's 407s (``role=PROXY``, the default) or an
    origin's 401s (``role=ORIGIN``); one instance is shared by every request and connection to that peer (it
    holds the nonce cache and its lock).

    ``random`` returns that many random bytes (pass ``secrets.token_bytes``): it makes the cnonces.
    ``warn`` receives one sentence when something works but deserves a person's attention (Basic over
    cleartext). ``allow_basic_cleartext=False`` refuses to send Basic over a cleartext connection to the peer.
    ``prefer_auth_int`` picks qop=auth-int when both qop values are offered and the body can be hashed.
    ``userhash`` sends H(user:realm) instead of the name when the peer offers it (RFC 7616 section 3.4.4).
    ``accept``, when given, restricts the challenges answered to those it returns True for (like curl's
    ``--proxy-digest``; ``authproxy diagnose`` uses it to try each challenge on its own).
    """

    def __init__(
        self,
        username: str | None,
        password: str | None,
        *,
        random: Callable[[int], bytes],
        warn: Callable[[str], None] | None = None,
        allow_basic_cleartext: bool = True,
        prefer_auth_int: bool = False,
        userhash: bool = True,
        max_rounds: int = MAX_ROUNDS,
        accept: Callable[[Challenge], bool] | None = None,
        role: Role = PROXY,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both a user name and a password, or neither")
        self.username = username
        self._password = password
        self._random = random
        self._warn = warn
        self.allow_basic_cleartext = allow_basic_cleartext
        self.prefer_auth_int = prefer_auth_int
        self.userhash = userhash
        self.max_rounds = max(2, max_rounds)
        self._accept = accept
        self.role = role
        self._peer = f"the {role.name}"  # "the proxy", "the origin": who is named in messages
        self._lock = threading.Lock()
        self._session: _Session | None = None
        self._basic_realm: str | None = None  # set once Basic is known to be what the peer wants
        self._warned_basic = False

    @property
    def in_use(self) -> str | None:
        """What the next request will send unasked: ``"Digest SHA-256"``, ``"Basic"``, or None."""
        with self._lock:
            if self._session is not None:
                return f"Digest {self._session.challenge.algorithm}"
            return "Basic" if self._basic_realm is not None else None

    def __repr__(self) -> str:  # never show the password
        return f"<Responder user={self.username!r}>"

    # -- the flow ---------------------------------------------------------------------------------------------

    def flow(self, request: ProxyRequest) -> Generator[Send, ProxyResponse, ProxyResponse]:
        """The exchange for one request; see the module docstring. Returns the response to use."""
        sent = self._preemptive(request)
        stale_retries = 0
        rounds = 0
        while True:
            response = yield Send(sent.header if sent else None)
            rounds += 1
            if response.status != self.role.status:
                if self.role == PROXY and response.status == ORIGIN.status and request.method.upper() == "CONNECT":
                    raise answered_401(response)
                if sent is not None:
                    self._check_auth_info(sent, response)
                return response

            judged = judge(response, request, role=self.role, username=self.username,
                           basic_allowed=self._basic_allowed(request), accept=self._accept)
            if sent is not None and sent.from_cache:
                # The cached nonce is gone (expired or the peer restarted): forget it, answer afresh.
                self._forget(sent)
            digest_stale = any(o.digest is not None and o.digest.stale for o in judged.options)
            if sent is not None and not sent.from_cache:
                if sent.scheme == "digest" and digest_stale and stale_retries == 0:
                    # RFC 7616 section 3.3: stale means the digest was right and only the nonce was old.
                    stale_retries += 1
                elif sent.scheme == "digest" and digest_stale:
                    raise self._error(
                        response, judged, "stale-loop",
                        f"{self._peer} called a fresh nonce stale twice in a row; its clock or its nonce "
                        "store is likely broken",
                    )
                else:
                    raise self._wrong_credentials(response, judged, sent)
            if rounds >= self.max_rounds:
                raise self._error(response, judged, "too-many-rounds",
                                  f"{self._peer} still answered {self.role.status} after {rounds} attempts; "
                                  "giving up")
            if self.username is None or self._password is None:
                raise self._error(response, judged, "no-credentials",
                                  f"{self._peer} wants credentials ({offered(judged.challenges)}) and none "
                                  "were given")
            if request.body is None and request.method.upper() != "CONNECT":
                raise self._error(
                    response, judged, "body-not-replayable",
                    f"{self._peer} asked for credentials after the request body was sent, and the body is a "
                    "stream that cannot be sent again; pass it as bytes, or make one small request first "
                    "so that the nonce is known and later requests carry credentials from the start",
                )
            option = self._pick(response, judged)
            sent = self._answer(option, request)

    # -- building credentials ---------------------------------------------------------------------------------

    def _preemptive(self, request: ProxyRequest) -> _Sent | None:
        if self.username is None or self._password is None:
            return None
        with self._lock:
            session = self._session
            basic_realm = self._basic_realm
            if session is not None:
                qop = self._choose_qop(session.challenge.qop, request)
                if qop is None and session.challenge.qop:
                    return None  # no usable qop for this body: go without and answer the challenge
                session.nc += 1
                nc = session.nc
        if session is not None:
            return self._digest_credentials(session.challenge, session.ha1, request, qop, nc, from_cache=True)
        if basic_realm is not None and self._basic_allowed(request):
            return _Sent("Basic " + encode_basic(self.username, self._password), True, "basic", basic_realm)
        return None

    def _answer(self, option: Option, request: ProxyRequest) -> _Sent:
        assert self.username is not None and self._password is not None
        dc = option.digest
        if dc is None:
            realm = option.challenge.param("realm")
            if not request.secure:
                self._warn_basic()
            with self._lock:
                self._basic_realm = realm or ""
                self._session = None
            try:
                token = encode_basic(self.username, self._password)
            except AuthHeaderError as exc:
                raise ProxyAuthError(f"cannot send Basic credentials: {exc.message}", reason="no-credentials") \
                    from exc
            return _Sent("Basic " + token, False, "basic", realm)
        alg = dc.alg
        ha1 = compute_ha1(alg.base, self.username, dc.realm, self._password)
        qop = self._choose_qop(dc.qop, request)
        session = _Session(dc, ha1, nc=1)
        with self._lock:
            self._session = session
            self._basic_realm = None
        return self._digest_credentials(dc, ha1, request, qop, 1, from_cache=False)

    def _choose_qop(self, offered: tuple[str, ...], request: ProxyRequest) -> str | None:
        """auth, or auth-int when it is all the peer takes (or preferred) and the body can be hashed."""
        if not offered:
            return None
        can_hash = request.body is not None
        if "auth-int" in offered and can_hash and (self.prefer_auth_int or "auth" not in offered):
            return "auth-int"
        if "auth" in offered:
            return "auth"
        return None

    def _digest_credentials(
        self, dc: DigestChallenge, ha1: str, request: ProxyRequest, qop: str | None, nc_value: int,
        *, from_cache: bool,
    ) -> _Sent:
        assert self.username is not None
        alg = dc.alg
        uri = request.target
        # RFC 7616 section 3.4: cnonce is an opaque quoted string chosen by the client; 128 random bits.
        cnonce = self._random(16).hex() if (qop is not None or alg.sess) else None
        nc = f"{nc_value:08x}" if qop is not None else None
        body_hash = alg.hexdigest(request.body) if qop == "auth-int" and request.body is not None else None
        response = request_digest(alg, ha1=ha1, nonce=dc.nonce, nc=nc, cnonce=cnonce, qop=qop,
                                  method=request.method.upper(), uri=uri, body_hash=body_hash)
        use_hash = dc.userhash and self.userhash
        creds = DigestCredentials(
            username=compute_userhash(alg, self.username, dc.realm) if use_hash else self.username,
            userhash=use_hash, realm=dc.realm, nonce=dc.nonce, uri=uri, response=response, algorithm=alg,
            cnonce=cnonce, nc=nc, qop=qop, opaque=dc.opaque,
        )
        header = build_credentials(creds.to_credentials())
        return _Sent(header, from_cache, "digest", dc.realm, alg, ha1, dc.nonce, nc, cnonce, qop, uri)

    def _pick(self, response: ProxyResponse, judged: Judged) -> Option:
        if judged.options:
            return judged.options[0]
        if not judged.challenges:
            field_name = self.role.challenge_field
            what = (f"its {field_name} fields could not be parsed" if judged.unreadable
                    else f"it sent no {field_name} field")
            raise self._error(response, judged, "malformed-challenge",
                              f"{self._peer} answered {self.role.status} but {what}, so there is nothing to answer")
        if judged.basic_refused and all(c.scheme_key == "basic" for c in judged.challenges):
            raise self._error(response, judged, "basic-refused",
                              f"{self._peer} offers only Basic, and sending the password in clear text to an "
                              f"http:// {self.role.name} was refused; use an https:// {self.role.name} URL or "
                              "allow Basic over cleartext")
        if judged.auth_int_declined:
            raise self._error(response, judged, "body-not-replayable",
                              f"{self._peer} accepts only Digest qop=auth-int, which covers the request body, and "
                              "this body is a stream that cannot be read twice; pass the body as bytes")
        raise self._error(response, judged, "no-usable-challenge",
                          f"{self._peer} offers only {offered(judged.challenges)}; this client answers Digest "
                          "SHA-512-256, SHA-256 and MD5 (each also -sess) and Basic; skipped: "
                          + "; ".join(judged.skipped))

    def _basic_allowed(self, request: ProxyRequest) -> bool:
        return request.secure or self.allow_basic_cleartext

    def _warn_basic(self) -> None:
        if self._warn is not None and not self._warned_basic:
            self._warned_basic = True
            name = self.role.name
            self._warn(f"{self._peer} is answered with Basic over a cleartext connection: the password crosses "
                       f"the network readable by anyone on the path (use an https:// {name} URL, or a Digest "
                       f"{name})")

    def _forget(self, sent: _Sent) -> None:
        with self._lock:
            if sent.scheme == "basic":
                self._basic_realm = None
            elif self._session is not None and self._session.challenge.nonce == sent.nonce:
                self._session = None

    # -- after success ----------------------------------------------------------------------------------------

    def _check_auth_info(self, sent: _Sent, response: ProxyResponse) -> None:
        """RFC 7616 section 3.5: verify rspauth (qop=auth) and take nextnonce from the role's info field.

        A field that cannot be trusted is a failure, never skipped: more than one field line, a value that does
        not parse, or a parameter named twice (RFC 9110 section 11.2's rule for auth-params; which of two
        rspauth or nextnonce values would be the peer's?). Skipping it would let whoever added the second
        field line (another hop relaying an origin's field, RFC 9110 section 11.7.3) go unchecked.
        """
        if sent.scheme != "digest":
            return
        values = response.get_all(self.role.info_field)
        if not values:
            return
        if len(values) > 1:
            raise self._untrusted_info(response, f"it came as {len(values)} field lines, where {self._peer} sends "
                                                 "one (a second is most likely another hop's)")
        try:
            params = dict(parse_auth_params(values[0]))
        except AuthHeaderError as exc:
            raise self._untrusted_info(response, f"it does not parse: {exc.message}") from exc
        for name in _INFO_PARAMS:
            # RFC 8187 section 3.2: "name*" is another spelling of "name", one that RFC 7616 never uses for these:
            # which of the two is the peer's? (And checking only "rspauth" would let "rspauth*" pass unchecked.)
            if name + "*" in params:
                raise self._untrusted_info(response, f"it names {name} in the extended form {name}*, which "
                                                     f"{self._peer} does not send")
        assert sent.alg is not None and sent.ha1 is not None and sent.nonce is not None
        rspauth = params.get("rspauth")
        # For auth-int, rspauth covers the response body, which the caller has not read yet: not checked here.
        if rspauth is not None and sent.qop != "auth-int":
            # RFC 7616 section 3.5: the cnonce, nc and qop echoed are the request's; rspauth is computed from them.
            echoed_ok = params.get("cnonce", sent.cnonce) == sent.cnonce and (
                params.get("nc") is None or sent.nc is None or params["nc"].lower() == sent.nc
            ) and (params.get("qop") is None or params["qop"].lower() == (sent.qop or ""))
            expected = response_auth(sent.alg, ha1=sent.ha1, nonce=sent.nonce, nc=sent.nc, cnonce=sent.cnonce,
                                     qop=sent.qop, uri=sent.uri or "")
            if not echoed_ok or not hmac.compare_digest(expected.encode(), rspauth.lower().encode()):
                with self._lock:
                    self._session = None
                raise ProxyAuthError(
                    f"{self._peer}'s rspauth ({self.role.info_field}) does not match: whoever answered does not "
                    f"know the password, so the response cannot be trusted to come from the real {self.role.name}",
                    status=response.status, headers=response.headers, reason="rspauth-mismatch",
                    hop=self.role.name,
                )
        nextnonce = params.get("nextnonce")
        if nextnonce:
            with self._lock:
                session = self._session
                if session is not None and session.challenge.nonce == sent.nonce:
                    c = session.challenge
                    fresh = DigestChallenge(c.realm, nextnonce, c.opaque, c.algorithm, c.qop, False, c.userhash,
                                            c.charset_utf8)
                    self._session = _Session(fresh, session.ha1, nc=0)

    # -- errors -----------------------------------------------------------------------------------------------

    def _untrusted_info(self, response: ProxyResponse, why: str) -> ProxyAuthError:
        with self._lock:
            self._session = None  # what the field said about the nonce is in doubt: start afresh next time
        field_name = self.role.info_field
        return ProxyAuthError(
            f"{self._peer}'s {field_name} field cannot be trusted: {why}; neither its rspauth nor its nextnonce "
            f"can be checked, so the response cannot be trusted to come from the real {self.role.name}",
            status=response.status, headers=response.headers, reason="untrusted-auth-info", hop=self.role.name,
        )

    def _error(self, response: ProxyResponse, judged: Judged, reason: str, message: str) -> ProxyAuthError:
        return ProxyAuthError(message, status=response.status, headers=response.headers,
                              body_text=response.body_text, challenges=judged.challenges, reason=reason,
                              hop=self.role.name)

    def _wrong_credentials(self, response: ProxyResponse, judged: Judged, sent: _Sent) -> ProxyAuthError:
        with self._lock:
            self._session = None
            self._basic_realm = None
        how = "Basic" if sent.scheme == "basic" else f"Digest {sent.alg.name if sent.alg else ''}".rstrip()
        realm = f' in realm "{sent.realm}"' if sent.realm is not None else ""
        return self._error(
            response, judged, "wrong-credentials",
            f"{self._peer} rejected the password for {self.username}{realm} ({how}): it answered with a new "
            "challenge, not a stale one; check the user name, the password and that the user exists in that "
            "realm",
        )


Flow = Generator[Send, ProxyResponse, ProxyResponse]
