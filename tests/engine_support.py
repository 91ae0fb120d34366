"""Playbooks for the sans-IO engine: a fake proxy state, a fake clock and sinks that record every command.

A playbook feeds a ``Connection`` events (bytes from the client, an origin's bytes, a timer tick) and reads the
commands it gave back as plain values, e.g. ``("send", b"HTTP/1.1 407 ...")``, ``("open_origin", "origin.test",
"93.184.215.14", 80)``, ``("close",)``. No sockets, no event loop, no sleeps: time is ``Clock.now``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from authproxy.auth.basic import encode_basic
from authproxy.auth.policy import AuthPolicy
from authproxy.config import Config
from authproxy.engine.authenticate import Authentication
from authproxy.engine.authn import Authenticator, PendingPassword
from authproxy.engine.budget import HeldBodies
from authproxy.engine.commands import ConnectFailure
from authproxy.engine.connection import Connection
from authproxy.engine.decision import Allowed, Decision
from authproxy.engine.exchange import Exchange
from authproxy.engine.origin import HeadLimits, Origin
from authproxy.engine.throttle import FailureThrottle
from authproxy.observe.accesslog import AccessRecord
from authproxy.state.memory import MemoryNonceCounterStore
from authproxy.users.memory import MemoryUserStore
from authproxy.users.native import make_entry

REALM = "playbook"
PASSWORD = "wonderland"
ORIGIN_ADDRESS = "93.184.215.14"
BASIC = "Basic " + encode_basic("alice", PASSWORD)

Command = tuple[Any, ...]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class State:
    """What every connection shares (``ProxyState``), in memory: one user, alice. ``policy`` replaces the
    config's auth policy (a scheme of the test's own)."""

    def __init__(self, policy: AuthPolicy | None = None, **options: Any) -> None:
        known = {f.name for f in dataclasses.fields(Config)}
        settings = {"users": "unused.users", "realm": REALM, "access_log": "", "throttle_max_failures": 0,
                    **options}
        self.config = Config(**{k: v for k, v in settings.items() if k in known})
        self.clock = Clock()
        self.monotonic: Callable[[], float] = self.clock
        self.wall: Callable[[], float] = self.clock
        store = MemoryUserStore([make_entry("alice", PASSWORD, REALM)])
        self.auth = Authenticator(self.config, store, MemoryNonceCounterStore(), nonce_key=b"k" * 32,
                                  clock=self.clock, policy=policy)
        c = self.config
        self.throttle: FailureThrottle | None = None
        if c.throttle_max_failures:
            self.throttle = FailureThrottle(c.throttle_max_failures, c.throttle_window, c.throttle_lockout,
                                            c.throttle_max_user_lockout)
        self.limits = HeadLimits(c.max_header_size, c.max_header_count, c.header_timeout)
        self.held_bodies = HeldBodies(c.auth_int_max_body)

    @property
    def via_name(self) -> bytes:
        return b"authproxy"

    def via(self, received_version: str) -> bytes:
        return b"1.1 authproxy" if received_version != "1.0" else b"1.0 authproxy"

    @property
    def logging(self) -> bool:
        return True


class OriginIO:
    """An origin connection's sink: records what the engine asks of it, under the ``origin.`` prefix."""

    def __init__(self, log: list[Command], name: str = "origin") -> None:
        self.log = log
        self.name = name

    def write(self, data: bytes) -> None:
        self.log.append((f"{self.name}.write", data))

    def pause_reading(self) -> None:
        self.log.append((f"{self.name}.pause_reading",))

    def resume_reading(self) -> None:
        self.log.append((f"{self.name}.resume_reading",))

    def start_timer(self, seconds: float) -> None:
        self.log.append((f"{self.name}.start_timer", seconds))

    def stop_timer(self) -> None:
        self.log.append((f"{self.name}.stop_timer",))

    def release(self, reusable: bool) -> None:
        self.log.append((f"{self.name}.release", reusable))

    def close(self) -> None:
        self.log.append((f"{self.name}.close",))

    def abort(self) -> None:
        self.log.append((f"{self.name}.abort",))

    def write_eof(self) -> None:
        self.log.append((f"{self.name}.write_eof",))


