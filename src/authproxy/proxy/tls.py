"""The TLS listener: its context, and a handshake that runs after the connection is counted and is timed out.

The listening socket is plain TCP. A connection is counted against ``max_connections`` and
``max_connections_per_client`` as soon as it is accepted (``ClientConnection.connection_made``), and only then
upgraded with ``loop.start_tls`` under ``tls_handshake_timeout``. With ``create_server(ssl=...)`` instead, the
application's ``connection_made`` only runs once the handshake is over (asyncio and uvloop both wrap the
protocol), so a client that opens connections and never says a word would hold descriptors outside every limit
and for as long as it liked.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol, cast

from authproxy.auth.errors import ConfigError
from authproxy.observe.notices import RateLimitedNotices

if TYPE_CHECKING:
    from authproxy.config import Config, SipConfig


class Upgradable(Protocol):
    """What a handshake needs of a connection (an ``asyncio.Protocol`` too): the HTTP proxy's
    ``ClientConnection``, the SIP proxy's stream."""

    @property
    def transport(self) -> asyncio.Transport | None: ...

    @property
    def closed(self) -> bool: ...

    @property
    def client(self) -> str: ...  # the peer's address, for the operator's notice of a failed handshake

    def use_transport(self, transport: asyncio.BaseTransport) -> None: ...

    def data_received(self, data: bytes) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...


def tls_context(config: Config | SipConfig) -> ssl.SSLContext | None:
    """The listener's TLS context, so Basic credentials need not cross the network in clear (the HTTP proxy's,
    and the SIP proxy's ``tls:`` listeners)."""
    if not config.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls_cert: cannot load {config.tls_cert} / {config.tls_key}: {exc}") from None
    return context


