"""``authproxy sip serve``: the asyncio driver of the authenticating SIP proxy (RFC 3261 sections 16 and 18).

Every decision is :class:`authproxy.sip.proxy.SipProxy`'s; the driver only moves bytes (here: the entry point,
signals and workers; :mod:`authproxy.sip.server` the server, :mod:`authproxy.sip.listeners` the sockets and UDP,
:mod:`authproxy.sip.streams` the TCP and TLS connections): UDP datagram endpoints, TCP and TLS stream
servers framing messages by Content-Length (:func:`authproxy.sip.parse.parse_stream`, section 18.3),
connections to a TCP next hop, the access log, and a once-a-second timer that forgets old transactions, flushes
the log and picks up edits of the users file.

Sends go out as section 18 says: UDP from the listener named in this proxy's Via (so the next hop's answers
come back to it); over a stream, on the connection with that peer, else on a new TCP connection (section
18.2.2). A stream that breaks the framing gets its 400 (when one can be made) and is closed, since nothing
after it can be framed. Bounded: ``max_connections`` streams, ``max_message_size`` per message (and so per
stream buffer), 1 MiB unsent per stream before it is closed.

With ``workers`` (``--workers N``) a supervisor (the HTTP proxy's, :func:`authproxy.proxy.workers.supervise`)
runs N processes. Before forking it makes, for every listener, one ``SO_REUSEPORT`` socket per worker on the
same port, and keeps them all: a worker takes its own, and a worker restarted after a crash takes its
predecessor's. The kernel picks a socket of the group by a hash of the 4-tuple, so the group never changing
means a peer address keeps going to the same worker. The workers share the nonce key and a shared-memory
nonce-count table (:class:`authproxy.state.shared.SharedNonceCounterStore`): a nonce one worker issued is
accepted by every worker, a ``(nonce, nc)`` used at one is a replay at every other. They share the key behind
branches and To tags too, so a CANCEL or the ACK of a 407 is treated alike whichever worker it reaches. A
client's TCP or TLS connection is one worker's: a request for its flow that reaches another is handed to the
one holding it (:mod:`authproxy.sip.handover`, a Unix datagram socket pair per worker made before forking).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
from collections.abc import Callable

from authproxy.config import SipConfig
from authproxy.observe.notices import stderr
from authproxy.proxy.server import handle_signals, settle_heap
from authproxy.proxy.workers import supervise
from authproxy.sip.handover import handover_pairs
from authproxy.sip.listeners import reuseport_group
from authproxy.sip.server import SipServer, SipWorker
from authproxy.users import open_serving_store


async def serve(config: SipConfig, *, announce: Callable[[str], None] = stderr,
                worker: SipWorker | None = None, reload: Callable[[], SipConfig] | None = None) -> None:
    """Run the SIP proxy (or one worker of it) until SIGTERM or SIGINT; SIGHUP calls ``reload`` for a new config
    (as ``authproxy serve`` does)."""
    server = SipServer(config, worker=worker)
    stop = handle_signals(server, reload)
    await server.start()
    settle_heap()
    if worker is None or worker.index == 0:
        announce(server.describe())
    try:
        await stop.wait()
    finally:
        await server.stop()


def _run_loop(config: SipConfig, worker: SipWorker | None, reload: Callable[[], SipConfig] | None) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we run on
        asyncio.run(serve(config, worker=worker, reload=reload))
    else:
        uvloop.run(serve(config, worker=worker, reload=reload))


def run(config: SipConfig, reload: Callable[[], SipConfig] | None = None) -> None:
    """Blocking entry point: one process, or a supervisor and ``workers`` processes on the same ports (the
    supervisor passes SIGHUP on: each worker reloads)."""
    count = config.workers or len(os.sched_getaffinity(0))
    if count == 1:
        _run_loop(config, None, reload)
        return
    open_serving_store(config.users, config.realm)  # a users file that cannot serve stops us here, not N times
    config = dataclasses.replace(config, workers=count)
    # One socket per worker and listener, made (and for port 0, the port learnt) before forking and held by the
    # supervisor for its whole life: a restarted worker takes its predecessor's socket, so the SO_REUSEPORT
    # group never changes, and neither does the worker a peer's 4-tuple is hashed to. That is what keeps a UDP
    # retransmission (RFC 3261 section 17: the same request again, from the same socket of the user agent to
    # the same address of ours, so the same 4-tuple) at the worker that remembers its transaction: it gets the
    # same treatment as the first copy although the transaction table is each worker's own. A TCP or TLS
    # connection is one worker's for its life anyway.
    groups = [reuseport_group(transport, host, port, count) for transport, host, port in config.listeners]
    pairs = handover_pairs(count)  # a message for a client connection another worker holds goes to that one
    key = secrets.token_bytes(32)
    from authproxy.state.shared import SharedNonceCounterStore  # multiprocessing: only with workers

    counters = SharedNonceCounterStore()

    def counted() -> SipConfig:  # "workers = 0" in the file again means the count this supervisor made
        assert reload is not None
        again = reload()
        return dataclasses.replace(again, workers=count) if again.workers == 0 else again

    def work(index: int) -> None:
        mine = tuple(group[index] for group in groups)
        for group in groups:  # the other workers' sockets are theirs: this process closes its copies
            for sock in group:
                if sock not in mine:
                    sock.close()
        for other, (inbox, _outbox) in enumerate(pairs):
            if other != index:
                inbox.close()
        worker = SipWorker(index, key, counters, mine, pairs[index][0], tuple(outbox for _, outbox in pairs))
        _run_loop(config, worker, counted if reload is not None else None)

    supervise(count, work)
    for group in groups:
        for sock in group:
            sock.close()
    for pair in pairs:
        for sock in pair:
            sock.close()
