"""What every connection the proxy opens has in common, the asyncio side: the transport it owns, and the
commands the engine gives such a connection (write, pause and resume reading) made safe on a closing one.

Origin connections (``upstream.UpstreamConnection``) and tunnel far ends (``tunnel.TunnelUpstream``) both are one.
"""

from __future__ import annotations

import asyncio


class OutgoingConnection(asyncio.Protocol):
    """An asyncio.Protocol for a connection this proxy opened."""

    __slots__ = ("closed", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so this is a cast, not a check.
        self.transport = transport  # type: ignore[assignment]

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
