"""The SIP proxy's sockets (RFC 3261 section 18): binding a ``transport:host:port`` listener, the ``SO_REUSEPORT``
group of ``--workers`` (one socket per worker at one port), and the UDP listener's protocol, which hands each
datagram to the server (section 18.2.1: a datagram is one message) and is what sends go out of (section 18.2.2).
The TCP and TLS connections are :mod:`authproxy.sip.streams`'.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, cast

from authproxy.auth.errors import ConfigError
from authproxy.sip.log import Address

if TYPE_CHECKING:
    from authproxy.sip.server import SipServer


class Datagrams(asyncio.DatagramProtocol):
    """A UDP socket: a listener at ``address``, or (``address`` None) a worker's own socket towards the next hop."""

    def __init__(self, server: SipServer, address: Address | None) -> None:
        self.server = server
        self.address = address
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Registered here, not when create_datagram_endpoint returns: uvloop may hand over a datagram already
        # queued (a worker's socket, made before the fork) before it returns, and its answer needs a socket.
        self.transport = udp = cast(asyncio.DatagramTransport, transport)
        if self.address is None:
            self.server._hop_udp = udp
        else:
            self.server._udp.append((self.address, udp))

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.server.received(data, (str(addr[0]), int(addr[1])), "udp")

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for an earlier datagram (a peer that went away): UDP has nothing to retry



def sock_address(sockname: tuple[str | int, ...]) -> Address:
    """The ``(host, port)`` of a socket's address."""
    return (str(sockname[0]), int(sockname[1]))


def bind_listener(transport: str, host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A socket bound where a ``transport:host:port`` listener says (TCP and TLS: not yet listening, the loop
    does that); ``reuse_port`` puts it in an ``SO_REUSEPORT`` group with the other workers' sockets."""
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind)
        try:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's create_server does
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise ConfigError(f"listen: cannot bind {transport}:{host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def reuseport_group(transport: str, host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` sockets in one ``SO_REUSEPORT`` group at ``host:port`` (port 0: a port nobody holds).

    Linux lets a socket with ``SO_REUSEPORT`` join a group of the same user already at that address, and
    ``bind`` to port 0 with the option may even pick the port of such a group in another process (for UDP it
    skips those ports as compatible): that process would then get a share of our datagrams, and we of its. So
    the port is first bound without the option, which fails if anyone holds it and for port 0 finds a port
    nobody holds, then released and taken by the group at once (a stranger taking it in between would be
    refused, or, with the option itself, join us: a window of microseconds)."""
    for attempt in range(5):
        probe = bind_listener(transport, host, port)
        chosen = probe.getsockname()[1]
        probe.close()
        group: list[socket.socket] = []
        try:
            for _ in range(count):
                group.append(bind_listener(transport, host, chosen, reuse_port=True))
        except ConfigError:
            for sock in group:
                sock.close()
            if port or attempt == 4:
                raise
            continue  # port 0: someone took the free port in between; find another
        return group
    raise AssertionError("unreachable")  # pragma: no cover

