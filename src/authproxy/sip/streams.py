"""The SIP proxy's TCP and TLS connections (RFC 3261 sections 18.3 and 7.5; RFC 5626 section 3.5.1 for the
CRLF keep-alive), either direction: messages framed by Content-Length
(:func:`authproxy.sip.parse.stream_frame_length`) and parsed once, by the proxy; a stream that breaks the framing
answered (when it can be) and closed; one timer per connection for the idle and message timeouts; TLS upgraded
after the connection is counted; at most 1 MiB unsent.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, cast

from authproxy.auth.outcomes import Outcome
from authproxy.proxy.tls import start_handshake
from authproxy.sip.fields import SipError
from authproxy.sip.log import DROPPED, Address, SipRecord
from authproxy.sip.parse import stream_frame_length

if TYPE_CHECKING:
    from authproxy.sip.server import SipServer

#: Unsent bytes a stream may hold before it is given up (a peer that does not read).
MAX_UNSENT = 1 << 20

class Stream(asyncio.Protocol):
    """One TCP or TLS connection, either direction: SIP messages framed by Content-Length.

    Timed by one timer: closed after ``idle_timeout`` with nothing received or sent, and, once a message has
    begun, after ``message_timeout`` if it has not ended (however slowly its bytes come: a trickle is not
    activity enough). A TLS connection is counted from accept and then upgraded by the HTTP proxy's
    :func:`authproxy.proxy.tls.start_handshake` under ``tls_handshake_timeout``."""

    def __init__(self, server: SipServer, transport_name: str, *, handshaken: bool = False) -> None:
        self.server = server
        self.name = transport_name
        self.buffer = bytearray()
        self.peer: Address = ("", 0)
        self.client = "-"
        self.transport: asyncio.Transport | None = None
        self.closed = False
        # A TLS connection once its handshake is done (an accepted one: after start_handshake; one this proxy
        # opened to its next hop: handshaken by create_connection already).
        self.ready = handshaken or transport_name != "tls"
        self.active = 0.0  # loop time of the last byte received or message sent
        self.begun: float | None = None  # loop time a message still incomplete began
        # What is known of the buffer, so a message arriving in many small reads is not scanned from its start
        # at each one: the head's end is not before ``_scan_from``; once the head is in, the message takes
        # ``_need`` bytes (0: not known yet).
        self._scan_from = 0
        self._need = 0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1]))
        self.client = self.peer[0]
        server = self.server
        if len(server.streams) >= server.config.max_connections:
            transport.close()  # at the limit (handshakes included): bounded memory comes first
            return
        server.streams[self.peer] = self
        self.active = asyncio.get_running_loop().time()
        self._arm(self.active + server.config.idle_timeout)
        if not self.ready:
            assert server.tls is not None
            start_handshake(self, server.tls, server.config.tls_handshake_timeout, server.tls_failures)

    def use_transport(self, transport: asyncio.BaseTransport) -> None:
        """The TLS transport, once the handshake is done (:func:`authproxy.proxy.tls.start_handshake`)."""
        self.transport = cast(asyncio.Transport, transport)
        self.ready = True

    def data_received(self, data: bytes) -> None:
        self.active = loop_time = asyncio.get_running_loop().time()
        if data == b"\r\n\r\n" and not self.buffer:
            # RFC 5626 section 3.5.1: a double CRLF between messages is a keep-alive ping; the pong is one CRLF.
            self.write(b"\r\n")
            return
        buffer = self.buffer
        buffer += data
        limits = self.server.limits
        while buffer and self.transport is not None and not self.transport.is_closing():
            need = self._need
            try:
                if not need:
                    if buffer.find(b"\r\n\r\n", self._scan_from) < 0 and len(buffer) <= limits.max_message_size:
                        need = 0  # no head's end yet, and not too long: nothing to parse
                    else:
                        need = stream_frame_length(bytes(buffer), limits) or 0
                    if not need:
                        self._scan_from = max(len(buffer) - 3, 0)  # the end may straddle this read and the next
                        if buffer.strip(b"\r\n"):
                            self._begin(loop_time)
                        else:  # CRLFs between messages (section 7.5): nothing has begun
                            # A CR last may be the first half of a CRLF whose LF comes in the next read.
                            buffer[:] = b"\r" if buffer.endswith(b"\r") else b""
                            self._scan_from = 0
                        return
                if len(buffer) < need:
                    self._need = need
                    self._begin(loop_time)
                    return
            except SipError as exc:
                proxy = self.server.proxy
                assert proxy is not None
                self.server.act(proxy.malformed(bytes(buffer), exc, self.peer, self.name, time.time()))
                self.transport.close()  # the framing is lost: nothing after this can be read
                return
            # Framed: the proxy parses it (once), and a message malformed inside its frame gets its 400 there,
            # the connection kept (its framing holds: the next message starts where the length said).
            raw = bytes(buffer[:need])
            del buffer[:need]
            self._need = self._scan_from = 0
            self.begun = None
            self.server.received(raw, self.peer, self.name)

    def _begin(self, now: float) -> None:
        if self.begun is None:
            self.begun = now
            self._arm(now + self.server.config.message_timeout)

    def _arm(self, when: float) -> None:
        timer = self._timer
        if timer is None or timer.when() > when:
            if timer is not None:
                timer.cancel()
            self._timer = asyncio.get_running_loop().call_at(when, self._check)

    def _check(self) -> None:
        """The timer: close at a deadline passed, else wait for the next one (activity moves the idle deadline
        without touching the timer, which fires at most once per ``idle_timeout`` on a busy connection)."""
        self._timer = None
        if self.closed or self.transport is None:
            return
        config = self.server.config
        now = asyncio.get_running_loop().time()
        if self.begun is not None and now >= self.begun + config.message_timeout:
            self.server.act([SipRecord(time.time(), self.peer, self.name, DROPPED, None, None, None, None,
                                       Outcome.NONE, reason=f"a message not complete within message_timeout "
                                                            f"({config.message_timeout:g} s)")])
            self._close()
        elif now >= self.active + config.idle_timeout:
            self._close()
        else:
            deadline = self.active + config.idle_timeout
            if self.begun is not None:
                deadline = min(deadline, self.begun + config.message_timeout)
            self._arm(deadline)

    def _close(self) -> None:
        transport = self.transport
        assert transport is not None
        if transport.get_write_buffer_size():
            transport.abort()  # nothing of it read since the deadline began: not worth waiting for
        else:
            transport.close()

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or not self.ready:
            return
        transport.write(data)
        self.active = asyncio.get_running_loop().time()
        if transport.get_write_buffer_size() > MAX_UNSENT:
            transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.server.streams.get(self.peer) is self:
            del self.server.streams[self.peer]

