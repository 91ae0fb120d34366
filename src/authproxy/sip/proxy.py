"""The authenticating SIP proxy, sans-IO: a message and where it came from go in, what to send where comes out
(RFC 3261 sections 16 and 22; RFC 3581). No socket, no clock, no randomness of its own: the asyncio driver
(:mod:`authproxy.sip.serve`) does the IO, and the tests drive it in memory.

``SipProxy`` is split by concern over a chain of bases, each in its own module: the transaction table
(:mod:`authproxy.sip.transactions`) <- routing, trusted peers, loop detection and branches
(:mod:`authproxy.sip.routing`) <- the proxy's own responses (:mod:`authproxy.sip.answers`) <- forwarding
requests and relaying responses (:mod:`authproxy.sip.forward`) <- ``SipProxy`` here: what comes in, and the
order of the checks below. What it gives its driver is :mod:`authproxy.sip.actions`'.

A request (section 16.3, in the order the RFC checks):

1. malformed: 400 (or 413/505/513, the parser's hint) with a ``Warning`` saying why, sent back to where it
   came from; a message too broken to answer (no Via, From, To, Call-ID, CSeq) and any bad ACK are dropped;
2. ``Max-Forwards: 0``: 483 Too Many Hops; a loop (one of this proxy's Vias whose branch has the loop part
   this request would get again): 482; an unknown ``Proxy-Require`` extension: 420 (section 16.3 steps 3-5);
3. authentication (section 22.3), every method but ACK and CANCEL (section 22.1), unless the source is a
   trusted peer (the next hop, the ``trusted`` networks): only the
   ``Proxy-Authorization`` line of this proxy's realm is read (:func:`authproxy.sip.verify.authenticate`,
   the HTTP proxy's verifier in the proxy role); a refusal is a 407 with fresh challenges (``stale=true`` for
   a right answer on an expired nonce), built by :func:`authproxy.sip.challenge.challenge_response`;
4. routing (sections 16.4-16.6, :mod:`authproxy.sip.route`): the Route values naming this proxy removed (and a
   strict router's Request-URI undone); a client's request goes to the next hop, a trusted peer's to the client
   flow its Route's flow token names, else by its Route or Request-URI;
5. forwarding (sections 16.6 and 16.11): ``received``/``rport`` recorded on the top Via (section 18.2.1,
   RFC 3581), this proxy's credentials removed and the other proxies' left, Max-Forwards decremented (70
   added when absent), this proxy's Record-Route added to a dialog-creating request, this proxy's Via added on
   top with a branch derived from the request (so a retransmission, and a CANCEL, get the branch the first
   copy got), sent on.

Replays are the verifier's: a ``(nonce, nc)`` used before, from any address (the nonce-count store), an
answer without qop (no nc), a digest uri that is not the Request-URI. A retransmission is not a replay
(section 17.2.3: same top Via branch and sent-by, Call-ID and CSeq, and here the same bytes): it is matched in
a table of recent transactions (kept 64*T1 = 32 s, bounded in all and per source address) and gets what the
first copy got: the same response again, or the same forwarded request again, without a second verification.

A response (sections 16.7 and 16.11) must come from the next hop (or from the client a request was sent to:
the branch names its address under the proxy's key) and carry this proxy's Via on top: that Via
is popped and the response goes where the next Via (with its ``received``/``rport``) says, or back over the
connection the request came on. 100 Trying is hop-by-hop and goes no further. Anything else is dropped, and
logged.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from authproxy.auth.driver import NonceCounts
from authproxy.auth.errors import AuthProxyError, ConfigError
from authproxy.auth.outcomes import Outcome
from authproxy.auth.roles import PROXY
from authproxy.auth.store import UserStore
from authproxy.auth.verifier import Reject, Verifier
from authproxy.engine.throttle import FailureThrottle
from authproxy.sip.actions import Action, Send
from authproxy.sip.answers import answer_buckets
from authproxy.sip.challenge import NEVER_CHALLENGED
from authproxy.sip.fields import SipError
from authproxy.sip.forward import Forwarding
from authproxy.sip.log import FORWARDED, Address, SipRecord
from authproxy.sip.message import SipRequest, SipResponse
from authproxy.sip.parse import DEFAULT_LIMITS, Limits, parse_datagram
from authproxy.sip.route import Addresses, FlowTokens
from authproxy.sip.routing import NextHop
from authproxy.sip.transactions import TRANSACTION_LIFETIME, Transaction
from authproxy.sip.verify import authenticate
from authproxy.sip.via import Via


class SipProxy(Forwarding):
    """The proxy's decisions. ``local`` is this proxy's address per transport as it sends to the next hop (its
    Via sent-by there); ``public`` the address per transport its clients reach (its listeners; default
    ``local``), named in its Via towards a client and in its Record-Route; ``aliases`` more addresses that name
    it (every listener's). ``random`` gives random bytes (nonces, and the key behind branches, To tags and
    flow tokens unless ``key`` is given: the workers of one proxy share theirs).

    ``record_route`` adds this proxy's Record-Route to dialog-creating requests (section 16.6 step 4);
    ``trusted`` (IP addresses or networks) and the next hop's own address are peers whose requests are not
    challenged and go where their Route or Request-URI says (section 16.5); every other source is challenged
    and its requests go to the next hop. ``answer_rate`` and ``answer_burst`` bound the proxy's own answers over
    UDP to one address (0: no bound; see :mod:`authproxy.sip.answers`). ``worker``: this process's index among
    ``--workers``, written in its flow tokens, so that a request for a client's TCP or TLS connection reaching
    another worker says which one holds it (:class:`authproxy.sip.actions.Send`'s ``owner``)."""


    def __init__(self, verifier: Verifier, store: UserStore, counters: NonceCounts, *, next_hop: NextHop,
                 local: dict[str, Address], random: Callable[[int], bytes], key: bytes | None = None,
                 name: str = "authproxy", limits: Limits = DEFAULT_LIMITS, max_transactions: int = 20_000,
                 max_transactions_per_source: int = 2_000, throttle: FailureThrottle | None = None,
                 public: dict[str, Address] | None = None, aliases: Iterable[tuple[str, int | None]] = (),
                 record_route: bool = True, trusted: Sequence[str] = (), path: bool = True,
                 answer_rate: float = 200.0, answer_burst: int = 400, worker: int | None = None) -> None:
        if verifier.role is not PROXY:
            raise ConfigError("a SIP proxy verifies in the proxy role (407, Proxy-Authorization)")
        if tuple(verifier.schemes) != ("digest",):
            raise ConfigError("schemes: a SIP proxy challenges with Digest only (RFC 3261 section 22.1 deprecates "
                              "Basic; NTLM and Negotiate are not SIP's)")
        if next_hop.transport not in local:
            raise ConfigError(f"next_hop: no {next_hop.transport} listener to send from and receive answers on")
        self.verifier, self.store, self.counters = verifier, store, counters
        self.next_hop, self.local, self.random, self.name, self.limits = next_hop, local, random, name, limits
        self.max_transactions = max_transactions
        self.max_per_source = max_transactions_per_source
        self.answer_rate = answer_buckets(answer_rate, answer_burst)
        #: The HTTP proxy's credential-guessing throttle (per address and per user name); ``now`` is its clock.
        self.throttle = throttle
        self._key = key if key is not None else random(32)
        # This proxy's Via but its branch (section 16.6 step 8), built and checked once: towards the next hop,
        # and towards a client over each transport it listens on.
        self.public = dict(public) if public is not None else dict(local)
        host, port = local[next_hop.transport]
        self._via = Via(next_hop.transport.upper(), f"[{host}]" if ":" in host else host, port)
        self._via_prefix = str(self._via)
        self._public_via = {name: Via(name.upper(), f"[{h}]" if ":" in h else h, p)
                            for name, (h, p) in self.public.items()}
        self._via_sent_by = {(h.lower(), p) for h, p in [*local.values(), *self.public.values()]}
        #: What names this proxy in a Route or Request-URI (section 16.4).
        self.own = Addresses([*local.values(), *self.public.values(), *aliases])
        if next_hop.address in self.own:
            raise ConfigError("next_hop: names this proxy itself (every request would loop)")
        self.record_route = record_route
        self.path = path
        try:
            self.trusted = tuple(ipaddress.ip_network(net, strict=False) for net in trusted)
        except ValueError as exc:
            raise ConfigError(f"trusted: {exc}") from None
        self._flows = FlowTokens(self._key, worker)
        self._keyed: dict[int, hashlib.blake2b] = {}  # keyed BLAKE2b states by digest size (_mac)
        self._transactions: OrderedDict[tuple[str, ...], Transaction] = OrderedDict()
        self._by_branch: dict[str, tuple[str, ...]] = {}
        self._per_source: dict[str, int] = {}

    def datagram(self, data: bytes, source: Address, transport: str, now: float) -> list[Action]:
        """One UDP datagram, or one message a stream framed (its bytes)."""
        try:
            message = parse_datagram(data, self.limits)
        except SipError as exc:
            return self.malformed(data, exc, source, transport, now)
        if isinstance(message, SipResponse):
            return self._response(message, source, transport, now)
        return self._request(message, data, source, transport, now)

    def _request(self, request: SipRequest, data: bytes, source: Address, transport: str,
                 now: float) -> list[Action]:
        self.expire(now)
        top = request.vias[0]
        remembered = request.method != "ACK"  # no response to an ACK; every copy is forwarded (section 16.11)
        key = (top.branch or "", top.host, str(top.port), request.call_id, str(request.cseq))
        fingerprint = hashlib.blake2b(data, digest_size=16).digest()
        if request.method == "ACK" and request.to.tag == self._to_tag(request):
            return []  # the ACK of a non-2xx this proxy sent (a 407 to an INVITE): it ends here (section 17.2.1)
        trusted = self._trusts(source)
        if remembered:
            entry = self._transactions.get(key)
            if entry is not None and entry.fingerprint == fingerprint:
                if entry.response is not None:  # a retransmission: the same answer, no second verification
                    over = self._over_answer_rate(source, transport, now, int(entry.response[8:11]),
                                                  request.method, request.uri, request.call_id)
                    if over is not None:
                        return over
                    return [Send(entry.response, self._reply_to(top, source, transport), transport)]
                route = self._route(request, trusted)  # forwarded before, so routed the same way again
                return [self._forward_send(request, source, transport, route, trusted)[0]]
            if entry is None and not trusted and self._per_source.get(source[0], 0) >= self.max_per_source:
                return self._answer(request, source, transport, now, 503, Outcome.OVER_LIMIT, None,
                                    "too many transactions from this address", [("Retry-After", "5")],
                                    remember=False)
        record = (key, fingerprint) if remembered and key not in self._transactions else None
        max_forwards = request.max_forwards
        if max_forwards == 0:
            return self._answer(request, source, transport, now, 483, Outcome.NONE, record,
                                "Max-Forwards reached 0 (RFC 3261 section 16.3)")
        try:
            route = self._route(request, trusted)
        except SipError as exc:  # a malformed Route value
            return self._answer(request, source, transport, now, 400, Outcome.BAD_REQUEST, record, exc.message)
        if self._looped(request, route.loop):
            return self._answer(request, source, transport, now, 482, Outcome.NONE, record,
                                "this request has been through this proxy before (RFC 3261 section 16.3)")
        if request.values("Proxy-Require"):  # section 16.3 step 5: no extension is supported here
            unsupported = [("Unsupported", value) for value in request.values("Proxy-Require")]
            return self._answer(request, source, transport, now, 420, Outcome.NONE, record,
                                "Proxy-Require names an extension this proxy does not support", unsupported)
        user = None
        if not trusted and request.method not in NEVER_CHALLENGED:
            throttle = self.throttle
            if throttle is not None and (wait := throttle.check(source[0], None, now)) is not None:
                return self._locked_out(request, source, transport, now, record, None, wait,
                                        "too many failed sign-ins from your address")
            try:
                result = authenticate(self.verifier, request, self.store, self.counters, now, transport=transport)
            except AuthProxyError as exc:  # malformed credentials, a digest uri that is not the Request-URI
                return self._answer(request, source, transport, now, 400, Outcome.BAD_REQUEST, record,
                                    exc.message)
            if throttle is not None and result.user is not None:
                wait = throttle.check(source[0], result.user, now)
                if wait is not None:  # locked: the answer must not depend on whether the credentials were right
                    return self._locked_out(request, source, transport, now, record, result.user, wait,
                                            "too many failed sign-ins for this user name")
                if isinstance(result, Reject):
                    if result.outcome.failed:  # never `missing` (the 407 exchange's first step), nor stale
                        throttle.record_failure(source[0], result.user, now)
                else:
                    throttle.record_success(source[0], result.user, now)
            if isinstance(result, Reject):
                return self._challenge(request, result, source, transport, now, record)
            user = result.user
        if route.refused is not None:
            status, why = route.refused
            return self._answer(request, source, transport, now, status, Outcome.NONE, record, why)
        send, branch = self._forward_send(request, source, transport, route, trusted)
        if record is not None:
            self._remember(record, Transaction(record[1], source, transport, now + TRANSACTION_LIFETIME, None,
                                                branch))
        return [send, SipRecord(now, source, transport, FORWARDED, None, request.method, request.uri, user,
                                Outcome.OK if user is not None else Outcome.NONE, route.to, request.call_id)]
