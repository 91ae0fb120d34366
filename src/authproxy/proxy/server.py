"""The proxy server: listening socket, shared state, housekeeping and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable

from authproxy.auth.digest import get_algorithm
from authproxy.config import Config
from authproxy.observe.accesslog import AccessLog, AccessRecord
from authproxy.proxy.authn import Authenticator
from authproxy.proxy.connection import ClientConnection
from authproxy.proxy.upstream import Pool
from authproxy.state.memory import MemoryNonceCounterStore
from authproxy.users import describe_capabilities, open_user_store
from authproxy.users.base import UserStore


class ProxyServer:
    """What every connection shares: config, authenticator, origin pool and access log."""

    def __init__(self, config: Config, auth: Authenticator, access_log: AccessLog) -> None:
        self.config = config
        self.auth = auth
        self.access_log = access_log
        self.pool = Pool(config.pool_size)
        self.via_1_1 = b"1.1 " + config.via_pseudonym.encode("ascii", "replace")
        self.connections: set[ClientConnection] = set()
        self._server: asyncio.base_events.Server | None = None
        self._housekeeping: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        host, port = self.config.listen_address
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientConnection(self), host, port, reuse_address=True, backlog=1024
        )
        self._housekeeping = loop.call_later(1.0, self._tick)

    @property
    def sockets_addresses(self) -> list[tuple[str, int]]:
        assert self._server is not None
        return [s.getsockname()[:2] for s in self._server.sockets]

    def _tick(self) -> None:
        now = time.monotonic()
        for conn in list(self.connections):
            conn.check_timeouts(now)
        self.pool.expire(now)
        self.access_log.flush()
        self._housekeeping = asyncio.get_running_loop().call_later(1.0, self._tick)

    def log_refusal(self, conn: ClientConnection, status: int, sent: int) -> None:
        """A request refused before it could be parsed: logged with what little is known."""
        self.access_log.write(AccessRecord(started=time.time(), duration=0.0, client=conn.client, user=None,
                                           method="-", target="-", status=status, sent_bytes=sent,
                                           outcome="bad-request"))

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish for up to ``grace`` seconds, then close the rest."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.draining = True
            if conn.active is None and conn.tunnel is None:
                conn.close()
        deadline = time.monotonic() + grace
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.transport.abort()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        self.pool.close_all()
        self.access_log.flush()


def build_server(config: Config) -> ProxyServer:
    store = open_user_store(config.users, config.realm)
    auth = Authenticator(config, store, MemoryNonceCounterStore())
    return ProxyServer(config, auth, AccessLog.open(config.access_log, config.access_log_format))


async def serve(config: Config, *, announce: Callable[[str], None] | None = None) -> None:
    """Run the proxy until SIGTERM or SIGINT."""
    server = build_server(config)
    await server.start()
    host, port = server.sockets_addresses[0]
    shown = f"[{host}]" if ":" in host else host
    (announce or _stderr)(f"authproxy: listening on {shown}:{port}, realm {config.realm!r}, "
                          f"users from {server.auth.store.description}")
    for line in users_summary(server.auth.store, config):
        (announce or _stderr)(f"authproxy: {line}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


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


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(config: Config) -> None:
    """Blocking entry point: uvloop when available."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we run on
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))
