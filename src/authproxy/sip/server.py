"""The SIP proxy's server (RFC 3261 sections 16 and 18): what one process of ``authproxy sip serve`` holds (its
listeners, the :class:`authproxy.sip.proxy.SipProxy` making every decision, the access log) and does: binding,
sending what the proxy says where section 18 says (UDP from the listener named in this proxy's Via; over a stream,
on the connection with that peer, else on a new TCP connection, section 18.2.2), the once-a-second housekeeping
(old transactions forgotten, the log flushed, the users file picked up again), SIGHUP's reload, and stopping.
The sockets are :mod:`authproxy.sip.listeners`', the TCP and TLS connections :mod:`authproxy.sip.streams`'.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hmac
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from authproxy.auth.errors import ConfigError, UserStoreError
from authproxy.auth.nonces import NonceIssuer
from authproxy.auth.roles import PROXY
from authproxy.auth.verifier import Verifier
from authproxy.config import SipConfig, parse_sip_alias
from authproxy.engine.throttle import FailureThrottle
from authproxy.observe.accesslog import AccessLog
from authproxy.observe.notices import RateLimitedNotices, stderr
from authproxy.proxy.tls import next_hop_tls_context, tls_context
from authproxy.sip.actions import Action, Send
from authproxy.sip.answers import answer_buckets
from authproxy.sip.handover import Handover
from authproxy.sip.listeners import Datagrams, bind_listener, sock_address
from authproxy.sip.log import DROPPED, Address, SipRecord, format_address, format_sip_json, format_sip_squid
from authproxy.sip.parse import Limits
from authproxy.sip.proxy import SipProxy
from authproxy.sip.routing import NextHop
from authproxy.sip.streams import Stream
from authproxy.state.base import NonceCounterStore
from authproxy.state.memory import MemoryNonceCounterStore
from authproxy.users import open_serving_store


@dataclass(frozen=True)
class SipWorker:
    """What one worker of ``--workers N`` gets from the supervisor: its index, the key every worker shares
    (nonces, branches, To tags), the shared nonce counts, its own socket for each listener, in
    ``config.listeners`` order, and its ends of the handover sockets."""

    index: int
    key: bytes
    counters: NonceCounterStore
    sockets: tuple[socket.socket, ...]
    #: This worker's handover inbox and every worker's outbox (:mod:`authproxy.sip.handover`).
    inbox: socket.socket | None = None
    outboxes: tuple[socket.socket, ...] = ()



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
        self.streams: dict[Address, Stream] = {}
        self.tls: ssl.SSLContext | None = None
        self.tls_failures = RateLimitedNotices("TLS handshake failures")  # as the HTTP proxy tells them
        # DROPPED lines come at the pace of what is sent, junk included (UDP, from forged addresses too): the
        # access log takes at most 50 a second, and stderr says how many more there were.
        self.dropped_lines = RateLimitedNotices("DROPPED lines in the SIP access log", per_second=50,
                                                write=lambda line: self.log.write_line(line), summarise=stderr)
        self._udp: list[tuple[Address, asyncio.DatagramTransport]] = []
        self._hop_udp: asyncio.DatagramTransport | None = None  # a worker's own socket towards a UDP next hop
        self._servers: list[asyncio.Server] = []
        self._connecting: dict[Address, list[bytes]] = {}
        self._hop_tls: ssl.SSLContext | None = None  # towards a transport=tls next hop
        self._hop_name = ""  # the next hop's host as configured: its certificate is checked against it
        self._tick: asyncio.TimerHandle | None = None
        self.handover: Handover | None = None
        if worker is not None and worker.inbox is not None:
            self.handover = Handover(worker.index, worker.inbox, worker.outboxes)

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
            address = sock_address(sock.getsockname())
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
            local["udp"] = (local["udp"][0], sock_address(hop_sock.getsockname())[1])
        try:
            infos = await loop.getaddrinfo(hop.host, hop.port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise ConfigError(f"next_hop: cannot resolve {hop.host}: {exc.strerror}") from None
        resolved = NextHop(str(infos[0][4][0]), hop.port, hop.transport)
        if hop.transport == "tls":
            self._hop_tls, self._hop_name = next_hop_tls_context(config), hop.host
        throttle = _throttle(config)
        self.proxy = SipProxy(self.verifier, self.store, self.counters, next_hop=resolved, local=local,
                              random=self.random, key=self._proxy_key, limits=self.limits,
                              max_transactions=config.max_transactions,
                              max_transactions_per_source=config.max_transactions_per_source,
                              public=public, aliases=aliases, record_route=config.record_route, path=config.path,
                              trusted=config.trusted, throttle=throttle, answer_rate=config.udp_answer_rate,
                              answer_burst=config.udp_answer_burst,
                              worker=None if self.handover is None else self.handover.index)
        if self.handover is not None:
            self.handover.start(self._send)
        if hop_sock is not None:
            await loop.create_datagram_endpoint(lambda: Datagrams(self, None), sock=hop_sock)
        for (transport, _host, _port), sock, (_, address) in zip(config.listeners, sockets, self.bound,
                                                                 strict=True):
            if transport == "udp":
                await loop.create_datagram_endpoint(functools.partial(Datagrams, self, address), sock=sock)
            else:
                if transport == "tls" and self.tls is None:
                    self.tls = tls_context(config)
                # No ssl= for TLS: Stream counts the connection at accept, then starts the handshake.
                server = await loop.create_server(functools.partial(Stream, self, transport), sock=sock,
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
            stderr(f"authproxy: sip: internal error on a message from {format_address(source)}: "
                    f"{type(exc).__name__}")
            return
        self.act(actions)

    def act(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SipRecord):
                if not self.log.enabled:  # formatted only when written (``--access-log ""`` writes none)
                    continue
                if action.action == DROPPED:
                    self.dropped_lines.notice(self._format(action))
                else:
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
        elif send.owner is not None and self.handover is not None and send.owner != self.handover.index:
            self.handover.send(send)  # that client's connection is another worker's: it writes there
        elif (send.transport == "tcp" or (self._hop_tls is not None and self._is_hop(send.to))) \
                and len(self.streams) < self.config.max_connections:
            # Section 18.2.2: the connection is gone (or never was): open one to the address the Via names (over
            # TLS: only to the next hop, whose name its certificate is checked against).
            waiting = self._connecting.get(send.to)
            if waiting is None:
                self._connecting[send.to] = [send.data]
                asyncio.get_running_loop().create_task(self._connect(send.to, send.transport))
            elif len(waiting) < 64:
                waiting.append(send.data)

    def _is_hop(self, to: Address) -> bool:
        return self.proxy is not None and to == self.proxy.next_hop.address

    async def _connect(self, to: Address, transport: str) -> None:
        """A connection to ``to`` for what waits to go there; when it cannot be had, each request of it is
        answered 503 as if ``to`` had (RFC 3261 section 16.9), with a Warning saying why."""
        loop = asyncio.get_running_loop()
        timeout = self.config.connect_timeout
        tls = self._hop_tls if transport == "tls" else None
        try:
            _transport, stream = await asyncio.wait_for(loop.create_connection(
                lambda: Stream(self, transport, handshaken=True), to[0], to[1], ssl=tls,
                server_hostname=self._hop_name if tls is not None else None), timeout)
        except ssl.SSLCertVerificationError as exc:
            why = f"its TLS certificate is not trusted ({exc.verify_message})"
        except (OSError, ssl.SSLError) as exc:
            why = f"cannot connect ({exc.strerror or exc})"
        except TimeoutError:
            why = f"no connection within connect_timeout ({timeout:g} s)"
        else:
            for data in self._connecting.pop(to, []):
                stream.write(data)
            return
        waiting = self._connecting.pop(to, [])
        proxy = self.proxy
        if proxy is not None:
            now = time.time()
            for data in waiting:
                self.act(proxy.unreachable(data, to, transport, why, now))

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
            if self.proxy.answer_rate is not None:
                self.proxy.answer_rate.purge(now)
        self.log.flush()
        self.tls_failures.flush()
        self.dropped_lines.flush()
        try:
            self.store.refresh()
        except UserStoreError as exc:  # keep serving the last good users
            stderr(f"authproxy: users file not reloaded: {exc.message}")
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
            stderr(f"authproxy: reload: {', '.join(kept)} need a restart; keeping the current values")
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
            if (config.udp_answer_rate, config.udp_answer_burst) != (old.udp_answer_rate, old.udp_answer_burst):
                proxy.answer_rate = answer_buckets(config.udp_answer_rate, config.udp_answer_burst)
            if _throttle_settings(config) != _throttle_settings(old):
                proxy.throttle = _throttle(config)  # counts start again, as the HTTP proxy's do
        old_log.flush()
        old_log.close()

    async def stop(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
        if self.handover is not None:
            self.handover.close()
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



#: What SIGHUP takes from an edited config (the rest needs a restart).
RELOADABLE = frozenset({
    "users", "realm", "digest_algorithms", "qop", "nonce_lifetime", "access_log", "access_log_format",
    "max_transactions", "max_transactions_per_source", "max_message_size", "max_connections", "idle_timeout",
    "message_timeout", "tls_handshake_timeout", "throttle_max_failures", "throttle_window", "throttle_lockout",
    "throttle_max_user_lockout", "throttle_max_entries", "udp_answer_rate", "udp_answer_burst",
    "connect_timeout"})


def _throttle_settings(config: SipConfig) -> tuple[float, ...]:
    return (config.throttle_max_failures, config.throttle_window, config.throttle_lockout,
            config.throttle_max_user_lockout, config.throttle_max_entries)


def _throttle(config: SipConfig) -> FailureThrottle | None:
    if not config.throttle_max_failures:  # per worker, as the HTTP proxy's
        return None
    return FailureThrottle(config.throttle_max_failures, config.throttle_window, config.throttle_lockout,
                           config.throttle_max_user_lockout, max_entries=config.throttle_max_entries)

