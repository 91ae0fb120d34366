"""Request bodies held in memory before their request can be authenticated, bounded across connections.

With qop=auth-int the digest covers the body (RFC 7616 section 3.4.3), so the proxy reads a body whole before it
can tell whether the credentials are right, and an unknown user's too (so that the time of the answer does not
tell which names exist). ``auth_int_max_body`` bounds one body; this bounds them all: without it a client with no
valid password held 1 MiB per connection, thousands of connections from one address. Past a bound the request is
answered 503 (the proxy is short of room, not the request wrong), and an address cannot take all of it.
"""

from __future__ import annotations

#: Of the room, how many bodies of auth_int_max_body in all, and from one client address (by throttle key).
TOTAL_BODIES = 64
PER_CLIENT_BODIES = 8


class HeldBodies:
    """Bytes held in all and per client key."""

    def __init__(self, body_limit: int) -> None:
        self.total = 0
        self.per_client: dict[str, int] = {}
        self.resize(body_limit)

    def resize(self, body_limit: int) -> None:
        """New limits (a reload); what is held stays counted."""
        self.max_total = TOTAL_BODIES * body_limit
        self.max_per_client = PER_CLIENT_BODIES * body_limit

    def take(self, key: str, size: int) -> bool:
        """Count ``size`` more bytes held for ``key``, if they fit; False (nothing counted) if they do not."""
        held = self.per_client.get(key, 0) + size
        if self.total + size > self.max_total or held > self.max_per_client:
            return False
        self.total += size
        self.per_client[key] = held
        return True

    def give(self, key: str, size: int) -> None:
        self.total -= size
        left = self.per_client.get(key, 0) - size
        if left > 0:
            self.per_client[key] = left
        else:
            self.per_client.pop(key, None)
