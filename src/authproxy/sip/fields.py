"""SIP header fields, what every value shares and the single-valued ones: names and compact forms, comma lists,
the token and host rules, CSeq, Call-ID, Max-Forwards and Content-Length (RFC 3261 sections 7.3, 8.1.1, 20.8,
20.14, 20.16, 20.22 and the grammar of section 25). The other values a proxy reads have their own modules:
generic parameters in :mod:`authproxy.sip.params`, Via in :mod:`authproxy.sip.via`, From/To/Contact in
:mod:`authproxy.sip.addresses`.

Every value here is validated on construction (frozen dataclasses), builds to text, and parses back to the same
value. Anything malformed raises :class:`SipError` with a status hint: 400, or 513 for what is too large; never
another exception. Messages name the rule that failed and never echo what the peer sent.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TypeVar

from authproxy.auth.errors import AuthProxyError

_M = TypeVar("_M")


class SipError(AuthProxyError):
    """A malformed or oversized SIP message (RFC 3261 section 21.4.1: 400 Bad Request; 21.4.11 413; 21.5.11
    513 Message Too Large; 21.5.6 505 Version Not Supported). The status hint is what a server answers."""


# RFC 3261 section 25.1: token (narrower than HTTP's tchar: no # $ & ^ |).
TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"  # noqa: S105 (a grammar rule, not a password)
_TOKEN_RE = re.compile(TOKEN)
# Section 25.1 host: hostname / IPv4address / IPv6reference (checked loosely here, strictly where it matters).
HOST = r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9.])?"
HOST_RE = re.compile(HOST)
WS = " \t"
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
        element = value.strip(WS)
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
            out.append(value[start:i].strip(WS))
            start = i + 1
        i += 1
    if quoted:
        raise SipError("unterminated quoted-string in a header field")
    if angle:
        raise SipError("unterminated <...> in a header field")
    out.append(value[start:].strip(WS))
    if any(not element for element in out):
        raise SipError("empty element in a header field list")
    return out



# --- values parsed before -----------------------------------------------------------------------------------

# Values by the exact text they were parsed from (From/To in authproxy.sip.addresses, CSeq here, and the Vias a
# proxy sent in authproxy.sip.via): a response repeats its request's From, To and CSeq, and the requests of a
# dialog repeat From and To, so most are a dict lookup instead of a parse. The values are immutable, so one
# object serves every message holding that text. Bounded: emptied when full, and long texts are not kept.
_MEMO_ENTRIES = 2048
_MEMO_TEXT = 256


def memo(table: dict[str, _M], text: str, value: _M) -> None:
    """Keep ``value`` under ``text`` in ``table`` (one of the tables above), within the bounds."""
    if len(text) <= _MEMO_TEXT:
        if len(table) >= _MEMO_ENTRIES:
            table.clear()
        table[text] = value


# --- the single-valued fields ------------------------------------------------------------------------------

_CSEQ_RE = re.compile(rf"([0-9]{{1,10}})[ \t]+({TOKEN})")
# Section 25.1: callid = word [ "@" word ].
_WORD = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"
_CALL_ID_RE = re.compile(rf"{_WORD}(?:@{_WORD})?")
_DIGITS_RE = re.compile(r"[0-9]{1,10}")
_CSEQS: dict[str, CSeq] = {}


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
        digits, method = m.groups()
        if cls is not CSeq:
            return cls(int(digits), method)
        number = int(digits)
        if number >= 2**31:
            raise SipError("CSeq number out of range (section 8.1.1.5)")
        # The grammar matched a token method and digits: nothing else for __post_init__ to check.
        cseq = object.__new__(CSeq)
        object.__setattr__(cseq, "number", number)
        object.__setattr__(cseq, "method", method)
        memo(_CSEQS, value, cseq)
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
