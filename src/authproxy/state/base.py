"""The contract of a nonce-count store: replay protection for Digest, RFC 7616 sections 3.4 and 5.5.

A Digest client counts its requests under one nonce in ``nc`` (8 hex digits, starting at 1). The server
accepts each ``(nonce, nc)`` pair once: a second request with the same pair is a replay. Stateless nonces
(:mod:`authproxy.auth.nonces`) say whether a nonce is authentic and fresh; this store is the only state
needed to refuse replays within its lifetime (CVE-2020-11945 is what happens when this table is wrong).

A bounded store must sometimes forget a nonce's counts. It then answers :attr:`NonceUse.UNKNOWN`, never
:attr:`NonceUse.REPLAY`: the verifier turns that into ``stale=true`` (RFC 7616 section 3.3), a fresh challenge
the client answers silently, not counted as a failed sign-in. Only a count the store has seen is a replay, so a
flood that fills the table can cost a victim one extra round trip, never a refusal or a lockout.
"""

from __future__ import annotations

from typing import Protocol

# The answer's type belongs to the auth core (the verifier reads it); the stores here give it.
from authproxy.auth.nonces import NonceUse

__all__ = ["NonceCounterStore", "NonceUse"]


class NonceCounterStore(Protocol):
    """Remembers which nonce counts have been used."""

    def use(self, nonce: str, nc: int, expires_at: float, now: float, owner: str = "") -> NonceUse:
        """Record ``(nonce, nc)`` for the signed-in user ``owner``; see :class:`NonceUse` for the answer.

        ``owner`` is the user the digest was verified for (the digest covers the user name, so a replay of a
        request always names the same owner). A store bounds each owner's share of its memory with it, so one
        user burning nonces cannot push out another's counts. ``expires_at`` is when ``nonce`` stops being
        valid, so the store may forget it after that; ``now`` is the caller's clock (the store reads none).
        """
        ...