def next_hop_tls_context(config: SipConfig) -> ssl.SSLContext:
    """The SIP proxy's TLS context towards a ``transport=tls`` next hop: its certificate verified against
    ``next_hop_ca`` (default: the system's CAs) and its host name, TLS 1.2 at least; the proxy's own
    ``tls_cert`` presented when it asks for one (mutual TLS, as SIP trunks do)."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=config.next_hop_ca or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"next_hop_ca: cannot load {config.next_hop_ca}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.tls_cert:
        try:
            context.load_cert_chain(config.tls_cert, config.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"tls_cert: cannot load {config.tls_cert} / {config.tls_key}: {exc}") from None
    return context


def start_handshake(conn: Upgradable, context: ssl.SSLContext, timeout: float,
                    failures: RateLimitedNotices | None = None) -> None:
    """Start the server side of the TLS handshake on ``conn``'s just-accepted transport; called from
    ``connection_made``. ``conn`` gets the TLS transport once the handshake is done.

    ``start_tls``'s first step runs here, not in a Task: a Task starts one loop turn later, and uvloop starts
    reading an accepted connection as soon as ``connection_made`` returns (it ignores a ``pause_reading`` made
    inside it), so the ClientHello, or a cleartext request, would reach the HTTP parser. After that first step
    the TLS layer is the transport's protocol; what it reads before its own ``connection_made`` waits in its
    buffer. The rest of ``start_tls`` is one wait on the handshake, resumed by a callback: no Task per connection.

    A handshake that fails, times out, or whose connection is closed meanwhile (limits, shutdown) ends with
    ``conn.connection_lost``, called once: the TLS layer does not call it for a connection that never got past
    the handshake, and that call is what gives the connection's place in the limits back. One that fails or
    times out is told to the operator in one line on ``failures`` (the client's address and why; never what the
    client sent).
    """
    waiting = _Handshaking(conn, timeout, failures)
    assert conn.transport is not None  # the accepted one
    upgrade = asyncio.get_running_loop().start_tls(
        conn.transport, waiting, context, server_side=True, ssl_handshake_timeout=timeout)
    _step(upgrade, waiting)


def _step(upgrade: Coroutine[Any, Any, asyncio.BaseTransport | None], waiting: _Handshaking) -> None:
    """Run ``upgrade`` (``start_tls``) to its next wait, as a Task would, or to its end."""
    try:
        awaited = upgrade.send(None)
    except StopIteration as done:
        waiting.upgraded(done.value)
    except OSError as exc:
        # A timeout (ConnectionAbortedError), a bad ClientHello (SSLError), a client that went away
        # (ConnectionResetError): the connection is gone and its place is given back.
        waiting.lose(exc)
    except BaseException:
        waiting.lose(None)  # give the place back, and let the bug show
        raise
    else:
        if isinstance(awaited, asyncio.Future):
            awaited.add_done_callback(lambda _: _step(upgrade, waiting))
        else:  # pragma: no cover - start_tls only waits on its handshake future; a bare yield means "next turn"
            asyncio.get_running_loop().call_soon(_step, upgrade, waiting)


#: What some OpenSSL reasons mean for the operator (the reason itself is kept in the line).
_REASONS = {
    "HTTP_REQUEST": "the client spoke plain HTTP to the TLS listener",
    "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust this proxy's certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the client refused this proxy's certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the client refused this proxy's certificate",
    "WRONG_VERSION_NUMBER": "not a TLS record (another protocol, or plain text)",
    "UNSUPPORTED_PROTOCOL": "the client offers no TLS version this proxy accepts",
    "NO_SHARED_CIPHER": "the client offers no cipher this proxy accepts",
    "VERSION_TOO_LOW": "the client offers no TLS version this proxy accepts",
}


def handshake_failure(exc: BaseException, timeout: float) -> str:
    """Why a handshake failed, in words, from what asyncio or uvloop raised (a fixed text: nothing the client
    sent is repeated)."""
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or type(exc).__name__
        words = _REASONS.get(reason)
        return f"{words} ({reason})" if words else f"TLS error {reason}"
    if isinstance(exc, ConnectionAbortedError | TimeoutError):
        return f"not finished within tls_handshake_timeout ({timeout:g} s)"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "the client closed the connection before finishing it"
    return f"{type(exc).__name__} {exc.strerror or ''}".strip() if isinstance(exc, OSError) else type(exc).__name__


class _Handshaking(asyncio.Protocol):
    """The TLS layer's protocol until ``start_tls`` returns.

    asyncio passes the first decrypted bytes (a request sent right behind the client's Finished) to the protocol
    before ``start_tls`` returns the transport that answers must be written to (uvloop one loop turn later, after
    it returns); they wait here. What the TLS layer had already scheduled for this object before the hand-over
    is passed on to the connection.
    """

    def __init__(self, conn: Upgradable, timeout: float, failures: RateLimitedNotices | None) -> None:
        self.conn = conn
        self.timeout = timeout
        self.failures = failures
        self.early: list[bytes] = []
        self.handed_over = False
        self.lost = False

    def data_received(self, data: bytes) -> None:
        if self.handed_over:
            self.conn.data_received(data)
        else:
            self.early.append(data)

    def eof_received(self) -> bool:
        # What ClientConnection answers when no tunnel is open (none can be, before the first request): close.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lose(exc)

    def lose(self, exc: Exception | None) -> None:
        if not self.lost:
            self.lost = True
            if exc is not None and self.failures is not None and not self.handed_over:
                self.failures.notice(f"authproxy: TLS handshake with {self.conn.client} failed: "
                                     f"{handshake_failure(exc, self.timeout)}")
            self.conn.connection_lost(exc)

    def upgraded(self, transport: asyncio.BaseTransport | None) -> None:
        """``start_tls`` returned: hand the connection its TLS transport and the bytes that came with it."""
        if transport is None or transport.is_closing():
            # Closed by us during the handshake (asyncio then returns None, uvloop a closed transport), or by
            # the client right after it.
            self.lose(None)
            return
        conn = self.conn
        conn.use_transport(transport)
        transport.set_protocol(cast(asyncio.BaseProtocol, conn))  # an asyncio.Protocol (the class docstring)
        self.handed_over = True
        early, self.early = self.early, []
        for data in early:
            if self.conn.closed:
                break
            self.conn.data_received(data)
