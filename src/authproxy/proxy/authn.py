"""Driving the sans-IO verifier from the proxy: user lookups, password checks, nonce counts, body hashes.

The verifier (authproxy.auth.verifier) yields what it needs and is sent the answer. Most needs are answered at
once from memory, so most requests are decided without leaving the httptools callback. Two are not:
- a Basic password against a slow hash (bcrypt): run in a thread, its success cached for ``basic_cache_ttl`` so
  a keep-alive connection does not pay bcrypt on every request;
- the request body for qop=auth-int: the flow waits until the body has been read.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from authproxy.auth.digest import get_algorithm
from authproxy.auth.errors import UserStoreError
from authproxy.auth.nonces import NonceIssuer
from authproxy.auth.verifier import (
    Allow,
    AuthPolicy,
    NeedBodyHash,
    NeedNonceUse,
    NeedPasswordCheck,
    NeedUser,
    NeedUserByHash,
    Reject,
    Verifier,
)
from authproxy.config import Config
from authproxy.state.base import NonceCounterStore
from authproxy.users.base import UserEntry, UserStore, basic_check_is_slow, check_basic_password

Outcome = Allow | Reject
Flow = Generator[Any, Any, Outcome]


@dataclass(slots=True)
class PendingBody:
    """The flow is waiting for the whole request body (qop=auth-int) hashed under ``algorithm``."""

    flow: Flow
    algorithm: str


@dataclass(slots=True)
class PendingPassword:
    """The flow is waiting for a slow password check (bcrypt), run in a thread."""

    flow: Flow
    entry: UserEntry
    password: str
    authorization: str | None


Step = Outcome | PendingBody | PendingPassword


class Authenticator:
    """The proxy's side of authentication: one per server, shared by every connection."""

    def __init__(self, config: Config, store: UserStore, counters: NonceCounterStore,
                 nonce_key: bytes | None = None, clock: Callable[[], float] = time.time) -> None:
        self.realm = config.realm
        self.store = store
        self.counters = counters
        self.clock = clock
        policy = AuthPolicy(
            realm=config.realm,
            schemes=config.schemes,
            digest_algorithms=config.digest_algorithms,
            qop=config.qop,
            userhash=config.userhash,
            nonce_lifetime=config.nonce_lifetime,
        )
        # Kept so a reload (SIGHUP) can build a new Authenticator that still accepts the nonces in flight.
        self.nonce_key = nonce_key or secrets.token_bytes(32)
        issuer = NonceIssuer(self.nonce_key, config.realm, config.nonce_lifetime)
        self.verifier = Verifier(policy, issuer)
        self.cache_ttl = config.basic_cache_ttl
        # sha256(salt, Basic field) -> (expiry, the entry it was verified against, the Allow to answer).
        self._basic: dict[bytes, tuple[float, UserEntry, Allow]] = {}
        self._cache_salt = secrets.token_bytes(16)

    # -- challenges -----------------------------------------------------------------------------------------
    def challenge_fields(self, stale: bool = False) -> list[tuple[str, str]]:
        """The Proxy-Authenticate fields of a 407, strongest scheme first (RFC 9110 section 11.7.1)."""
        values = self.verifier.challenges(self.clock(), os.urandom(16), stale=stale)
        return [("Proxy-Authenticate", v) for v in values]

    # -- running a flow -------------------------------------------------------------------------------------
    def start(self, method: str, target: str, authorization: str | None) -> Step:
        """Begin verifying one request. Raises AuthHeaderError (400) for malformed credentials."""
        try:
            self.store.refresh()
        except UserStoreError as exc:
            # A bad edit of the users file: keep serving the last good users, and tell the operator once.
            print(f"authproxy: users file not reloaded: {exc.message}", file=sys.stderr, flush=True)
        if authorization is not None and authorization[:6].lower() == "basic ":
            known = self._basic_known(authorization)
            if known is not None:
                return known
        flow = self.verifier.verify(method, target, authorization, self.clock())
        return self._settle(authorization, self._run(flow, None, authorization))

    def resume_body(self, pending: PendingBody, body: bytes) -> Step:
        algorithm = get_algorithm(pending.algorithm)
        assert algorithm is not None  # the verifier only asks for algorithms it accepted
        return self._run(pending.flow, algorithm.hexdigest(body))

    def check_slow_password(self, pending: PendingPassword) -> bool:
        """Run in a worker thread: the bcrypt (or similar) check itself."""
        return check_basic_password(pending.entry, pending.password, self.realm)

    def resume_password(self, pending: PendingPassword, ok: bool) -> Step:
        return self._settle(pending.authorization, self._run(pending.flow, ok, pending.authorization))

    def _run(self, flow: Flow, answer: Any, authorization: str | None = None) -> Step:
        try:
            need = flow.send(answer)
            while True:
                if isinstance(need, NeedUser):
                    answer = self.store.lookup(need.name)
                elif isinstance(need, NeedUserByHash):
                    answer = self.store.lookup_userhash(need.algorithm, need.realm, need.hashed)
                elif isinstance(need, NeedNonceUse):
                    answer = self.counters.use(need.nonce, need.nc, need.expires_at, self.clock(), need.user)
                elif isinstance(need, NeedPasswordCheck):
                    if basic_check_is_slow(need.entry, self.realm):
                        return PendingPassword(flow, need.entry, need.password, authorization)
                    answer = check_basic_password(need.entry, need.password, self.realm)
                elif isinstance(need, NeedBodyHash):
                    return PendingBody(flow, need.algorithm)
                else:  # pragma: no cover - a need this driver does not know is a programming error
                    raise TypeError(f"unknown verifier need {need!r}")
                need = flow.send(answer)
        except StopIteration as stop:
            result: Outcome = stop.value
            return result

    # -- the Basic cache ------------------------------------------------------------------------------------
    # A keep-alive client sends the same Basic field on every request. Once verified, the field (by its salted
    # hash: the cache holds no credential) maps to the user's entry for basic_cache_ttl seconds, so neither
    # bcrypt nor parsing runs again. A hit is honoured only while the store still returns that very entry: an
    # edited or reloaded users file (new password, removed user) ends it at once.
    def _basic_key(self, authorization: str) -> bytes:
        return hashlib.sha256(self._cache_salt + authorization.encode("utf-8", "surrogatepass")).digest()

    def _basic_known(self, authorization: str) -> Allow | None:
        if not self.cache_ttl:
            return None
        key = self._basic_key(authorization)
        known = self._basic.get(key)
        if known is None:
            return None
        expiry, entry, allow = known
        if expiry < time.monotonic() or self.store.lookup(entry.name) is not entry:
            del self._basic[key]
            return None
        return allow

    def _settle(self, authorization: str | None, step: Step) -> Step:
        """Remember a verified Basic field (see above)."""
        if (isinstance(step, Allow) and step.scheme == "basic" and authorization is not None
                and self.cache_ttl > 0):
            entry = self.store.lookup(step.user)
            if entry is not None:
                if len(self._basic) >= 100_000:  # bound memory; a full purge is rare and cheap enough
                    self._basic.clear()
                self._basic[self._basic_key(authorization)] = (time.monotonic() + self.cache_ttl, entry, step)
        return step
