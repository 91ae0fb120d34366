"""What the verifier's flow asks for (needs) and what it decides (Allow, Reject), as values.

A flow (:mod:`authproxy.auth.verifier`) yields needs and is sent their answers (:mod:`authproxy.auth.driver`
answers them); it returns an :class:`Allow` or a :class:`Reject`. Both carry the :class:`~authproxy.auth.roles.Role`
they were decided in, so the caller names the right fields (``Proxy-Authenticate`` with 407 for a proxy,
``WWW-Authenticate`` with 401 for an origin) without knowing which it is.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from authproxy.auth.outcomes import REJECT_OUTCOMES, Outcome
from authproxy.auth.roles import PROXY, Role
from authproxy.auth.store import UserEntry

# --- what the flow asks for -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NeedUser:
    """Send back the ``UserEntry`` named ``name`` (exact, case-sensitive), or None."""

    name: str


@dataclass(frozen=True)
class NeedUserByHash:
    """Send back the ``UserEntry`` whose H(name:realm) under base ``algorithm`` is ``hashed``, or None
    (RFC 7616 section 3.4.4)."""

    algorithm: str
    realm: str
    hashed: str


@dataclass(frozen=True)
class NeedPasswordCheck:
    """Send back ``UserStore.check_password(entry, password, realm)``: whether ``password`` is ``entry``'s.

    ``entry`` None stands for a user who is not there (or has no secret that checks Basic): the store spends
    what a real check costs and answers False, so that a refusal takes as long whether the name exists or not
    (issue 9 item 9). Run the check off the event loop when ``UserStore.password_check_is_slow`` says so.
    """

    entry: UserEntry | None
    password: str
    realm: str


@dataclass(frozen=True)
class NeedBodyHash:
    """Send back the lower-case hex hash of the whole request body under base ``algorithm`` (qop=auth-int)."""

    algorithm: str


@dataclass(frozen=True)
class NeedNonceUse:
    """Send back ``NonceCounterStore.use(nonce, nc, expires_at, now, owner=user)``, a
    :class:`~authproxy.auth.nonces.NonceUse`: FRESH is accepted, UNKNOWN answered stale, REPLAY refused."""

    nonce: str
    nc: int
    expires_at: float
    user: str = ""  # the user the digest was verified for: the store's owner (its per-user quota)


Need = NeedUser | NeedUserByHash | NeedPasswordCheck | NeedBodyHash | NeedNonceUse


# --- what it decides --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Allow:
    """Authenticated. ``auth_info`` is the value of the role's info field (``Proxy-Authentication-Info``;
    Digest only)."""

    user: str
    scheme: str  # the registry name of the scheme that decided: "digest", "basic"...
    auth_info: str | None
    role: Role = PROXY

    @property
    def info_field(self) -> str:
        """The field ``auth_info`` goes in."""
        return self.role.info_field


@dataclass(frozen=True)
class Reject:
    """Not authenticated: answer the role's status (407 for a proxy) with fresh challenges (``stale`` goes into
    the Digest ones), or with ``challenge`` alone when a connection-bound scheme continues its handshake.

    ``detail`` is for the log; it never holds a password.
    """

    outcome: Outcome
    user: str | None
    stale: bool
    detail: str
    role: Role = PROXY
    #: The one challenge of a handshake's next leg (a connection-bound scheme), instead of the fresh list.
    challenge: str | None = None

    def __post_init__(self) -> None:
        if self.outcome not in REJECT_OUTCOMES:
            raise ValueError(f"unknown reject outcome {self.outcome!r}")

    @property
    def status(self) -> int:
        return self.role.status

    @property
    def challenge_field(self) -> str:
        """The field the challenges go in."""
        return self.role.challenge_field


Flow = Generator[Need, Any, Allow | Reject]


@dataclass
class ConnectionAuth:
    """Authentication state of one client connection, for connection-bound schemes only.

    NTLM and Negotiate (RFC 4559 section 4) authenticate a *connection* with a handshake over several requests
    on it; HTTP's other schemes authenticate each request on its own. The caller makes one of these per client
    connection and passes it with every request of that connection (and drops it with the connection). A
    connection-bound scheme keeps its state mid-handshake in ``handshakes`` under its name, and once it has
    signed the connection in, ``signed_in`` answers a later request that carries no credentials. Basic and
    Digest never read or write it: a request carrying their credentials is checked on its own, whatever this
    connection did before.
    """

    handshakes: dict[str, Any] = field(default_factory=dict)
    signed_in: Allow | None = None


# --- running a generator flow -----------------------------------------------------------------------------

_Step = TypeVar("_Step")
_Answer = TypeVar("_Answer")
_Result = TypeVar("_Result")


def drive(flow: Generator[_Step, _Answer, _Result], send: Callable[[_Step], _Answer]) -> _Result:
    """Run a generator flow to its end with a synchronous ``send`` (what each yielded step is answered with), and
    return what it returns: the one loop for the responder's flows (HTTP and SIP), for tests and simple callers.
    """
    step = next(flow)
    while True:
        try:
            step = flow.send(send(step))
        except StopIteration as stop:
            result: _Result = stop.value
            return result
