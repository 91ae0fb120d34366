"""From, To and Contact: name-addr / addr-spec with parameters (RFC 3261 sections 20.10, 20.20, 20.39 and the
grammar of section 25.1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeVar

from authproxy.sip.fields import CONTROL_RE, TOKEN, WS, SipError, memo
from authproxy.sip.params import (
    QUOTED_PAIR_RE,
    Params,
    check_params,
    format_params,
    param,
    parse_by_shape,
    parse_params,
)

_N = TypeVar("_N", bound="NameAddr")
#: From/To values by their text (see :func:`authproxy.sip.fields.memo`).
_NAME_ADDRS: dict[str, NameAddr] = {}
#: From/To values by their text without the tag value, with the tag's index (params.parse_by_shape).
_NAME_ADDR_SHAPES: dict[str, tuple[NameAddr, int]] = {}
# Instances from values the grammar already held to every rule ``__post_init__`` checks, each slot set by name,
# as authproxy.sip.via builds its Vias: this runs for every From and To of every message.
_set = object.__setattr__


def _new_name_addr(cls: type[_N], uri: str, display: str | None, params: Params) -> _N:
    na = object.__new__(cls)
    _set(na, "uri", uri)
    _set(na, "display", display)
    _set(na, "params", params)
    return na


# An addr-spec: scheme ":" then URI characters (section 25.1; reserved / unreserved / escaped, and [] for IPv6).
_URI = r"[A-Za-z][A-Za-z0-9+.\-]*:[A-Za-z0-9\-_.!~*'()%;/?:@&=+$,\[\]]+"
URI_RE = re.compile(_URI)
_QUOTED = r'"(?:[^"\\]|\\.)*"'
# display-name = *(token LWS) / quoted-string. The tokens are written token *(WSP token), never (token WSP*)+:
# the latter splits one run of token characters in exponentially many ways when no '<' follows (found by
# fuzz/fuzz_sip.py as a 13 s backtrack on a 200-character To value).
_NAME_ADDR_RE = re.compile(rf"(?:({_QUOTED})|({TOKEN}(?:[ \t]+{TOKEN})*))?[ \t]*<({_URI})>")
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
        object.__setattr__(self, "params", check_params(self.params))

    @property
    def tag(self) -> str | None:
        return param(self.params, "tag")

    def __str__(self) -> str:
        display = ""
        if self.display is not None:
            display = '"' + self.display.replace("\\", "\\\\").replace('"', '\\"') + '" '
        return f"{display}<{self.uri}>{format_params(self.params)}"

    @classmethod
    def parse(cls, value: str) -> NameAddr:
        if cls is not NameAddr:
            return cls._parse(value)
        known = _NAME_ADDRS.get(value)
        if known is not None:
            return known
        # The field's parameters follow the URI: after its '>' in the name-addr form (a ';tag=' inside <...> is
        # the URI's), after the first ';' in the addr-spec form, whose URI holds none (section 20.10).
        return parse_by_shape(value, "tag", value.rfind(">") + 1, _NAME_ADDR_SHAPES, _parse_kept, _with_params)

    @classmethod
    def _parse(cls, value: str) -> NameAddr:
        # The grammar matched the URI and the parameters (lower-cased tokens, each once): with no control
        # character anywhere, nothing is left for __post_init__ to check.
        m = _NAME_ADDR_RE.match(value)
        if m is not None:
            quoted, tokens, uri = m.groups()
            display = None
            if quoted is not None:
                display = QUOTED_PAIR_RE.sub(r"\1", quoted[1:-1])
            elif tokens is not None:
                display = tokens.strip(WS)
        else:
            m = _ADDR_SPEC_RE.match(value)
            if m is None:
                raise SipError("malformed name-addr or addr-spec")
            uri, display = m.group(), None
        params = parse_params(value, m.end())
        if CONTROL_RE.search(value) is not None:
            return cls(uri, display, params)
        return _new_name_addr(cls, uri, display, params)


def _parse_kept(value: str) -> NameAddr:
    """A From/To value parsed, and kept by its text."""
    na = NameAddr._parse(value)
    memo(_NAME_ADDRS, value, na)
    return na


def _with_params(na: NameAddr, params: Params) -> NameAddr:
    return _new_name_addr(NameAddr, na.uri, na.display, params)
