"""httpx transports that reach targets through an authenticating proxy and answer its 407s.

``httpx.Client(transport=ProxyTransport("http://proxy:3128", auth=("alice", "secret")))``: plain-HTTP targets
go to the proxy in absolute form, HTTPS targets through a CONNECT tunnel this transport opens itself, so it
can answer Digest (RFC 7616) and Basic (RFC 7617) challenges on the CONNECT too (httpx's own proxy support
cannot: encode/httpx#2033). The 407 logic is :mod:`authproxy.auth.responder`, shared with the async transport
and the requests adapter.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from types import TracebackType

import httpcore
import httpx

from authproxy.client import _async, _shared, _sync
from authproxy.client.routing import Routes, make_responder
from authproxy.client.settings import (
    ConfiguredByOptions,
    ProxyEndpoint,
    ProxyOptions,
    ProxySelector,
    make_ssl_context,
    takes_keywords_of,
)

_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
)


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    """httpcore's exceptions as httpx's, the way httpx's own transport reports them."""
    try:
        yield
    except Exception as exc:
        for source, target in _EXCEPTIONS:
            if isinstance(exc, source):
                raise target(str(exc)) from exc
        raise


def _core_request(request: httpx.Request) -> httpcore.Request:
    try:
        body: bytes | None = request.content  # known bytes: hashable for auth-int, resendable after a 407
    except httpx.RequestNotRead:
        body = None
    extensions = dict(request.extensions)
    extensions[_shared.BODY_EXTENSION] = body
    return httpcore.Request(
        method=request.method.encode("ascii"),
        url=httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host, port=request.url.port,
                         target=request.url.raw_path),
        headers=_shared.clean_headers(request.headers.raw),
        content=body if body is not None else request.stream,
        extensions=extensions,
    )


class _SyncStream(httpx.SyncByteStream):
    def __init__(self, stream: httpcore.Response) -> None:
        self._response = stream

    def __iter__(self) -> Iterator[bytes]:
        with _mapped():
            yield from self._response.iter_stream()

    def close(self) -> None:
        self._response.close()


class _AsyncStream(httpx.AsyncByteStream):
    def __init__(self, stream: httpcore.Response) -> None:
        self._response = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped():
            async for part in self._response.aiter_stream():
                yield part

    async def aclose(self) -> None:
        await self._response.aclose()


class _Common(ConfiguredByOptions):
    """What the sync and async transports build from their options."""

    def _setup(self, options: ProxyOptions) -> None:
        self.options = options
        self._selector = ProxySelector(options)
        self._origin_ssl = make_ssl_context(options.verify, options.cert)
        self._proxy_ssl = make_ssl_context(options.proxy_verify)

    def _route(self, endpoint: ProxyEndpoint) -> _shared.ProxyRoute:
        return _shared.ProxyRoute(endpoint, make_responder(endpoint, self.options), self._proxy_ssl,
                                  self._origin_ssl, self.options.keepalive_expiry)


class ProxyTransport(_Common, httpx.BaseTransport):
    """An httpx transport through an authenticating proxy (see the module docstring).

    Its keywords are the fields of :class:`authproxy.client.ProxyOptions` (``from_options`` takes a ready
    one): ``auth`` is ``(user, password)``; without it the proxy URL's userinfo (percent-decoded once) is used,
    then with ``trust_env`` ``~/.netrc``. ``trust_env=True`` also honours ``HTTP_PROXY``/``HTTPS_PROXY``/
    ``NO_PROXY`` (``proxy_url`` may then be None). ``verify``/``cert`` are for origins, ``proxy_verify`` for an
    ``https://`` proxy. ``allow_basic_cleartext=False`` refuses Basic to an ``http://`` proxy. Failures at the
    proxy raise :class:`authproxy.client.ProxyError` (``ProxyAuthError`` for authentication).
    """

    @takes_keywords_of(ProxyOptions)
    def __init__(self, options: ProxyOptions) -> None:
        self._setup(options)
        self._routes: Routes[httpcore.ConnectionPool] = Routes(self._selector, self._proxy_pool, self._direct_pool)

    def _proxy_pool(self, endpoint: ProxyEndpoint) -> httpcore.ConnectionPool:
        return _sync.ProxyPool(self._route(endpoint), self.options.max_connections, self.options.keepalive_expiry)

    def _direct_pool(self) -> httpcore.ConnectionPool:
        return httpcore.ConnectionPool(ssl_context=self._origin_ssl, max_connections=self.options.max_connections,
                                       keepalive_expiry=self.options.keepalive_expiry)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        pool = self._routes.pool_for(url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        with _mapped():
            response = pool.handle_request(_core_request(request))
        return httpx.Response(status_code=response.status, headers=response.headers,
                              stream=_SyncStream(response), extensions=response.extensions)

    def close(self) -> None:
        for pool in self._routes.take_all():
            pool.close()

    def __enter__(self) -> ProxyTransport:
        return self

    def __exit__(self, exc_type: type[BaseException] | None = None, exc_value: BaseException | None = None,
                 traceback: TracebackType | None = None) -> None:
        self.close()


class AsyncProxyTransport(_Common, httpx.AsyncBaseTransport):
    """The asyncio/trio twin of :class:`ProxyTransport`, same options, for ``httpx.AsyncClient``."""

    @takes_keywords_of(ProxyOptions)
    def __init__(self, options: ProxyOptions) -> None:
        self._setup(options)
        self._routes: Routes[httpcore.AsyncConnectionPool] = Routes(self._selector, self._proxy_pool,
                                                                    self._direct_pool)

    def _proxy_pool(self, endpoint: ProxyEndpoint) -> httpcore.AsyncConnectionPool:
        return _async.AsyncProxyPool(self._route(endpoint), self.options.max_connections,
                                     self.options.keepalive_expiry)

    def _direct_pool(self) -> httpcore.AsyncConnectionPool:
        return httpcore.AsyncConnectionPool(ssl_context=self._origin_ssl,
                                            max_connections=self.options.max_connections,
                                            keepalive_expiry=self.options.keepalive_expiry)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        pool = self._routes.pool_for(url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        with _mapped():
            response = await pool.handle_async_request(_core_request(request))
        return httpx.Response(status_code=response.status, headers=response.headers,
                              stream=_AsyncStream(response), extensions=response.extensions)

    async def aclose(self) -> None:
        for pool in self._routes.take_all():
            await pool.aclose()

    async def __aenter__(self) -> AsyncProxyTransport:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None = None, exc_value: BaseException | None = None,
                        traceback: TracebackType | None = None) -> None:
        await self.aclose()


__all__ = ["AsyncProxyTransport", "ProxyTransport"]
