"""The client library's errors, and turning a proxy's refusal into words: which hop failed and what to try.

:class:`ProxyError` and :class:`ProxyAuthError` are the responder's (:mod:`authproxy.auth.errors`), raised
again here for the client's callers; :class:`ProxyURLError` is the client's own.

A proxy that makes up an error response says why in ``Proxy-Status`` (RFC 9209): one list member per proxy,
the one nearest the origin first and the one nearest us last (section 2), and the member that failed carries
an ``error`` parameter (section 2.3 registry). ``Via`` (RFC 9110 section 7.6.3) names the proxies the answer
came through. From those, and the status code when they are missing, this module says whether the proxy we
talk to, a parent proxy behind it, or the origin failed, and the likeliest cause.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from authproxy.auth.errors import AuthProxyError
from authproxy.auth.errors import ProxyAuthError as ProxyAuthError
from authproxy.auth.errors import ProxyError as ProxyError


class ProxyURLError(AuthProxyError, ValueError):
    """A proxy URL that cannot be used; the message says which part is wrong (never the password)."""


# RFC 9209 section 2.3 error types, grouped by what they say about the next hop.
_ADVICE: dict[str, tuple[str, str]] = {
    "dns_error": ("the host name did not resolve", "check the spelling of the host name, or the proxy's DNS"),
    "dns_timeout": ("the host name did not resolve in time", "retry; if it persists the proxy's DNS is down"),
    "destination_not_found": ("the destination does not exist", "check the host name"),
    "destination_unavailable": ("the destination is unavailable", "retry later"),
    "destination_ip_prohibited": ("the proxy may not connect to that address",
                                  "ask the proxy's administrator, or use another proxy"),
    "destination_ip_unroutable": ("the address is unroutable from the proxy", "check the host name"),
    "connection_refused": ("it refused the connection (nothing listens on that port)",
                           "check the port in the URL and that the server is running"),
    "connection_terminated": ("it closed the connection before answering",
                              "the server may speak TLS where plain HTTP was sent, or the reverse: check the "
                              "scheme and port"),
    "connection_timeout": ("it did not accept the connection in time",
                           "the server may be down, or a firewall drops the packets"),
    "connection_read_timeout": ("it stopped sending", "retry; the server may be overloaded"),
    "connection_write_timeout": ("it stopped reading", "retry; the server may be overloaded"),
    "connection_limit_reached": ("too many connections", "retry later"),
    "tls_protocol_error": ("the TLS handshake with it failed", "check that the port speaks TLS"),
    "tls_certificate_error": ("its certificate was refused", "check the server's certificate"),
    "tls_alert_received": ("it sent a TLS alert", "check the TLS settings on both sides"),
    "http_request_error": ("the request was malformed", "check the URL and headers sent"),
    "http_request_denied": ("the proxy's policy refused this request (often a CONNECT to a port other than "
                            "443, or a forbidden destination)", "ask the proxy's administrator which "
                            "destinations and ports are allowed"),
    "http_response_incomplete": ("its response was cut short", "retry; the server may have crashed"),
    "http_response_header_section_size": ("its response head was too large", "none on this side"),
    "http_response_timeout": ("it did not answer in time", "the server is slow or stuck; retry later"),
    "http_protocol_error": ("it answered with something that is not HTTP",
                            "the port may speak another protocol (or TLS where plain HTTP was sent)"),
    "proxy_internal_error": ("the proxy failed internally", "see the proxy's log"),
    "proxy_configuration_error": ("the proxy is misconfigured", "see the proxy's log"),
    "proxy_loop_detected": ("the request looped between proxies", "check the proxies' parent settings"),
}
#: Errors that describe the proxy's own decision rather than the next hop.
_OWN_DECISION = frozenset({"http_request_denied", "http_request_error", "proxy_internal_error",
                           "proxy_configuration_error", "proxy_loop_detected", "destination_ip_prohibited"})


@dataclass(frozen=True)
class StatusMember:
    """One member of a Proxy-Status list: the proxy's name and its parameters."""

    name: str
    params: dict[str, str]


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    buf: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            buf.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            buf.append(ch)
            escaped = True
        elif ch == '"':
            buf.append(ch)
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        out: list[str] = []
        it = iter(value[1:-1])
        for ch in it:
            out.append(next(it, "") if ch == "\\" else ch)
        return "".join(out)
    return value


