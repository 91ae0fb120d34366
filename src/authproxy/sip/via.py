"""The Via header field (RFC 3261 section 20.42; section 18.2.1 for ``received``, RFC 3581 for ``rport``), and the
memo of the Vias this proxy sent, which come back in the responses to what it forwarded (section 16.7).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import TypeVar

from authproxy.sip.fields import CONTROL_RE, HOST, HOST_RE, TOKEN, SipError, is_token, memo
from authproxy.sip.params import Params, check_params, format_params, param, parse_by_shape, parse_params

_V = TypeVar("_V", bound="Via")

# Instances of the frozen, slotted dataclass below from values their parser has already held to every rule
# ``__post_init__`` checks (the grammar matched them): parsing checks once, not twice. Each slot is set by name
# (a loop over ``__slots__`` costs twice as much, and this runs for every Via of every message).
_set = object.__setattr__


def _new_via(cls: type[_V], transport: str, host: str, port: int | None, params: Params, protocol: str,
             version: str) -> _V:
    via = object.__new__(cls)
    _set(via, "transport", transport)
    _set(via, "host", host)
    _set(via, "port", port)
    _set(via, "params", params)
    _set(via, "protocol", protocol)
    _set(via, "version", version)
    return via


_VIA_RE = re.compile(
    rf"({TOKEN})[ \t]*/[ \t]*({TOKEN})[ \t]*/[ \t]*({TOKEN})[ \t]+({HOST})(?:[ \t]*:[ \t]*([0-9]{{1,5}}))?"
)


#: ``received`` values known to be IP addresses.
_ADDRESSES: set[str] = set()
# Vias a proxy sent (its own, and the one it stamped with received/rport), by their text: they come back in the
# response to what it forwarded. Filled by remember_via only, so a client's Via text is parsed as sent.
_SENT_VIAS: dict[str, Via] = {}
# Vias parsed before, by their text without the branch value, with the branch's index (params.parse_by_shape).
_VIA_SHAPES: dict[str, tuple[Via, int]] = {}


def _check_port(port: int | None) -> None:
    if port is not None and not 0 < port < 65536:
        raise SipError("port out of range")


@dataclass(frozen=True, slots=True)
class Via:
    """One Via value: ``SIP/2.0/UDP host:port;branch=...;received=...;rport=...`` (section 20.42).

    Parameter names are lower-cased; a parameter without a value (``;rport`` in a request, RFC 3581 section 3)
    has the value None. The transport is upper-cased (section 7.3.1: it is case-insensitive).
    """

    transport: str
    host: str
    port: int | None = None
    params: Params = ()
    protocol: str = "SIP"
    version: str = "2.0"

    def __post_init__(self) -> None:
        for part in (self.protocol, self.version, self.transport):
            if not is_token(part):
                raise SipError("Via sent-protocol is not three tokens")
        if HOST_RE.fullmatch(self.host) is None:
            raise SipError("Via sent-by host is malformed")
        object.__setattr__(self, "transport", self.transport.upper())
        object.__setattr__(self, "params", check_params(self.params))
        self._check_values()

    def _check_values(self) -> None:
        # What the grammar does not say: port range, received an IP address, rport a port, branch a token.
        _check_port(self.port)
        received = rport = branch = None
        for name, value in self.params:  # one pass (names are unique)
            if name == "branch":
                branch = value
            elif name == "received":
                received = value
            elif name == "rport":
                rport = value
        if received is not None and received not in _ADDRESSES:
            try:
                ipaddress.ip_address(received.strip("[]"))
            except ValueError:
                raise SipError("Via received is not an IP address (section 18.2.1)") from None
            if len(_ADDRESSES) < 4096:  # bounded: a memo of the few addresses a proxy hears from
                _ADDRESSES.add(received)
        if rport is not None and (not rport.isascii() or not rport.isdigit() or not 0 < int(rport) < 65536):
            raise SipError("Via rport is not a port number (RFC 3581 section 3)")
        if branch is not None and not is_token(branch):
            raise SipError("Via branch is not a token")

    @property
    def branch(self) -> str | None:
        return param(self.params, "branch")

    @property
    def received(self) -> str | None:
        return param(self.params, "received")

    @property
    def rport(self) -> int | None:
        """The rport value a server filled in (RFC 3581 section 4), or None (absent or still empty)."""
        value = param(self.params, "rport")
        return None if value is None else int(value)

    @property
    def wants_rport(self) -> bool:
        """Whether the client asked for rport (RFC 3581 section 3: ``;rport`` with or without a value)."""
        return any(name == "rport" for name, _ in self.params)

    def with_received(self, host: str, port: int) -> Via:
        """This Via as a server transport stamps it on receipt: ``received`` when the packet's source address
        differs from sent-by (section 18.2.1), ``rport`` filled in when the client asked (RFC 3581 section 4,
        which also requires ``received`` then)."""
        params = dict(self.params)
        wants_rport = "rport" in params
        if wants_rport or host != self.host:
            params["received"] = host
        if wants_rport:
            params["rport"] = str(port)
        # This Via is checked; what changed is received (an IP address?) and rport (a port?): checked here.
        via = _new_via(Via, self.transport, self.host, self.port, tuple(params.items()), self.protocol,
                       self.version)
        via._check_values()
        return via

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{self.protocol}/{self.version}/{self.transport} {self.host}{port}{format_params(self.params)}"

    def with_branch(self, branch: str) -> Via:
        """This Via with ``branch`` as its branch parameter (section 16.6 step 8: a proxy's own Via)."""
        params = (*[param for param in self.params if param[0] != "branch"], ("branch", branch))
        via = _new_via(Via, self.transport, self.host, self.port, params, self.protocol, self.version)
        via._check_values()
        return via

    @classmethod
    def parse(cls, value: str) -> Via:
        if cls is not Via:
            return cls._parse(value)
        known = _SENT_VIAS.get(value)
        if known is not None:
            return known
        return parse_by_shape(value, "branch", 0, _VIA_SHAPES, Via._parse, _with_params)

    @classmethod
    def _parse(cls, value: str) -> Via:
        m = _VIA_RE.match(value)
        if m is None:
            raise SipError("malformed Via")
        protocol, version, transport, host, digits = m.groups()
        port = None if digits is None else int(digits)
        params = parse_params(value, m.end())  # names lower-cased tokens, each once
        if CONTROL_RE.search(value) is not None:  # the full checks say what is wrong
            return cls(transport, host, port, params, protocol, version)
        via = _new_via(cls, transport.upper(), host, port, params, protocol, version)
        via._check_values()
        return via


def _with_params(via: Via, params: Params) -> Via:
    return _new_via(Via, via.transport, via.host, via.port, params, via.protocol, via.version)


def remember_via(text: str, via: Via) -> None:
    """Note that ``text`` is ``str(via)``, about to be sent: Via.parse(text) then gives ``via`` without parsing
    it again (it would give an equal value: a Via parses back from its text, which the tests check)."""
    memo(_SENT_VIAS, text, via)
