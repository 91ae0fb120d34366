"""The HTTP authentication framework's field grammar, RFC 9110 section 11: parse and build.

Implements:

- section 11.1 auth-scheme (a case-insensitive token), section 11.2 auth-param (``token BWS "=" BWS
  ( token / quoted-string )``, names case-insensitive and at most once per challenge), and token68;
- section 11.3 challenge and section 11.4 credentials;
- section 11.6.1 / 11.7.1 ``#challenge`` lists: several challenges per field line and several field lines,
  in order, where a token followed by SP (not by ``=``) starts a new challenge;
- section 11.6.3 / 11.7.3 ``#auth-param`` lists for (Proxy-)Authentication-Info;
- section 5.6.1 lists (empty elements are accepted, never sent), section 5.6.3 OWS/BWS, section 5.6.4
  quoted-string with quoted-pair unescaping, section 5.5 (CR, LF, NUL and other CTLs are refused).

Everything malformed raises :class:`~authproxy.auth.errors.AuthHeaderError`; nothing else escapes the parsers.
Its messages go into 400 responses, so they name offsets and rules but never echo what the peer sent (Squid
echoed credentials into error pages).
Values are ``str``: how the proxy maps field bytes to text (latin-1 or UTF-8) is its business, so any
character at or above U+0080 is treated as obs-text.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from authproxy.auth.errors import AuthHeaderError
from authproxy.auth.text import has_control

#: Longest field value we parse. Real challenges and credentials are a few hundred bytes; the cap keeps a
#: hostile peer from making the parser (and everything downstream) chew on megabytes.
MAX_FIELD_LENGTH = 16 * 1024

# RFC 9110 section 5.6.2: tchar.
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 section 11.2: token68.
_TOKEN68_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_WS = " \t"

#: Parameters whose values are sent as a bare token when they are one (RFC 7616 section 3.3/3.4 examples).
#: ``qop`` is a token in credentials (one value) but a quoted list in a challenge.
_TOKEN_VALUED_CHALLENGE = frozenset({"algorithm", "stale", "nc", "userhash"})
_TOKEN_VALUED_CREDENTIALS = frozenset({"algorithm", "stale", "nc", "userhash", "qop"})
#: Authentication-Info (RFC 7616 section 3.5 example): qop and nc bare, the rest quoted.
_TOKEN_VALUED_INFO = frozenset({"qop", "nc"})


def is_token(value: str) -> bool:
    """True when ``value`` is an RFC 9110 section 5.6.2 token."""
    return _TOKEN_RE.fullmatch(value) is not None


def _check_field(value: str) -> None:
    if len(value) > MAX_FIELD_LENGTH:
        raise AuthHeaderError(f"authentication field longer than {MAX_FIELD_LENGTH} characters")
    if has_control(value, field_value=True):
        # RFC 9110 section 5.5: CR, LF and NUL are never valid in a field value; other CTLs are not
        # valid in any production of section 11 either.
        raise AuthHeaderError("control character in authentication field")


def quote_string(value: str) -> str:
    """``value`` as an RFC 9110 section 5.6.4 quoted-string (backslash before ``"`` and ``\\``)."""
    if has_control(value, field_value=True):
        raise AuthHeaderError("control character in a parameter value")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class _AuthItem:
    """What a challenge and a credentials item share: ``auth-scheme [ 1*SP ( token68 / #auth-param ) ]``."""

    scheme: str
    token68: str | None = None
    params: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not is_token(self.scheme):
            raise AuthHeaderError("auth-scheme is not a token")
        if self.token68 is not None:
            if self.params:
                raise AuthHeaderError("an auth-scheme carries a token68 or parameters, not both")
            if _TOKEN68_RE.fullmatch(self.token68) is None:
                raise AuthHeaderError("malformed token68")
        # Names are case-insensitive (section 11.2); keep them lower-cased so equality and lookup agree.
        normalised = tuple((name.lower(), value) for name, value in self.params)
        seen: set[str] = set()
        for name, value in normalised:
            if not is_token(name):
                raise AuthHeaderError("auth-param name is not a token")
            if name in seen:
                # Section 11.2: each parameter name MUST only occur once per challenge. Accepting a second
                # one would let two parties read different values from the same field (Squid-style bugs).
                raise AuthHeaderError("an auth-param name occurs twice")
            seen.add(name)
            if has_control(value, field_value=True):
                raise AuthHeaderError("control character in an auth-param value")
        if normalised != self.params:
            object.__setattr__(self, "params", normalised)

    @property
    def scheme_key(self) -> str:
        """The scheme lower-cased, for comparison (section 11.1: case-insensitive)."""
        return self.scheme.lower()

    @functools.cached_property
    def params_by_name(self) -> dict[str, str]:
        """The parameters by their lower-cased names (unique, section 11.2)."""
        return dict(self.params)

    def param(self, name: str) -> str | None:
        """The unquoted value of parameter ``name`` (any case), or None."""
        return self.params_by_name.get(name.lower())


@dataclass(frozen=True)
class Challenge(_AuthItem):
    """One challenge of a (Proxy-)WWW-Authenticate field, RFC 9110 section 11.3."""


@dataclass(frozen=True)
class Credentials(_AuthItem):
    """The credentials of a (Proxy-)Authorization field, RFC 9110 section 11.4."""

    @classmethod
    def _checked(cls, scheme: str, params: tuple[tuple[str, str], ...]) -> Credentials:
        """An instance from parts the caller has already validated (the parser's fast path), without
        validating them a second time."""
        item = object.__new__(cls)
        object.__setattr__(item, "scheme", scheme)
        object.__setattr__(item, "token68", None)
        object.__setattr__(item, "params", params)
        return item


class _Cursor:
    """A position in one field value, with the lexical steps of section 5.6."""

    __slots__ = ("pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_ws(self) -> bool:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _WS:
            self.pos += 1
        return self.pos > start

    def skip_separators(self) -> None:
        # Section 5.6.1: recipients accept empty list elements ("a, , b" and leading/trailing commas).
        while self.pos < len(self.text) and self.text[self.pos] in " \t,":
            self.pos += 1

    def token(self) -> str | None:
        m = _TOKEN_RE.match(self.text, self.pos)
        if m is None:
            return None
        self.pos = m.end()
        return m.group()

    def param_follows(self) -> bool:
        """True when a ``token BWS "="`` starts here, i.e. an auth-param rather than a new challenge."""
        m = _TOKEN_RE.match(self.text, self.pos)
        if m is None:
            return False
        i = m.end()
        while i < len(self.text) and self.text[i] in _WS:
            i += 1
        return i < len(self.text) and self.text[i] == "="

    def token68_element(self) -> str | None:
        """A token68 that makes up the rest of the list element, or None (position unchanged)."""
        m = _TOKEN68_RE.match(self.text, self.pos)
        if m is None:
            return None
        i = m.end()
        while i < len(self.text) and self.text[i] in _WS:
            i += 1
        if i < len(self.text) and self.text[i] != ",":
            return None
        self.pos = m.end()
        return m.group()

    def quoted_string(self) -> str:
        # Section 5.6.4: qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text; quoted-pair = "\" char.
        assert self.peek() == '"'
        self.pos += 1
        out: list[str] = []
        text = self.text
        while True:
            if self.pos >= len(text):
                raise AuthHeaderError("unterminated quoted-string")
            ch = text[self.pos]
            if ch == '"':
                self.pos += 1
                return "".join(out)
            if ch == "\\":
                if self.pos + 1 >= len(text):
                    raise AuthHeaderError("unterminated quoted-pair")
                out.append(text[self.pos + 1])
                self.pos += 2
                continue
            out.append(ch)
            self.pos += 1

    def auth_param(self) -> tuple[str, str]:
        name = self.token()
        if name is None:
            raise AuthHeaderError(f"expected an auth-param at offset {self.pos}")
        self.skip_ws()
        if self.peek() != "=":
            raise AuthHeaderError(f"expected '=' at offset {self.pos}")
        self.pos += 1
        self.skip_ws()
        if self.peek() == '"':
            value = self.quoted_string()
        else:
            token = self.token()
            if token is None:
                raise AuthHeaderError(f"auth-param without a value at offset {self.pos}")
            value = token
        return name.lower(), value

    def end_element(self) -> None:
        self.skip_ws()
        if not self.at_end() and self.peek() != ",":
            raise AuthHeaderError(f"unexpected character at offset {self.pos}")


class _Builder:
    """A challenge or credentials item being assembled while its parameters arrive."""

    __slots__ = ("params", "scheme", "token68")

    def __init__(self, scheme: str) -> None:
        self.scheme = scheme
        self.token68: str | None = None
        self.params: list[tuple[str, str]] = []


def _parse_items(values: Iterable[str]) -> list[_Builder]:
    """Every ``auth-scheme [ 1*SP ( token68 / #auth-param ) ]`` item in ``values``, in order.

    Field lines are parsed as if joined with commas (RFC 9110 section 5.3), so a parameter list may
    continue on the next line. A list element that is ``token BWS "=" ...`` is a parameter of the current
    item; any other token starts a new item (section 11.7.1).
    """
    items: list[_Builder] = []
    for value in values:
        if not isinstance(value, str):
            raise AuthHeaderError("authentication field value is not text")
        _check_field(value)
        cur = _Cursor(value)
        while True:
            cur.skip_separators()
            if cur.at_end():
                break
            if cur.param_follows():
                if not items or items[-1].token68 is not None:
                    raise AuthHeaderError(f"auth-param with no auth-scheme at offset {cur.pos}")
                items[-1].params.append(cur.auth_param())
                cur.end_element()
                continue
            scheme = cur.token()
            if scheme is None:
                raise AuthHeaderError(f"expected an auth-scheme at offset {cur.pos}")
            item = _Builder(scheme)
            items.append(item)
            if cur.skip_ws() and not cur.at_end() and cur.peek() != ",":
                token68 = cur.token68_element()
                if token68 is not None:
                    item.token68 = token68
                else:
                    item.params.append(cur.auth_param())
            cur.end_element()
    return items


def _freeze_challenge(item: _Builder) -> Challenge:
    return Challenge(item.scheme, item.token68, tuple(item.params))


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Every challenge of every (Proxy-)WWW-Authenticate field line, in order.

    RFC 9110 sections 11.6.1 and 11.7.1: a proxy MUST NOT reorder them, and a client picks among them,
    so the order is kept.
    """
    return [_freeze_challenge(item) for item in _parse_items(values)]


_TCHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# The shape nearly every client sends: ``scheme 1*SP name=value *( OWS "," OWS name=value )`` where each value
# is a token or a quoted-string without quoted-pairs. Matched whole by one regex, it is parsed without the
# general cursor; anything else (token68, escapes, empty list elements...) takes the general path. The two
# agree on every input (tests/auth/test_headers.py checks it with hypothesis).
_FAST_PARAM = rf'{_TCHARS}=(?:{_TCHARS}|"[^"\\]*")'
_FAST_CREDENTIALS_RE = re.compile(rf"({_TCHARS}) +({_FAST_PARAM}(?:[ \t]*,[ \t]*{_FAST_PARAM})*)")
_FAST_PARAM_RE = re.compile(rf'({_TCHARS})=(?:({_TCHARS})|"([^"\\]*)")')


def parse_credentials(value: str) -> Credentials:
    """The one credentials item of a (Proxy-)Authorization field value (RFC 9110 section 11.4)."""
    if isinstance(value, str) and len(value) <= MAX_FIELD_LENGTH:
        fast = _FAST_CREDENTIALS_RE.fullmatch(value)
        if fast is not None and not has_control(value, field_value=True):
            params = tuple((name.lower(), token or quoted)
                           for name, token, quoted in _FAST_PARAM_RE.findall(fast.group(2)))
            if len({name for name, _ in params}) == len(params):
                # Everything __post_init__ checks holds by construction here: the regex admits only token
                # names and a scheme, the field has no CTL, names are lower-cased and distinct.
                return Credentials._checked(fast.group(1), params)
    return _parse_credentials_general(value)


def _parse_credentials_general(value: str) -> Credentials:
    items = _parse_items([value])
    if len(items) != 1:
        raise AuthHeaderError(f"expected exactly one credentials item, found {len(items)}")
    item = items[0]
    return Credentials(item.scheme, item.token68, tuple(item.params))


def parse_auth_params(value: str) -> tuple[tuple[str, str], ...]:
    """A ``#auth-param`` list, as in (Proxy-)Authentication-Info (RFC 9110 section 11.6.3/11.7.3).

    Names are lower-cased and must be unique.
    """
    if not isinstance(value, str):
        raise AuthHeaderError("authentication field value is not text")
    _check_field(value)
    cur = _Cursor(value)
    params: list[tuple[str, str]] = []
    seen: set[str] = set()
    while True:
        cur.skip_separators()
        if cur.at_end():
            break
        name, pvalue = cur.auth_param()
        if name in seen:
            raise AuthHeaderError(f"the auth-param {name} occurs twice")  # a token: safe to show
        seen.add(name)
        params.append((name, pvalue))
        cur.end_element()
    return tuple(params)


def _format_params(params: Sequence[tuple[str, str]], token_valued: frozenset[str]) -> str:
    parts: list[str] = []
    for name, value in params:
        # RFC 8187 section 3.2: an ext-value ("name*") is sent bare; every ext-value is a token.
        if (name in token_valued or name.endswith("*")) and is_token(value):
            parts.append(f"{name}={value}")
        else:
            # realm is always quoted (section 11.5); so is everything not known to be token-valued, which
            # is what deployed parsers expect to see.
            parts.append(f"{name}={quote_string(value)}")
    return ", ".join(parts)


def _build(item: _AuthItem, token_valued: frozenset[str]) -> str:
    if item.token68 is not None:
        return f"{item.scheme} {item.token68}"
    if not item.params:
        return item.scheme
    return f"{item.scheme} {_format_params(item.params, token_valued)}"


def build_challenge(c: Challenge) -> str:
    """``c`` as one challenge of a (Proxy-)WWW-Authenticate field value."""
    return _build(c, _TOKEN_VALUED_CHALLENGE)


def build_credentials(c: Credentials) -> str:
    """``c`` as a (Proxy-)Authorization field value."""
    return _build(c, _TOKEN_VALUED_CREDENTIALS)


def build_auth_params(params: Sequence[tuple[str, str]]) -> str:
    """A (Proxy-)Authentication-Info field value from ``(name, value)`` pairs (RFC 7616 section 3.5)."""
    for name, _ in params:
        if not is_token(name):
            raise AuthHeaderError("auth-param name is not a token")
    return _format_params([(n.lower(), v) for n, v in params], _TOKEN_VALUED_INFO)
