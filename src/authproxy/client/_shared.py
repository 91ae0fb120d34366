"""What the two halves of the proxy exchange share, none of it IO: the route to a proxy, header clean-up,
the absolute-form target, the request body to replay, the pool's state queries, and the named seams.

:mod:`authproxy.client._async` is written once; :mod:`authproxy.client._sync` is generated from it by
``scripts/unasync.py``. Whatever differs between blocking and asynchronous code is named so that the script's
token substitution maps it (``AsyncX`` to ``X``, ``aclose`` to ``close``, ``handle_async_request`` to
``handle_request``...). httpcore names its own twins that way; the one primitive of ours, the lock, is named
that way here.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterable
from typing import Protocol

import anyio
import httpcore

from authproxy.auth.responder import Responder
from authproxy.client.settings import ProxyEndpoint

#: Request extension holding the whole body as bytes when the caller has it (it can then be hashed for
#: auth-int and sent again after a 407); absent or None for a one-shot stream.
BODY_EXTENSION = "authproxy.body"

Headers = list[tuple[bytes, bytes]]
Content = bytes | Iterable[bytes]

#: Caller headers that never leave with a request: ours is the only Proxy-Authorization, and only to the proxy.
STRIPPED = frozenset({b"proxy-authorization", b"proxy-connection"})

# The seams: the async half names the first, the generated sync half the second. anyio's lock works under
# asyncio and trio alike (httpcore's async backend is anyio too).
AsyncLock = anyio.Lock
Lock = threading.Lock


def decode_headers(headers: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
    """Field values as text: UTF-8 when they are, else Latin-1 (RFC 9110 section 5.5: octets, mostly ASCII)."""
    out: list[tuple[str, str]] = []
    for name, value in headers:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = value.decode("latin-1")
        out.append((name.decode("latin-1"), text))
    return tuple(out)


def clean_headers(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    return [(k, v) for k, v in headers if k.lower() not in STRIPPED]


def absolute_target(url: httpcore.URL) -> bytes:
    """The absolute-form request-target a proxy is sent (RFC 9112 section 3.2.2), default port left out."""
    default = 80 if url.scheme == b"http" else 443
    authority = url.host if url.port in (None, default) else b"%b:%d" % (url.host, url.port or default)
    return url.scheme + b"://" + authority + url.target


def request_content(request: httpcore.Request) -> tuple[Content, bytes | None]:
    """What to send as the body, and the bytes to hash/replay (None: a one-shot stream)."""
    body = request.extensions.get(BODY_EXTENSION)
    if isinstance(body, bytes):
        return body, body
    return request.stream, None  # type: ignore[return-value]


class ProxyRoute:
    """One proxy, its responder, and the TLS settings towards it and towards the origins behind it."""

    def __init__(self, endpoint: ProxyEndpoint, responder: Responder, proxy_ssl: ssl.SSLContext | None,
                 origin_ssl: ssl.SSLContext, keepalive_expiry: float | None) -> None:
        self.endpoint = endpoint
        self.responder = responder
        self.proxy_ssl = proxy_ssl
        self.origin_ssl = origin_ssl
        self.keepalive_expiry = keepalive_expiry
        self.origin = httpcore.Origin(endpoint.scheme.encode(), endpoint.host.encode("idna"), endpoint.port)


class ConnectionState(Protocol):
    """The state queries httpcore's pool asks of a connection, sync or async alike."""

    def info(self) -> str: ...

    def has_expired(self) -> bool: ...

    def is_idle(self) -> bool: ...

    def is_closed(self) -> bool: ...


class ConnectionStatus:
    """Answers the pool's state queries from the connection underneath (``_current``); these do no IO, so
    the sync and async connection classes share them."""

    _remote: httpcore.Origin

    def _current(self) -> ConnectionState:
        raise NotImplementedError

    def can_handle_request(self, origin: httpcore.Origin) -> bool:
        return origin == self._remote

    def info(self) -> str:
        return self._current().info()

    def has_expired(self) -> bool:
        return self._current().has_expired()

    def is_idle(self) -> bool:
        return self._current().is_idle()

    def is_closed(self) -> bool:
        return self._current().is_closed()
