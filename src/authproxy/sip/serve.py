"""``authproxy sip serve``: the asyncio driver of the authenticating SIP proxy (RFC 3261 sections 16 and 18).

Every decision is :class:`authproxy.sip.proxy.SipProxy`'s; this module only moves bytes: UDP datagram
endpoints, TCP and TLS stream servers framing messages by Content-Length (:func:`authproxy.sip.parse.parse_stream`,
section 18.3), connections to a TCP next hop, the access log, and a once-a-second timer that forgets old
transactions, flushes the log and picks up edits of the users file.

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
branches and To tags too, so a CANCEL or the ACK of a 407 is treated alike whichever worker it reaches.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hmac
import os
import secrets
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from authproxy.auth.errors import AuthProxyError, ConfigError, UserStoreError
from authproxy.auth.nonces import NonceIssuer
from authproxy.auth.outcomes import Outcome
from authproxy.auth.roles import PROXY
from authproxy.auth.verifier import Verifier
from authproxy.config import SipConfig, parse_sip_alias
from authproxy.engine.throttle import FailureThrottle
from authproxy.observe.accesslog import AccessLog
from authproxy.observe.notices import RateLimitedNotices
from authproxy.proxy.tls import start_handshake, tls_context
from authproxy.proxy.workers import supervise
from authproxy.sip.actions import Action, Send
from authproxy.sip.fields import SipError
from authproxy.sip.log import DROPPED, Address, SipRecord, format_address, format_sip_json, format_sip_squid
from authproxy.sip.parse import Limits, parse_stream
from authproxy.sip.proxy import SipProxy
from authproxy.sip.routing import NextHop
from authproxy.state.base import NonceCounterStore
from authproxy.state.memory import MemoryNonceCounterStore
from authproxy.users import open_serving_store

#: Unsent bytes a stream may hold before it is given up (a peer that does not read).
MAX_UNSENT = 1 << 20


@dataclass(frozen=True)
class SipWorker:
    """What one worker of ``--workers N`` gets from the supervisor: its index, the key every worker shares
    (nonces, branches, To tags), the shared nonce counts, and its own socket for each listener, in
    ``config.listeners`` order."""

    index: int
    key: bytes
    counters: NonceCounterStore
    sockets: tuple[socket.socket, ...]


class _Datagrams(asyncio.DatagramProtocol):
    """A UDP socket: a listener at ``address``, or (``address`` None) a worker's own socket towards the next hop."""

    def __init__(self, server: SipServer, address: Address | None) -> None:
        self.server = server
        self.address = address
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Registered here, not when create_datagram_endpoint returns: uvloop may hand over a datagram already
        # queued (a worker's socket, made before the fork) before it returns, and its answer needs a socket.
        self.transport = udp = cast(asyncio.DatagramTransport, transport)
        if self.address is None:
            self.server._hop_udp = udp
        else:
            self.server._udp.append((self.address, udp))

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.server.received(data, (str(addr[0]), int(addr[1])), "udp")

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for an earlier datagram (a peer that went away): UDP has nothing to retry


class _Stream(asyncio.Protocol):
    """One TCP or TLS connection, either direction: SIP messages framed by Content-Length.

    Timed by one timer: closed after ``idle_timeout`` with nothing received or sent, and, once a message has
    begun, after ``message_timeout`` if it has not ended (however slowly its bytes come: a trickle is not
    activity enough). A TLS connection is counted from accept and then upgraded by the HTTP proxy's
    :func:`authproxy.proxy.tls.start_handshake` under ``tls_handshake_timeout``."""

    def __init__(self, server: SipServer, transport_name: str) -> None:
        self.server = server
        self.name = transport_name
        self.buffer = bytearray()
        self.peer: Address = ("", 0)
        self.client = "-"
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.ready = transport_name != "tls"  # a TLS connection, once its handshake is done
        self.active = 0.0  # loop time of the last byte received or message sent
        self.begun: float | None = None  # loop time a message still incomplete began
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
        self.buffer += data
        while self.buffer and self.transport is not None and not self.transport.is_closing():
            try:
                framed = parse_stream(bytes(self.buffer), self.server.limits)
            except SipError as exc:
                proxy = self.server.proxy
                assert proxy is not None
                self.server.act(proxy.malformed(bytes(self.buffer), exc, self.peer, self.name, time.time()))
                self.transport.close()  # the framing is lost: nothing after this can be read
                return
            if framed is None:
                if self.buffer.strip(b"\r\n"):
                    self._begin(loop_time)
                else:
                    self.buffer.clear()  # CRLFs between messages (section 7.5): nothing has begun
                return
            _message, used = framed
            raw = bytes(self.buffer[:used])
            del self.buffer[:used]
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


