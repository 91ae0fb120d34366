"""SIP requests and responses as frozen, self-validating values, and their wire form (RFC 3261 section 7).

A message is its start line, its header fields in order as ``(name, value)`` pairs (one pair per field line,
the name in its full conventional spelling, compact forms expanded: section 7.3.3), and its body as bytes.
Typed views read the fields a proxy needs: ``vias``, ``from_``, ``to``, ``call_id``, ``cseq``,
``max_forwards``, ``content_length``. :func:`authproxy.sip.parse.parse_datagram` checks all of them when it
parses, so on a parsed message they never raise; each is computed once per message (the message is frozen).

``to_bytes()`` is the wire form (``compact=True`` uses the compact names); parsing it gives back an equal
message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

from authproxy.sip.addresses import URI_RE, NameAddr
from authproxy.sip.fields import (
    COMPACT_OF,
    CONTROL_RE,
    LIST_FIELDS,
    CSeq,
    SipError,
    canonical_name,
    is_token,
    parse_call_id,
    parse_count,
    split_list,
)
from authproxy.sip.via import Via

SIP_VERSION = "SIP/2.0"
#: Section 20.22: Max-Forwards is an integer in 0-255 (70 is what a UAC sends, section 8.1.1.6).
MAX_FORWARDS_LIMIT = 255

Headers = tuple[tuple[str, str], ...]
_V = TypeVar("_V")


class _once(Generic[_V]):  # a decorator, named like functools.cached_property
    """``functools.cached_property`` without its per-read lock (Python 3.11 takes one): the value is computed
    on the first read and stored in the instance, where every later read finds it. A message is frozen and
    read by one thread."""

    def __init__(self, func: Callable[[Any], _V]) -> None:
        self.func = func
        self.name = func.__name__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _once[_V]: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> _V: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> _V | _once[_V]:
        if obj is None:
            return self
        value = self.func(obj)
        obj.__dict__[self.name] = value
        return value


class CheckedHeaders(tuple[tuple[str, str], ...]):
    """Header fields already held to what :func:`_check_headers` requires (canonical names; values without
    control characters, outer whitespace or invalid UTF-8): the parser, which checks all of that as it reads,
    builds its messages with them, so a parsed message is not checked a second time. Only this package makes
    them, from text it has checked."""

    __slots__ = ()


_KEYS: dict[str, str] = {}


def _key(name: str) -> str:
    """The index key of field name ``name``: its canonical name, lower-cased (memoised; bounded)."""
    key = _KEYS.get(name)
    if key is None:
        key = canonical_name(name).lower()
        if len(_KEYS) < 1024:
            _KEYS[name] = key
    return key


def _check_utf8(text: str) -> None:
    # Section 25: SIP text is UTF-8; a lone surrogate cannot go on the wire.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise SipError("text that is not valid UTF-8") from None


def _check_headers(headers: Iterable[tuple[str, str]]) -> Headers:
    out: list[tuple[str, str]] = []
    for name, value in headers:
        if not isinstance(name, str) or not isinstance(value, str):
            raise SipError("header field name and value must be text")
        if CONTROL_RE.search(value) is not None:
            # Section 7.3.1 folding is undone by the parser; a CR or LF left in a value is an injection.
            raise SipError("control character in a header field value")
        if value != value.strip(" \t"):
            raise SipError("header field value with leading or trailing whitespace")
        _check_utf8(value)
        out.append((canonical_name(name), value))
    return tuple(out)


@dataclass(frozen=True, kw_only=True)
class SipMessage:
    """What requests and responses share: header fields in order and the body."""

    headers: Headers = ()
    body: bytes = b""

    def __post_init__(self) -> None:
        if type(self.headers) is not CheckedHeaders:
            object.__setattr__(self, "headers", _check_headers(self.headers))
        if not isinstance(self.body, bytes):
            raise SipError("the body must be bytes")

    # -- reading fields -------------------------------------------------------------------------------------

    @_once
    def _index(self) -> dict[str, list[str]]:
        # Field values by lower-cased (canonical) name, in order: every lookup after the first is a dict get.
        index: dict[str, list[str]] = {}
        for fname, value in self.headers:
            index.setdefault(fname.lower(), []).append(value)
        return index

    def get_all(self, name: str) -> list[str]:
        """The values of every field line named ``name`` (any case, compact or full), in order."""
        return list(self._index.get(_key(name), ()))

    def get(self, name: str) -> str | None:
        """The value of the one field line named ``name``, None when absent; SipError when repeated."""
        values = self._index.get(_key(name), ())
        if len(values) > 1:
            raise SipError(f"{canonical_name(name)} appears more than once")
        return values[0] if values else None

    def values(self, name: str) -> list[str]:
        """Every element of field ``name`` across its field lines: a list field (Via, Contact, Route...) split
        on its commas (section 7.3.1), any other field one element per line."""
        lines = self.get_all(name)
        if canonical_name(name).lower() not in LIST_FIELDS:
            return lines
        return [element for line in lines for element in split_list(line)]

    def _required(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise SipError(f"{name} is missing (section 8.1.1)")
        return value

    @_once
    def vias(self) -> tuple[Via, ...]:
        """Every Via value, topmost first (section 20.42)."""
        vias = tuple(Via.parse(v) for v in self.values("Via"))
        if not vias:
            raise SipError("Via is missing (section 8.1.1.7)")
        return vias

    @_once
    def from_(self) -> NameAddr:
        return NameAddr.parse(self._required("From"))

    @_once
    def to(self) -> NameAddr:
        return NameAddr.parse(self._required("To"))

    @_once
    def call_id(self) -> str:
        return parse_call_id(self._required("Call-ID"))

    @_once
    def cseq(self) -> CSeq:
        return CSeq.parse(self._required("CSeq"))

    @_once
    def max_forwards(self) -> int | None:
        value = self.get("Max-Forwards")
        return None if value is None else parse_count(value, "Max-Forwards", maximum=MAX_FORWARDS_LIMIT)

    @_once
    def content_length(self) -> int | None:
        value = self.get("Content-Length")
        return None if value is None else parse_count(value, "Content-Length", maximum=2**31 - 1)

    def check(self) -> None:
        """Read every typed view once: SipError unless the fields every message needs (section 8.1.1: Via,
        From, To, Call-ID, CSeq) are there and well formed, and Max-Forwards and Content-Length when present."""
        self.vias, self.from_, self.to, self.call_id, self.cseq, self.max_forwards  # noqa: B018
        length = self.content_length
        if length is not None and length != len(self.body):
            raise SipError("Content-Length does not match the body")

    # -- building -------------------------------------------------------------------------------------------

    def _start_line(self) -> str:
        raise NotImplementedError

    def replace_headers(self, headers: Iterable[tuple[str, str]]) -> SipMessage:
        raise NotImplementedError

    def to_bytes(self, *, compact: bool = False) -> bytes:
        """The message on the wire: start line, one line per field (compact names when asked), CRLF, body."""
        if not compact:
            return wire(self._start_line(), self.headers, self.body)
        lines = [self._start_line()]
        for name, value in self.headers:
            lines.append(f"{COMPACT_OF.get(name, name)}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body

    def start_line(self) -> str:
        """The start line (section 7.1 / 7.2), without its CRLF."""
        return self._start_line()


def _check_method(method: str) -> None:
    if not is_token(method):
        raise SipError("the method is not a token")


@dataclass(frozen=True, kw_only=True)
class SipRequest(SipMessage):
    """``Method Request-URI SIP/2.0`` (section 7.1). Methods are case-sensitive (section 7.1)."""

    method: str
    uri: str

    def __post_init__(self) -> None:
        SipMessage.__post_init__(self)
        _check_method(self.method)
        if URI_RE.fullmatch(self.uri) is None:
            raise SipError("malformed Request-URI (section 25.1)")

    def check(self) -> None:
        SipMessage.check(self)
        if self.cseq.method != self.method:
            # Section 8.1.1.5: the CSeq method MUST match the request's.
            raise SipError("the CSeq method is not the request method")

    def _start_line(self) -> str:
        return f"{self.method} {self.uri} {SIP_VERSION}"

    def replace_headers(self, headers: Iterable[tuple[str, str]]) -> SipRequest:
        return SipRequest(method=self.method, uri=self.uri, headers=tuple(headers), body=self.body)


@dataclass(frozen=True, kw_only=True)
class SipResponse(SipMessage):
    """``SIP/2.0 Status-Code Reason-Phrase`` (section 7.2); the status is 100-699."""

    status: int
    reason: str = field(default="")

    def __post_init__(self) -> None:
        SipMessage.__post_init__(self)
        if not isinstance(self.status, int) or not 100 <= self.status <= 699:
            raise SipError("status code out of range (section 7.2)")
        if CONTROL_RE.search(self.reason) is not None or self.reason != self.reason.strip(" \t"):
            raise SipError("malformed Reason-Phrase")
        _check_utf8(self.reason)

    def _start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"

    def replace_headers(self, headers: Iterable[tuple[str, str]]) -> SipResponse:
        return SipResponse(status=self.status, reason=self.reason, headers=tuple(headers), body=self.body)


Message = SipRequest | SipResponse


# -- what the parser builds -----------------------------------------------------------------------------------

def _parsed_views(message: SipMessage, index: dict[str, list[str]]) -> None:
    """:meth:`SipMessage.check` for a message the parser builds, from the index of field values it built as it
    read (key: the canonical name lower-cased): every typed view read once, in check()'s order with its errors,
    and stored where the once-per-message views keep their values."""
    lines = index.get("via")
    if lines is None:
        raise SipError("Via is missing (section 8.1.1.7)")
    elements = [element for line in lines for element in split_list(line)]
    vias = tuple([Via.parse(element) for element in elements])
    values = index.get("from")
    if values is None:
        raise SipError("From is missing (section 8.1.1)")
    from_ = NameAddr.parse(values[0])  # From, To, Call-ID, CSeq: at most once, the parser saw to it
    values = index.get("to")
    if values is None:
        raise SipError("To is missing (section 8.1.1)")
    to = NameAddr.parse(values[0])
    values = index.get("call-id")
    if values is None:
        raise SipError("Call-ID is missing (section 8.1.1)")
    call_id = parse_call_id(values[0])
    values = index.get("cseq")
    if values is None:
        raise SipError("CSeq is missing (section 8.1.1)")
    cseq = CSeq.parse(values[0])
    values = index.get("max-forwards")
    max_forwards = None if values is None else parse_count(values[0], "Max-Forwards", maximum=MAX_FORWARDS_LIMIT)
    values = index.get("content-length")
    length = None if values is None else parse_count(values[0], "Content-Length", maximum=2**31 - 1)
    if length is not None and length != len(message.body):
        raise SipError("Content-Length does not match the body")
    message.__dict__.update(_index=index, vias=vias, from_=from_, to=to, call_id=call_id, cseq=cseq,
                            max_forwards=max_forwards, content_length=length)


def parsed_request(method: str, uri: str, headers: CheckedHeaders, index: dict[str, list[str]],
                   body: bytes) -> SipRequest:
    """The request the parser read: ``headers`` as the parser checked them and ``index`` their values by key.
    What ``__post_init__`` and :meth:`SipRequest.check` would check and the parser has not, is checked here;
    the dataclass's own construction (a setattr per field, the header checks again) is skipped."""
    _check_method(method)
    if URI_RE.fullmatch(uri) is None:
        raise SipError("malformed Request-URI (section 25.1)")
    request = object.__new__(SipRequest)
    request.__dict__.update(headers=headers, body=body, method=method, uri=uri)
    _parsed_views(request, index)
    if request.cseq.method != method:
        raise SipError("the CSeq method is not the request method")  # section 8.1.1.5
    return request


