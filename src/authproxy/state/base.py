"""The contract of a nonce-count store: replay protection for Digest, RFC 7616 sections 3.4 and 5.5.

A Digest client counts its requests under one nonce in ``nc`` (8 hex digits, starting at 1). The server
accepts each ``(nonce, nc)`` pair once: a second request with the same pair is a replay. Stateless nonces
(:mod:`authproxy.auth.nonces`) say whether a nonce is authentic and fresh; this store is the only state
needed to refuse replays within its lifetime (CVE-2020-11945 is what happens when this table is wrong).
"""

from __future__ import annotations

from typing import Protocol


class NonceCounterStore(Protocol):
    """Remembers which nonce counts have been used."""

    def use(self, nonce: str, nc: int, expires_at: float, now: float) -> bool:
        """Record ``(nonce, nc)``; True the first time it is seen, False for a replay or a count the store
        can no longer vouch for. ``expires_at`` is when ``nonce`` stops being valid, so the store may forget
        it after that; ``now`` is the caller's clock (the store reads none)."""
        ...
