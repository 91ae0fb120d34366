"""The authenticating SIP proxy, sans-IO: a message and where it came from go in, what to send where comes out
(RFC 3261 sections 16 and 22; RFC 3581). No socket, no clock, no randomness of its own: the asyncio driver
(:mod:`authproxy.sip.serve`) does the IO, and the tests drive it in memory.

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
import hmac
import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from authproxy.auth.driver import NonceCounts
from authproxy.auth.errors import AuthProxyError, ConfigError
from authproxy.auth.outcomes import Outcome
from authproxy.auth.roles import PROXY
from authproxy.auth.store import UserStore
from authproxy.auth.verifier import Reject, Verifier
from authproxy.engine.throttle import FailureThrottle, retry_after
from authproxy.sip.addresses import NameAddr
from authproxy.sip.challenge import NEVER_CHALLENGED, challenge_response, offers_for
from authproxy.sip.fields import CONTROL_RE, SipError, canonical_name, split_list
from authproxy.sip.log import ANSWERED, DROPPED, FORWARDED, Address, SipRecord
from authproxy.sip.message import (
    SipRequest,
    SipResponse,
    replace_top_via,
    response_to,
)
from authproxy.sip.parse import DEFAULT_LIMITS, Limits, parse_datagram
from authproxy.sip.route import DIALOG_METHODS, Addresses, FlowTokens, SipUri, is_ip, normal_host, route_uri, uri_text
from authproxy.sip.verify import authenticate, is_own_field
from authproxy.sip.via import Via, remember_via

#: Section 17.1.1.1 T1, and 64*T1: how long a transaction is remembered (Timer F / Timer J).
T1 = 0.5
TRANSACTION_LIFETIME = 64 * T1
#: Section 8.1.1.7: the magic cookie; ``ap`` marks a branch this proxy made.
BRANCH_PREFIX = "z9hG4bKap"
TRANSPORTS = ("udp", "tcp", "tls")
_REASONS = {400: "Bad Request", 404: "Not Found", 413: "Request Entity Too Large", 416: "Unsupported URI Scheme",
            420: "Bad Extension", 482: "Loop Detected", 483: "Too Many Hops", 503: "Service Unavailable",
            505: "Version Not Supported", 513: "Message Too Large"}
#: A branch: the prefix, 24 hex digits naming the transaction, 8 of loop detection (section 16.6 step 8), and 8
#: more binding it to the address it was sent to when that is not the next hop.
_TXN, _LOOP, _DEST = len(BRANCH_PREFIX) + 24, len(BRANCH_PREFIX) + 32, len(BRANCH_PREFIX) + 40
_ANSWER_FIELDS = frozenset({"via", "from", "to", "call-id", "cseq"})
#: The field this proxy's credentials come in (section 22.3), as the parser spells it.
_OWN_FIELD = canonical_name(PROXY.credentials_field)


@dataclass(frozen=True, slots=True)
class NextHop:
    """Where authenticated requests go: ``sip:HOST:PORT;transport=udp|tcp`` (RFC 3261 section 19.1.1)."""

    host: str
    port: int
    transport: str = "udp"

    @classmethod
    def parse(cls, value: str, *, key: str = "next_hop") -> NextHop:
        def bad(why: str) -> ConfigError:
            return ConfigError(f"{key}: {why}; expected sip:HOST:PORT;transport=udp|tcp, got {value!r}")

        if not value.lower().startswith("sip:"):
            raise bad("not a sip: URI")
        hostport, *params = value[4:].split(";")
        transport = "udp"
        for param in params:
            name, _, val = param.partition("=")
            if name.lower() != "transport" or val.lower() not in ("udp", "tcp"):
                raise bad("the only parameter is transport=udp or transport=tcp")
            transport = val.lower()
        host, sep, port = hostport.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or "@" in host or not port.isdigit() or not 0 < int(port) < 65536:
            raise bad("HOST:PORT is needed")
        return cls(host, int(port), transport)

    @property
    def address(self) -> Address:
        return (self.host, self.port)


class Send(NamedTuple):
    """Send ``data`` to ``to`` over ``transport`` (for a stream: the connection with that peer, else a new one).
    A named tuple: one or two are made per message."""

    data: bytes
    to: Address
    transport: str


Action = Send | SipRecord


class _Route(NamedTuple):
    """Where a request goes and what it carries there (sections 16.4-16.6): the Request-URI and Route values
    as forwarded (``routes`` None: the Route lines as they came), the address and transport, and the loop
    detection part of the branch; or, in ``refused``, the status and reason it can go nowhere."""

    uri: str
    routes: tuple[str, ...] | None
    to: Address
    transport: str
    loop: str
    refused: tuple[int, str] | None = None


@dataclass(slots=True)
class _Transaction:
    fingerprint: bytes  # the request's bytes, hashed: a retransmission is the same bytes again
    source: Address
    transport: str
    expires: float
    response: bytes | None  # what the proxy answered itself; None when the request was forwarded
    branch: str | None  # the Via branch the forwarded request carries


class SipProxy:
    """The proxy's decisions. ``local`` is this proxy's address per transport as it sends to the next hop (its
    Via sent-by there); ``public`` the address per transport its clients reach (its listeners; default
    ``local``), named in its Via towards a client and in its Record-Route; ``aliases`` more addresses that name
    it (every listener's). ``random`` gives random bytes (nonces, and the key behind branches, To tags and
    flow tokens unless ``key`` is given: the workers of one proxy share theirs).

    ``record_route`` adds this proxy's Record-Route to dialog-creating requests (section 16.6 step 4);
    ``trusted`` (IP addresses or networks) and the next hop's own address are peers whose requests are not
    challenged and go where their Route or Request-URI says (section 16.5); every other source is challenged
    and its requests go to the next hop."""

    def __init__(self, verifier: Verifier, store: UserStore, counters: NonceCounts, *, next_hop: NextHop,
                 local: dict[str, Address], random: Callable[[int], bytes], key: bytes | None = None,
                 name: str = "authproxy", limits: Limits = DEFAULT_LIMITS, max_transactions: int = 20_000,
                 max_transactions_per_source: int = 2_000, throttle: FailureThrottle | None = None,
                 public: dict[str, Address] | None = None, aliases: Iterable[tuple[str, int | None]] = (),
                 record_route: bool = True, trusted: Sequence[str] = (), path: bool = True) -> None:
        if verifier.role is not PROXY:
            raise ConfigError("a SIP proxy verifies in the proxy role (407, Proxy-Authorization)")
        if next_hop.transport not in local:
            raise ConfigError(f"next_hop: no {next_hop.transport} listener to send from and receive answers on")
        self.verifier, self.store, self.counters = verifier, store, counters
        self.next_hop, self.local, self.random, self.name, self.limits = next_hop, local, random, name, limits
        self.max_transactions = max_transactions
        self.max_per_source = max_transactions_per_source
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
        self._flows = FlowTokens(self._key)
        self._keyed: dict[int, hashlib.blake2b] = {}  # keyed BLAKE2b states by digest size (_mac)
        self._transactions: OrderedDict[tuple[str, ...], _Transaction] = OrderedDict()
        self._by_branch: dict[str, tuple[str, ...]] = {}
        self._per_source: dict[str, int] = {}

    def __len__(self) -> int:
        """How many transactions are remembered."""
        return len(self._transactions)

    # -- in -------------------------------------------------------------------------------------------------

    def datagram(self, data: bytes, source: Address, transport: str, now: float) -> list[Action]:
        """One UDP datagram, or one message a stream framed (its bytes)."""
        try:
            message = parse_datagram(data, self.limits)
        except SipError as exc:
            return self.malformed(data, exc, source, transport, now)
        if isinstance(message, SipResponse):
            return self._response(message, source, transport, now)
        return self._request(message, data, source, transport, now)

    def malformed(self, data: bytes, error: SipError, source: Address, transport: str,
                  now: float) -> list[Action]:
        """Bytes that do not parse: a 400 (or the parser's status hint) when the fields a response copies can
        be found as they came, else dropped (section 16.3 step 1; never a response to a response or an ACK)."""
        head = data.split(b"\r\n\r\n", 1)[0].lstrip(b"\r\n").split(b"\r\n")
        start = head[0].split(b" ")
        answer = self._bad_request_bytes(head, error) if start[0] not in (b"SIP/2.0", b"ACK") else None
        if answer is None:
            return [SipRecord(now, source, transport, DROPPED, None, None, None, None, Outcome.BAD_REQUEST,
                              reason=f"malformed message: {error.message}")]
        method = start[0].decode("ascii", "replace")
        return [Send(answer, source, transport),
                SipRecord(now, source, transport, ANSWERED, int(answer[8:11]), method, None, None,
                          Outcome.BAD_REQUEST, reason=error.message)]

    def expire(self, now: float) -> None:
        """Forget transactions older than 64*T1 (the table is in arrival order, all with the same lifetime)."""
        while self._transactions:
            key, entry = next(iter(self._transactions.items()))
            if entry.expires > now:
                return
            self._forget(key)

    # -- requests -------------------------------------------------------------------------------------------

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
            self._remember(record, _Transaction(record[1], source, transport, now + TRANSACTION_LIFETIME, None,
                                                branch))
        return [send, SipRecord(now, source, transport, FORWARDED, None, request.method, request.uri, user,
                                Outcome.OK if user is not None else Outcome.NONE, route.to, request.call_id)]

    # -- routing (sections 16.3 step 4, 16.4-16.6) ----------------------------------------------------------

    def _trusts(self, source: Address) -> bool:
        """Whether ``source`` is the next hop (its address and port: where its answers come from) or in the
        ``trusted`` networks: a peer whose requests are not challenged."""
        if source == self.next_hop.address:
            return True
        if not self.trusted:
            return False
        try:
            address = ipaddress.ip_address(source[0])
        except ValueError:
            return False
        return any(address in net for net in self.trusted)

    def _route(self, request: SipRequest, trusted: bool) -> _Route:
        """Where ``request`` goes, or why it cannot go anywhere (SipError: a malformed Route).

        Section 16.4 first: a Request-URI naming this proxy (its Record-Route URI, put there by a strict router)
        is replaced by the last Route value, which goes; then every Route value naming this proxy at the top
        goes (two when it record-routed twice, RFC 5658). A flow token in one of them names the client flow the
        dialog came from. Then (sections 16.5, 16.6 steps 6-7) a request from an untrusted source (a client)
        goes to the next hop, whatever Route is left: this is an outbound proxy with one fixed next hop, and
        the route set is the next hop's to follow. A request from a trusted peer goes to the flow its Route
        named, else to the first Route value left (a strict router there: it becomes the Request-URI, the
        Request-URI the last Route value), else to the Request-URI: an IP address (no RFC 3263 lookups here),
        never this proxy."""
        uri = request.uri
        lines = request.get_all("Route")  # most requests have none: no list split then
        routes = [element for line in lines for element in split_list(line)] if lines else []
        changed = False
        flow = None
        if routes:
            target = SipUri.parse(uri)
            # Only what this proxy record-routes (its address, ``lr``, no user or its flow token) counts: a
            # Request-URI that merely names its address (sipsak's sip:alice@proxy) is a target like any other.
            if target is not None and target.lr and self.own.names(target) and (
                    target.user is None or (flow := self._flows.read(target.user)) is not None):
                uri, routes, changed = NameAddr.parse(routes[-1]).uri, routes[:-1], True
            while routes:
                first = route_uri(routes[0])
                if first is None or not self.own.names(first):
                    break
                flow = flow or self._flows.read(first.user)
                routes, changed = routes[1:], True
        hop = self.next_hop
        to, transport = hop.address, hop.transport
        refused = None
        if trusted and flow is not None:
            transport, to = flow
        elif trusted:
            if routes:
                target = route_uri(routes[0])
                if target is not None and not target.lr:  # section 16.6 step 6: the next element routes strictly
                    routes, uri, changed = [*routes[1:], f"<{uri}>"], NameAddr.parse(routes[0]).uri, True
            else:
                target = SipUri.parse(uri)
            if target is None:
                refused = 416, "the next hop is not a sip: or sips: URI"
            elif not is_ip(target.host):
                refused = 404, "the request names a host by name; this proxy sends to IP addresses only"
            elif self.own.names(target):
                refused = 404, "the request names this proxy, which serves no user itself"
            else:
                to, transport = target.address, target.transport
                if transport not in self.public and (transport, to) != (hop.transport, hop.address):
                    refused = 503, f"no {transport} listener to send from"
        # Section 16.6 step 8: the part of the branch a loop would repeat and a spiral would not.
        loop = self._mac("\0".join((uri, *routes, request.call_id, str(request.cseq.number),
                                    request.from_.tag or "", request.to.tag or "")), 4)
        return _Route(uri, tuple(routes) if changed else None, to, transport, loop, refused)

    def _looped(self, request: SipRequest, loop: str) -> bool:
        """Section 16.3 step 4: a Via this proxy put there whose branch has the loop part this request would
        get now (same Request-URI, Route set, Call-ID, CSeq number and tags) is a loop; a different one is a
        spiral (the request came back changed, as a forwarding service does), which goes on."""
        for via in request.vias:
            branch = via.branch
            if (branch is not None and branch[_TXN:_LOOP] == loop and branch.startswith(BRANCH_PREFIX)
                    and (via.host.strip("[]").lower(), via.port) in self._via_sent_by):
                return True
        return False

    def _record_route(self, request: SipRequest, source: Address, transport: str, route: _Route,
                      trusted: bool) -> list[str]:
        """This proxy's Record-Route values for ``request`` (section 16.6 step 4), topmost first: the URI the
        far side reaches it at, and when the client side is another transport, a second one for that side
        (RFC 5658 section 5). Both name listeners (``public``), never a worker's own next-hop port: a dialog
        outlives a worker and a restart, and a listener's port is the same after either. For a client's request
        both carry its flow token, so the far side's requests in the dialog come back to that client's flow."""
        if not self.record_route or request.method not in DIALOG_METHODS or request.to.tag is not None:
            return []
        out = self.public.get(route.transport) or self.local[route.transport]
        token = None if trusted or not is_ip(source[0]) else self._flows.make(transport, source)
        values = [f"<{uri_text(route.transport, out, token)}>"]
        inbound = self.public.get(transport)
        if inbound is not None and (transport, inbound) != (route.transport, out):
            values.append(f"<{uri_text(transport, inbound, token)}>")
        return values

    def _path(self, request: SipRequest, source: Address, transport: str, route: _Route, trusted: bool) -> list[str]:
        """This proxy's Path value for a client's REGISTER (RFC 3327 section 5.2, as kamailio's add_path): the
        registrar sends the calls for that contact with it as their Route, so they come through this proxy,
        and its flow token takes them to the client's flow (its NAT binding, its TCP or TLS connection)."""
        if request.method != "REGISTER" or not self.path or trusted or not is_ip(source[0]):
            return []
        out = self.public.get(route.transport) or self.local[route.transport]
        return [f"<{uri_text(route.transport, out, self._flows.make(transport, source))}>"]

    def _forward_send(self, request: SipRequest, source: Address, transport: str, route: _Route,
                      trusted: bool) -> tuple[Send, str]:
        """The request as it goes on (section 16.6 steps 2-8, 16.11): a pure function of the request, its source
        and its route, so a retransmission is forwarded as the first copy was."""
        top = request.vias[0]
        # The transaction part: the client's top Via line (its branch names its transaction) and the loop part,
        # which is a MAC of the Request-URI, Route set, Call-ID, CSeq number and tags: a CANCEL, and a
        # retransmission, get their INVITE's branch; a 2xx's ACK (another branch) another one.
        loop = route.loop
        branch = f"{BRANCH_PREFIX}{self._mac(request.get_all('Via')[0] + chr(0) + loop, 12)}{loop}"
        hop = self.next_hop
        if (route.transport, route.to) == (hop.transport, hop.address):
            via = self._via
        else:  # to a client: the branch names its address too, so only its answers come back through here
            via = self._public_via[route.transport]
            branch += self._mac(f"{branch}\0{normal_host(route.to[0])}", 4)
        max_forwards = request.max_forwards
        realm, verifier = self.verifier.policy.realm, self.verifier
        # One pass over the fields, straight to the wire form (every field is the parsed request's, checked when
        # parsed, or made here): this proxy's Via on top (the branch: 'z9hG4bKap' and hex, a token), its
        # Record-Route, the first Via value stamped with received/rport, the Route set as routing left it, this
        # proxy's credentials dropped, Max-Forwards decremented.
        own = f"{via};branch={branch}"  # str(via.with_branch(branch)): no other parameter
        stamped_via = top.with_received(source[0], source[1])
        stamped_text = str(stamped_via)
        # Both come back in the response (section 16.7): parsed then by a dict lookup.
        remember_via(own, via.with_branch(branch))
        remember_via(stamped_text, stamped_via)
        stamped: str | None = stamped_text
        start = request.start_line() if route.uri == request.uri else f"{request.method} {route.uri} SIP/2.0"
        lines = [start, f"Via: {own}"]
        lines += [f"Record-Route: {value}" for value in self._record_route(request, source, transport, route,
                                                                           trusted)]
        lines += [f"Path: {value}" for value in self._path(request, source, transport, route, trusted)]
        routes = route.routes
        length_at = -1
        for name, value in request.headers:
            if name == "Route" and routes is not None:
                if routes:
                    lines.append(f"Route: {', '.join(routes)}")
                    routes = ()
                continue
            if name == "Via" and stamped is not None:
                value = stamped if "," not in value else ", ".join([stamped, *split_list(value)[1:]])
                stamped = None
            elif name == _OWN_FIELD and is_own_field(value, realm, verifier):
                continue  # section 22.3: this proxy's credentials stop here; other realms' go on
            elif name == "Max-Forwards" and max_forwards is not None:
                value = str(max_forwards - 1)
            elif name == "Content-Length" and length_at < 0:
                length_at = len(lines)
            lines.append(f"{name}: {value}")
        if max_forwards is None:  # section 16.6 step 3; before Content-Length, which stays last
            lines.insert(length_at if length_at >= 0 else len(lines), "Max-Forwards: 70")
        lines.append("\r\n")
        return Send("\r\n".join(lines).encode("utf-8") + request.body, route.to, route.transport), branch

    def _mac(self, material: str, size: int) -> str:
        """``size`` bytes of a MAC of ``material`` under this proxy's key, in hex: keyed BLAKE2b (RFC 7693
        section 2.5: a MAC on its own, one pass where HMAC-SHA-256 takes four compressions). The keyed state is
        made once per size and copied: the key's block is not compressed again for every MAC."""
        keyed = self._keyed.get(size)
        if keyed is None:
            keyed = self._keyed[size] = hashlib.blake2b(key=self._key, digest_size=size)
        mac = keyed.copy()
        mac.update(material.encode("utf-8"))
        return mac.hexdigest()

    def _challenge(self, request: SipRequest, result: Reject, source: Address, transport: str, now: float,
                   record: tuple[tuple[str, ...], bytes] | None) -> list[Action]:
        stamped = replace_top_via(request, request.vias[0].with_received(source[0], source[1]))
        offers = offers_for(self.verifier, now=now, rand=self.random(16), transport=transport,
                            stale=result.stale)
        warning = ("Warning", self._warning(result.outcome.client_text(PROXY)))
        response = challenge_response(stamped, PROXY, offers, to_tag=self._to_tag(request), transport=transport,
                                      extra_headers=[warning])
        return self._sent(request, response.to_bytes(), source, transport, now, result.outcome, result.user,
                          record)

    def _locked_out(self, request: SipRequest, source: Address, transport: str, now: float,
                    record: tuple[tuple[str, ...], bytes] | None, user: str | None, wait: float,
                    why: str) -> list[Action]:
        """The sign-in throttle's refusal: HTTP's 429 has no SIP equivalent (SIP's 429 is Provide Referrer
        Identity, RFC 3892), so 503 with Retry-After (section 21.5.4), as kamailio's ratelimit module answers: a
        client does not send to this server again for that long, and may fail over to another."""
        seconds = retry_after(wait)
        return self._answer(request, source, transport, now, 503, Outcome.THROTTLED, record,
                            f"{why}; try again in {seconds} s", [("Retry-After", seconds)], user=user)

    def _answer(self, request: SipRequest, source: Address, transport: str, now: float, status: int,
                outcome: Outcome, record: tuple[tuple[str, ...], bytes] | None, why: str,
                extra: Sequence[tuple[str, str]] = (), *, remember: bool = True,
                user: str | None = None) -> list[Action]:
        if request.method == "ACK":  # section 17: an ACK is never answered
            return [SipRecord(now, source, transport, DROPPED, None, request.method, request.uri, None, outcome,
                              call_id=request.call_id, reason=why)]
        stamped = replace_top_via(request, request.vias[0].with_received(source[0], source[1]))
        headers = [*extra, ("Warning", self._warning(why))]
        response = response_to(stamped, status, _REASONS[status], to_tag=self._to_tag(request), headers=headers)
        return self._sent(request, response.to_bytes(), source, transport, now, outcome, user,
                          record if remember else None)

    def _sent(self, request: SipRequest, wire: bytes, source: Address, transport: str, now: float,
              outcome: Outcome, user: str | None, record: tuple[tuple[str, ...], bytes] | None) -> list[Action]:
        if record is not None:
            self._remember(record, _Transaction(record[1], source, transport, now + TRANSACTION_LIFETIME, wire,
                                                None))
        status = int(wire[8:11])
        return [Send(wire, self._reply_to(request.vias[0], source, transport), transport),
                SipRecord(now, source, transport, ANSWERED, status, request.method, request.uri, user, outcome,
                          call_id=request.call_id)]

    def _warning(self, text: str) -> str:
        """A Warning value (section 20.43: 399, miscellaneous), the text kept a plain quoted-string."""
        return f'399 {self.name} "{text.replace(chr(92), "/").replace(chr(34), chr(39))}"'

    def _to_tag(self, request: SipRequest) -> str:
        # Derived, not random: a stateless server answers every copy of a request with the same To tag.
        return self._mac(f"{request.call_id}\0{request.from_.tag or ''}", 8)

    @staticmethod
    def _reply_to(top: Via, source: Address, transport: str) -> Address:
        """Where this proxy's own response goes (section 18.2.2, RFC 3581 section 4): over a stream, back on
        the connection; over UDP, to the source address, at the source port when rport was asked for, else
        at the sent-by port (5060 by default)."""
        if transport != "udp" or top.wants_rport:
            return source
        return (source[0], top.port or 5060)

    # -- the transaction table ------------------------------------------------------------------------------

    def _remember(self, record: tuple[tuple[str, ...], bytes], entry: _Transaction) -> None:
        key = record[0]
        while len(self._transactions) >= self.max_transactions:
            self._forget(next(iter(self._transactions)))
        self._transactions[key] = entry
        self._per_source[entry.source[0]] = self._per_source.get(entry.source[0], 0) + 1
        if entry.branch is not None:
            self._by_branch[entry.branch] = key

    def _forget(self, key: tuple[str, ...]) -> None:
        entry = self._transactions.pop(key)
        host = entry.source[0]
        left = self._per_source[host] - 1
        if left:
            self._per_source[host] = left
        else:
            del self._per_source[host]
        if entry.branch is not None and self._by_branch.get(entry.branch) == key:
            del self._by_branch[entry.branch]

    # -- responses ------------------------------------------------------------------------------------------

    def _response(self, response: SipResponse, source: Address, transport: str, now: float) -> list[Action]:
        vias = response.vias
        top = vias[0]
        hop = self.next_hop
        branch = top.branch or ""
        if source[0] != hop.host and not self._sent_to(branch, source):
            return self._drop(response, source, transport, now, "a response from an address not the next hop")
        if not branch.startswith(BRANCH_PREFIX) or (top.host.strip("[]").lower(), top.port) not in self._via_sent_by:
            return self._drop(response, source, transport, now, "a response whose top Via is not this proxy's")
        if len(vias) < 2:
            return self._drop(response, source, transport, now, "a response with no Via after this proxy's")
        if response.status == 100:
            return []  # section 16.7 step 3: 100 Trying is hop-by-hop
        # This proxy's Via popped (section 16.7 step 3), the rest as parsed: built straight to bytes, one pass.
        lines = [response.start_line()]
        popped = False
        for name, value in response.headers:
            if name == "Via" and not popped:
                popped = True
                rest = split_list(value)[1:] if "," in value else None
                if not rest:
                    continue  # the line held this proxy's Via alone
                value = ", ".join(rest)
            lines.append(f"{name}: {value}")
        lines.append("\r\n")
        onward = "\r\n".join(lines).encode("utf-8") + response.body
        key = self._by_branch.get(branch)
        entry = None if key is None else self._transactions.get(key)
        if entry is not None:
            return [Send(onward, entry.source, entry.transport)]
        via = vias[1]  # section 18.2.2: received (or sent-by), at rport (or the sent-by port)
        to = ((via.received or via.host).strip("[]"), via.rport or via.port or 5060)
        return [Send(onward, to, via.transport.lower())]

    def _sent_to(self, branch: str, source: Address) -> bool:
        """Whether ``branch`` is one this proxy gave a request it sent to ``source``'s address (not the next
        hop's: a client's, on a trusted peer's behalf): a response from anywhere else is not let through."""
        if len(branch) != _DEST or not branch.startswith(BRANCH_PREFIX):
            return False
        expected = self._mac(f"{branch[:_LOOP]}\0{normal_host(source[0])}", 4)
        return hmac.compare_digest(branch[_LOOP:], expected)

    @staticmethod
    def _drop(response: SipResponse, source: Address, transport: str, now: float, why: str) -> list[Action]:
        return [SipRecord(now, source, transport, DROPPED, response.status, None, None, None, Outcome.NONE,
                          reason=why)]

    def _bad_request_bytes(self, head: list[bytes], error: SipError) -> bytes | None:
        """The 400 to an unparsable request: the lines of Via, From, To, Call-ID and CSeq copied as they came
        (section 8.2.6.2), when each is there and is clean text; else None."""
        copied: list[bytes] = []
        for line in head[1:]:
            name = line.split(b":", 1)[0].strip(b" \t").decode("ascii", "replace")
            try:
                key = canonical_name(name).lower()
            except SipError:
                continue
            if key in _ANSWER_FIELDS:
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError:
                    return None
                if CONTROL_RE.search(text) is not None or b":" not in line:
                    return None
                copied.append(line)
        found = {canonical_name(line.split(b":", 1)[0].strip(b" \t").decode()).lower() for line in copied}
        if found != _ANSWER_FIELDS:
            return None
        status = error.status_hint if error.status_hint in _REASONS else 400
        warning = f"Warning: {self._warning(error.message)}".encode()
        answer = b"\r\n".join([f"SIP/2.0 {status} {_REASONS[status]}".encode(), *copied, warning,
                               b"Content-Length: 0", b"", b""])
        try:
            parse_datagram(answer, self.limits)
        except SipError:
            return None  # a copied field is itself what is malformed (a Via we could not route back by)
        return answer

