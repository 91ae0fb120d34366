"""CONNECT tunnels (RFC 9110 section 9.3.6) in the connection's state machine: relay both ways, half-close.

``TunnelRelay`` is a base of ``Connection``. Once a CONNECT is accepted, bytes after its head belong to the
tunnel; they are held until the far end is connected, then relayed. Back-pressure crosses over: the far end
not taking bytes pauses reading the client, the client not reading pauses the far end (``hold_source``). Each
side's FIN is passed on (RFC 9112 section 9.6); the tunnel ends when both sides have finished, or either closes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from authproxy.engine.requests import RequestReader

if TYPE_CHECKING:
    from authproxy.engine.commands import ClientSink, TunnelSink
    from authproxy.engine.exchange import Exchange
    from authproxy.engine.origin import Origin


class TunnelRelay(RequestReader):
    """The tunnel half of a client connection."""

    __slots__ = (
        "held_source",
        "tunnel",
        "tunnel_down",
        "tunnel_eof",
        "tunnel_exchange",
        "tunnel_pending",
    )

    # Set by Connection; declared here for the type checker.
    sink: ClientSink
    active: Exchange | None
    client_eof: bool
    closed: bool
    writing_paused_now: bool
    pending: bytes
    pending_at: int
    paused: set[str]

    def __init__(self) -> None:
        self.tunnel: TunnelSink | None = None
        self.tunnel_exchange: Exchange | None = None
        self.tunnel_pending: list[bytes] = []
        self.tunnel_eof = False  # the far end sent FIN
        self.tunnel_down = 0  # bytes relayed from the far end to the client
        # The client not reading: the origin (or tunnel) we paused for it.
        self.held_source: Origin | TunnelSink | None = None

    def close(self) -> None:
        raise NotImplementedError

    def pause_reading(self, reason: str) -> None:
        raise NotImplementedError

    def resume_reading(self, reason: str) -> None:
        raise NotImplementedError

    # == the client's side ====================================================================================
    def tunnel_data_from_client(self, data: bytes) -> bool:
        """Relay (or hold) ``data`` if it belongs to a tunnel; False if it is for the HTTP parser."""
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.write(data)
            return True
        if self.tunnel_exchange is not None:  # CONNECT accepted, far end not connected yet
            self.tunnel_pending.append(data)
            return True
        return False

    def tunnel_client_eof(self) -> bool | None:
        """The client half-closed: pass its FIN on. None when there is no tunnel."""
        tunnel = self.tunnel
        if tunnel is None:
            return None
        if self.tunnel_eof:  # both directions are finished: the tunnel is over
            tunnel.close()
            return False
        tunnel.write_eof()
        return True  # keep relaying what the far end still sends (half-close)

    def tunnel_abort(self) -> None:
        """Cut the far end at once (the tunnel timed out): a close would wait for it to read what is unsent."""
        if self.tunnel is not None:
            self.tunnel.abort()

    def tunnel_lost(self) -> None:
        if self.tunnel is not None:
            self.tunnel.close()  # its tunnel_closed logs the tunnel, with the bytes relayed

    # == events from the far end ==============================================================================
    def tunnel_data(self, data: bytes) -> None:
        self.tunnel_down += len(data)
        self.sink.send(data)

    def tunnel_far_eof(self) -> bool:
        """The far end half-closed: pass its FIN on. Returns whether to keep the far end's connection open."""
        self.tunnel_eof = True
        if self.client_eof:
            return False
        return self.sink.write_eof()

    def tunnel_closed(self) -> None:
        ex = self.tunnel_exchange
        if ex is not None and self.tunnel is not None:
            ex.sent_bytes += self.tunnel_down
            ex.done = True
            ex.log()
        self.tunnel_exchange = None
        self.close()

    def tunnel_writing_paused(self) -> None:
        self.pause_reading("tunnel")

    def tunnel_writing_resumed(self) -> None:
        self.resume_reading("tunnel")

    # == from the exchange ====================================================================================
    def expect_tunnel(self, ex: Exchange) -> None:
        """CONNECT was accepted: bytes after its head belong to the tunnel, not to the parser."""
        self.tunnel_exchange = ex
        if self.pending:
            self.tunnel_pending.append(bytes(self.pending[self.pending_at:]))
            self.pending, self.pending_at = b"", 0
        self.paused.discard("upgrade")

    def start_tunnel(self, ex: Exchange, tunnel: TunnelSink) -> None:
        self.tunnel = tunnel
        self.tunnel_exchange = ex
        pending, self.tunnel_pending = self.tunnel_pending, []
        for data in pending:
            tunnel.write(data)
        if self.writing_paused_now:
            self.hold_source()
        self.resume_reading("write")  # a tunnel's upload does not wait for its download

    def connect_refused(self, ex: Exchange) -> None:
        """A CONNECT ended without a tunnel: what followed its head is the next request."""
        self.paused.discard("upgrade")
        if self.tunnel_exchange is ex and self.tunnel is None:
            # Accepted, then the far end could not be reached: what followed its head is a new request.
            self.tunnel_exchange = None
            held, self.tunnel_pending = self.tunnel_pending, []
            if held:
                self.pending, self.pending_at = b"".join(held) + self.pending[self.pending_at:], 0

    # == the client not reading ===============================================================================
    def hold_source(self) -> None:
        """Pause reading what feeds the client (called again when the exchange attaches a new origin)."""
        source: Origin | TunnelSink | None = self.tunnel
        if source is None and self.active is not None:
            source = self.active.upstream
        if source is not None and source is not self.held_source:
            self.release_source()
            source.pause_reading()
            self.held_source = source

    def release_source(self) -> None:
        # Also when the exchange ends: its origin connection goes back to the pool, where it must be reading.
        held, self.held_source = self.held_source, None
        if held is not None:
            held.resume_reading()
