"""Where the SIP proxy sends a request, and which messages are its own (RFC 3261 sections 16.3 step 4, 16.4-16.6;
RFC 5658; RFC 3327; the flow tokens of RFC 5626 section 5.3.1): the next hop, the trusted peers, the Route values
naming this proxy, a strict router's Request-URI, loop detection, this proxy's Record-Route and Path values, and
the branches it gives the requests it forwards. ``Routing`` is a base of :class:`authproxy.sip.proxy.SipProxy`
(``Transactions`` <- ``Routing`` <- ``Answers`` <- ``Forwarding`` <- ``SipProxy``); the URIs and flow tokens
themselves are :mod:`authproxy.sip.route`'s.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from typing import NamedTuple

from authproxy.auth.errors import ConfigError
from authproxy.sip.addresses import NameAddr
from authproxy.sip.fields import split_list
from authproxy.sip.log import Address
from authproxy.sip.message import SipRequest
from authproxy.sip.route import DIALOG_METHODS, Addresses, FlowTokens, SipUri, is_ip, normal_host, route_uri, uri_text
from authproxy.sip.transactions import Transactions

#: Section 8.1.1.7: the magic cookie; ``ap`` marks a branch this proxy made.
BRANCH_PREFIX = "z9hG4bKap"
#: A branch: the prefix, 24 hex digits naming the transaction, 8 of loop detection (section 16.6 step 8), and 8
#: more binding it to the address it was sent to when that is not the next hop.
_TXN, _LOOP, _DEST = len(BRANCH_PREFIX) + 24, len(BRANCH_PREFIX) + 32, len(BRANCH_PREFIX) + 40


@dataclass(frozen=True, slots=True)
class NextHop:
    """Where authenticated requests go: ``sip:HOST:PORT;transport=udp|tcp|tls`` (RFC 3261 section 19.1.1;
    over TLS, its certificate verified against HOST)."""

    host: str
    port: int
    transport: str = "udp"

    @classmethod
    def parse(cls, value: str, *, key: str = "next_hop") -> NextHop:
        def bad(why: str) -> ConfigError:
            return ConfigError(f"{key}: {why}; expected sip:HOST:PORT;transport=udp|tcp|tls, got {value!r}")

        if not value.lower().startswith("sip:"):
            raise bad("not a sip: URI")
        hostport, *params = value[4:].split(";")
        transport = "udp"
        for param in params:
            name, _, val = param.partition("=")
            if name.lower() != "transport" or val.lower() not in ("udp", "tcp", "tls"):
                raise bad("the only parameter is transport=udp, tcp or tls")
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


class Route(NamedTuple):
    """Where a request goes and what it carries there (sections 16.4-16.6): the Request-URI and Route values
    as forwarded (``routes`` None: the Route lines as they came), the address and transport, and the loop
    detection part of the branch; or, in ``refused``, the status and reason it can go nowhere."""

    uri: str
    routes: tuple[str, ...] | None
    to: Address
    transport: str
    loop: str
    refused: tuple[int, str] | None = None
    owner: int | None = None  # the worker holding the client flow it goes to (its TCP or TLS connection)


class Routing(Transactions):
    """The proxy's routing decisions (section 16.3 step 4, 16.4-16.6) and the MAC its branches, To tags and flow
    tokens are made with."""

    # Set by SipProxy; declared here for the type checker.
    next_hop: NextHop
    local: dict[str, Address]
    public: dict[str, Address]
    own: Addresses
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    record_route: bool
    path: bool
    _key: bytes
    _keyed: dict[int, hashlib.blake2b]
    _flows: FlowTokens
    _via_sent_by: set[tuple[str, int | None]]

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

    def _route(self, request: SipRequest, trusted: bool) -> Route:
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
        refused = owner = None
        if trusted and flow is not None:
            transport, to, owner = flow
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
        return Route(uri, tuple(routes) if changed else None, to, transport, loop, refused, owner)

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

    def _record_route(self, request: SipRequest, source: Address, transport: str, route: Route,
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

    def _path(self, request: SipRequest, source: Address, transport: str, route: Route, trusted: bool) -> list[str]:
        """This proxy's Path value for a client's REGISTER (RFC 3327 section 5.2, as kamailio's add_path): the
        registrar sends the calls for that contact with it as their Route, so they come through this proxy,
        and its flow token takes them to the client's flow (its NAT binding, its TCP or TLS connection)."""
        if request.method != "REGISTER" or not self.path or trusted or not is_ip(source[0]):
            return []
        out = self.public.get(route.transport) or self.local[route.transport]
        return [f"<{uri_text(route.transport, out, self._flows.make(transport, source))}>"]

    def _sent_to(self, branch: str, source: Address) -> bool:
        """Whether ``branch`` is one this proxy gave a request it sent to ``source``'s address (not the next
        hop's: a client's, on a trusted peer's behalf): a response from anywhere else is not let through."""
        if len(branch) != _DEST or not branch.startswith(BRANCH_PREFIX):
            return False
        expected = self._mac(f"{branch[:_LOOP]}\0{normal_host(source[0])}", 4)
        return hmac.compare_digest(branch[_LOOP:], expected)

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
