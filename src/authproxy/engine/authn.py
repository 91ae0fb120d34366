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
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from authproxy.auth.driver import Suspended, advance, body_hash, check_password, decide
from authproxy.auth.errors import UserStoreError
from authproxy.auth.nonces import NonceIssuer
from authproxy.auth.policy import AuthPolicy
from authproxy.auth.roles import PROXY
from authproxy.auth.store import UserEntry, UserStore
from authproxy.auth.verifier import (
    Allow,
    ConnectionAuth,
    Flow,
    NeedBodyHash,
    NeedPasswordCheck,
    Reject,
    Verifier,
)

if TYPE_CHECKING:
    from authproxy.config import Config
    from authproxy.state.base import NonceCounterStore

Outcome = Allow | Reject


@dataclass(slots=True)
class PendingBody:
    """The flow is waiting for the whole request body (qop=auth-int)."""

    suspended: Suspended
    held: int = 0  # body bytes counted in the proxy's HeldBodies for this request
    key: str = ""  # the client's key there (engine.throttle.client_key)


@dataclass(slots=True)
class PendingPassword:
    """The flow is waiting for a slow password check (bcrypt), run in a thread."""

    suspended: Suspended
    authorization: str | None


Step = Outcome | PendingBody | PendingPassword


class Authenticator:
    """The proxy's side of authentication: one per server, shared by every connection."""

    def __init__(self, config: Config, store: UserStore, counters: NonceCounterStore,
                 nonce_key: bytes | None = None, clock: Callable[[], float] = time.time,
                 policy: AuthPolicy | None = None) -> None:
        """``policy`` replaces the config's (``Config.auth_policy``): how a scheme outside the registry of
        ``authproxy.auth.schemes`` plugs in (an ``AuthPolicy`` with a larger ``known_schemes``)."""
        self.realm = config.realm
        self.store = store
        self.counters = counters
        self.clock = clock
        policy = policy or config.auth_policy
        # Kept so a reload (SIGHUP) can build a new Authenticator that still accepts the nonces in flight.
        self.nonce_key = nonce_key or secrets.token_bytes(32)
        issuer = NonceIssuer(self.nonce_key, config.realm, config.nonce_lifetime)
        self.verifier = Verifier(policy, issuer, PROXY)  # the proxy's role: 407 and the Proxy-* fields
        self.role = self.verifier.role
        # Whether an offered scheme authenticates connections (NTLM, Negotiate): only then does each client
        # connection keep a ConnectionAuth, so Basic and Digest alone cost nothing per connection.
        self.connection_bound = any(s.connection_bound for s in self.verifier.schemes.values())
        self.cache_ttl = config.basic_cache_ttl
        # sha256(salt, Basic field) -> (expiry, the entry it was verified against, the Allow to answer).
        self._basic: dict[bytes, tuple[float, UserEntry, Allow]] = {}
        self._cache_salt = secrets.token_bytes(16)

    # -- challenges -----------------------------------------------------------------------------------------
    def challenge_fields(self, stale: bool = False) -> list[tuple[str, str]]:
        """The Proxy-Authenticate fields of a 407, strongest scheme first (RFC 9110 section 11.7.1)."""
        values = self.verifier.challenges(self.clock(), os.urandom(16), stale=stale)
        return [(self.role.challenge_field, v) for v in values]

    # -- running a flow -------------------------------------------------------------------------------------
    def start(self, method: str, target: str, authorization: str | None,
              connection: ConnectionAuth | None = None) -> Step:
        """Begin verifying one request. Raises AuthHeaderError (400) for malformed credentials. ``connection``
        is the client connection's state for connection-bound schemes (see ``connection_bound``)."""
        try:
            self.store.refresh()
        except UserStoreError as exc:
            # A bad edit of the users file: keep serving the last good users, and tell the operator once.
            print(f"authproxy: users file not reloaded: {exc.message}", file=sys.stderr, flush=True)
        if authorization is not None and authorization[:6].lower() == "basic ":
            known = self._basic_known(authorization)
            if known is not None:
                return known
        elif authorization is not None and authorization[:7].lower() == "digest " \
                and "auth-int" not in authorization.lower():
            # Digest without the body (qop=auth): every need is the store's or the counters', answered at once,
            # so the same checks run without the flow's generator (driver.decide, as the SIP proxy does). With
            # "auth-int" anywhere in the field, the flow, which waits for the body.
            return decide(self.verifier, method, target, authorization, self.clock(), self.store, self.counters)
        flow = self.verifier.verify(method, target, authorization, self.clock(), connection)
        return self._settle(authorization, self._run(flow, None, authorization))

    def resume_body(self, pending: PendingBody, body: bytes) -> Step:
        need = pending.suspended.need
        assert isinstance(need, NeedBodyHash)
        return self._run(pending.suspended.flow, body_hash(need, body))

    def check_slow_password(self, pending: PendingPassword) -> bool:
        """Run in a worker thread: the bcrypt (or similar) check itself, or its stand-in for an unknown user."""
        need = pending.suspended.need
        assert isinstance(need, NeedPasswordCheck)
        return check_password(self.store, need)

    def resume_password(self, pending: PendingPassword, ok: bool) -> Step:
        return self._settle(pending.authorization, self._run(pending.suspended.flow, ok, pending.authorization))

    def _run(self, flow: Flow, answer: object, authorization: str | None = None) -> Step:
        step = advance(flow, answer, self.store, self.counters, self.clock())
        if isinstance(step, Suspended):
            if isinstance(step.need, NeedBodyHash):
                return PendingBody(step)
            return PendingPassword(step, authorization)
        return step

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
