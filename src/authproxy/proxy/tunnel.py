"""CONNECT tunnels (RFC 9110 section 9.3.6): bytes relayed both ways with back-pressure.

Each side's ``pause_writing`` pauses reading on the other, so a fast sender never grows a write buffer beyond
the transport's high-water mark, whichever direction it sends in.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class TunnelClientSide(Protocol):
    """The client connection as the tunnel's origin side sees it."""

    transport: asyncio.Transport
    client_eof: bool

    def tunnel_closed(self) -> None: ...

    def pause_reading(self, reason: str) -> None: ...

    def resume_reading(self, reason: str) -> None: ...


class TunnelUpstream(asyncio.Protocol):
    """The origin side of a CONNECT tunnel."""

    __slots__ = ("client", "closed", "down_bytes", "eof", "transport")

    def __init__(self, client: TunnelClientSide) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.down_bytes = 0
        self.eof = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so this is a cast, not a check.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.down_bytes += len(data)
        self.client.transport.write(data)

    def eof_received(self) -> bool:
        # Half-close: pass the origin's FIN on and keep reading the client's side (RFC 9112 section 9.6),
        # unless the client has finished sending too, and the tunnel is over.
        self.eof = True
        if self.client.client_eof:
            return False
        if self.client.transport.can_write_eof() and not self.client.transport.is_closing():
            self.client.transport.write_eof()
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client.tunnel_closed()

    def pause_writing(self) -> None:
        self.client.pause_reading("tunnel")

    def resume_writing(self) -> None:
        self.client.resume_reading("tunnel")

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def write_eof(self) -> None:
        if self.transport is not None and not self.closed and self.transport.can_write_eof():
            self.transport.write_eof()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
