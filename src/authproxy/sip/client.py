"""Answering a SIP 401 or 407 from Python with the auth core's responder (RFC 3261 sections 8.1.3.5, 22.2
and 22.3), sans-IO.

The :class:`~authproxy.auth.responder.Responder` serves SIP unchanged: its request is the SIP method and the
Request-URI (the Digest uri, section 22.4) and the body (for auth-int), its response a status and fields. What
SIP adds is done here:

- a request may meet a proxy's 407 and then the registrar's 401, so there is one responder per role, and each
  attempt carries the credentials of both (section 22.3: every proxy's and the UAS's, each in its field);
- a retried request is a new transaction: same Call-ID, From and To, CSeq one higher, a new Via branch
  (sections 8.1.3.5 and 22.2);
- Basic is never sent over a transport that is not TLS (section 22.1: the responders refuse it in cleartext).

:meth:`SipAuthenticator.exchange` is a generator: it yields the request to send, the caller sends it and
sends back the final response; it yields the retry or returns the response to use. Failures raise
:class:`~authproxy.auth.errors.ProxyAuthError` naming the role that refused (``hop`` "proxy" or "origin").
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from dataclasses import replace

from authproxy.auth.errors import ProxyAuthError
from authproxy.auth.flow import drive as drive  # re-exported: run an Exchange with a synchronous send
from authproxy.auth.headers import parse_challenges
from authproxy.auth.messages import ProxyRequest, ProxyResponse, Send
from authproxy.auth.responder import MAX_ROUNDS, Responder
from authproxy.auth.roles import ORIGIN, PROXY, Role, role_for_status
from authproxy.sip.message import SipRequest, SipResponse, replace_top_via

#: Section 8.1.1.7: every branch a client of RFC 3261 makes starts with this cookie.
BRANCH_COOKIE = "z9hG4bK"
_ROLES: tuple[Role, ...] = (PROXY, ORIGIN)

Exchange = Generator[SipRequest, SipResponse, SipResponse]


def new_branch(random: Callable[[int], bytes]) -> str:
    """A fresh Via branch (section 8.1.1.7): the magic cookie and 64 random bits."""
    return BRANCH_COOKIE + random(8).hex()


def retry_request(request: SipRequest, *, cseq: int, branch: str,
                  credentials: Iterable[tuple[Role, str | None]]) -> SipRequest:
    """``request`` as a new transaction carrying ``credentials``: CSeq ``cseq``, the top Via's branch replaced,
    and every Authorization and Proxy-Authorization line replaced by the ones given (section 22.2)."""
    drop = {role.credentials_field.lower() for role in _ROLES}
    top = request.vias[0]
    params: tuple[tuple[str, str | None], ...] = tuple(
        (k, branch if k == "branch" else v) for k, v in top.params)
    if top.branch is None:
        params = (*params, ("branch", branch))
    request = replace_top_via(request, replace(top, params=params))
    headers: list[tuple[str, str]] = []
    for name, value in request.headers:
        if name.lower() in drop:
            continue
        if name == "CSeq":
            value = f"{cseq} {request.method}"
        headers.append((name, value))
    for role, answer in credentials:
        if answer is not None:
            headers.append((role.credentials_field, answer))
    # Content-Length stays last, where every builder of this package puts it.
    headers.sort(key=lambda h: h[0] == "Content-Length")
    return request.replace_headers(headers)


class SipAuthenticator:
    """Answers the 401s and 407s of one user's requests; one instance serves every request to the same servers
    (it keeps each hop's nonce, and counts nc per nonce, so later requests carry credentials from the start).

    A hop is a role and a realm: every proxy on the path may challenge (407, each in its own realm) and so may
    the registrar or UAS (401), and each gets the answer to its own challenge in its own field line (RFC 3261
    section 22.3), one :class:`~authproxy.auth.responder.Responder` per hop.

    ``random`` gives random bytes (``secrets.token_bytes``): cnonces and branches. ``secure`` tells whether the
    transport is TLS, the only one Basic may be sent over.
    """

    def __init__(self, username: str, password: str, *, random: Callable[[int], bytes], userhash: bool = True,
                 prefer_auth_int: bool = False, max_rounds: int = MAX_ROUNDS) -> None:
        self._random = random
        self.max_rounds = max_rounds
        self._username = username

        def new(role: Role) -> Responder:
            return Responder(username, password, random=random, role=role, allow_basic_cleartext=False,
                             userhash=userhash, prefer_auth_int=prefer_auth_int, max_rounds=max_rounds)

        self._new = new
        self._responders: dict[tuple[Role, str], Responder] = {}

    def __repr__(self) -> str:  # never show the password
        return f"<SipAuthenticator user={self._username!r}>"

    def exchange(self, request: SipRequest, *, secure: bool = False) -> Exchange:
        """Send ``request`` (with credentials already known), answer every 401/407, return the final response.

        Each hop's responder flow sees every response it should: the challenged hop's answers its challenge;
        for the others the request went through (they see the final response, or a pass when another hop
        challenged), so their flows end and start again for the retry, which takes a fresh nc from the cached
        nonce: no (nonce, nc) is ever sent twice.
        """
        target = ProxyRequest(request.method, request.uri, request.body, secure)
        flows: dict[tuple[Role, str], Generator[Send, ProxyResponse, ProxyResponse]] = {}
        sends: dict[tuple[Role, str], str | None] = {}

        def start(hop: tuple[Role, str]) -> None:
            if hop not in self._responders:
                self._responders[hop] = self._new(hop[0])
            flows[hop] = self._responders[hop].flow(target)
            sends[hop] = next(flows[hop]).authorization

        for hop in self._responders:
            start(hop)
        attempt = retry_request(request, cseq=request.cseq.number, branch=self._branch(request),
                                credentials=self._credentials(sends))
        passed = ProxyResponse(200)
        for _ in range(2 * self.max_rounds):
            response = yield attempt
            answer = ProxyResponse(response.status, response.headers, response.body)
            role = role_for_status(response.status)
            challenged = set()
            if role is not None:
                challenged = {(role, c.param("realm") or "")
                              for c in parse_challenges(response.get_all(role.challenge_field))}
            for hop in challenged - flows.keys():
                start(hop)
            for hop in list(flows):
                try:
                    sent = flows[hop].send(answer if role is None or hop in challenged else passed)
                    sends[hop] = sent.authorization
                except StopIteration:
                    if role is not None:
                        start(hop)
            if role is None:
                return response
            attempt = retry_request(request, cseq=attempt.cseq.number + 1, branch=new_branch(self._random),
                                    credentials=self._credentials(sends))
        raise ProxyAuthError(f"still challenged after {2 * self.max_rounds} attempts; giving up",
                             reason="too-many-rounds", hop=None)

    @staticmethod
    def _credentials(sends: dict[tuple[Role, str], str | None]) -> list[tuple[Role, str | None]]:
        # Proxies' lines first, each realm's in the order the hops challenged; the registrar's after them.
        return sorted(((hop[0], value) for hop, value in sends.items()), key=lambda c: c[0] is not PROXY)

    def _branch(self, request: SipRequest) -> str:
        branch = request.vias[0].branch
        return branch if branch is not None else new_branch(self._random)
