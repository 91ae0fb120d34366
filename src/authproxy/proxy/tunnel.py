"""The far end of a CONNECT tunnel (RFC 9110 section 9.3.6), the asyncio side.

``TunnelUpstream`` reports what the far end does to the client connection's engine (``TunnelRelay``: data,
FIN, close, back-pressure) and is the engine's ``TunnelSink``: each side's ``pause_writing`` pauses reading on
the other, so a fast sender never grows a write buffer beyond the transport's high-water mark.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from authproxy.proxy.linger import close_bounded
from authproxy.proxy.outgoing import OutgoingConnection

if TYPE_CHECKING:
    from authproxy.engine.tunnel import TunnelRelay


class TunnelUpstream(OutgoingConnection):
    """The origin side of a CONNECT tunnel."""

    __slots__ = ("client", "linger")

    def __init__(self, client: TunnelRelay, linger: float) -> None:
        super().__init__()
        self.client = client
        self.linger = linger  # write_timeout: a close waits that long for a far end that reads nothing

    def data_received(self, data: bytes) -> None:
        self.client.tunnel_data(data)

    def eof_received(self) -> bool:
        # Half-close: pass the origin's FIN on and keep reading the client's side (RFC 9112 section 9.6).
        return self.client.tunnel_far_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client.tunnel_closed()

    def pause_writing(self) -> None:
        self.client.tunnel_writing_paused()

    def resume_writing(self) -> None:
        self.client.tunnel_writing_resumed()

    # -- TunnelSink (write, pause_reading, resume_reading: OutgoingConnection's) ----------------------------
    def write_eof(self) -> None:
        if self.transport is not None and not self.closed and self.transport.can_write_eof():
            self.transport.write_eof()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            close_bounded(self.transport, self.linger)

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()