def parse_proxy_status(values: Sequence[str]) -> list[StatusMember]:
    """The members of Proxy-Status field lines, leniently (RFC 8941 lists; a bad member is skipped)."""
    members: list[StatusMember] = []
    for value in values:
        for raw in _split_outside_quotes(value, ","):
            pieces = _split_outside_quotes(raw, ";")
            name = _unquote(pieces[0])
            if not name:
                continue
            params: dict[str, str] = {}
            for piece in pieces[1:]:
                key, eq, pvalue = piece.partition("=")
                params[key.strip().lower()] = _unquote(pvalue) if eq else "?1"
            members.append(StatusMember(name, params))
    return members


def _get_all(headers: Sequence[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


@dataclass(frozen=True)
class HopVerdict:
    """Which hop failed, why, and what to try; ``error`` is the RFC 9209 type when one was given."""

    hop: str  # "proxy", "parent proxy", "origin"
    cause: str
    advice: str
    error: str | None
    reporter: str | None  # the proxy that reported it


def judge_failure(status: int, headers: Sequence[tuple[str, str]], body_text: str, destination: str) -> HopVerdict:
    """Name the failed hop from a response the proxy made up (see the module docstring)."""
    members = parse_proxy_status(_get_all(headers, "Proxy-Status"))
    failing = [(i, m) for i, m in enumerate(members) if "error" in m.params]
    detail = ""
    if failing:
        index, member = failing[-1]
        error = member.params["error"]
        detail = member.params.get("details", "")
        parent = index < len(members) - 1  # a member before the last is a proxy further from us
        reporter = member.name
        cause, advice = _ADVICE.get(error, (f"it reported {error}", "see the proxy's message"))
        if error in _OWN_DECISION:
            hop = "parent proxy" if parent else "proxy"
            text = f"the {hop} {reporter} refused: {cause}"
        else:
            hop = "origin"
            via = f"the parent proxy {reporter}" if parent else f"the proxy {reporter}"
            text = f"{via} could not get through to {destination}: {cause}"
        if detail:
            text += f" ({detail})"
        return HopVerdict(hop, text, advice, error, reporter)
    first_line = body_text.strip().splitlines()[0] if body_text.strip() else ""
    said = f' It said: "{first_line[:200]}"' if first_line else ""
    if status in (502, 503, 504):
        return HopVerdict("origin", f"the proxy answered {status}: it could not get an answer from the next hop "
                          f"(the origin {destination}, or a parent proxy).{said}",
                          "check that the destination is up and reachable from the proxy", None, None)
    if status == 403:
        return HopVerdict("proxy", f"the proxy refused the request with 403: its policy does not allow this "
                          f"destination or port.{said}", "ask the proxy's administrator", None, None)
    return HopVerdict("proxy", f"the proxy answered {status}.{said}", "see the proxy's message", None, None)


def connect_failure(status: int, headers: Sequence[tuple[str, str]], body_text: str, destination: str) -> ProxyError:
    """The error for a CONNECT the proxy refused with something other than 407."""
    verdict = judge_failure(status, headers, body_text, destination)
    via = ", ".join(_get_all(headers, "Via"))
    message = f"CONNECT {destination} failed with {status}: {verdict.cause}; try: {verdict.advice}"
    if via:
        message += f" (Via: {via})"
    return ProxyError(message, status=status, headers=headers, body_text=body_text,
                      reason=verdict.error or f"status-{status}", hop=verdict.hop)
