"""The blocking IO around the responder: connections to the proxy, the CONNECT exchange, tunnels.

Built on httpcore's pieces (its HTTP/1.1 connection over h11, its network backends with TLS inside TLS,
its pool), with the proxy exchange our own: :class:`ProxyLink` runs :meth:`Responder.flow`, reads a 407's body
whatever its framing (h11 knows Content-Length, chunked and read-until-close), and opens a new connection when
the proxy closed the old one. :mod:`authproxy.client._async` is the same code with ``await``; keep them alike.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any, Protocol

import httpcore

from authproxy.auth.responder import ProxyRequest, ProxyResponse, Responder, wants_body
from authproxy.client.errors import connect_failure
from authproxy.client.settings import ProxyEndpoint

#: Request extension holding the whole body as bytes when the caller has it (it can then be hashed for
#: auth-int and sent again after a 407); absent or None for a one-shot stream.
BODY_EXTENSION = "authproxy.body"

Headers = list[tuple[bytes, bytes]]
Content = bytes | Iterable[bytes]

#: Caller headers that never leave with a request: ours is the only Proxy-Authorization, and only to the proxy.
STRIPPED = frozenset({b"proxy-authorization", b"proxy-connection"})


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


class ProxyRoute:
    """One proxy, its responder, and how to open a connection to it (plain or TLS)."""

    def __init__(self, endpoint: ProxyEndpoint, responder: Responder, proxy_ssl: ssl.SSLContext | None,
                 origin_ssl: ssl.SSLContext, keepalive_expiry: float | None) -> None:
        self.endpoint = endpoint
        self.responder = responder
        self.proxy_ssl = proxy_ssl
        self.origin_ssl = origin_ssl
        self.keepalive_expiry = keepalive_expiry
        self.origin = httpcore.Origin(endpoint.scheme.encode(), endpoint.host.encode("idna"), endpoint.port)

    def new_connection(self) -> httpcore.HTTPConnection:
        return httpcore.HTTPConnection(
            origin=self.origin,
            ssl_context=self.proxy_ssl if self.endpoint.scheme == "https" else None,
            keepalive_expiry=self.keepalive_expiry,
        )


class ProxyLink:
    """The connection to the proxy that one pooled connection uses, replaced when the proxy closes it."""

    def __init__(self, route: ProxyRoute) -> None:
        self.route = route
        self.conn = route.new_connection()

    def exchange(self, method: bytes, target: bytes, headers: Headers, content: Content | None,
                 auth_body: bytes | None, extensions: MutableMapping[str, Any]) -> httpcore.Response:
        """Send one request to the proxy, answering its 407s; the final response, body unread."""
        route = self.route
        preq = ProxyRequest(method.decode("ascii"), target.decode("ascii"), auth_body,
                            route.endpoint.scheme == "https")
        flow = route.responder.flow(preq)
        step = next(flow)
        url = httpcore.URL(scheme=route.origin.scheme, host=route.origin.host, port=route.origin.port,
                           target=target)
        while True:
            if self.conn.is_closed() or self.conn.has_expired():
                # The proxy closed the connection (after a 407 with Connection: close, or idle): reconnect.
                self.conn.close()
                self.conn = route.new_connection()
            send_headers = list(headers)
            if step.proxy_authorization is not None:
                send_headers.append((b"Proxy-Authorization", step.proxy_authorization.encode("latin-1")))
            request = httpcore.Request(method, url, headers=send_headers, content=content, extensions=extensions)
            response = self.conn.handle_request(request)
            body = b""
            try:
                if wants_body(preq.method, response.status):
                    try:
                        body = response.read()
                    finally:
                        response.close()
                answer = ProxyResponse(response.status, decode_headers(response.headers), body)
                step = flow.send(answer)
            except StopIteration:
                return response
            except BaseException:
                response.close()
                raise

    def close(self) -> None:
        self.conn.close()


class ConnectionState(Protocol):
    """The state queries httpcore's pool asks of a connection, sync or async alike."""

    def info(self) -> str: ...

    def has_expired(self) -> bool: ...

    def is_idle(self) -> bool: ...

    def is_closed(self) -> bool: ...


class ConnectionStatus:
    """Answers the pool's state queries from the connection underneath (``_current``); shared by the sync
    and async connection classes, whose only differences are in how they send."""

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


