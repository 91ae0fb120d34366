"""Closing a connection whose peer has not read what it is still owed, within a bound.

``transport.close()`` (asyncio's and uvloop's) first writes what is buffered, for as long as that takes: a peer that
never reads again (a client that stopped reading its last answer, an origin that does not read the request body
it was sent, a tunnel's far end) would hold the descriptor, and the client's place in ``max_connections``, for
ever. Once the proxy has closed a connection no state of the engine's times it, so it is timed here: like a
client owed more than the mark (README, ``write_timeout``), a closing connection that reads nothing of what is
left for ``write_timeout`` is aborted; one that keeps reading, however slowly, gets all of it. No cost until a
close finds bytes left (Squid bounds a lingering close too, ``comm_lingering_close``).
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Closable(Protocol):
    def close(self) -> None: ...

    def abort(self) -> None: ...

    def get_write_buffer_size(self) -> int: ...


def close_bounded(transport: Closable, linger: float) -> None:
    """Close ``transport`` after what is buffered is written, or abort it once its peer reads nothing of that
    for ``linger`` seconds."""
    transport.close()
    left = transport.get_write_buffer_size()
    if left:
        asyncio.get_running_loop().call_later(linger, _check, transport, left, linger)


def _check(transport: Closable, before: int, linger: float) -> None:
    left = transport.get_write_buffer_size()
    if not left:
        return  # written out: the close went through
    if left >= before:
        transport.abort()  # not a byte taken in ``linger`` seconds
    else:
        asyncio.get_running_loop().call_later(linger, _check, transport, left, linger)
