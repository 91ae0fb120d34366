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
from typing import TYPE_CHECKING, Any

from authproxy.auth.errors import ConfigError

if TYPE_CHECKING:
    from authproxy.config import Config, SipConfig
    from authproxy.proxy.connection import ClientConnection


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


def start_handshake(conn: ClientConnection, context: ssl.SSLContext, timeout: float) -> None:
    """Start the server side of the TLS handshake on ``conn``'s just-accepted transport; called from
    ``connection_made``. ``conn`` gets the TLS transport once the handshake is done.

    ``start_tls``'s first step runs here, not in a Task: a Task starts one loop turn later, and uvloop starts
    reading an accepted connection as soon as ``connection_made`` returns (it ignores a ``pause_reading`` made
    inside it), so the ClientHello, or a cleartext request, would reach the HTTP parser. After that first step
    the TLS layer is the transport's protocol; what it reads before its own ``connection_made`` waits in its
    buffer. The rest of ``start_tls`` is one wait on the handshake, resumed by a callback: no Task per connection.

    A handshake that fails, times out, or whose connection is closed meanwhile (limits, shutdown) ends with
    ``conn.connection_lost``, called once: the TLS layer does not call it for a connection that never got past
    the handshake, and that call is what gives the connection's place in the limits back.
    """
    waiting = _Handshaking(conn)
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


class _Handshaking(asyncio.Protocol):
    """The TLS layer's protocol until ``start_tls`` returns.

    asyncio passes the first decrypted bytes (a request sent right behind the client's Finished) to the protocol
    before ``start_tls`` returns the transport that answers must be written to (uvloop one loop turn later, after
    it returns); they wait here. What the TLS layer had already scheduled for this object before the hand-over
    is passed on to the connection.
    """

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
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
        transport.set_protocol(conn)
        self.handed_over = True
        early, self.early = self.early, []
        for data in early:
            if self.conn.closed:
                break
            self.conn.data_received(data)
