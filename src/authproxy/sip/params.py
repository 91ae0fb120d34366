"""Generic header field parameters, ``*( SEMI generic-param )`` (RFC 3261 section 25.1, as Via, From, To and
Contact carry them: sections 20.10, 20.20, 20.39 and 20.42): parsed in two C calls, checked, built back.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol, TypeVar

from authproxy.sip.fields import CONTROL_RE, HOST, TOKEN, SipError, is_token, memo

# gen-value = token / host / quoted-string; an unbracketed IPv6 address (via-received) first, since its
# leading hex digits are a token too.
_IPV6 = r"[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*"
_BARE_VALUE_RE = re.compile(rf"{_IPV6}|{TOKEN}|{HOST}")
_GEN_VALUE = rf'{_IPV6}|{TOKEN}|{HOST}|"(?:[^"\\]|\\.)*"'
_PARAM_RE = re.compile(rf"[ \t]*;[ \t]*({TOKEN})(?:[ \t]*=[ \t]*({_GEN_VALUE}))?")
# A whole run of parameters. Each starts with ';', which no value but a quoted-string holds (and a
# quoted-string cannot end early), so the run splits one way only: the engine never backtracks across
# parameters, and this accepts exactly what matching _PARAM_RE again and again from the same place accepts.
_PARAMS_RE = re.compile(rf"(?:[ \t]*;[ \t]*{TOKEN}(?:[ \t]*=[ \t]*(?:{_GEN_VALUE}))?)*")
QUOTED_PAIR_RE = re.compile(r"\\(.)")

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


def parse_params(text: str, pos: int) -> Params:
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
        params = tuple([(name, QUOTED_PAIR_RE.sub(r"\1", value[1:-1]) if value and value[0] == '"' else value)
                        for name, value in params])
    return params


def check_params(params: Params) -> Params:
    normalised = tuple((name.lower(), value) for name, value in params)
    if len({name for name, _ in normalised}) != len(normalised):
        raise SipError("a header field parameter occurs twice")
    for name, value in normalised:
        if not is_token(name):
            raise SipError("header field parameter name is not a token")
        if value is not None and CONTROL_RE.search(value) is not None:
            raise SipError("control character in a header field parameter")
    return normalised


def format_params(params: Params) -> str:
    parts = []
    for name, value in params:
        if value is None:
            parts.append(f";{name}")
        elif _BARE_VALUE_RE.fullmatch(value):
            parts.append(f";{name}={value}")
        else:
            parts.append(f';{name}="' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "".join(parts)


class _Parameterised(Protocol):
    @property
    def params(self) -> Params: ...


_P = TypeVar("_P", bound=_Parameterised)


def parse_by_shape(value: str, name: str, start: int, shapes: dict[str, tuple[_P, int]],
                   parse: Callable[[str], _P], rebuild: Callable[[_P, Params], _P]) -> _P:
    """``parse(value)``, or the same value made from one of the same shape parsed before: ``shapes`` keeps parsed
    values by their text without parameter ``name``'s token (with that parameter's index), and ``rebuild``
    makes a value like a kept one with other parameters.

    What differs between the Vias a user agent sends is the branch, and between its From and To values the tag:
    a value parsed once per shape, then rebuilt with the new token, is what parsing it again would give. Only
    when no quoted-string follows ``start`` and ``;name=`` after it is followed by a token up to the next ``;`` or
    the end: without quoted-strings there, ``;`` only starts a parameter, so the token is that parameter's whole
    value, at the same place in every value of the same shape. What comes before ``start`` (a From's quoted
    display name, most real ones have one) is part of the shape, kept as it is. A token needs no other check."""
    split = _split_varying(value, f";{name}=", start)
    if split is None:
        return parse(value)
    shape, token = split
    template = shapes.get(shape)
    if template is not None:
        kept, at = template
        params = kept.params
        return rebuild(kept, (*params[:at], (name, token), *params[at + 1 :]))
    parsed = parse(value)
    at = _param_index(parsed.params, name, token)
    if at >= 0:  # the parse found that very token as that parameter: a template for its shape
        memo(shapes, shape, (parsed, at))
    return parsed


def _split_varying(value: str, marker: str, start: int) -> tuple[str, str] | None:
    """``(shape, token)``: ``value`` without the token after ``marker`` (found from ``start``), or None (see
    :func:`parse_by_shape`)."""
    if value.find('"', start) >= 0:  # a quoted-string among the parameters: a ';' may be inside it
        return None
    at = value.find(marker, start)
    if at < 0:
        return None
    at += len(marker)
    end = value.find(";", at)
    if end < 0:
        end = len(value)
    token = value[at:end]
    if not is_token(token):
        return None
    return value[:at] + value[end:], token


def _param_index(params: Params, name: str, value: str) -> int:
    """The index of parameter ``name`` when its value is ``value``, else -1."""
    for i, (pname, pvalue) in enumerate(params):
        if pname == name:
            return i if pvalue == value else -1
    return -1


def param(params: Params, name: str) -> str | None:
    for pname, value in params:
        if pname == name:
            return value
    return None
