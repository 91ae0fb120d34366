"""Parsing SIP messages from bytes: one UDP datagram, or the next message of a TCP/TLS stream (RFC 3261
sections 7, 7.4.1 and 18.3; the grammar of section 25).

Strict, bounded, and total (h11's invariant): any bytes give a message or :class:`SipError`, never another
exception. What is checked:

- lines end in CRLF; a bare CR or LF, a NUL or another control character is an error; text is UTF-8;
- CRLFs before the start line are skipped (section 7.5; RFC 5626 keep-alives);
- request line ``Method SP Request-URI SP SIP/2.0``, status line ``SIP/2.0 SP 3DIGIT SP Reason-Phrase``;
  another version gets status hint 505 (section 21.5.6);
- header fields ``name *WSP ":" value`` (section 7.3.1 allows whitespace before the colon), folded lines
  unfolded to one SP, compact names expanded (section 7.3.3), Call-ID, CSeq, From, To, Max-Forwards,
  Content-Length and Content-Type at most once;
- Via, From, To, Call-ID and CSeq present and well formed, the CSeq method the request's (section 8.1.1);
- framing (section 18.3): over a stream Content-Length is required and ends the body; in a datagram the
  datagram ends it, a Content-Length larger than what arrived is an error and bytes beyond it are dropped;
- limits: message size (513, section 21.5.11), line length and field count (513), body (413 beyond
  ``max_body_size``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from authproxy.sip.fields import SINGLE_FIELDS, SipError, canonical_name
from authproxy.sip.message import SIP_VERSION, CheckedHeaders, Message, parsed_request, parsed_response


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what is parsed. A UDP datagram cannot exceed 65,535 bytes; section 18.1.1 sends anything
    over 1,300 bytes by TCP, so real messages are a few kilobytes."""

    max_message_size: int = 65535
    max_line_length: int = 8192
    max_header_count: int = 100
    max_body_size: int = 65535

    def __post_init__(self) -> None:
        for name in ("max_message_size", "max_line_length", "max_header_count", "max_body_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")


DEFAULT_LIMITS = Limits()

