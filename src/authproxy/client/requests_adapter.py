"""A requests transport adapter that reaches targets through an authenticating proxy and answers its 407s.

``session.mount("https://", ProxyAdapter("http://proxy:3128", auth=("alice", "secret")))`` (and ``http://``):
the adapter is the proxy client, so whatever ``proxies`` requests passes in are ignored. It runs the same
blocking machinery as :class:`authproxy.client.ProxyTransport` (:mod:`authproxy.client._sync`, whose 407 logic
is :mod:`authproxy.auth.responder`), and hands requests a urllib3 response, so content decoding, cookies,
redirects and ``stream=True`` behave as with requests' own adapter. ``verify`` and ``cert`` come from requests
per request (``session.verify = "ca.pem"``) and apply to origins; ``proxy_verify`` to an ``https://`` proxy.
"""

from __future__ import annotations

import io
import ssl
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import httpcore
import requests
import requests.adapters
import requests.exceptions
from urllib3 import HTTPResponse
from urllib3._collections import HTTPHeaderDict

from authproxy.client import _shared, _sync
from authproxy.client.routing import Routes, make_responder
from authproxy.client.settings import (
    ConfiguredByOptions,
    ProxyEndpoint,
    ProxyOptions,
    ProxySelector,
    make_ssl_context,
    takes_keywords_of,
)


