"""Handing a message to the worker that can send it (``--workers``). A client's TCP or TLS connection is one
process's, but a request for its flow (the callee's BYE in a dialog this proxy record-routed, a call for a
contact registered through it: RFC 3261 sections 16.6 and 18.2.2, RFC 3327) reaches whichever worker the kernel
gives its datagram or connection to. The flow token names the worker holding the connection
(:class:`authproxy.sip.route.FlowTokens`); any other worker passes that one the bytes to write, over a Unix
datagram socket pair per worker that the supervisor makes before forking and keeps (a restarted worker takes
its predecessor's, as it does the listeners).

A datagram is ``transport LF host LF port LF`` and the message's bytes. Only the proxy's own processes hold
these sockets (a pair has no address to send to), and what one reads is checked all the same: a datagram that
is not of that form is dropped.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Sequence

from authproxy.sip.actions import Send

#: Reads per wakeup: the loop goes on to other work after that many, and comes back for the rest.
_BATCH = 64
_STREAMS = ("tcp", "tls")


def handover_pairs(count: int) -> list[tuple[socket.socket, socket.socket]]:
    """One ``(inbox, outbox)`` Unix datagram socket pair per worker, non-blocking: worker ``i`` reads the
    inbox of pair ``i``, and every worker writes to worker ``i`` on the outbox of pair ``i``."""
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(count)]
    for inbox, outbox in pairs:
        inbox.setblocking(False)
        outbox.setblocking(False)
    return pairs


class Handover:
    """Worker ``index``'s end: its inbox, and every worker's outbox (by index)."""

    def __init__(self, index: int, inbox: socket.socket, outboxes: Sequence[socket.socket]) -> None:
        self.index, self.inbox, self.outboxes = index, inbox, tuple(outboxes)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deliver: Callable[[Send], None] | None = None
        self.dropped = 0  # messages that could not be handed over (the other worker's inbox full, or gone)

    def start(self, deliver: Callable[[Send], None]) -> None:
        """Read the inbox from now on, giving each message to ``deliver`` (which writes it on the connection
        with its address, or opens one as section 18.2.2 says)."""
        self._loop, self._deliver = asyncio.get_running_loop(), deliver
        self._loop.add_reader(self.inbox.fileno(), self._read)

    def send(self, send: Send) -> None:
        """Pass ``send`` to the worker it names (``send.owner``); dropped when that cannot be done now (SIP
        over a stream does not retransmit, but the far side times out its transaction and says so)."""
        owner = send.owner
        if owner is None or not 0 <= owner < len(self.outboxes) or send.transport not in _STREAMS:
            self.dropped += 1
            return
        host, port = send.to
        try:
            self.outboxes[owner].send(f"{send.transport}\n{host}\n{port}\n".encode() + send.data)
        except OSError:  # full (the other worker is stuck) or too large for the socket: dropped
            self.dropped += 1

    def _read(self) -> None:
        deliver = self._deliver
        if deliver is None:
            return
        for _ in range(_BATCH):
            try:
                datagram = self.inbox.recv(1 << 18)
            except OSError:  # nothing more now (BlockingIOError), or the pair is gone
                return
            parts = datagram.split(b"\n", 3)
            transport = parts[0].decode("ascii", "replace")
            if len(parts) != 4 or transport not in _STREAMS or not parts[2].isdigit():
                continue
            deliver(Send(parts[3], (parts[1].decode("ascii", "replace"), int(parts[2])), transport))

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.inbox.fileno())
            self._loop = None