def parsed_response(status: int, reason: str, headers: CheckedHeaders, index: dict[str, list[str]],
                    body: bytes) -> SipResponse:
    """The response the parser read (see :func:`parsed_request`); ``status`` is three digits, 100-699."""
    if CONTROL_RE.search(reason) is not None or reason != reason.strip(" \t"):
        raise SipError("malformed Reason-Phrase")
    response = object.__new__(SipResponse)
    response.__dict__.update(headers=headers, body=body, status=status, reason=reason)
    _parsed_views(response, index)
    return response


def wire(start_line: str, headers: Iterable[tuple[str, str]], body: bytes = b"") -> bytes:
    """A message's wire form from its parts, without building a message: for fields taken from a parsed
    message (checked when parsed) plus fields this package made, as a proxy forwards them (section 16.6)."""
    return (start_line + "\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers)
            + "\r\n").encode("utf-8") + body


def with_to_tag(to: str, tag: str) -> str:
    """The To value ``to`` with ``;tag=`` added unless it has one (section 8.2.6.2). The value is kept as the
    client wrote it: in the addr-spec form a parameter after the URI is the field's, so appending is right in
    both forms."""
    return to if NameAddr.parse(to).tag is not None else f"{to};tag={tag}"


def response_to(request: SipRequest, status: int, reason: str, *, to_tag: str,
                headers: Iterable[tuple[str, str]] = (), body: bytes = b"") -> SipResponse:
    """A response to ``request`` as a UAS (or a proxy answering itself) makes it, section 8.2.6.2: every Via
    in order, From, Call-ID and CSeq copied as received, To copied with ``to_tag`` added when it has no tag
    (a stateless server derives the tag from the request, so a retransmission gets the same one), then
    ``headers`` and Content-Length."""
    if not is_token(to_tag):
        raise SipError("the To tag must be a token")
    request.check()  # SipError (400) for a request without the fields a response copies
    out: list[tuple[str, str]] = [("Via", value) for value in request.get_all("Via")]
    for name in ("From", "To", "Call-ID", "CSeq"):  # each present exactly once: check() said so
        value = request.get_all(name)[0]
        out.append((name, with_to_tag(value, to_tag) if name == "To" else value))
    out.extend(headers)
    out.append(("Content-Length", str(len(body))))
    response = SipResponse(status=status, reason=reason, headers=tuple(out), body=body)
    response.check()
    return response


