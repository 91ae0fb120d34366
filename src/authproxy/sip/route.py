"""Route and Record-Route for the SIP proxy (RFC 3261 sections 16.4, 16.6 steps 4-7, 16.12, 19.1.4, 20.30 and
20.34; RFC 5658 for the two Record-Route values of a proxy that changes transport or socket; the flow token of
RFC 5626 section 5.3.1 for the way back to a client).

This module knows URIs and addresses, no sockets: :class:`SipUri` reads the parts of a ``sip:``/``sips:`` URI a
proxy routes by, :class:`Addresses` says whether a URI names this proxy (section 19.1.4's comparison of host
and port, made sensible: host names without case, IP addresses in one spelling, an absent port the transport's
default, the transport itself ignored), and :class:`FlowTokens` signs and reads the flow token this proxy puts
in the user part of its Record-Route, naming the transport, address and port a client's request came from.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from authproxy.sip.addresses import NameAddr
from authproxy.sip.log import Address

#: Methods whose request creates a dialog (RFC 3261 section 12; RFC 6665 SUBSCRIBE; RFC 3515 REFER): a proxy
#: that wants the dialog's later requests record-routes these (section 16.6 step 4).
DIALOG_METHODS = frozenset({"INVITE", "SUBSCRIBE", "REFER"})

_SIP_URI_RE = re.compile(
    r"(sips?):(?:([^@;?]*)@)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9.])?)"
    r"(?::([0-9]{1,5}))?((?:;[^?]*)?)(?:\?.*)?", re.IGNORECASE)
_TRANSPORT_CODES = {"udp": "u", "tcp": "t", "tls": "s"}
_TRANSPORT_NAMES = {code: name for name, code in _TRANSPORT_CODES.items()}


def normal_host(host: str) -> str:
    """A host as section 19.1.4 compares it: without case, an IPv6 reference without brackets, an IP address
    in its one canonical spelling (``0:0::1`` and ``::1`` are the same host)."""
    host = host.strip("[]").lower()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class SipUri:
    """What a proxy routes by in a ``sip:`` or ``sips:`` URI (section 19.1.1): host (normalised), port,
    user (a flow token here), ``transport`` and ``lr``."""

    scheme: str
    user: str | None
    host: str
    port: int | None
    params: tuple[tuple[str, str | None], ...]

    @classmethod
    def parse(cls, text: str) -> SipUri | None:
        """The URI, or None when it is not a ``sip:``/``sips:`` URI a proxy can route by (a ``tel:`` URI, a
        port out of range)."""
        m = _SIP_URI_RE.fullmatch(text)
        if m is None:
            return None
        scheme, user, host, port, params = m.groups()
        if port is not None and not 0 < int(port) < 65536:
            return None
        pairs = tuple((name.lower(), value) for name, _, value in
                      (p.partition("=") for p in params.split(";")[1:]) for value in [value or None])
        return cls(scheme.lower(), user, normal_host(host), None if port is None else int(port), pairs)

    def param(self, name: str) -> str | None:
        return next((value for pname, value in self.params if pname == name), None)

    @property
    def lr(self) -> bool:
        """A loose router's URI (section 19.1.1: ``lr``, with no value)."""
        return any(name == "lr" for name, _ in self.params)

    @property
    def transport(self) -> str:
        """The transport a request to this URI goes over: ``transport=``, else TLS for ``sips:``, else UDP
        (section 18.1.1 without RFC 3263's lookups)."""
        named = (self.param("transport") or "").lower()
        if named in _TRANSPORT_CODES:
            return named
        return "tls" if self.scheme == "sips" else "udp"

    @property
    def address(self) -> Address:
        """Host and port, the port defaulting to 5060 (5061 for TLS) as section 19.1.2 says."""
        return (self.host, self.port or (5061 if self.transport == "tls" else 5060))


