"""The proxy server: listening socket, shared state, housekeeping and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import resource
import signal
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from authproxy.auth.digest import get_algorithm
from authproxy.auth.errors import AuthProxyError
from authproxy.auth.outcomes import Outcome
from authproxy.auth.store import UserStore
from authproxy.config import Config
from authproxy.engine.authn import Authenticator
from authproxy.engine.budget import HeldBodies
from authproxy.engine.decision import Decision, Refused
from authproxy.engine.origin import HeadLimits
from authproxy.engine.responses import made_up_response
from authproxy.engine.throttle import FailureThrottle, client_key
from authproxy.observe.accesslog import AccessLog, AccessRecord
from authproxy.observe.notices import RateLimitedNotices, stderr
from authproxy.proxy.connection import ClientConnection
from authproxy.proxy.dns import DnsCache, NotCached
from authproxy.proxy.policy import OwnSockets, resolve_and_check
from authproxy.proxy.tls import start_handshake, tls_context
from authproxy.proxy.upstream import Pool
from authproxy.state.base import NonceCounterStore
from authproxy.state.memory import MemoryNonceCounterStore
from authproxy.users import describe_capabilities, open_serving_store


class ProxyServer:
    """What every connection shares: config, authenticator, origin pool and access log."""

    def __init__(self, config: Config, auth: Authenticator, access_log: AccessLog) -> None:
        self.config = config
        self.auth = auth
        self.access_log = access_log
        # What fits the descriptor limit (fd_plan); start() raises the limit and fits these to it.
        self.max_connections = config.max_connections
        self.fd_limit: int | None = None
        self.fd_warning: str | None = None
        self.pool = Pool(config.pool_size, limits=_head_limits(config), linger=config.write_timeout,
                         max_idle=config.max_connections // 2)
        self._via = _via_entries(config)
        self.connections: set[ClientConnection] = set()
        self.per_client: dict[str, int] = {}
        self.dns = DnsCache()
        # (user, host, port, is_connect) -> (expiry, decision): see decide_now.
        self._decisions: dict[tuple[str | None, str, int, bool], tuple[float, Decision]] = {}
        self.throttle = _throttle(config)
        self.held_bodies = HeldBodies(config.auth_int_max_body)
        self.own_sockets = OwnSockets()  # where this proxy listens: a destination there is a loop
        self._server: asyncio.base_events.Server | None = None
        self._tls: ssl.SSLContext | None = None
        self.tls_failures = RateLimitedNotices("TLS handshake failures")
        self._housekeeping: asyncio.TimerHandle | None = None
        # The engine's clocks (authproxy.engine.commands.ProxyState): playbook tests give it fake ones.
        self.monotonic: Callable[[], float] = time.monotonic
        self.wall: Callable[[], float] = time.time

    async def start(self, reuse_port: bool = False) -> None:
        host, port = self.config.listen_address
        loop = asyncio.get_running_loop()
        self.fd_limit = _raise_fd_limit()
        self.fd_warning = self._fit_to_fd_limit()  # said by serve() after the "listening on" line
        # No ssl= here even for TLS: see accepted() and authproxy.proxy.tls.
        self._tls = tls_context(self.config)
        self._server = await loop.create_server(
            lambda: ClientConnection(self), host, port, reuse_address=True, reuse_port=reuse_port or None,
            backlog=1024,
        )
        self.own_sockets = OwnSockets.of(self._server.sockets)
        self._housekeeping = loop.call_later(1.0, self._tick)

    def _fit_to_fd_limit(self) -> str | None:
        """max_connections and the pool's idle connections within the descriptor limit; a warning if lowered."""
        if self.fd_limit is None:
            return None
        plan = fd_plan(self.config.max_connections, self.fd_limit)
        self.max_connections, self.pool.max_idle = plan.max_connections, plan.max_idle
        return plan.warning

    @property
    def sockets_addresses(self) -> list[tuple[str, int]]:
        assert self._server is not None
        return [s.getsockname()[:2] for s in self._server.sockets]

    def _tick(self) -> None:
        now = time.monotonic()
        for conn in list(self.connections):
            conn.check_timeouts(now)
        self.pool.expire(now)
        if self.throttle is not None:
            self.throttle.purge(now)
        self.access_log.flush()
        self.tls_failures.flush()
        self._housekeeping = asyncio.get_running_loop().call_later(1.0, self._tick)

    @property
    def logging(self) -> bool:
        return self.access_log.enabled

    @property
    def via_name(self) -> bytes:
        """This proxy's received-by in Via, lower-case: a request whose Via already lists it has looped."""
        return self._via["name"]

    def via(self, received_version: str) -> bytes:
        """The Via entry for a message this proxy received in HTTP/``received_version``."""
        return self._via.get(received_version) or self._via["1.1"]

    def decide_now(self, user: str | None, host: str, port: int, is_connect: bool) -> Decision | None:
        """The destination decision if it needs no waiting (an address, or a name in the DNS cache), else None.

        resolve_and_check is a coroutine that only suspends to resolve a name; driving it by hand keeps the
        common case (a literal address, a cached name) off the task machinery.
        """
        key = (user, host, port, is_connect)
        now = time.monotonic()
        cached = self._decisions.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        coro = resolve_and_check(self.config.policy, user, host, port, is_connect=is_connect,
                                 resolver=self.dns.cached_only, own=self.own_sockets)
        try:
            coro.send(None)
        except StopIteration as stop:
            decision: Decision = stop.value
        except NotCached:
            return None
        else:  # pragma: no cover - cached_only never suspends; be safe if the policy ever does
            coro.close()
            return None
        self._remember_decision(key, decision, now)
        return decision

    def _remember_decision(self, key: tuple[str | None, str, int, bool], decision: Decision, now: float) -> None:
        # The same user asking for the same destination gets the same answer until the name's DNS answer
        # expires: the policy is a pure function of (user, host, port, method) and the resolved addresses.
        if len(self._decisions) >= 10_000:
            self._decisions.clear()
        self._decisions[key] = (now + self.dns.ttl, decision)

    async def decide(self, user: str | None, host: str, port: int, is_connect: bool) -> Decision:
        decision = await resolve_and_check(self.config.policy, user, host, port, is_connect=is_connect,
                                           resolver=self.dns.resolve, timeout=self.config.connect_timeout,
                                           own=self.own_sockets)
        if not (isinstance(decision, Refused) and decision.error in ("dns_error", "dns_timeout")):
            self._remember_decision((user, host, port, is_connect), decision, time.monotonic())
        return decision

    def accepted(self, conn: ClientConnection) -> None:
        """A connection was just accepted: count it in, or refuse it at once; on the TLS listener, start its
        handshake. Counting here, before any handshake, is what keeps connections that never finish one
        inside ``max_connections`` and ``max_connections_per_client``."""
        refusal = self.admit(conn)
        if refusal is not None:
            conn.closed = True
            if self._tls is None:
                # Over a connection limit: say so in one response rather than a silent reset.
                sent = made_up_response(503, refusal, proxy_name=self.config.via_pseudonym, keep_alive=False,
                                        extra_headers=[("Retry-After", "1")])
                conn.transport.write(sent)
            else:
                # Nothing can be said on the TLS listener: before a handshake a TLS client cannot read a
                # plaintext 503 (to it that is a protocol error), and finishing a handshake for a client already
                # over its limit would spend the CPU and time the limit is there to save. Close; the log says why.
                sent = b""
            self.log_refusal(conn, 503, len(sent), outcome=Outcome.OVER_LIMIT)
            conn.transport.close()
            return
        if self._tls is not None:
            start_handshake(conn, self._tls, self.config.tls_handshake_timeout, self.tls_failures)

    def admit(self, conn: ClientConnection) -> str | None:
        """Count a new connection in, or say which limit it is over (RFC 9110 section 15.6.4: 503).

        Per client, IPv6 addresses count by their /64 (as the sign-in throttle does): one subscriber holds a
        whole /64 and could otherwise open ``max_connections_per_client`` from each of its addresses.
        """
        config = self.config
        if len(self.connections) >= self.max_connections:
            return f"this proxy is at its limit of {self.max_connections} connections; retry shortly"
        key = client_key(conn.client)
        count = self.per_client.get(key, 0)
        if config.max_connections_per_client and count >= config.max_connections_per_client:
            return (f"this proxy allows {config.max_connections_per_client} concurrent connections per client "
                    "address, and yours has that many open")
        self.per_client[key] = count + 1
        self.connections.add(conn)
        return None

    def release(self, conn: ClientConnection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            key = client_key(conn.client)
            count = self.per_client.pop(key, 1) - 1
            if count > 0:
                self.per_client[key] = count

    def log_refusal(self, conn: ClientConnection, status: int, sent: int,
                    outcome: Outcome = Outcome.BAD_REQUEST) -> None:
        """A request or connection refused before a request could be parsed: logged with what little is known."""
        self.access_log.write(AccessRecord(started=time.time(), duration=0.0, client=conn.client, user=None,
                                           method=None, target=None, status=status, sent_bytes=sent,
                                           outcome=outcome))

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish for up to ``grace`` seconds, then close the rest."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.engine.drain()
        deadline = time.monotonic() + grace
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.transport.abort()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        self.pool.close_all()
        self.access_log.flush()


    def reload(self, config: Config) -> None:
        """SIGHUP: take a new config and users file without dropping a connection.

        Nonces already issued stay valid (same key, same replay store). The access log is reopened, which is
        also how log rotation works. The listening address cannot change without a restart.
        """
        if config.listen_address != self.config.listen_address or (config.tls_cert, config.tls_key) != (
                self.config.tls_cert, self.config.tls_key):
            stderr("authproxy: reload: listen and tls_* changes need a restart; keeping the current listener")
        store = open_users(config)
        auth = Authenticator(config, store, self.auth.counters, nonce_key=self.auth.nonce_key)
        log = AccessLog.open(config.access_log, config.access_log_format)
        old_log = self.access_log
        if _throttle_settings(config) != _throttle_settings(self.config):
            self.throttle = _throttle(config)
        self.config, self.auth, self.access_log = config, auth, log
        self._via = _via_entries(config)
        self._decisions = {}  # decided under the old policy
        self.pool.size = config.pool_size
        self.held_bodies.resize(config.auth_int_max_body)
        self.pool.limits = _head_limits(config)
        self.pool.linger = config.write_timeout
        self.max_connections, self.pool.max_idle = config.max_connections, config.max_connections // 2
        warning = self._fit_to_fd_limit()
        if warning:
            stderr(warning)
        old_log.flush()
        old_log.close()


def _head_limits(config: Config) -> HeadLimits:
    """An origin's response head gets the limits of a request head (issue 9 item 2). Its time runs from its first
    byte: header_timeout, or read_timeout when that is shorter, since read_timeout is what an origin is given
    to answer and restarts on every byte, so a trickled head would never meet it."""
    return HeadLimits(config.max_header_size, config.max_header_count,
                      min(config.header_timeout, config.read_timeout))


def _via_entries(config: Config) -> dict[str, bytes]:
    # RFC 9110 section 7.6.3: Via names the protocol version this hop received the message in.
    pseudonym = config.via_pseudonym.encode("ascii", "replace")
    return {"1.1": b"1.1 " + pseudonym, "1.0": b"1.0 " + pseudonym, "name": pseudonym.lower()}


def _throttle_settings(config: Config) -> tuple[float, ...]:
    return (config.throttle_max_failures, config.throttle_window, config.throttle_lockout,
            config.throttle_max_user_lockout, config.throttle_max_entries)


def _throttle(config: Config) -> FailureThrottle | None:
    if not config.throttle_max_failures:
        return None
    return FailureThrottle(config.throttle_max_failures, config.throttle_window, config.throttle_lockout,
                           config.throttle_max_user_lockout, max_entries=config.throttle_max_entries)


#: Descriptors kept for everything but connections: the listening sockets, the log, the users file, stdio,
#: the resolver's and the password checks' threads.
RESERVED_FDS = 256


@dataclass(frozen=True)
class FdPlan:
    """How many client connections and idle pooled origin connections fit the descriptor limit."""

    max_connections: int
    max_idle: int
    warning: str | None


def fd_plan(max_connections: int, limit: int) -> FdPlan:
    """Each client connection may hold two descriptors (itself, and its origin connection or tunnel), the pool up
    to half as many idle origin connections, plus RESERVED_FDS: past the limit, accept() and connect() would fail
    with EMFILE, for every client at once. When ``max_connections`` does not fit, it is lowered to what does."""
    need = 2 * max_connections + max_connections // 2 + RESERVED_FDS
    if need <= limit:
        return FdPlan(max_connections, max_connections // 2, None)
    fitted = max(1, (limit - RESERVED_FDS) * 2 // 5)
    warning = (f"authproxy: warning: max_connections {max_connections} needs about {need} open files (each client "
               f"and its origin or tunnel, idle origin connections, {RESERVED_FDS} spare), but this process may "
               f"open {limit}: serving at most {fitted} connections. Raise the limit (ulimit -n, systemd "
               "LimitNOFILE=) or lower max_connections.")
    return FdPlan(fitted, fitted // 2, warning)


def _raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard one (each client and origin connection is a file); the limit
    now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (hard, 1 << 20):  # an unlimited hard limit is capped by the kernel's nr_open (often 2**20)
        if target == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or target <= soft:
            continue
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
            break
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


def open_users(config: Config) -> UserStore:
    """The users file as a store serving ``config.realm``. A realm none of its users can sign in to (their
    HA1s are bound to another realm) is a ConfigError naming the command that fixes it, at start and on
    SIGHUP: a proxy that answers 407 to every right password is worse than one that does not start."""
    return open_serving_store(config.users, config.realm)


def build_server(config: Config, *, nonce_key: bytes | None = None,
                 counters: NonceCounterStore | None = None) -> ProxyServer:
    store = open_users(config)
    auth = Authenticator(config, store, counters or MemoryNonceCounterStore(), nonce_key=nonce_key)
    return ProxyServer(config, auth, AccessLog.open(config.access_log, config.access_log_format))


@dataclass(frozen=True)
class WorkerSetup:
    """What the workers of one proxy share: the nonce key, the nonce counts, and the port."""

    index: int
    nonce_key: bytes
    counters: NonceCounterStore


C = TypeVar("C")


class Reloadable(Protocol[C]):
    """A server that SIGHUP can give a new config to (``ProxyServer``, ``authproxy.sip.server.SipServer``)."""

    config: C

    def reload(self, config: C) -> None: ...


def handle_signals(server: Reloadable[C], reload: Callable[[], C] | None) -> asyncio.Event:
    """SIGTERM and SIGINT set the returned event (a graceful stop); SIGHUP hands ``server`` the config ``reload``
    reads (the same config when there is nothing to read again: the users file is still read again), and says on
    stderr whether it took. One way for both ``authproxy serve`` and ``authproxy sip serve``."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)

    def on_hup() -> None:
        try:
            server.reload(reload() if reload is not None else server.config)
        except AuthProxyError as exc:
            stderr(f"authproxy: reload refused, still running with the previous config: {exc.message}")
        else:
            stderr("authproxy: reloaded config and users")

    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    return stop


def settle_heap() -> None:
    """Once a server is up: everything built so far lives as long as the process, so the collector is kept from
    walking it again and again (``gc.freeze``), and runs less often (a request or a SIP transaction allocates a
    few dozen short-lived objects), which shows in throughput and in the p99 latency."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


async def serve(config: Config, *, announce: Callable[[str], None] | None = None,
                reload: Callable[[], Config] | None = None, worker: WorkerSetup | None = None) -> None:
    """Run the proxy until SIGTERM or SIGINT; SIGHUP calls ``reload`` for a new config."""
    if worker is None:
        server = build_server(config)
    else:
        server = build_server(config, nonce_key=worker.nonce_key, counters=worker.counters)
    # Signals first: a SIGTERM that arrives as soon as we announce the port must be a clean stop.
    stop = handle_signals(server, reload)
    await server.start(reuse_port=worker is not None)
    settle_heap()
    if worker is None or worker.index == 0:
        host, port = server.sockets_addresses[0]
        shown = f"[{host}]" if ":" in host else host
        workers = "" if worker is None else f", {config.workers} workers"
        (announce or stderr)(f"authproxy: listening on {shown}:{port}{workers}, realm {config.realm!r}, "
                              f"users from {server.auth.store.description}")
        for line in users_summary(server.auth.store, config):
            (announce or stderr)(f"authproxy: {line}")
        if server.fd_warning:  # every worker has the same limit: said once
            stderr(server.fd_warning)
    await stop.wait()
    stderr("authproxy: stopping: no new connections; in-flight requests have "
            f"{server.config.drain_grace:g} s to finish")
    await server.stop(server.config.drain_grace)


def users_summary(store: UserStore, config: Config, limit: int = 20) -> list[str]:
    """What each user can sign in with, said once at start so a scheme a user cannot answer is no surprise.

    A bcrypt htpasswd user cannot answer Digest; an HA1 for another realm answers nothing. Past ``limit``
    users, only those who cannot use every offered scheme are listed.
    """
    offered = config.digest_algorithms if "digest" in config.schemes else ()
    entries = list(store)
    lines = [f"{len(entries)} user(s) in {store.description}"]
    for entry in entries:
        digest_ok = not offered or all(
            (alg := get_algorithm(name)) is not None and alg.base in entry.digest_algorithms(config.realm)
            for name in offered
        )
        if len(entries) <= limit or not digest_ok:
            lines.append("  " + describe_capabilities(entry, config.realm, offered))
            if len(lines) > limit + 1:
                lines.append("  ...")
                break
    if not entries:
        lines.append("  no user can sign in: add one with `authproxy users add NAME`")
    return lines

