"""The commands the engine gives its driver, as small interfaces the driver implements (``typing.Protocol``).

The engine never does IO. Where it needs some, it calls a method of one of these sinks: ``ClientSink`` for the
client's connection and what hangs off it (origins, tunnels, threads, the resolver, the log), ``OriginSink`` for
a connection to an origin, ``TunnelSink`` for the far end of a CONNECT tunnel. A call is cheaper than a command
object per step; the playbook tests (tests/engine) record each call as a value instead.

A command that starts something slow (a connect, a name to resolve, a password to check in a thread) returns at
once; its completion comes back later as an event: a method call on the exchange that gave the command
(``Exchange.decided``, ``upstream_connected``, ``tunnel_connected``, ``connect_failed``, ``password_checked``).
``ClientSink.decide`` may also answer at once (a literal address, a cached name), which keeps the common case off
the task machinery.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from authproxy.config import Config
    from authproxy.engine.authenticate import Authentication
    from authproxy.engine.authn import Authenticator, PendingPassword
    from authproxy.engine.budget import HeldBodies
    from authproxy.engine.decision import Decision
    from authproxy.engine.exchange import Exchange
    from authproxy.engine.origin import Origin
    from authproxy.engine.throttle import FailureThrottle
    from authproxy.observe.accesslog import AccessRecord


class ConnectFailure(enum.Enum):
    """Why a connection to an origin could not be opened, as the driver saw it (RFC 9209 error types)."""

    TIMEOUT = "connection_timeout"
    DNS = "dns_error"
    REFUSED = "connection_refused"
    OTHER = "destination_unavailable"


class ClientSink(Protocol):
    """What the engine asks of the driver of one client connection."""

    def send(self, data: bytes) -> None:
        """Write ``data`` to the client."""

    def send_many(self, parts: list[bytes]) -> None:
        """Write ``parts`` to the client, in order, without joining them first (large bodies)."""

    def write_eof(self) -> bool:
        """Half-close towards the client (a tunnel's origin sent FIN); False if the transport cannot."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None:
        """Close after what was sent is written."""

    def abort(self) -> None:
        """Close at once, dropping what is not written (a response cut half-way)."""

    def wake(self) -> None:
        """Call ``Connection.woken`` soon, from the event loop, not from inside the current step."""

    def decide(self, ex: Exchange, user: str | None, host: str, port: int, is_connect: bool) -> Decision | None:
        """The destination decision now, or None: then ``ex.decided(decision)`` comes later."""

    def pooled_origin(self, host: str, port: int) -> Origin | None:
        """An idle keep-alive connection to host:port, or None."""

    def open_origin(self, ex: Exchange, host: str, address: str, port: int) -> None:
        """Connect to ``address``:``port`` (the checked address of ``host``); then ``ex.upstream_connected`` or
        ``ex.connect_failed``."""

    def open_tunnel(self, ex: Exchange, host: str, address: str, port: int) -> None:
        """The same for a CONNECT tunnel; then ``ex.tunnel_connected`` or ``ex.connect_failed``."""

    def check_password(self, ex: Authentication, pending: PendingPassword) -> None:
        """Run the slow password check off the loop; then ``ex.password_checked(pending, ok)``."""

    def log(self, record: AccessRecord) -> None:
        """Write one access log record."""


class OriginSink(Protocol):
    """What the engine asks of the driver of one origin connection."""

    def write(self, data: bytes) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def start_timer(self, seconds: float) -> None:
        """Call ``Origin.timer_fired`` in ``seconds`` unless stopped first (one timer at a time)."""

    def stop_timer(self) -> None: ...

    def release(self, reusable: bool) -> None:
        """The response is over: keep the connection for another request (the pool), or close it."""

    def close(self) -> None: ...

    def abort(self) -> None: ...


class TunnelSink(Protocol):
    """What the engine asks of the driver of the origin side of a CONNECT tunnel."""

    def write(self, data: bytes) -> None: ...

    def write_eof(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None:
        """Close at once, dropping what the far end has not read."""


class ProxyState(Protocol):
    """What every connection of one proxy shares (the driver's server implements it). Read, never cached: a
    reload (SIGHUP) replaces the config, the authenticator and the throttle between two requests."""

    config: Config
    auth: Authenticator
    throttle: FailureThrottle | None
    held_bodies: HeldBodies  # request bodies held before authentication (qop=auth-int), across connections

    @property
    def via_name(self) -> bytes: ...

    def via(self, received_version: str) -> bytes: ...

    @property
    def logging(self) -> bool:
        """Whether access records are wanted (building one costs a little)."""

    monotonic: Callable[[], float]
    wall: Callable[[], float]
