"""authproxy's client library: httpx transports and a requests adapter that answer a proxy's 407.

- :class:`ProxyTransport` / :class:`AsyncProxyTransport`: for ``httpx.Client(transport=...)`` and
  ``httpx.AsyncClient(transport=...)``;
- :class:`ProxyAdapter`: for ``requests.Session().mount("https://", ...)`` (and ``http://``);
- :class:`ProxyOptions`: their options, once (their constructor keywords are its fields);
- :class:`ProxyError` / :class:`ProxyAuthError`: what they raise when the proxy hop fails.

They need the ``client`` extra (httpx, requests); importing this package does not, so the proxy never depends
on them: each entry point is imported when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from authproxy.client.errors import ProxyAuthError, ProxyError, ProxyURLError
from authproxy.client.settings import ProxyOptions

if TYPE_CHECKING:
    from authproxy.client.httpx_transport import AsyncProxyTransport, ProxyTransport
    from authproxy.client.requests_adapter import ProxyAdapter

__all__ = ["AsyncProxyTransport", "ProxyAdapter", "ProxyAuthError", "ProxyError", "ProxyOptions", "ProxyTransport",
           "ProxyURLError"]


def __getattr__(name: str) -> Any:
    if name in ("ProxyTransport", "AsyncProxyTransport"):
        from authproxy.client import httpx_transport

        return getattr(httpx_transport, name)
    if name == "ProxyAdapter":
        from authproxy.client import requests_adapter

        return requests_adapter.ProxyAdapter
    raise AttributeError(f"module 'authproxy.client' has no attribute {name!r}")
