"""A close that waits for a peer to read what it is still owed is bounded (authproxy.proxy.linger), on both
event loops, over real sockets: a peer that reads nothing is cut after ``linger``; one that reads slowly, for
longer than ``linger`` in all, gets every byte."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable

import pytest
import uvloop

from authproxy.proxy.linger import close_bounded

OWED = 8 << 20  # far past the kernel's buffers on loopback (about 3 MB here)


class Peer(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(time.monotonic())


def run(loop_name: str, reader: Callable[[socket.socket], None], linger: float) -> tuple[float, float]:
    """Write OWED bytes to a client that ``reader`` drives, close within ``linger``; (seconds to the close, to
    the connection's end)."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(listener.getsockname())
    server_side, _ = listener.accept()
    listener.close()
    thread = threading.Thread(target=reader, args=(client,), daemon=True)

    async def main() -> tuple[float, float]:
        transport, peer = await asyncio.get_running_loop().connect_accepted_socket(Peer, server_side)
        transport.write(b"x" * OWED)
        thread.start()
        started = time.monotonic()
        close_bounded(transport, linger)
        ended = await asyncio.wait_for(peer.lost, 30)
        return started, ended

    loop = asyncio.new_event_loop() if loop_name == "asyncio" else uvloop.new_event_loop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()
        thread.join(30)
        client.close()


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_a_peer_that_reads_nothing_is_cut_after_linger(loop_name: str) -> None:
    started, ended = run(loop_name, lambda sock: None, 0.5)
    assert 0.4 < ended - started < 5


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_a_peer_that_reads_slowly_gets_everything(loop_name: str) -> None:
    got: list[int] = []

    def slow(sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        total = 0
        while chunk := sock.recv(1 << 16):
            total += len(chunk)
            time.sleep(0.02)  # 2.5 s or more for the 8 MB: longer than linger, never idle for it
        got.append(total)

    started, ended = run(loop_name, slow, 0.5)
    assert ended - started > 1.0
    time.sleep(0.1)
    assert got == [OWED]
