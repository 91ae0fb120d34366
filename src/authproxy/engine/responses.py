"""Responses the proxy makes up itself: 400, 403, 407, 413, 431, 502, 504 ...

Each says which hop answered and why, in a short text body and an RFC 9209 ``Proxy-Status`` field, so that a user
never has to guess whether the proxy, a parent proxy or the origin refused them. Nothing here ever echoes a
credential: details are chosen by the proxy, not copied from the request.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus

#: RFC 9209 section 2.3 error types the proxy uses, by the situation that causes them.
PROXY_STATUS_ERRORS = frozenset(
    {
        "http_request_error",
        "http_request_denied",
        "destination_not_found",
        "destination_unavailable",
        "destination_ip_prohibited",
        "dns_error",
        "dns_timeout",
        "connection_refused",
        "connection_timeout",
        "connection_terminated",
        "http_response_incomplete",
        "http_response_header_section_size",
        "http_response_header_size",
        "http_response_timeout",
        "http_protocol_error",
        "proxy_internal_error",
        "proxy_loop_detected",
    }
)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _sf_string(text: str) -> str:
    """An RFC 8941 sf-string: printable ASCII only, with '"' and '\\' escaped."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def made_up_response(
    status: int,
    detail: str,
    *,
    proxy_name: str,
    error: str | None = None,
    keep_alive: bool = True,
    extra_headers: Iterable[tuple[str, str]] = (),
    head_only: bool = False,
) -> bytes:
    """The bytes of a complete response the proxy makes up.

    ``detail`` is one sentence for a person ("the origin 127.0.0.1:9 refused the connection"); it goes in the
    body and in Proxy-Status ``details``. ``error`` is an RFC 9209 error type.
    """
    if error is not None and error not in PROXY_STATUS_ERRORS:
        raise ValueError(f"not an RFC 9209 error type: {error}")
    reason = _reason(status)
    body = f"{proxy_name}: {status} {reason}\n{detail}\n".encode("utf-8", "replace")
    proxy_status = proxy_name + (f"; error={error}" if error else "") + f"; details={_sf_string(detail)}"
    lines = [
        f"HTTP/1.1 {status} {reason}",
        f"Proxy-Status: {proxy_status}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
    ]
    lines.extend(f"{name}: {value}" for name, value in extra_headers)
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
    return head if head_only else head + body
