"""Rewriting message heads as they cross the proxy (RFC 9110 section 7.6, RFC 9112 section 3.2.2).

Pure functions over bytes: the server feeds them what httptools parsed and writes what they return.
- hop-by-hop fields and every field ``Connection`` names are removed (RFC 9110 section 7.6.1);
- ``Proxy-Authorization`` is consumed here and never forwarded (section 11.7.2; CVE-2011-1498);
  ``Authorization`` and ``WWW-Authenticate`` pass untouched;
- what an origin sends in this hop's own fields (``Proxy-Authenticate``, ``Proxy-Authentication-Info``,
  ``Proxy-Status``) is removed from its response (section 11.7, RFC 9209 section 2);
- Host is regenerated from the absolute URI, whatever the client sent (RFC 9112 section 3.2.2);
- ``Via`` is added (section 7.6.3), and a request whose ``Via`` already lists this proxy has looped;
  ``Max-Forwards`` is honoured for TRACE and OPTIONS (section 7.6.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import httptools

from authproxy.auth.errors import ProtocolError
from authproxy.auth.roles import PROXY
from authproxy.auth.text import has_control

#: Fields that describe one connection, never the message (RFC 9110 section 7.6.1, RFC 9112 section 9.6).
#: Proxy-Authorization is here because this proxy consumes it.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"trailer",
        b"proxy-authorization",
        # Framing is ours to choose on each side; Content-Length is re-added when we keep it.
        b"content-length",
    }
)

#: Fields an origin's response never carries past this proxy: the hop-by-hop ones, and this hop's own. A proxy's
#: authentication fields (RFC 9110 section 11.7) are between a client and the proxy that sends them, and
#: Proxy-Status (RFC 9209 section 2) is written by intermediaries: an origin's words in them would be taken for
#: this proxy's (a fake nextnonce, a challenge a client would answer with its proxy password).
RESPONSE_DROPPED = HOP_BY_HOP | frozenset(f.encode("ascii") for f in PROXY.fields) | {b"proxy-status"}

#: Request fields never copied to the origin: the hop-by-hop ones, and Host, which is regenerated.
_NOT_FORWARDED = HOP_BY_HOP | {b"host"}

#: What ``connection_tokens`` gives for a request without a Connection field (most of them).
_NO_TOKENS: frozenset[bytes] = frozenset()

#: The lengths of those names: a response field of another length is relayed without lower-casing its name.
_DROPPED_LENGTHS = frozenset(len(name) for name in RESPONSE_DROPPED)

#: Fields a TRACE echo leaves out (RFC 9110 section 9.3.8: the recipient should exclude sensitive data).
_TRACE_HIDDEN = frozenset({b"proxy-authorization", b"authorization", b"cookie"})

Headers = list[tuple[bytes, bytes]]


class Target(NamedTuple):
    """Where an absolute-form request goes: RFC 9112 section 3.2.2. (A NamedTuple: one is made per request, and a
    frozen dataclass's __init__ costs an object.__setattr__ call per field.)"""

    host: str  # without brackets
    port: int
    origin_form: bytes  # path and query, what the origin sees on its request line
    host_header: bytes  # the regenerated Host value

    @property
    def authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Framing:
    """How a request's body is delimited (RFC 9112 section 6): its length, or chunked, or no body."""

    content_length: int | None
    chunked: bool


_NO_BODY = Framing(None, False)


def check_request_head(method: bytes, version: str, headers: Headers) -> Framing:
    """The request's framing, after the checks llhttp leaves to us. ProtocolError for anything ambiguous.

    llhttp already refuses Content-Length with Transfer-Encoding, duplicate or malformed Content-Length,
    obs-fold, bare CR and whitespace before a colon. What it lets through and a proxy must not forward:
    - a version other than HTTP/1.0 or 1.1 (HTTP/0.9 has no head at all) -> 505;
    - Transfer-Encoding in an HTTP/1.0 request (RFC 9112 section 6.1: the framing is faulty, whatever
      Content-Length says; HTTP/1.0 has no chunked coding, so the two ends may disagree on the body) -> 400;
    - Transfer-Encoding that is not exactly one final "chunked" (RFC 9112 section 6.1: a request with a
      coding we do not understand gets 501; "chunked" twice, or anything after it, is a framing error -> 400);
    - no Host in an HTTP/1.1 request, more than one Host, or a Host holding a list (section 3.2) -> 400.
    """
    if version not in ("1.1", "1.0"):
        raise ProtocolError(f"HTTP/{version} is not supported; this proxy speaks HTTP/1.1", status_hint=505)
    hosts = 0
    codings: list[bytes] = []
    content_length: int | None = None
    for name, value in headers:
        size = len(name)  # lower-case only the names that can be one of these three (most are not)
        if size == 4:
            if name.lower() == b"host":
                hosts += 1
                if b"," in value or not value.strip():
                    raise ProtocolError("the Host field must hold exactly one host")
        elif size == 17:
            if name.lower() == b"transfer-encoding":
                codings += [c.strip().lower() for c in value.split(b",")]
        elif size == 14 and name.lower() == b"content-length":
            content_length = int(value)  # llhttp has rejected anything but one valid number
    if hosts > 1:
        raise ProtocolError("more than one Host field (RFC 9112 section 3.2)")
    if hosts == 0 and version == "1.1" and method != b"CONNECT":
        raise ProtocolError("an HTTP/1.1 request needs a Host field (RFC 9112 section 3.2)")
    if codings and version == "1.0":
        raise ProtocolError("an HTTP/1.0 request cannot carry Transfer-Encoding (RFC 9112 section 6.1)")
    if method == b"CONNECT":
        return _NO_BODY
    if codings:
        if codings[-1] != b"chunked":
            raise ProtocolError("a request's Transfer-Encoding must end in chunked (RFC 9112 section 6.3)")
        if len(codings) > 1:
            if codings.count(b"chunked") > 1:
                raise ProtocolError("chunked may be applied only once (RFC 9112 section 7)")
            raise ProtocolError("only the chunked transfer coding is supported in requests", status_hint=501)
        return Framing(None, True)
    return Framing(content_length, False) if content_length else _NO_BODY


def parse_absolute_target(target: bytes) -> Target:
    """The destination of an absolute-form request-target; ProtocolError (400) for anything else."""
    if target.startswith(b"/") or target == b"*":
        raise ProtocolError("this is a proxy: the request-target must be an absolute URI (http://host/path)")
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        raise ProtocolError("the request-target is not a valid URI") from None
    scheme = (url.schema or b"").lower()
    if scheme == b"https":
        raise ProtocolError("use CONNECT for https:// targets; this proxy does not originate TLS")
    if scheme != b"http":
        raise ProtocolError("only http:// targets can be forwarded (https:// goes through CONNECT)")
    authority = target.split(b"//", 1)[-1].split(b"/", 1)[0].split(b"?", 1)[0].split(b"#", 1)[0]
    if url.userinfo is not None or b"@" in authority:
        # RFC 9110 section 4.2.4: userinfo in an http URI is an error for a recipient.
        raise ProtocolError("the request-target must not carry user information (user@host)")
    host = (url.host or b"").decode("ascii", "strict")
    if not host:
        raise ProtocolError("the request-target has no host")
    port = url.port if url.port is not None else 80
    if not 0 < port < 65536:
        raise ProtocolError("the request-target port is out of range")
    path = url.path or b"/"
    origin_form = path + b"?" + url.query if url.query is not None else path
    shown = f"[{host}]" if ":" in host else host
    host_header = (shown if port == 80 else f"{shown}:{port}").encode("ascii")
    return Target(host.lower(), port, origin_form, host_header)


def parse_authority(target: bytes) -> tuple[str, int]:
    """``host:port`` of a CONNECT request (RFC 9110 section 9.3.6: the port is mandatory)."""
    text = target.decode("ascii", "replace")
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not host:
        raise ProtocolError("CONNECT needs host:port as its target")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ProtocolError("CONNECT port is out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ProtocolError("an IPv6 CONNECT target must be bracketed: [addr]:port")
    if "@" in host or "/" in host or has_control(host):
        raise ProtocolError("CONNECT target is not a host:port")
    return host.lower(), port


def connection_tokens(headers: Headers) -> frozenset[bytes]:
    """The lower-cased options of every Connection field (RFC 9110 section 7.6.1)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if len(name) == 10 and name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(tokens) if tokens else _NO_TOKENS


def end_to_end(headers: Headers, tokens: frozenset[bytes]) -> Headers:
    """``headers`` without hop-by-hop fields and without the fields ``Connection`` named."""
    return [(n, v) for n, v in headers if (lower := n.lower()) not in HOP_BY_HOP and lower not in tokens]


def response_fields(headers: Headers) -> tuple[Headers, int | None, list[bytes] | None]:
    """An origin's response fields as relayed, its Content-Length, and its transfer codings (lower-cased, in
    order; None without Transfer-Encoding). One pass, and a second only when a Connection field names a field
    of its own (not one dropped anyway), since it may name a field that came before it (RFC 9110 section 7.6.1)."""
    content_length: int | None = None
    codings: list[bytes] | None = None
    named: set[bytes] | None = None  # what Connection fields name beyond RESPONSE_DROPPED
    kept: Headers = []
    for field in headers:
        name = field[0]
        if len(name) in _DROPPED_LENGTHS:
            lower = name.lower()
            if lower in RESPONSE_DROPPED:
                if lower == b"content-length":
                    content_length = int(field[1])  # llhttp has checked it is one valid number, and the only one
                elif lower == b"transfer-encoding":
                    found = [c.strip().lower() for c in field[1].split(b",")]
                    codings = (codings or []) + [c for c in found if c]
                elif lower == b"connection":
                    options = {t.strip().lower() for t in field[1].split(b",")} - RESPONSE_DROPPED
                    if options:
                        named = options if named is None else named | options
                continue
        kept.append(field)
    if named is not None:
        kept = [(n, v) for n, v in kept if n.lower() not in named]
    return kept, content_length, codings


def max_forwards(headers: Headers) -> int | None:
    """The Max-Forwards value, or None when absent (RFC 9110 section 7.6.2)."""
    for name, value in headers:
        if name.lower() == b"max-forwards":
            if not value.strip().isdigit():
                raise ProtocolError("Max-Forwards must be a non-negative integer")
            return int(value)
    return None


def via_lists(headers: Headers, received_by: bytes) -> bool:
    """Whether a ``Via`` field already names ``received_by`` (lower-case) as a hop: the request has passed
    through this proxy before, so forwarding it again would loop (RFC 9110 section 7.6.3: ``Via =
    #( received-protocol RWS received-by [ RWS comment ] )``; Squid's "Forwarding loop detected")."""
    for name, value in headers:
        if len(name) == 3 and name.lower() == b"via":
            lowered = value.lower()
            if received_by in lowered:
                # Comments go first: one may hold a comma, or our name ("1.1 squid (via 1.1 authproxy)").
                for entry in _without_comments(lowered).split(b","):
                    parts = entry.split()
                    # received-by is a pseudonym or host[:port] ("authproxy:3128" names this proxy too).
                    if len(parts) >= 2 and parts[1].partition(b":")[0] == received_by:
                        return True
    return False


def _without_comments(value: bytes) -> bytes:
    """``value`` with its comments (RFC 9110 section 5.6.5: parenthesised, nested, with quoted-pairs) replaced by
    a space; an unterminated comment runs to the end."""
    if b"(" not in value:
        return value
    out = bytearray()
    depth = 0
    escaped = False
    for byte in value:
        if depth:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash: a quoted-pair
                escaped = True
            elif byte == 0x28:
                depth += 1
            elif byte == 0x29:
                depth -= 1
                if not depth:
                    out.append(0x20)
        elif byte == 0x28:
            depth = 1
        else:
            out.append(byte)
    return bytes(out)


def _add_via_and_framing(parts: list[bytes], via: bytes, content_length: int | None, chunked: bool) -> None:
    """Via (RFC 9110 section 7.6.3) and the framing this hop chose (RFC 9112 section 6)."""
    parts += (b"Via: ", via, b"\r\n")
    if chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif content_length is not None:
        parts += (b"Content-Length: ", str(content_length).encode(), b"\r\n")


def build_request_head(
    method: bytes,
    target: Target,
    headers: Headers,
    *,
    via: bytes,
    content_length: int | None,
    chunked: bool,
    hop_limit: int | None = None,
    tokens: frozenset[bytes] = _NO_TOKENS,
) -> bytes:
    """The request head to send to the origin, in origin-form (RFC 9112 section 3.2.1): the end-to-end fields of
    ``headers`` (``end_to_end``, with ``tokens`` the options of its Connection fields), done in the same pass."""
    parts = [method, b" ", target.origin_form, b" HTTP/1.1\r\nHost: ", target.host_header, b"\r\n"]
    for name, value in headers:
        lower = name.lower()
        if lower in _NOT_FORWARDED or lower in tokens:
            continue
        if lower == b"max-forwards" and hop_limit is not None:
            value = str(hop_limit - 1).encode()
        parts += (name, b": ", value, b"\r\n")
    _add_via_and_framing(parts, via, content_length, chunked)
    parts.append(b"\r\n")
    return b"".join(parts)


def build_response_head(
    status: int,
    reason: bytes,
    headers: Headers,
    *,
    via: bytes,
    content_length: int | None,
    chunked: bool,
    keep_alive: bool,
) -> bytes:
    """The response head to send to the client; framing and Connection are the proxy's own."""
    parts = [b"HTTP/1.1 ", str(status).encode(), b" ", reason, b"\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    _add_via_and_framing(parts, via, content_length, chunked)
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def trace_echo(method: bytes, target: bytes, version: str, headers: Headers) -> bytes:
    """The body of a TRACE answered here (Max-Forwards: 0), without credentials (RFC 9110 section 9.3.8)."""
    lines = [method + b" " + target + b" HTTP/" + version.encode()]
    lines += [n + b": " + v for n, v in headers if n.lower() not in _TRACE_HIDDEN]
    return b"\r\n".join(lines) + b"\r\n\r\n"