class SipServer:
    """The listeners, the proxy and the log of one ``authproxy sip serve``."""

    def __init__(self, config: SipConfig, *, random: Callable[[int], bytes] = os.urandom,
                 worker: SipWorker | None = None) -> None:
        self.config = config
        self.random = random
        self.worker = worker
        self.store = open_serving_store(config.users, config.realm)
        key = self._nonce_key = worker.key if worker is not None else random(32)
        self.verifier = self._verifier(config)
        self.counters: NonceCounterStore = worker.counters if worker is not None else MemoryNonceCounterStore()
        # Branches and To tags: derived from the same shared secret, under a label of their own.
        self._proxy_key = hmac.digest(key, b"authproxy sip branch and to-tag key", "sha256")
        self.log = AccessLog.open(config.access_log, config.access_log_format)
        self._format = format_sip_json if config.access_log_format == "json" else format_sip_squid
        self.limits = Limits(max_message_size=config.max_message_size, max_body_size=config.max_message_size)
        self.proxy: SipProxy | None = None
        self.bound: list[tuple[str, Address]] = []
        self.streams: dict[Address, _Stream] = {}
        self.tls: ssl.SSLContext | None = None
        self.tls_failures = RateLimitedNotices("TLS handshake failures")  # as the HTTP proxy tells them
        self._udp: list[tuple[Address, asyncio.DatagramTransport]] = []
        self._hop_udp: asyncio.DatagramTransport | None = None  # a worker's own socket towards a UDP next hop
        self._servers: list[asyncio.Server] = []
        self._connecting: dict[Address, list[bytes]] = {}
        self._tick: asyncio.TimerHandle | None = None

    def _verifier(self, config: SipConfig) -> Verifier:
        issuer = NonceIssuer(self._nonce_key, config.realm, config.nonce_lifetime)
        return Verifier(config.auth_policy, issuer, PROXY, auth_info=False)  # SIP has no such field

    async def start(self) -> None:
        """Bind (or take the worker's sockets), make the proxy, then serve: the proxy exists before a socket is
        read, since a worker's sockets may hold datagrams queued while it was starting."""
        loop = asyncio.get_running_loop()
        config = self.config
        worker = self.worker
        # A worker serves the sockets the supervisor made for it; one process binds its own.
        sockets = list(worker.sockets) if worker is not None else [
            bind_listener(transport, host, port) for transport, host, port in config.listeners]
        local: dict[str, Address] = {}
        aliases: list[tuple[str, int | None]] = []  # every listener's address names this proxy (section 16.4)
        for (transport, _host, _port), sock in zip(config.listeners, sockets, strict=True):
            address = _address(sock.getsockname())
            self.bound.append((transport, address))
            local.setdefault(transport, (config.via_host or address[0], address[1]))
            aliases += [address, (config.via_host or address[0], address[1])]
        public = dict(local)  # what clients reach: the listeners (a worker's own next-hop port is only local)
        for alias in config.aliases:
            name, alias_port = parse_sip_alias(alias)
            aliases.append((name, alias_port))
        hop = NextHop.parse(config.next_hop)
        hop_sock = None
        if worker is not None and hop.transport == "udp":
            # Each worker sends to the next hop from a UDP port of its own, named in its Via, so the next hop's
            # answers come back to the worker that forwarded the request: the one holding the client's TCP or
            # TLS connection, and its transaction. (On the shared port they would all reach the one worker the
            # kernel picks for the next hop's address.)
            udp_host = next(host for transport, host, _ in config.listeners if transport == "udp")
            hop_sock = bind_listener("udp", udp_host, 0)
            local["udp"] = (local["udp"][0], _address(hop_sock.getsockname())[1])
        try:
            infos = await loop.getaddrinfo(hop.host, hop.port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise ConfigError(f"next_hop: cannot resolve {hop.host}: {exc.strerror}") from None
        resolved = NextHop(str(infos[0][4][0]), hop.port, hop.transport)
        throttle = _throttle(config)
        self.proxy = SipProxy(self.verifier, self.store, self.counters, next_hop=resolved, local=local,
                              random=self.random, key=self._proxy_key, limits=self.limits,
                              max_transactions=config.max_transactions,
                              max_transactions_per_source=config.max_transactions_per_source,
                              public=public, aliases=aliases, record_route=config.record_route, path=config.path,
                              trusted=config.trusted, throttle=throttle)
        if hop_sock is not None:
            await loop.create_datagram_endpoint(lambda: _Datagrams(self, None), sock=hop_sock)
        for (transport, _host, _port), sock, (_, address) in zip(config.listeners, sockets, self.bound,
                                                                 strict=True):
            if transport == "udp":
                await loop.create_datagram_endpoint(functools.partial(_Datagrams, self, address), sock=sock)
            else:
                if transport == "tls" and self.tls is None:
                    self.tls = tls_context(config)
                # No ssl= for TLS: _Stream counts the connection at accept, then starts the handshake.
                server = await loop.create_server(functools.partial(_Stream, self, transport), sock=sock,
                                                  backlog=1024)
                self._servers.append(server)
        self._tick = loop.call_later(1.0, self._housekeeping)

    # -- in and out -----------------------------------------------------------------------------------------

    def received(self, data: bytes, source: Address, transport: str) -> None:
        proxy = self.proxy
        if proxy is None:
            return
        try:
            actions = proxy.datagram(data, source, transport, time.time())
        except Exception as exc:  # a bug must not stop the proxy; the peer gets nothing, the operator a line
            _stderr(f"authproxy: sip: internal error on a message from {format_address(source)}: "
                    f"{type(exc).__name__}")
            return
        self.act(actions)

    def act(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SipRecord):
                if self.log.enabled:  # formatted only when written (``--access-log ""`` writes none)
                    self.log.write_line(self._format(action))
            else:
                self._send(action)

    def _send(self, send: Send) -> None:
        if send.transport == "udp":
            hop = self._hop_udp
            if hop is not None and self.proxy is not None and send.to == self.proxy.next_hop.address:
                hop.sendto(send.data, send.to)
            else:
                self._udp_for(send.to).sendto(send.data, send.to)
            return
        stream = self.streams.get(send.to)
        if stream is not None:
            stream.write(send.data)
        elif send.transport == "tcp" and len(self.streams) < self.config.max_connections:
            # Section 18.2.2: the connection is gone (or never was): open one to the address the Via names.
            waiting = self._connecting.get(send.to)
            if waiting is None:
                self._connecting[send.to] = [send.data]
                asyncio.get_running_loop().create_task(self._connect(send.to))
            elif len(waiting) < 64:
                waiting.append(send.data)

    async def _connect(self, to: Address) -> None:
        loop = asyncio.get_running_loop()
        try:
            _transport, stream = await loop.create_connection(lambda: _Stream(self, "tcp"), to[0], to[1])
        except OSError:
            self._connecting.pop(to, None)
            return
        for data in self._connecting.pop(to, []):
            stream.write(data)

    def _udp_for(self, to: Address) -> asyncio.DatagramTransport:
        """The UDP listener to send from: the one this proxy's Via names (the first) unless the address family
        needs another."""
        want_v6 = ":" in to[0]
        for address, endpoint in self._udp:
            if (":" in address[0]) == want_v6:
                return endpoint
        return self._udp[0][1]

    def _housekeeping(self) -> None:
        if self.proxy is not None:
            now = time.time()
            self.proxy.expire(now)
            if self.proxy.throttle is not None:
                self.proxy.throttle.purge(now)
        self.log.flush()
        self.tls_failures.flush()
        try:
            self.store.refresh()
        except UserStoreError as exc:  # keep serving the last good users
            _stderr(f"authproxy: users file not reloaded: {exc.message}")
        self._tick = asyncio.get_running_loop().call_later(1.0, self._housekeeping)

    def reload(self, config: SipConfig) -> None:
        """SIGHUP: the config file and the users file read again and the access log reopened (log rotation), as
        ``authproxy serve`` does, without dropping a connection or a remembered transaction. Nonces already issued
        stay valid (same key, same counts). What the sockets or the routing were made from (``listen``,
        ``next_hop``, ``tls_*`` and the rest but :data:`RELOADABLE`) needs a restart: kept, and said so. A bad
        edit raises (AuthProxyError) before anything changed."""
        old = self.config
        kept = [f.name for f in dataclasses.fields(config)
                if f.init and f.name not in RELOADABLE and getattr(config, f.name) != getattr(old, f.name)]
        if kept:
            _stderr(f"authproxy: reload: {', '.join(kept)} need a restart; keeping the current values")
            config = dataclasses.replace(config, **{name: getattr(old, name) for name in kept})
        store = open_serving_store(config.users, config.realm)
        verifier = self._verifier(config)
        log = AccessLog.open(config.access_log, config.access_log_format)
        old_log = self.log
        self.config, self.store, self.verifier, self.log = config, store, verifier, log
        self._format = format_sip_json if config.access_log_format == "json" else format_sip_squid
        self.limits = Limits(max_message_size=config.max_message_size, max_body_size=config.max_message_size)
        proxy = self.proxy
        if proxy is not None:
            proxy.verifier, proxy.store, proxy.limits = verifier, store, self.limits
            proxy.max_transactions = config.max_transactions
            proxy.max_per_source = config.max_transactions_per_source
            if _throttle_settings(config) != _throttle_settings(old):
                proxy.throttle = _throttle(config)  # counts start again, as the HTTP proxy's do
        old_log.flush()
        old_log.close()

    async def stop(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
        for _address, endpoint in self._udp:
            endpoint.close()
        if self._hop_udp is not None:
            self._hop_udp.close()
        for server in self._servers:
            server.close()
        for stream in list(self.streams.values()):
            if stream.transport is not None:
                stream.transport.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
        self.log.close()

    def describe(self) -> str:
        listening = " ".join(f"{transport}:{format_address(address)}" for transport, address in self.bound)
        workers = "" if self.worker is None else f"; {self.config.workers} workers"
        return (f"authproxy: sip listening on {listening}{workers}; next hop {self.config.next_hop}; realm "
                f"{self.config.realm!r}; Digest {', '.join(self.config.auth_policy.digest_algorithms)}; users from "
                f"{self.store.description}")


def _address(sockname: tuple[str | int, ...]) -> Address:
    return (str(sockname[0]), int(sockname[1]))


def bind_listener(transport: str, host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A socket bound where a ``transport:host:port`` listener says (TCP and TLS: not yet listening, the loop
    does that); ``reuse_port`` puts it in an ``SO_REUSEPORT`` group with the other workers' sockets."""
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind)
        try:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's create_server does
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise ConfigError(f"listen: cannot bind {transport}:{host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def _reuseport_group(transport: str, host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` sockets in one ``SO_REUSEPORT`` group at ``host:port`` (port 0: a port nobody holds).

    Linux lets a socket with ``SO_REUSEPORT`` join a group of the same user already at that address, and
    ``bind`` to port 0 with the option may even pick the port of such a group in another process (for UDP it
    skips those ports as compatible): that process would then get a share of our datagrams, and we of its. So
    the port is first bound without the option, which fails if anyone holds it and for port 0 finds a port
    nobody holds, then released and taken by the group at once (a stranger taking it in between would be
    refused, or, with the option itself, join us: a window of microseconds)."""
    for attempt in range(5):
        probe = bind_listener(transport, host, port)
        chosen = probe.getsockname()[1]
        probe.close()
        group: list[socket.socket] = []
        try:
            for _ in range(count):
                group.append(bind_listener(transport, host, chosen, reuse_port=True))
        except ConfigError:
            for sock in group:
                sock.close()
            if port or attempt == 4:
                raise
            continue  # port 0: someone took the free port in between; find another
        return group
    raise AssertionError("unreachable")  # pragma: no cover


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


#: What SIGHUP takes from an edited config (the rest needs a restart).
RELOADABLE = frozenset({
    "users", "realm", "digest_algorithms", "qop", "nonce_lifetime", "access_log", "access_log_format",
    "max_transactions", "max_transactions_per_source", "max_message_size", "max_connections", "idle_timeout",
    "message_timeout", "tls_handshake_timeout", "throttle_max_failures", "throttle_window", "throttle_lockout",
    "throttle_max_user_lockout", "throttle_max_entries"})


def _throttle_settings(config: SipConfig) -> tuple[float, ...]:
    return (config.throttle_max_failures, config.throttle_window, config.throttle_lockout,
            config.throttle_max_user_lockout, config.throttle_max_entries)


def _throttle(config: SipConfig) -> FailureThrottle | None:
    if not config.throttle_max_failures:  # per worker, as the HTTP proxy's
        return None
    return FailureThrottle(config.throttle_max_failures, config.throttle_window, config.throttle_lockout,
                           config.throttle_max_user_lockout, max_entries=config.throttle_max_entries)


async def serve(config: SipConfig, *, announce: Callable[[str], None] = _stderr,
                worker: SipWorker | None = None, reload: Callable[[], SipConfig] | None = None) -> None:
    """Run the SIP proxy (or one worker of it) until SIGTERM or SIGINT; SIGHUP calls ``reload`` for a new config
    (as ``authproxy serve`` does)."""
    server = SipServer(config, worker=worker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)

    def on_hup() -> None:
        try:
            server.reload(reload() if reload is not None else server.config)
        except AuthProxyError as exc:
            _stderr(f"authproxy: reload refused, still running with the previous config: {exc.message}")
        else:
            _stderr("authproxy: reloaded config and users")

    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    await server.start()
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
    groups = [_reuseport_group(transport, host, port, count) for transport, host, port in config.listeners]
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
        _run_loop(config, SipWorker(index, key, counters, mine), counted if reload is not None else None)

    supervise(count, work)
    for group in groups:
        for sock in group:
            sock.close()