def route_uri(element: str) -> SipUri | None:
    """The URI of one Route or Record-Route value (``name-addr *(;rr-param)``, section 20.34); SipError when
    the value is malformed, None when it is not a SIP URI."""
    return SipUri.parse(NameAddr.parse(element).uri)


class Addresses:
    """The addresses that name this proxy: every listener's (the host it is bound to, and ``via_host``), with
    its port, and aliases (a host at a port, or at any port when the port is None, as kamailio's ``alias=``);
    a URI names this proxy when its host and port (the default port when absent) are one of them, over any
    transport."""

    def __init__(self, addresses: Iterable[tuple[str, int | None]]) -> None:
        pairs = [(normal_host(host), port) for host, port in addresses]
        self._set = frozenset(pairs)
        self._any_port = frozenset(host for host, port in pairs if port is None)

    def __contains__(self, address: Address) -> bool:
        host = normal_host(address[0])
        return (host, address[1]) in self._set or host in self._any_port

    def names(self, uri: SipUri | None) -> bool:
        return uri is not None and (uri.address in self._set or uri.host in self._any_port)


class Flow(NamedTuple):
    """A client's flow: the transport and address its request came from, and with ``--workers`` the worker
    holding it (a TCP or TLS connection is one process's), None when any may send on it."""

    transport: str
    address: Address
    owner: int | None = None


class FlowTokens:
    """The flow token (RFC 5626 section 5.3.1's idea): the transport, address and port a client's request came
    from (and the worker whose connection that is, when ``owner`` is given), MAC'd under this proxy's key, in
    the user part of its Record-Route. A request that comes back from the far side with this Route goes to that
    flow (the client's NAT binding, its TCP or TLS connection), and only a token this proxy made names one: no
    one can make it relay elsewhere. URL-safe base64 (unreserved characters only, section 25.1), 10 bytes of
    MAC."""

    _MAC = 10

    def __init__(self, key: bytes, owner: int | None = None) -> None:
        if owner is not None and not 0 <= owner < 256:
            raise ValueError("a flow's owner is a worker index, 0-255")
        self._key = hashlib.blake2b(b"authproxy sip flow token", key=key[:64], digest_size=32).digest()
        self._owner = b"" if owner is None else bytes([owner])

    def make(self, transport: str, address: Address) -> str:
        packed = _TRANSPORT_CODES[transport].encode() + ipaddress.ip_address(address[0]).packed
        packed += address[1].to_bytes(2, "big") + self._owner
        return base64.urlsafe_b64encode(packed + self._mac(packed)).decode().rstrip("=")

    def read(self, token: str | None) -> Flow | None:
        """The flow a token names, or None: not a token, or not one this proxy made (any of its workers)."""
        if token is None or not 16 <= len(token) <= 48:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError):
            return None
        packed, mac = raw[:-self._MAC], raw[-self._MAC:]
        if len(packed) not in (7, 8, 19, 20) or not hmac.compare_digest(mac, self._mac(packed)):
            return None
        transport = _TRANSPORT_NAMES.get(chr(packed[0]))
        if transport is None:
            return None
        owner = None
        if len(packed) in (8, 20):  # one byte more: the worker holding the flow
            owner, packed = packed[-1], packed[:-1]
        return Flow(transport, (str(ipaddress.ip_address(packed[1:-2])), int.from_bytes(packed[-2:], "big")),
                    owner)

    def _mac(self, packed: bytes) -> bytes:
        return hashlib.blake2b(packed, key=self._key, digest_size=self._MAC).digest()


def uri_text(transport: str, address: Address, user: str | None = None) -> str:
    """A Record-Route URI of this proxy (section 16.6 step 4): ``sip:[user@]host:port;transport=...;lr``."""
    host = f"[{address[0]}]" if ":" in address[0] else address[0]
    userinfo = f"{user}@" if user else ""
    return f"sip:{userinfo}{host}:{address[1]};transport={transport};lr"