_STATUS_RE = re.compile(r"[1-6][0-9][0-9]")
_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE)
_BAD_BYTES_RE = re.compile(rb"[\x00\r\n]")
_CONTENT_LENGTH_RE = re.compile(rb"\r\n(?:content-length|l)[ \t]*:(.*?)(?=\r\n|\Z)", re.IGNORECASE | re.DOTALL)
# The other control characters (CTL but HTAB, CR, LF, NUL: those are found line by line), which no header field
# value may hold (section 25.1; the message's own check, done here once over all the field lines).
_OTHER_CONTROL_RE = re.compile(rb"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _too_large(what: str) -> SipError:
    return SipError(f"{what} too large", status_hint=513)


def _skip_leading_crlf(data: bytes) -> int:
    pos = 0
    while data.startswith(b"\r\n", pos):
        pos += 2
    return pos


def _decode(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise SipError("a line that is not UTF-8 (section 25)") from None


def _start_line(line: str) -> tuple[str, str, str]:
    parts = line.split(" ", 2)
    if len(parts) != 3:
        raise SipError("malformed start line (section 7.1 / 7.2)")
    return parts[0], parts[1], parts[2]


def _check_version(version: str) -> None:
    if version.upper() != SIP_VERSION:
        if _VERSION_RE.fullmatch(version):
            raise SipError("SIP version not supported", status_hint=505)
        raise SipError("malformed SIP-Version")


# Every control character but HTAB, CR and LF included (what is left of them once the CRLFs are taken out).
_CONTROLS = bytes([*range(0x09), *range(0x0A, 0x20), 0x7F])


def _clean_lines(block: bytes, limits: Limits) -> list[str] | None:
    """The field lines of ``block`` decoded, when neither :func:`_lines` nor the control-character check has
    anything to say (no line can be too long, every CR and LF is in a CRLF, no control character but HTAB, valid
    UTF-8): three passes in C. None otherwise, and then the slower reading names the first rule broken."""
    if len(block) > limits.max_line_length:
        return None
    rest = block.replace(b"\r\n", b"")
    if len(rest.translate(None, _CONTROLS)) != len(rest):
        return None
    try:
        return block.decode("utf-8").split("\r\n")
    except UnicodeDecodeError:
        return None


def _lines(block: bytes, limits: Limits) -> list[str]:
    """The field lines of ``block`` (the head after the start line), decoded. One regex and one decode for the
    whole block when it is short enough that no line can be too long; else line by line, which says which
    rule a line breaks first."""
    crlf = block.count(b"\r\n")  # no NUL, and every CR and every LF in a CRLF: what _BAD_BYTES_RE finds
    if len(block) <= limits.max_line_length and b"\x00" not in block and block.count(b"\r") == crlf \
            and block.count(b"\n") == crlf:
        try:
            return block.decode("utf-8").split("\r\n")
        except UnicodeDecodeError:
            pass  # the line-by-line reading below names the error
    out = []
    for raw in block.split(b"\r\n"):
        if len(raw) > limits.max_line_length:
            raise _too_large("header line")
        if _BAD_BYTES_RE.search(raw) is not None:
            raise SipError("bare CR, LF or NUL in a header line")
        out.append(_decode(raw))
    return out


# A field name as written (before the colon, whitespace included) -> its canonical name, index key and whether it
# may appear once only. A memo, bounded: the same few dozen spellings arrive in every message.
_NAMES: dict[str, tuple[str, str, bool]] = {}


def _name(written: str) -> tuple[str, str, bool]:
    known = _NAMES.get(written)
    if known is None:
        name = canonical_name(written.rstrip(" \t"))  # SipError when it is not a token
        key = name.lower()
        known = (name, key, key in SINGLE_FIELDS)
        if len(_NAMES) < 1024:
            _NAMES[written] = known
    return known


def _unfold(lines: list[str], limits: Limits) -> list[str]:
    """``lines`` with each continuation line joined to the field it continues (section 7.3.1)."""
    logical: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if not logical:
                raise SipError("continuation line before the first header field")
            logical[-1] = logical[-1].rstrip(" \t") + " " + line.strip(" \t")
            if len(logical[-1]) > limits.max_line_length:
                raise _too_large("folded header field")
        else:
            logical.append(line)
    return logical


def _fields(lines: list[str], limits: Limits, folded: bool = True) -> tuple[CheckedHeaders, dict[str, list[str]]]:
    """The header fields of ``lines`` (decoded, CRLF already removed), unfolded (section 7.3.1), and their
    values by index key (the message's lookup table, built in the same pass). ``folded=False``: the caller
    knows that no line continues another."""
    if folded:
        for line in lines:
            if line[:1] in (" ", "\t"):
                lines = _unfold(lines, limits)
                break
    if len(lines) > limits.max_header_count:
        raise _too_large("header field count")
    fields: list[tuple[str, str]] = []
    index: dict[str, list[str]] = {}
    for line in lines:
        written, colon, value = line.partition(":")
        if not colon:
            raise SipError("header line without ':'")
        name, key, single = _NAMES.get(written) or _name(written)
        value = value.strip(" \t")
        values = index.get(key)
        if values is None:
            index[key] = [value]
        elif single:
            raise SipError(f"{name} appears more than once")
        else:
            values.append(value)
        fields.append((name, value))
    # Canonical names, values stripped and decoded from UTF-8, no control character (checked by the caller):
    # all that SipMessage checks, so it does not check again.
    return CheckedHeaders(fields), index


def _message(head: bytes, body: bytes, limits: Limits) -> Message:
    """The message whose head (start line and fields, without the blank line) is ``head``."""
    first, crlf, block = head.partition(b"\r\n")
    if len(first) > limits.max_line_length:
        raise _too_large("start line")
    if _BAD_BYTES_RE.search(first) is not None:
        raise SipError("bare CR, LF or NUL in the start line")
    a, b, c = _start_line(_decode(first))
    lines = _clean_lines(block, limits) if crlf else []
    if lines is not None:
        folded = block[:1] in (b" ", b"\t") or b"\r\n " in block or b"\r\n\t" in block
        fields, index = _fields(lines, limits, folded)
    else:
        fields, index = _fields(_lines(block, limits), limits)
        if _OTHER_CONTROL_RE.search(head, len(first)) is not None:
            raise SipError("control character in a header field value")
    if a.upper().startswith("SIP/"):
        _check_version(a)
        if _STATUS_RE.fullmatch(b) is None:
            raise SipError("malformed Status-Code (section 7.2)")
        return parsed_response(int(b), c, fields, index, body)
    _check_version(c)
    return parsed_request(a, b, fields, index, body)


def _content_length(head: bytes) -> int | None:
    """Content-Length read from the raw head, before the whole message is parsed (to frame a stream)."""
    m = _CONTENT_LENGTH_RE.search(head)  # the first field line so named, as a split on CRLF finds it
    if m is None:
        return None
    digits = m.group(1).strip(b" \t")
    if not digits.isdigit() or len(digits) > 10:
        raise SipError("Content-Length is not a number")
    return int(digits)


def parse_datagram(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Message:
    """The message in one UDP datagram (section 18.3: the datagram bounds the message)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SipError("a datagram is bytes")
    data = bytes(data)
    if len(data) > limits.max_message_size:
        raise _too_large("message")
    start = _skip_leading_crlf(data)
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        raise SipError("no empty line after the header fields")
    head = data[start:end]
    rest = data[end + 4 :]
    length = _content_length(head)
    if length is not None:
        if length > len(rest):
            raise SipError("Content-Length larger than the datagram (section 18.3)")
        rest = rest[:length]  # section 18.3: bytes beyond Content-Length are discarded
    if len(rest) > limits.max_body_size:
        raise SipError("body too large", status_hint=413)
    return _message(head, rest, limits)


def _frame(buffer: bytes, limits: Limits) -> tuple[int, int, int] | None:
    """Where the next message of a stream is: (start after leading CRLFs, end of its head, end of its body), or
    None while its head is not complete. Content-Length is required (section 18.3: it frames stream messages)."""
    start = _skip_leading_crlf(buffer)
    end = buffer.find(b"\r\n\r\n", start)
    if end < 0:
        if len(buffer) - start > limits.max_message_size:
            raise _too_large("message head")
        return None
    if end - start > limits.max_message_size:
        raise _too_large("message head")
    length = _content_length(buffer[start:end])
    if length is None:
        raise SipError("Content-Length is required over a stream transport (section 18.3)")
    if length > limits.max_body_size:
        raise SipError("body too large", status_hint=413)
    total = end + 4 + length
    if total - start > limits.max_message_size:
        raise _too_large("message")
    return start, end, total


def stream_frame_length(buffer: bytes, limits: Limits = DEFAULT_LIMITS) -> int | None:
    """How many bytes of ``buffer`` the next message of a stream takes (leading CRLFs included) once its head
    is complete, None before; SipError as :func:`parse_stream` raises it for the framing. A connection that
    knows it then waits for that many bytes instead of parsing again at every read."""
    frame = _frame(bytes(buffer), limits)
    return None if frame is None else frame[2]


def parse_stream(buffer: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[Message, int] | None:
    """The next message of a stream and how many bytes of ``buffer`` it took (leading CRLFs included), or
    None when more bytes are needed. Content-Length is required (section 18.3: it frames stream messages)."""
    if not isinstance(buffer, bytes | bytearray | memoryview):
        raise SipError("a stream buffer is bytes")
    buffer = bytes(buffer)
    frame = _frame(buffer, limits)
    if frame is None:
        return None
    start, end, total = frame
    if len(buffer) < total:
        return None
    return _message(buffer[start:end], buffer[end + 4 : total], limits), total
