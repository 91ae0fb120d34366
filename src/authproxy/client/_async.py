"""The IO around the responder, written once: connections to the proxy, the CONNECT exchange, tunnels.

This is the asynchronous half (asyncio or trio, through httpcore's anyio backend). The blocking half,
:mod:`authproxy.client._sync`, is generated from this file by ``scripts/unasync.py``: edit this file, run the
script, commit both (a test fails when they differ). Names that differ between the halves go through the seams
the script maps (see :mod:`authproxy.client._shared`).

Built on httpcore's pieces (its HTTP/1.1 connection over h11, its network backends with TLS inside TLS,
its pool), with the proxy exchange our own: :class:`AsyncProxyLink` runs :meth:`Responder.flow`, reads a 407's
body whatever its framing (h11 knows Content-Length, chunked and read-until-close), and opens a new connection
when the proxy closed the old one.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import httpcore

from authproxy.auth.messages import ProxyRequest, ProxyResponse, wants_body
from authproxy.client import _shared
from authproxy.client._shared import (
    ConnectionState,
    ConnectionStatus,
    Content,
    Headers,
    ProxyRoute,
    absolute_target,
    clean_headers,
    decode_headers,
    request_content,
)
from authproxy.client.errors import connect_failure


def _new_connection(route: ProxyRoute) -> httpcore.AsyncHTTPConnection:
    return httpcore.AsyncHTTPConnection(
        origin=route.origin,
        ssl_context=route.proxy_ssl if route.endpoint.scheme == "https" else None,
        keepalive_expiry=route.keepalive_expiry,
    )


class AsyncProxyLink:
    """The connection to the proxy that one pooled connection uses, replaced when the proxy closes it."""

    def __init__(self, route: ProxyRoute) -> None:
        self.route = route
        self.conn = _new_connection(route)

    async def exchange(
        self, method: bytes, target: bytes, headers: Headers, content: Content | None, auth_body: bytes | None,
        extensions: MutableMapping[str, Any],
    ) -> httpcore.Response:
        """Send one request to the proxy, answering its 407s; the final response, body unread."""
        route = self.route
        role = route.responder.role  # the proxy's (407, Proxy-Authenticate, Proxy-Authorization, ...)
        credentials_field = role.credentials_field.encode("ascii")
        preq = ProxyRequest(method.decode("ascii"), target.decode("ascii"), auth_body,
                            route.endpoint.scheme == "https")
        flow = route.responder.flow(preq)
        step = next(flow)
        url = httpcore.URL(scheme=route.origin.scheme, host=route.origin.host, port=route.origin.port,
                           target=target)
        while True:
            if self.conn.is_closed() or self.conn.has_expired():
                # The proxy closed the connection (after a 407 with Connection: close, or idle): reconnect.
                await self.conn.aclose()
                self.conn = _new_connection(route)
            send_headers = list(headers)
            if step.authorization is not None:
                send_headers.append((credentials_field, step.authorization.encode("latin-1")))
            request = httpcore.Request(method, url, headers=send_headers, content=content, extensions=extensions)
            response = await self.conn.handle_async_request(request)
            body = b""
            try:
                if wants_body(preq.method, response.status, role):
                    try:
                        body = await response.aread()
                    finally:
                        await response.aclose()
                answer = ProxyResponse(response.status, decode_headers(response.headers), body)
                step = flow.send(answer)
            except StopIteration:
                return response
            except BaseException:
                await response.aclose()
                raise

    async def aclose(self) -> None:
        await self.conn.aclose()


class AsyncForwardConnection(ConnectionStatus, httpcore.AsyncConnectionInterface):
    """Plain-HTTP targets: absolute-form requests to the proxy (RFC 9112 section 3.2.2)."""

    def __init__(self, route: ProxyRoute, remote: httpcore.Origin) -> None:
        self._link = AsyncProxyLink(route)
        self._remote = remote

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        content, auth_body = request_content(request)
        target = absolute_target(request.url)
        return await self._link.exchange(
            request.method, target, clean_headers(request.headers), content, auth_body, request.extensions
        )

    def _current(self) -> ConnectionState:
        return self._link.conn

    async def aclose(self) -> None:
        await self._link.aclose()

    def is_available(self) -> bool:
        return self._link.conn.is_available()


class AsyncTunnelConnection(ConnectionStatus, httpcore.AsyncConnectionInterface):
    """HTTPS targets: CONNECT host:port with Proxy-Authorization, then TLS to the origin inside the tunnel.

    Nothing of the proxy's credentials goes inside: the tunnel is the origin's, and so is any 407 that comes
    out of it.
    """

    def __init__(self, route: ProxyRoute, remote: httpcore.Origin) -> None:
        self._route = route
        self._link = AsyncProxyLink(route)
        self._remote = remote
        self._inner: httpcore.AsyncConnectionInterface | None = None
        self._lock = _shared.AsyncLock()

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        async with self._lock:
            if self._inner is None:
                try:
                    self._inner = await self._open(request)
                except BaseException:
                    # No tunnel: close the proxy connection, so the pool drops this connection rather than
                    # keep it as an idle one that can never carry a request.
                    await self._link.aclose()
                    raise
        request = httpcore.Request(request.method, request.url, headers=clean_headers(request.headers),
                                   content=request.stream, extensions=request.extensions)
        return await self._inner.handle_async_request(request)

    async def _open(self, request: httpcore.Request) -> httpcore.AsyncConnectionInterface:
        authority = b"%b:%d" % (self._remote.host, self._remote.port)
        headers: Headers = [(b"Host", authority)]
        response = await self._link.exchange(b"CONNECT", authority, headers, None, b"", request.extensions)
        if not 200 <= response.status < 300:
            await self._link.aclose()
            body = await response.aread()
            raise connect_failure(response.status, decode_headers(response.headers),
                                  body.decode("utf-8", "replace"), authority.decode("ascii"))
        stream = response.extensions["network_stream"]
        timeouts = request.extensions.get("timeout", {})
        timeout = timeouts.get("connect") if isinstance(timeouts, dict) else None
        tls = await stream.start_tls(
            self._route.origin_ssl, server_hostname=self._remote.host.decode("ascii"), timeout=timeout
        )
        return httpcore.AsyncHTTP11Connection(
            origin=self._remote, stream=tls, keepalive_expiry=self._route.keepalive_expiry
        )

    def _current(self) -> ConnectionState:
        return self._inner if self._inner is not None else self._link.conn

    async def aclose(self) -> None:
        if self._inner is not None:
            await self._inner.aclose()
        await self._link.aclose()

    def is_available(self) -> bool:
        return self._inner is not None and self._inner.is_available()


class AsyncProxyPool(httpcore.AsyncConnectionPool):
    """httpcore's pool (limits, keep-alive, waiting) with our connections to one proxy."""

    def __init__(self, route: ProxyRoute, max_connections: int | None, keepalive_expiry: float | None) -> None:
        super().__init__(max_connections=max_connections, keepalive_expiry=keepalive_expiry)
        self.route = route

    def create_connection(self, origin: httpcore.Origin) -> httpcore.AsyncConnectionInterface:
        if origin.scheme == b"https":
            return AsyncTunnelConnection(self.route, origin)
        return AsyncForwardConnection(self.route, origin)
