"""What the sans-IO SIP proxy gives its driver for each message: bytes to send where, over which transport (RFC
3261 section 18: over a stream, the connection with that peer), and the records it logs.
"""

from __future__ import annotations

from typing import NamedTuple

from authproxy.sip.log import Address, SipRecord


class Send(NamedTuple):
    """Send ``data`` to ``to`` over ``transport`` (for a stream: the connection with that peer, else a new one).
    ``owner``: with ``--workers``, the worker holding that connection (a flow token named it), which another
    worker hands the bytes to. A named tuple: one or two are made per message."""

    data: bytes
    to: Address
    transport: str
    owner: int | None = None


Action = Send | SipRecord