def absolute_target(url: httpcore.URL) -> bytes:
    """The absolute-form request-target a proxy is sent (RFC 9112 section 3.2.2), default port left out."""
    default = 80 if url.scheme == b"http" else 443
    authority = url.host if url.port in (None, default) else b"%b:%d" % (url.host, url.port or default)
    return url.scheme + b"://" + authority + url.target


class ForwardConnection(ConnectionStatus, httpcore.ConnectionInterface):
    """Plain-HTTP targets: absolute-form requests to the proxy (RFC 9112 section 3.2.2)."""

    def __init__(self, route: ProxyRoute, remote: httpcore.Origin) -> None:
        self._link = ProxyLink(route)
        self._remote = remote

    def handle_request(self, request: httpcore.Request) -> httpcore.Response:
        content, auth_body = request_content(request)
        return self._link.exchange(request.method, absolute_target(request.url), clean_headers(request.headers),
                                   content, auth_body, request.extensions)

    def _current(self) -> ConnectionState:
        return self._link.conn

    def close(self) -> None:
        self._link.close()

    def is_available(self) -> bool:
        return self._link.conn.is_available()


class TunnelConnection(ConnectionStatus, httpcore.ConnectionInterface):
    """HTTPS targets: CONNECT host:port with Proxy-Authorization, then TLS to the origin inside the tunnel.

    Nothing of the proxy's credentials goes inside: the tunnel is the origin's, and so is any 407 that comes
    out of it.
    """

    def __init__(self, route: ProxyRoute, remote: httpcore.Origin) -> None:
        self._route = route
        self._link = ProxyLink(route)
        self._remote = remote
        self._inner: httpcore.ConnectionInterface | None = None
        self._lock = threading.Lock()

    def handle_request(self, request: httpcore.Request) -> httpcore.Response:
        with self._lock:
            if self._inner is None:
                try:
                    self._inner = self._open(request)
                except BaseException:
                    # No tunnel: close the proxy connection, so the pool drops this connection rather than
                    # keep it as an idle one that can never carry a request.
                    self._link.close()
                    raise
        request = httpcore.Request(request.method, request.url, headers=clean_headers(request.headers),
                                   content=request.stream, extensions=request.extensions)
        return self._inner.handle_request(request)

    def _open(self, request: httpcore.Request) -> httpcore.ConnectionInterface:
        authority = b"%b:%d" % (self._remote.host, self._remote.port)
        headers: Headers = [(b"Host", authority)]
        response = self._link.exchange(b"CONNECT", authority, headers, None, b"", request.extensions)
        if not 200 <= response.status < 300:
            self._link.close()
            raise connect_failure(response.status, decode_headers(response.headers),
                                  response.read().decode("utf-8", "replace"), authority.decode("ascii"))
        stream = response.extensions["network_stream"]
        timeouts = request.extensions.get("timeout", {})
        timeout = timeouts.get("connect") if isinstance(timeouts, dict) else None
        tls = stream.start_tls(self._route.origin_ssl, server_hostname=self._remote.host.decode("ascii"),
                               timeout=timeout)
        return httpcore.HTTP11Connection(origin=self._remote, stream=tls,
                                         keepalive_expiry=self._route.keepalive_expiry)

    def _current(self) -> ConnectionState:
        return self._inner if self._inner is not None else self._link.conn

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
        self._link.close()

    def is_available(self) -> bool:
        return self._inner is not None and self._inner.is_available()


def request_content(request: httpcore.Request) -> tuple[Content, bytes | None]:
    """What to send as the body, and the bytes to hash/replay (None: a one-shot stream)."""
    body = request.extensions.get(BODY_EXTENSION)
    if isinstance(body, bytes):
        return body, body
    return request.stream, None  # type: ignore[return-value]


class ProxyPool(httpcore.ConnectionPool):
    """httpcore's pool (limits, keep-alive, waiting) with our connections to one proxy."""

    def __init__(self, route: ProxyRoute, max_connections: int | None, keepalive_expiry: float | None) -> None:
        super().__init__(max_connections=max_connections, keepalive_expiry=keepalive_expiry)
        self.route = route

    def create_connection(self, origin: httpcore.Origin) -> httpcore.ConnectionInterface:
        if origin.scheme == b"https":
            return TunnelConnection(self.route, origin)
        return ForwardConnection(self.route, origin)