class Sink:
    """A client connection's sink: every command becomes a value in ``commands``.

    ``decision`` is what ``decide`` answers at once (None: later, by the test); ``pooled`` what
    ``pooled_origin`` answers. Access records go to ``records``, not ``commands``.
    """

    def __init__(self) -> None:
        self.commands: list[Command] = []
        self.records: list[AccessRecord] = []
        self.decision: Decision | None = Allowed(ORIGIN_ADDRESS, 2)
        self.pooled: Origin | None = None
        self.exchanges: list[Any] = []  # the exchange of each completion-bearing command, in order
        self.asked: list[tuple[str, Any]] = []  # the same, with the command's name
        self.pending: list[PendingPassword] = []

    def send(self, data: bytes) -> None:
        self.commands.append(("send", data))

    def send_many(self, parts: list[bytes]) -> None:
        self.commands.append(("send", b"".join(parts)))

    def write_eof(self) -> bool:
        self.commands.append(("write_eof",))
        return True

    def pause_reading(self) -> None:
        self.commands.append(("pause_reading",))

    def resume_reading(self) -> None:
        self.commands.append(("resume_reading",))

    def close(self) -> None:
        self.commands.append(("close",))

    def abort(self) -> None:
        self.commands.append(("abort",))

    def wake(self) -> None:
        self.commands.append(("wake",))

    def decide(self, ex: Exchange, user: str | None, host: str, port: int, is_connect: bool) -> Decision | None:
        self.commands.append(("decide", user, host, port))
        if self.decision is None:
            self.exchanges.append(ex)
            self.asked.append(("decide", ex))
        return self.decision

    def pooled_origin(self, host: str, port: int) -> Origin | None:
        pooled, self.pooled = self.pooled, None
        return pooled

    def open_origin(self, ex: Exchange, host: str, address: str, port: int) -> None:
        self.exchanges.append(ex)
        self.asked.append(("open_origin", ex))
        self.commands.append(("open_origin", host, address, port))

    def open_tunnel(self, ex: Exchange, host: str, address: str, port: int) -> None:
        self.exchanges.append(ex)
        self.asked.append(("open_tunnel", ex))
        self.commands.append(("open_tunnel", host, address, port))

    def check_password(self, ex: Authentication, pending: PendingPassword) -> None:
        self.exchanges.append(ex)
        self.asked.append(("check_password", ex))
        self.pending.append(pending)
        self.commands.append(("check_password",))

    def log(self, record: AccessRecord) -> None:
        self.records.append(record)

    # -- reading what was recorded ------------------------------------------------------------------------
    def take(self) -> list[Command]:
        """The commands since the last take."""
        taken, self.commands = self.commands, []
        return taken

    def sent(self) -> bytes:
        """Every byte sent to the client since the last take (and take them)."""
        return b"".join(c[1] for c in self.take() if c[0] == "send")


class Playbook:
    """One client connection to an engine, with its state, clock and recording sinks."""

    def __init__(self, policy: AuthPolicy | None = None, **options: Any) -> None:
        self.state = State(policy, **options)
        self.sink = Sink()
        self.conn = Connection(self.state, self.sink, "192.0.2.7")
        self.origin_log: list[Command] = []

    @property
    def clock(self) -> Clock:
        return self.state.clock

    def origin(self, name: str = "origin") -> Origin:
        """A new origin connection, as the driver would make it."""
        return Origin(("origin.test", 80), OriginIO(self.origin_log, name), self.clock, self.state)

    def connect(self) -> Origin:
        """Complete the last open_origin command with a new origin connection."""
        origin = self.origin()
        self.sink.exchanges.pop().upstream_connected(origin)
        return origin

    def fail_connect(self, failure: ConnectFailure, reason: str = "x") -> None:
        self.sink.exchanges.pop().connect_failed(failure, reason)

    def origin_take(self) -> list[Command]:
        taken, self.origin_log[:] = list(self.origin_log), []
        return taken


def get(target: str = "http://origin.test/", *, auth: str | None = BASIC, extra: str = "",
        version: str = "1.1") -> bytes:
    """A request head, with Basic credentials for alice unless ``auth`` is None."""
    host = target.split("//", 1)[-1].split("/", 1)[0]
    lines = [f"GET {target} HTTP/{version}", f"Host: {host}"]
    if auth is not None:
        lines.append(f"Proxy-Authorization: {auth}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:80]
    return int(response[9:12])
