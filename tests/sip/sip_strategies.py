"""Hypothesis strategies for SIP values and messages, shared by the SIP tests."""

from __future__ import annotations

from hypothesis import strategies as st

from authproxy.sip.addresses import NameAddr
from authproxy.sip.fields import CSeq
from authproxy.sip.message import SipRequest, SipResponse
from authproxy.sip.via import Via

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12)
methods = st.sampled_from(["INVITE", "REGISTER", "OPTIONS", "BYE", "ACK", "CANCEL", "MESSAGE", "SUBSCRIBE"])
hosts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9]{0,8}(\.[a-z][a-z0-9]{0,8}){0,3}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)
ports = st.none() | st.integers(1, 65535)
# Parameter values: tokens, and text that needs a quoted-string (spaces, commas, quotes, backslashes).
param_values = st.none() | tokens | st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from("äé€"), max_size=10)
uris = st.builds(lambda user, host, port: f"sip:{user}@{host}" + ("" if port is None else f":{port}"),
                 st.from_regex(r"[a-z0-9.+_-]{1,10}", fullmatch=True), hosts, ports)


@st.composite
def vias(draw: st.DrawFn) -> Via:
    params: dict[str, str | None] = {"branch": "z9hG4bK" + draw(tokens)}
    if draw(st.booleans()):
        params["received"] = str(draw(st.ip_addresses()))
    if draw(st.booleans()):
        params["rport"] = draw(st.none() | st.integers(1, 65535).map(str))
    for name in draw(st.lists(tokens.map(str.lower), max_size=2)):
        params.setdefault(name, draw(param_values) if name not in ("rport", "received", "branch") else None)
    return Via(draw(st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS"])), draw(hosts), draw(ports),
               tuple(params.items()))


@st.composite
def name_addrs(draw: st.DrawFn, tag: bool | None = None) -> NameAddr:
    params: dict[str, str | None] = {}
    if tag or (tag is None and draw(st.booleans())):
        params["tag"] = draw(tokens)
    for name in draw(st.lists(tokens.map(str.lower), max_size=2)):
        params.setdefault(name, draw(param_values))
    display = draw(st.none() | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12))
    return NameAddr(draw(uris), display, tuple(params.items()))


def _via_lines(draw: st.DrawFn) -> list[tuple[str, str]]:
    """One to four Vias, on one to four field lines (several values per line, comma-separated)."""
    values = [str(v) for v in draw(st.lists(vias(), min_size=1, max_size=4))]
    lines: list[tuple[str, str]] = []
    while values:
        take = draw(st.integers(1, len(values)))
        lines.append(("Via", ", ".join(values[:take])))
        values = values[take:]
    return lines


extra_fields = st.lists(st.tuples(
    st.sampled_from(["Contact", "Subject", "X-Note", "Supported", "User-Agent", "Date", "Accept"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20),
), max_size=4)


@st.composite
def requests(draw: st.DrawFn) -> SipRequest:
    method = draw(methods)
    body = draw(st.binary(max_size=40))
    headers = _via_lines(draw)
    headers += [("Max-Forwards", str(draw(st.integers(0, 255)))), ("From", str(draw(name_addrs(tag=True)))),
                ("To", str(draw(name_addrs(tag=False)))), ("Call-ID", draw(tokens) + "@" + draw(tokens)),
                ("CSeq", str(CSeq(draw(st.integers(0, 2**31 - 1)), method)))]
    headers += draw(extra_fields)
    headers.append(("Content-Length", str(len(body))))
    order = draw(st.permutations(range(len(headers))))
    return SipRequest(method=method, uri=draw(uris), headers=tuple(headers[i] for i in order), body=body)


@st.composite
def responses(draw: st.DrawFn) -> SipResponse:
    body = draw(st.binary(max_size=40))
    headers = _via_lines(draw)
    headers += [("From", str(draw(name_addrs(tag=True)))), ("To", str(draw(name_addrs()))),
                ("Call-ID", draw(tokens)), ("CSeq", str(CSeq(draw(st.integers(0, 2**31 - 1)), draw(methods)))),
                ("Content-Length", str(len(body)))]
    headers += draw(extra_fields)
    reason = draw(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)).strip()
    return SipResponse(status=draw(st.integers(100, 699)), reason=reason, headers=tuple(headers), body=body)


messages = requests() | responses()