class _Body(io.RawIOBase):
    """An httpcore response body as the file object urllib3 reads; closes itself (and the response) at EOF
    so that urllib3's ``stream()`` loop ends."""

    def __init__(self, response: httpcore.Response) -> None:
        super().__init__()
        self._response = response
        self._chunks: Iterator[bytes] = iter(response.iter_stream())
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending:
            try:
                with _mapped():
                    self._pending = next(self._chunks)
            except StopIteration:
                self.close()
                return 0
        count = min(len(view), len(self._pending))
        view[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def close(self) -> None:
        if not self.closed:
            self._response.close()
        super().close()


class _mapped:
    """httpcore's exceptions as requests'."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if not isinstance(exc, httpcore.NetworkError | httpcore.ProtocolError | httpcore.TimeoutException):
            return
        if isinstance(exc, httpcore.ConnectTimeout):
            raise requests.exceptions.ConnectTimeout(str(exc)) from exc
        if isinstance(exc, httpcore.TimeoutException):
            raise requests.exceptions.ReadTimeout(str(exc)) from exc
        if isinstance(exc.__context__ or exc.__cause__, ssl.SSLError):
            raise requests.exceptions.SSLError(str(exc)) from exc
        raise requests.exceptions.ConnectionError(str(exc)) from exc


def _timeouts(timeout: Any) -> dict[str, float | None]:
    if isinstance(timeout, tuple):
        connect, read = timeout
    else:
        connect = read = timeout
    return {"connect": connect, "read": read, "write": read, "pool": connect}


def _body(body: Any) -> tuple[bytes | Iterable[bytes], bytes | None]:
    """The prepared body as (content, replayable bytes or None)."""
    if body is None:
        return b"", b""
    if isinstance(body, str):
        body = body.encode("utf-8")
    if isinstance(body, bytes | bytearray):
        return bytes(body), bytes(body)
    if hasattr(body, "read"):
        def chunks() -> Iterator[bytes]:
            while block := body.read(65536):
                yield block.encode("utf-8") if isinstance(block, str) else block
        return chunks(), None
    return (b.encode("utf-8") if isinstance(b, str) else b for b in body), None


class ProxyAdapter(ConfiguredByOptions, requests.adapters.HTTPAdapter):
    """A requests adapter through an authenticating proxy; options as :class:`authproxy.client.ProxyTransport`
    (the fields of :class:`authproxy.client.ProxyOptions`), except ``verify`` and ``cert``, which requests
    passes with each request (``session.verify``, ``session.cert``).

    Failures at the proxy raise :class:`authproxy.client.ProxyError` (``ProxyAuthError`` for authentication);
    network failures raise requests' own exceptions.
    """

    @takes_keywords_of(ProxyOptions)
    def __init__(self, options: ProxyOptions) -> None:
        if options.verify is not True or options.cert is not None:
            raise ValueError("ProxyAdapter takes verify and cert from requests, per request: set session.verify "
                             "and session.cert (proxy_verify is the adapter's own, for an https:// proxy)")
        super().__init__()
        self.options = options
        self._selector = ProxySelector(options)
        self._proxy_ssl = make_ssl_context(options.proxy_verify)
        # One responder per proxy, whatever the TLS settings of the origin: the nonce cache is the proxy's.
        self._responders: dict[ProxyEndpoint, Any] = {}
        self._routes: dict[tuple[Any, Any], Routes[httpcore.ConnectionPool]] = {}
        self._lock = threading.Lock()

    def _routes_for(self, verify: Any, cert: Any) -> Routes[httpcore.ConnectionPool]:
        key = (verify, cert)
        with self._lock:
            routes = self._routes.get(key)
            if routes is None:
                origin_ssl = make_ssl_context(verify, cert)

                def proxy_pool(endpoint: ProxyEndpoint) -> httpcore.ConnectionPool:
                    with self._lock:
                        responder = self._responders.get(endpoint)
                        if responder is None:
                            responder = self._responders[endpoint] = make_responder(endpoint, self.options)
                    route = _shared.ProxyRoute(endpoint, responder, self._proxy_ssl, origin_ssl,
                                               self.options.keepalive_expiry)
                    return _sync.ProxyPool(route, self.options.max_connections, self.options.keepalive_expiry)

                def direct_pool() -> httpcore.ConnectionPool:
                    return httpcore.ConnectionPool(ssl_context=origin_ssl, max_connections=self.options.max_connections,
                                                   keepalive_expiry=self.options.keepalive_expiry)

                routes = self._routes[key] = Routes(self._selector, proxy_pool, direct_pool)
            return routes

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None,
             verify: bool | str = True, cert: Any = None, proxies: Mapping[str, str] | None = None) -> Any:
        full_url = str(request.url or "")
        url = urllib.parse.urlsplit(full_url)
        scheme = url.scheme.lower()
        if scheme not in ("http", "https") or not url.hostname:
            raise requests.exceptions.InvalidURL(f"cannot send {full_url!r} through a proxy")
        port = url.port or (443 if scheme == "https" else 80)
        pool = self._routes_for(verify, cert).pool_for(scheme, url.hostname, port)
        headers = [(k.encode("latin-1"), (v if isinstance(v, bytes) else str(v).encode("latin-1")))
                   for k, v in request.headers.items()]
        if not any(k.lower() == b"host" for k, _ in headers):
            headers.insert(0, (b"Host", url.netloc.rpartition("@")[2].encode("idna")))
        content, replayable = _body(request.body)
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        core = httpcore.Request(
            method=str(request.method or "GET").encode("ascii"),
            url=httpcore.URL(scheme=scheme.encode(), host=url.hostname.encode("idna"), port=port,
                             target=target.encode("ascii")),
            headers=_shared.clean_headers(headers),
            content=content,
            extensions={"timeout": _timeouts(timeout), _shared.BODY_EXTENSION: replayable},
        )
        with _mapped():
            response = pool.handle_request(core)
        reason = response.extensions.get("reason_phrase", b"")
        raw = HTTPResponse(
            body=_Body(response),
            headers=HTTPHeaderDict([(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers]),
            status=response.status,
            reason=reason.decode("latin-1") if isinstance(reason, bytes) else None,
            preload_content=False,
            decode_content=False,
            request_method=request.method,
            request_url=full_url,
        )
        result = self.build_response(request, raw)
        if not stream:
            _ = result.content
        return result

    def close(self) -> None:
        with self._lock:
            routes = list(self._routes.values())
            self._routes.clear()
        for r in routes:
            for pool in r.take_all():
                pool.close()
