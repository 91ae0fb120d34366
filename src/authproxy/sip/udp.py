"""A SIP client over UDP with asyncio: one non-INVITE transaction at a time, and REGISTER with authentication
(RFC 3261 sections 10.2, 17.1.2 and 18.1; RFC 3581).

:func:`request_over_udp` runs the client side of a non-INVITE transaction (section 17.1.2.2): the request is
sent, then sent again after T1, 2*T1, ... up to T2 between copies (Timer E) until a final response comes, or
Timer F (64*T1) gives up. Responses are matched to the transaction by the top Via's branch and the CSeq
method (section 17.1.3); provisional ones and strays are skipped, and a datagram that does not parse is dropped
(section 18.1.2 lets a client discard it).

:func:`register` builds a REGISTER for an address-of-record (section 10.2) and answers the registrar's 401 and
any proxy's 407 with :class:`~authproxy.sip.client.SipAuthenticator`. The socket asks for ``rport`` (RFC
3581), so the server answers the address the request came from.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import cast

from authproxy.auth.errors import ProxyError
from authproxy.sip.client import SipAuthenticator, new_branch
from authproxy.sip.fields import SipError
from authproxy.sip.message import SipRequest, SipResponse
from authproxy.sip.parse import parse_datagram

#: Section 17.1.1.1: T1, the round-trip estimate, and T2, the longest gap between retransmissions.
T1 = 0.5
T2 = 4.0


class _Endpoint(asyncio.DatagramProtocol):
    """Receives datagrams and hands the responses that parse to whoever waits."""

    def __init__(self) -> None:
        self.responses: asyncio.Queue[SipResponse] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's own datagram transport does not subclass DatagramTransport (3.11), so no isinstance here.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            message = parse_datagram(data)
        except SipError:
            return  # section 18.1.2: a malformed response is discarded
        if isinstance(message, SipResponse):
            self.responses.put_nowait(message)


async def request_over_udp(endpoint: _Endpoint, request: SipRequest, server: tuple[str, int], *,
                           t1: float = T1) -> SipResponse:
    """The final response to ``request`` sent to ``server`` (the endpoint's connected peer), retransmitted as
    section 17.1.2.2 says; ProxyError (reason ``timeout``) when Timer F fires first."""
    transport = endpoint.transport
    assert transport is not None
    branch, method = request.vias[0].branch, request.method
    wire = request.to_bytes()
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 64 * t1
    interval = t1
    transport.sendto(wire)
    next_copy = loop.time() + interval
    while True:
        now = loop.time()
        if now >= give_up:
            raise ProxyError(f"no final response to {method} from {server[0]}:{server[1]} within {64 * t1:g} s "
                             "(RFC 3261 Timer F)", reason="timeout", hop=None)
        try:
            response = await asyncio.wait_for(endpoint.responses.get(), min(next_copy, give_up) - now)
        except TimeoutError:
            if loop.time() >= next_copy:
                transport.sendto(wire)  # Timer E
                interval = min(2 * interval, T2)
                next_copy = loop.time() + interval
            continue
        if response.vias[0].branch != branch or response.cseq.method != method:
            continue  # another transaction's, or a late copy of an earlier attempt's
        if response.status >= 200:
            return response
        interval = T2  # section 17.1.2.2: after a provisional response, retransmit every T2


def register_request(aor: str, *, local: tuple[str, int], random: Callable[[int], bytes], expires: int = 3600,
                     registrar_uri: str | None = None, contact: str | None = None) -> SipRequest:
    """A REGISTER binding ``contact`` (default: this socket) to ``aor`` (``sip:user@domain``), section 10.2:
    Request-URI the registrar's domain, To and From the address-of-record, a new Call-ID, CSeq 1."""
    domain = aor.split("@", 1)[-1].split(";", 1)[0]
    user = aor.split(":", 1)[-1].split("@", 1)[0]
    host, port = local
    sent_by = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    headers = (
        ("Via", f"SIP/2.0/UDP {sent_by};branch={new_branch(random)};rport"),
        ("Max-Forwards", "70"),
        ("From", f"<{aor}>;tag={random(6).hex()}"),
        ("To", f"<{aor}>"),
        ("Call-ID", f"{random(12).hex()}@{sent_by}"),
        ("CSeq", "1 REGISTER"),
        ("Contact", f"<{contact or f'sip:{user}@{sent_by}'}>"),
        ("Expires", str(expires)),
        ("Content-Length", "0"),
    )
    return SipRequest(method="REGISTER", uri=registrar_uri or f"sip:{domain}", headers=headers)


async def register(server: tuple[str, int], aor: str, username: str, password: str, *, expires: int = 3600,
                   registrar_uri: str | None = None, contact: str | None = None,
                   local: tuple[str, int] | None = None, t1: float = T1,
                   random: Callable[[int], bytes] = secrets.token_bytes,
                   authenticator: SipAuthenticator | None = None) -> SipResponse:
    """REGISTER ``aor`` at ``server`` (host, port) over UDP, answering 401/407 as ``username``; the final
    response (a 2xx on success). The socket is connected to ``server`` (bound to ``local`` when given), so its
    address is the one the request names in Via and Contact. ``authenticator`` keeps nonces across calls
    (refreshing a registration)."""
    loop = asyncio.get_running_loop()
    endpoint = _Endpoint()
    transport, _ = await loop.create_datagram_endpoint(lambda: endpoint, local_addr=local, remote_addr=server)
    try:
        sockname = transport.get_extra_info("sockname")
        request = register_request(aor, local=(sockname[0], sockname[1]), random=random, expires=expires,
                                   registrar_uri=registrar_uri, contact=contact)
        auth = authenticator or SipAuthenticator(username, password, random=random)
        exchange = auth.exchange(request)
        attempt = next(exchange)
        while True:
            response = await request_over_udp(endpoint, attempt, server, t1=t1)
            try:
                attempt = exchange.send(response)
            except StopIteration as stop:
                final: SipResponse = stop.value
                return final
    finally:
        transport.close()
