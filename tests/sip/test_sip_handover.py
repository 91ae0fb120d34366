"""The handover between workers (authproxy.sip.handover), on real Unix datagram socket pairs: what one worker
passes reaches the one it names, and nothing else gets through (the end-to-end case, a TCP caller reached by
the far side's requests whichever worker they arrive at, is in test_sip_route_serve.py)."""

from __future__ import annotations

import asyncio

from authproxy.sip.actions import Send
from authproxy.sip.handover import Handover, handover_pairs


def test_a_message_reaches_the_worker_it_names_and_junk_does_not() -> None:
    pairs = handover_pairs(3)
    outboxes = tuple(outbox for _, outbox in pairs)
    first, third = Handover(0, pairs[0][0], outboxes), Handover(2, pairs[2][0], outboxes)
    delivered: list[Send] = []

    async def run() -> None:
        third.start(delivered.append)
        first.send(Send(b"BYE sip:alice@192.0.2.1 SIP/2.0\r\n\r\n", ("2001:db8::1", 40000), "tls", 2))
        first.send(Send(b"x", ("192.0.2.1", 5060), "udp", 2))  # UDP goes from any worker: never handed over
        first.send(Send(b"x", ("192.0.2.1", 5060), "tcp", 9))  # no such worker
        for junk in (b"", b"tcp\n192.0.2.1\n", b"sctp\n192.0.2.1\n5060\nx", b"tcp\n192.0.2.1\nport\nx"):
            outboxes[2].send(junk)
        outboxes[2].send(b"tcp\n192.0.2.1\n5060\nlast")
        for _ in range(50):
            if len(delivered) == 2:
                break
            await asyncio.sleep(0.01)
        third.close()

    try:
        asyncio.run(run())
        assert delivered == [Send(b"BYE sip:alice@192.0.2.1 SIP/2.0\r\n\r\n", ("2001:db8::1", 40000), "tls"),
                             Send(b"last", ("192.0.2.1", 5060), "tcp")]
        assert first.dropped == 2
    finally:
        for pair in pairs:
            for sock in pair:
                sock.close()
