"""Answering the verifier's needs: the one driver of the flow, for the proxy, the tests and any other caller.

The verifier's flow yields needs (:mod:`authproxy.auth.verifier`). Most are answered at once from memory: a
user lookup, a nonce count. Two may not be answered inline by a caller that runs an event loop:

- a password check the store calls slow (bcrypt, a directory bind): it runs off the loop;
- the hash of the request body (qop=auth-int): the body has to arrive first.

:func:`advance` answers everything it can and stops at those two with :class:`Suspended`; the caller does the
slow part its own way (a thread, an await) and calls :func:`advance` again with the answer. :func:`run` does
it all inline, for callers that may block (tests, tools); :func:`decide` is :func:`run` over a verifier's flow,
with Digest checked without the flow's generator (the SIP proxy's every request).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from authproxy.auth.digest import get_algorithm
from authproxy.auth.digest_scheme import DigestScheme
from authproxy.auth.nonces import NonceUse
from authproxy.auth.store import UserStore
from authproxy.auth.verifier import (
    Allow,
    Flow,
    NeedBodyHash,
    NeedNonceUse,
    NeedPasswordCheck,
    NeedUser,
    NeedUserByHash,
    Reject,
    Verifier,
)


class NonceCounts(Protocol):
    """What the driver needs of a nonce-count store (``authproxy.state.NonceCounterStore`` is one)."""

    def use(self, nonce: str, nc: int, expires_at: float, now: float, owner: str = "") -> NonceUse: ...


@dataclass(slots=True)
class Suspended:
    """The flow waits for an answer that must not be computed inline: ``need`` is a slow password check (answer
    it with :func:`check_password`, off the event loop) or the body hash (:func:`body_hash`)."""

    flow: Flow
    need: NeedPasswordCheck | NeedBodyHash


Step = Allow | Reject | Suspended


def advance(flow: Flow, answer: Any, store: UserStore, counters: NonceCounts, now: float) -> Step:
    """Send ``answer`` (None to start the flow), then answer every need that can be answered at once, until the
    flow decides or asks for something that must wait."""
    try:
        need = flow.send(answer)
        while True:
            if isinstance(need, NeedUser):
                answer = store.lookup(need.name)
            elif isinstance(need, NeedUserByHash):
                answer = store.lookup_userhash(need.algorithm, need.realm, need.hashed)
            elif isinstance(need, NeedNonceUse):
                answer = counters.use(need.nonce, need.nc, need.expires_at, now, need.user)
            elif isinstance(need, NeedPasswordCheck):
                if store.password_check_is_slow(need.entry, need.realm):
                    return Suspended(flow, need)
                answer = check_password(store, need)
            elif isinstance(need, NeedBodyHash):
                return Suspended(flow, need)
            else:  # pragma: no cover - a need this driver does not know is a programming error
                raise TypeError(f"unknown verifier need {need!r}")
            need = flow.send(answer)
    except StopIteration as stop:
        result: Allow | Reject = stop.value
        return result


def check_password(store: UserStore, need: NeedPasswordCheck) -> bool:
    """The answer to a password check; may block (run it off the event loop when the store says it is slow)."""
    return store.check_password(need.entry, need.password, need.realm)


def body_hash(need: NeedBodyHash, body: bytes) -> str:
    """The answer to a body-hash need: the hex hash of the whole request body (RFC 7616 section 3.4.3)."""
    algorithm = get_algorithm(need.algorithm)
    assert algorithm is not None  # the verifier only asks for algorithms it accepted
    return algorithm.hexdigest(body)


def run(flow: Flow, store: UserStore, counters: NonceCounts, now: float, body: bytes = b"") -> Allow | Reject:
    """The whole flow, every need answered inline (slow checks included): for callers that may block."""
    step = advance(flow, None, store, counters, now)
    while isinstance(step, Suspended):
        need = step.need
        answer = check_password(store, need) if isinstance(need, NeedPasswordCheck) else body_hash(need, body)
        step = advance(step.flow, answer, store, counters, now)
    return step


def decide(verifier: Verifier, method: str, target: str, authorization: str | None, now: float, store: UserStore,
           counters: NonceCounts, body: bytes = b"") -> Allow | Reject:
    """``run(verifier.verify(method, target, authorization, now), store, counters, now, body)``, the same answer
    (or the same exception), for a caller that keeps no connection state. Digest, whose needs are all answered
    at once here, goes through :meth:`DigestScheme.verify_inline`: the same checks without a generator, its
    needs and this module's dispatch between them; every other case runs the flow."""
    if authorization is not None:
        space = authorization.find(" ")
        # The verifier's own dispatch (Verifier.verify): the scheme named before the first space, when offered.
        scheme = verifier.schemes.get(authorization[:space].lower()) if space > 0 else None
        if isinstance(scheme, DigestScheme):
            return scheme.verify_inline(method, target, authorization, now, store, counters, body)
    return run(verifier.verify(method, target, authorization, now), store, counters, now, body)