_M = TypeVar("_M", SipRequest, SipResponse)


def replace_top_via(message: _M, via: Via | None) -> _M:
    """``message`` with its topmost Via value (the first element of the first Via line, section 7.3.1)
    replaced by ``via``, or removed when ``via`` is None (a proxy pops its own from a response, section
    16.7 step 3); a line left empty goes."""
    return message.replace_headers(top_via_replaced(message.headers, via))


def top_via_replaced(headers: Headers, via: Via | None) -> list[tuple[str, str]]:
    """The header fields of :func:`replace_top_via`, as a list (for a caller that changes more before it builds
    one message)."""
    out = list(headers)
    for i, (name, value) in enumerate(out):
        if name == "Via":
            line = with_first_value(value, None if via is None else str(via))
            if line is not None:
                out[i] = (name, line)
            else:
                del out[i]
            break
    return out


@overload
def with_first_value(line: str, first: str) -> str: ...


@overload
def with_first_value(line: str, first: None) -> str | None: ...


def with_first_value(line: str, first: str | None) -> str | None:
    """A list field's line (section 7.3.1; a Via line: a proxy stamps or pops its top value, sections 16.6 and
    16.7) with its first value replaced by ``first``, or removed when ``first`` is None; None when no value is
    left. The one place that splits a line for that: what forwards, relays and answers all call it."""
    rest = split_list(line)[1:] if "," in line else []
    if first is not None:
        rest.insert(0, first)
    return ", ".join(rest) if rest else None
