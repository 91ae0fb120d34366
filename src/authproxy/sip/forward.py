"""What the SIP proxy forwards (RFC 3261 sections 16.6, 16.7 and 16.11; RFC 3581): a request as it goes on, a pure
function of the request, its source and its route (``received``/``rport`` on the top Via, this proxy's
credentials removed, Max-Forwards decremented, its Record-Route and Path, its Via on top), and a response relayed
back with this proxy's Via popped, to the source its transaction remembers or where the next Via says.
``Forwarding`` is a base of :class:`authproxy.sip.proxy.SipProxy` (``Transactions`` <- ``Routing`` <- ``Answers``
<- ``Forwarding`` <- ``SipProxy``).
"""

from __future__ import annotations

from authproxy.auth.outcomes import Outcome
from authproxy.auth.roles import PROXY
from authproxy.sip.actions import Action, Send
from authproxy.sip.answers import Answers
from authproxy.sip.fields import SipError, canonical_name
from authproxy.sip.log import ANSWERED, DROPPED, Address, SipRecord, format_address
from authproxy.sip.message import SipRequest, SipResponse, response_to, with_first_value
from authproxy.sip.parse import parse_datagram
from authproxy.sip.route import normal_host
from authproxy.sip.routing import BRANCH_PREFIX, Route
from authproxy.sip.verify import is_own_field
from authproxy.sip.via import Via, remember_via

#: The field this proxy's credentials come in (section 22.3), as the parser spells it.
_OWN_FIELD = canonical_name(PROXY.credentials_field)


class Forwarding(Answers):
    """Requests sent on and responses relayed back."""

    # Set by SipProxy; declared here for the type checker.
    _via: Via
    _public_via: dict[str, Via]

    def _forward_send(self, request: SipRequest, source: Address, transport: str, route: Route,
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
                value = with_first_value(value, stamped)
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
        return Send("\r\n".join(lines).encode("utf-8") + request.body, route.to, route.transport,
                    route.owner), branch

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
                rest = with_first_value(value, None)
                if rest is None:
                    continue  # the line held this proxy's Via alone
                value = rest
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

    def unreachable(self, data: bytes, to: Address, transport: str, why: str, now: float) -> list[Action]:
        """What this proxy sent to ``to`` could not go (no connection: refused, timed out, a certificate not
        trusted). Section 16.9: a request it forwarded is answered as if ``to`` had answered 503, with a Warning
        naming ``to`` and why (which hop failed shows at the client, never as a 407); anything else (a
        response, an ACK) is dropped, and logged."""
        hop = format_address(to)
        try:
            request = parse_datagram(data, self.limits)
        except SipError:
            request = None
        if not isinstance(request, SipRequest) or request.method == "ACK":
            return [SipRecord(now, to, transport, DROPPED, None, None, None, None, Outcome.NONE,
                              reason=f"could not be sent to {hop}: {why}")]
        answer = response_to(request, 503, "Service Unavailable", to_tag=self._to_tag(request),
                             headers=[("Warning", self._warning(f"the next hop {hop} is unreachable: {why}"))])
        actions = self._response(answer, to, transport, now)
        return [*actions, *[SipRecord(now, send.to, send.transport, ANSWERED, 503, request.method, request.uri,
                                      None, Outcome.NONE, to, request.call_id)
                            for send in actions if isinstance(send, Send)]]

    @staticmethod
    def _drop(response: SipResponse, source: Address, transport: str, now: float, why: str) -> list[Action]:
        return [SipRecord(now, source, transport, DROPPED, response.status, None, None, None, Outcome.NONE,
                          reason=why)]
