"""SIP header field values a proxy reads: names and compact forms, comma lists, Via, From/To, CSeq, Call-ID,
Max-Forwards and Content-Length (RFC 3261 sections 7.3, 8.1.1, 20 and the grammar of section 25; RFC 3581).

Every value here is validated on construction (frozen dataclasses), builds to text, and parses back to the same
value. Anything malformed raises :class:`SipError` with a status hint: 400, or 513 for what is too large; never
another exception. Messages name the rule that failed and never echo what the peer sent.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import TypeVar

from authproxy.auth.errors import AuthProxyError

_V = TypeVar("_V", bound="Via")
_N = TypeVar("_N", bound="NameAddr")
_M = TypeVar("_M")


class SipError(AuthProxyError):
    """A malformed or oversized SIP message (RFC 3261 section 21.4.1: 400 Bad Request; 21.4.11 413; 21.5.11
    513 Message Too Large; 21.5.6 505 Version Not Supported). The status hint is what a server answers."""


# RFC 3261 section 25.1: token (narrower than HTTP's tchar: no # $ & ^ |).
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"  # noqa: S105 (a grammar rule, not a password)
_TOKEN_RE = re.compile(_TOKEN)
# Section 25.1 host: hostname / IPv4address / IPv6reference (checked loosely here, strictly where it matters).
_HOST = r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9.])?"
_HOST_RE = re.compile(_HOST)
_WS = " \t"
#: CTL but HTAB (RFC 3261 section 25.1: no production of a header field admits another control character).
CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

#: RFC 3261 section 7.3.3 (c e f i k l m s t v) and the later compact forms of the IANA SIP header registry.
COMPACT_FORMS: dict[str, str] = {
    "a": "Accept-Contact", "b": "Referred-By", "c": "Content-Type", "d": "Request-Disposition",
    "e": "Content-Encoding", "f": "From", "i": "Call-ID", "j": "Reject-Contact", "k": "Supported",
    "l": "Content-Length", "m": "Contact", "o": "Event", "r": "Refer-To", "s": "Subject", "t": "To",
    "u": "Allow-Events", "v": "Via", "x": "Session-Expires", "y": "Identity",
}
#: The compact form of each full name, for building compact messages.
COMPACT_OF: dict[str, str] = {full: short for short, full in COMPACT_FORMS.items()}

_CANONICAL: dict[str, str] = {name.lower(): name for name in (
    "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Authentication-Info",
    "Authorization", "Call-ID", "Call-Info", "Contact", "Content-Disposition", "Content-Encoding",
    "Content-Language", "Content-Length", "Content-Type", "CSeq", "Date", "Error-Info", "Expires", "From",
    "In-Reply-To", "Max-Forwards", "MIME-Version", "Min-Expires", "Organization", "Priority",
    "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "Record-Route", "Reply-To", "Require",
    "Retry-After", "Route", "Server", "Subject", "Supported", "Timestamp", "To", "Unsupported", "User-Agent",
    "Via", "Warning", "WWW-Authenticate", "Path", "Service-Route", "RSeq", "RAck", *COMPACT_FORMS.values(),
)}

#: Fields whose value is a comma list (``#element`` in section 25): one field line may carry several values,
#: and several lines are one list (section 7.3.1). Fields not listed are never split: a Date holds a comma,
#: and section 7.3.1 excludes the four authentication fields, whose parameters are comma-separated.
LIST_FIELDS = frozenset(name.lower() for name in (
    "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Call-Info", "Contact",
    "Content-Encoding", "Content-Language", "Error-Info", "In-Reply-To", "Proxy-Require", "Record-Route",
    "Require", "Route", "Supported", "Unsupported", "Via", "Warning", "Allow-Events", "Path", "Service-Route",
    "Accept-Contact", "Reject-Contact", "Request-Disposition",
))

#: Fields that appear at most once (section 20 grammar: no ``#``/``*``; RFC 4475 section 3.1.2.19 shows why).
SINGLE_FIELDS = frozenset(name.lower() for name in (
    "Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Length", "Content-Type",
))


def is_token(text: str) -> bool:
    """Whether ``text`` is an RFC 3261 section 25.1 token."""
    return _TOKEN_RE.fullmatch(text) is not None


@functools.lru_cache(maxsize=4096)  # a memo, bounded: the same few dozen names arrive in every message
def canonical_name(name: str) -> str:
    """The full, conventionally spelt name of field ``name`` (compact forms expanded, section 7.3.3); a name we
    do not know stays as given. Field names are case-insensitive (section 7.3.1)."""
    if not is_token(name):
        raise SipError("header field name is not a token")
    if len(name) == 1:
        full = COMPACT_FORMS.get(name.lower())
        if full is not None:
            return full
    return _CANONICAL.get(name.lower(), name)


def split_list(value: str) -> list[str]:
    """The elements of a comma list (section 7.3.1), trimmed. Commas inside a quoted-string (with its
    quoted-pairs) or inside ``<...>`` do not split; empty elements are an error."""
    if "," not in value and '"' not in value and "<" not in value:  # one element (a Via, most often)
        element = value.strip(_WS)
        if not element:
            raise SipError("empty element in a header field list")
        return [element]
    out: list[str] = []
    start = 0
    quoted = angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            angle = True
        elif ch == ">":
            angle = False
        elif ch == "," and not angle:
            out.append(value[start:i].strip(_WS))
            start = i + 1
        i += 1
    if quoted:
        raise SipError("unterminated quoted-string in a header field")
    if angle:
        raise SipError("unterminated <...> in a header field")
    out.append(value[start:].strip(_WS))
    if any(not element for element in out):
        raise SipError("empty element in a header field list")
    return out


# --- generic parameters: *( SEMI generic-param ), section 25.1 -------------------------------------------

# gen-value = token / host / quoted-string; an unbracketed IPv6 address (via-received) first, since its
# leading hex digits are a token too.
_IPV6 = r"[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*"
_BARE_VALUE_RE = re.compile(rf"{_IPV6}|{_TOKEN}|{_HOST}")
_GEN_VALUE = rf'{_IPV6}|{_TOKEN}|{_HOST}|"(?:[^"\\]|\\.)*"'
_PARAM_RE = re.compile(rf"[ \t]*;[ \t]*({_TOKEN})(?:[ \t]*=[ \t]*({_GEN_VALUE}))?")
# A whole run of parameters. Each starts with ';', which no value but a quoted-string holds (and a
# quoted-string cannot end early), so the run splits one way only: the engine never backtracks across
# parameters, and this accepts exactly what matching _PARAM_RE again and again from the same place accepts.
_PARAMS_RE = re.compile(rf"(?:[ \t]*;[ \t]*{_TOKEN}(?:[ \t]*=[ \t]*(?:{_GEN_VALUE}))?)*")
_QUOTED_PAIR_RE = re.compile(r"\\(.)")

Params = tuple[tuple[str, str | None], ...]


def _refuse_params(text: str, pos: int) -> None:
    """The error for a run of parameters that does not match: read one parameter at a time, so the first rule
    broken is the one named (a parameter given twice before a malformed one)."""
    seen: set[str] = set()
    while pos < len(text):
        m = _PARAM_RE.match(text, pos)
        if m is None:
            break
        name = m.group(1).lower()
        if name in seen:
            raise SipError("a header field parameter occurs twice")
        seen.add(name)
        pos = m.end()
    raise SipError("malformed header field parameter")


def _parse_params(text: str, pos: int) -> Params:
    """The parameters ``*( SEMI generic-param )`` from ``text[pos:]`` to its end: names lower-cased, each
    once; a value-less parameter has the value None, a quoted-string value is unquoted. Two C calls (the
    check of the whole run, then the pairs) rather than a match per parameter."""
    if pos == len(text):
        return ()
    if _PARAMS_RE.fullmatch(text, pos) is None:
        _refuse_params(text, pos)
    # findall gives '' for an absent value; a present one is never empty (each value form takes a character).
    params = tuple([(name.lower(), value or None) for name, value in _PARAM_RE.findall(text, pos)])
    if len(params) > 1 and len({name for name, _ in params}) != len(params):
        raise SipError("a header field parameter occurs twice")
    if '"' in text:
        params = tuple([(name, _QUOTED_PAIR_RE.sub(r"\1", value[1:-1]) if value and value[0] == '"' else value)
                        for name, value in params])
    return params


def _check_params(params: Params) -> Params:
    normalised = tuple((name.lower(), value) for name, value in params)
    if len({name for name, _ in normalised}) != len(normalised):
        raise SipError("a header field parameter occurs twice")
    for name, value in normalised:
        if not is_token(name):
            raise SipError("header field parameter name is not a token")
        if value is not None and CONTROL_RE.search(value) is not None:
            raise SipError("control character in a header field parameter")
    return normalised


def _format_params(params: Params) -> str:
    parts = []
    for name, value in params:
        if value is None:
            parts.append(f";{name}")
        elif _BARE_VALUE_RE.fullmatch(value):
            parts.append(f";{name}={value}")
        else:
            parts.append(f';{name}="' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "".join(parts)


# Instances of the frozen, slotted dataclasses below from values their parser has already held to every rule
# ``__post_init__`` checks (the grammar matched them): parsing checks once, not twice. Each slot is set by name
# (a loop over ``__slots__`` costs twice as much, and these run for every Via, From and To of every message).
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


def _new_name_addr(cls: type[_N], uri: str, display: str | None, params: Params) -> _N:
    na = object.__new__(cls)
    _set(na, "uri", uri)
    _set(na, "display", display)
    _set(na, "params", params)
    return na


def _param(params: Params, name: str) -> str | None:
    for pname, value in params:
        if pname == name:
            return value
    return None


# --- Via, section 20.42 and RFC 3581 ---------------------------------------------------------------------

_VIA_RE = re.compile(
    rf"({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]+({_HOST})(?:[ \t]*:[ \t]*([0-9]{{1,5}}))?"
)


#: ``received`` values known to be IP addresses.
_ADDRESSES: set[str] = set()


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
        if _HOST_RE.fullmatch(self.host) is None:
            raise SipError("Via sent-by host is malformed")
        object.__setattr__(self, "transport", self.transport.upper())
        object.__setattr__(self, "params", _check_params(self.params))
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
        return _param(self.params, "branch")

    @property
    def received(self) -> str | None:
        return _param(self.params, "received")

    @property
    def rport(self) -> int | None:
        """The rport value a server filled in (RFC 3581 section 4), or None (absent or still empty)."""
        value = _param(self.params, "rport")
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
        return f"{self.protocol}/{self.version}/{self.transport} {self.host}{port}{_format_params(self.params)}"

    def with_branch(self, branch: str) -> Via:
        """This Via with ``branch`` as its branch parameter (section 16.6 step 8: a proxy's own Via)."""
        params = (*[param for param in self.params if param[0] != "branch"], ("branch", branch))
        via = _new_via(Via, self.transport, self.host, self.port, params, self.protocol, self.version)
        via._check_values()
        return via

    @classmethod
    def parse(cls, value: str) -> Via:
        known = _SENT_VIAS.get(value) if cls is Via else None
        if known is not None:
            return known
        m = _VIA_RE.match(value)
        if m is None:
            raise SipError("malformed Via")
        protocol, version, transport, host, digits = m.groups()
        port = None if digits is None else int(digits)
        params = _parse_params(value, m.end())  # names lower-cased tokens, each once
        if CONTROL_RE.search(value) is not None:  # the full checks say what is wrong
            return cls(transport, host, port, params, protocol, version)
        via = _new_via(cls, transport.upper(), host, port, params, protocol, version)
        via._check_values()
        return via


# --- values parsed before -----------------------------------------------------------------------------------

# From/To values and CSeq values by the exact text they were parsed from: a response repeats its request's From,
# To and CSeq, and the requests of a dialog repeat From and To, so most are a dict lookup instead of a parse.
# The values are immutable, so one object serves every message holding that text. Bounded: emptied when full,
# and long texts are not kept.
_MEMO_ENTRIES = 2048
_MEMO_TEXT = 256
_NAME_ADDRS: dict[str, NameAddr] = {}
_CSEQS: dict[str, CSeq] = {}
# Vias a proxy sent (its own, and the one it stamped with received/rport), by their text: they come back in the
# response to what it forwarded. Filled by remember_via only, so a client's Via text is parsed as sent.
_SENT_VIAS: dict[str, Via] = {}


def remember_via(text: str, via: Via) -> None:
    """Note that ``text`` is ``str(via)``, about to be sent: Via.parse(text) then gives ``via`` without parsing
    it again (it would give an equal value: a Via parses back from its text, which the tests check)."""
    _memo(_SENT_VIAS, text, via)


def _memo(memo: dict[str, _M], text: str, value: _M) -> None:
    if len(text) <= _MEMO_TEXT:
        if len(memo) >= _MEMO_ENTRIES:
            memo.clear()
        memo[text] = value


# --- From, To, Contact: name-addr / addr-spec with parameters, sections 20.10, 20.20, 20.39 ---------------

# An addr-spec: scheme ":" then URI characters (section 25.1; reserved / unreserved / escaped, and [] for IPv6).
_URI = r"[A-Za-z][A-Za-z0-9+.\-]*:[A-Za-z0-9\-_.!~*'()%;/?:@&=+$,\[\]]+"
URI_RE = re.compile(_URI)
_QUOTED = r'"(?:[^"\\]|\\.)*"'
# display-name = *(token LWS) / quoted-string. The tokens are written token *(WSP token), never (token WSP*)+:
# the latter splits one run of token characters in exponentially many ways when no '<' follows (found by
# fuzz/fuzz_sip.py as a 13 s backtrack on a 200-character To value).
_NAME_ADDR_RE = re.compile(rf"(?:({_QUOTED})|({_TOKEN}(?:[ \t]+{_TOKEN})*))?[ \t]*<({_URI})>")
# In the addr-spec form the URI cannot hold ';', '?' or ',' (section 20.10): what follows ';' is a field param.
_ADDR_SPEC_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[A-Za-z0-9\-_.!~*'()%/:@&=+$\[\]]+")


@dataclass(frozen=True, slots=True)
class NameAddr:
    """``[display-name] <uri> *(;param)``: the value of From, To and Contact (section 20.10).

    ``display`` is the display name (unquoted), or None. Built back, the URI is always in ``<...>``, which
    every form allows.
    """

    uri: str
    display: str | None = None
    params: Params = ()

    def __post_init__(self) -> None:
        if URI_RE.fullmatch(self.uri) is None:
            raise SipError("malformed URI in a name-addr")
        if self.display is not None and CONTROL_RE.search(self.display) is not None:
            raise SipError("control character in a display name")
        object.__setattr__(self, "params", _check_params(self.params))

    @property
    def tag(self) -> str | None:
        return _param(self.params, "tag")

    def __str__(self) -> str:
        display = ""
        if self.display is not None:
            display = '"' + self.display.replace("\\", "\\\\").replace('"', '\\"') + '" '
        return f"{display}<{self.uri}>{_format_params(self.params)}"

    @classmethod
    def parse(cls, value: str) -> NameAddr:
        known = _NAME_ADDRS.get(value) if cls is NameAddr else None
        if known is not None:
            return known
        na = cls._parse(value)
        if cls is NameAddr:
            _memo(_NAME_ADDRS, value, na)
        return na

    @classmethod
    def _parse(cls, value: str) -> NameAddr:
        # The grammar matched the URI and the parameters (lower-cased tokens, each once): with no control
        # character anywhere, nothing is left for __post_init__ to check.
        m = _NAME_ADDR_RE.match(value)
        if m is not None:
            quoted, tokens, uri = m.groups()
            display = None
            if quoted is not None:
                display = _QUOTED_PAIR_RE.sub(r"\1", quoted[1:-1])
            elif tokens is not None:
                display = tokens.strip(_WS)
        else:
            m = _ADDR_SPEC_RE.match(value)
            if m is None:
                raise SipError("malformed name-addr or addr-spec")
            uri, display = m.group(), None
        params = _parse_params(value, m.end())
        if CONTROL_RE.search(value) is not None:
            return cls(uri, display, params)
        return _new_name_addr(cls, uri, display, params)


# --- the single-valued fields ------------------------------------------------------------------------------

_CSEQ_RE = re.compile(rf"([0-9]{{1,10}})[ \t]+({_TOKEN})")
# Section 25.1: callid = word [ "@" word ].
_WORD = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"
_CALL_ID_RE = re.compile(rf"{_WORD}(?:@{_WORD})?")
_DIGITS_RE = re.compile(r"[0-9]{1,10}")


@dataclass(frozen=True, slots=True)
class CSeq:
    """``CSeq: 4711 INVITE`` (section 20.16): the number is below 2**31 (section 8.1.1.5)."""

    number: int
    method: str

    def __post_init__(self) -> None:
        if not 0 <= self.number < 2**31:
            raise SipError("CSeq number out of range (section 8.1.1.5)")
        if not is_token(self.method):
            raise SipError("CSeq method is not a token")

    def __str__(self) -> str:
        return f"{self.number} {self.method}"

    @classmethod
    def parse(cls, value: str) -> CSeq:
        known = _CSEQS.get(value) if cls is CSeq else None
        if known is not None:
            return known
        m = _CSEQ_RE.fullmatch(value)
        if m is None:
            raise SipError("malformed CSeq")
        cseq = cls(int(m.group(1)), m.group(2))
        if cls is CSeq:
            _memo(_CSEQS, value, cseq)
        return cseq


def parse_call_id(value: str) -> str:
    """A Call-ID value (section 20.8), checked against the grammar."""
    if _CALL_ID_RE.fullmatch(value) is None:
        raise SipError("malformed Call-ID")
    return value


def parse_count(value: str, what: str, *, maximum: int) -> int:
    """A ``1*DIGIT`` field value (Content-Length, Max-Forwards) no larger than ``maximum``; ASCII digits only,
    so ``int()`` never sees the other Unicode digits it would accept."""
    if _DIGITS_RE.fullmatch(value) is None:
        raise SipError(f"{what} is not a number")
    number = int(value)
    if number > maximum:
        raise SipError(f"{what} out of range")
    return number
