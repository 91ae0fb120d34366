"""Every outcome of authenticating a request, in one table: its word in the access log, whether it counts as a
failed sign-in, and what the 407 tells the client.

The log word is the Enum's value, and the access log, the throttle, the fail2ban filter and the README use the
same words. Two audiences, two texts: the log tells the operator the precise outcome (``no-digest-secret``:
this user's hash cannot answer Digest), while the client is told only what it may know. Whether a user name
exists is not something it may know (issue 9 item 9): ``unknown-user``, ``bad-password``, ``no-digest-secret``
and ``no-basic-secret`` read the same to the client and all count as failed sign-ins.
"""

from __future__ import annotations

from enum import StrEnum

from authproxy.auth.roles import Role

_NOT_ACCEPTED = "the {who} did not accept the user name or password"


class Outcome(StrEnum):
    """An auth outcome; ``str(outcome)`` is its access-log word."""

    # S105 below: ruff takes the *_PASSWORD and *_SECRET names for credentials; they are log words.

    OK = "ok"
    # What the verifier decides (Reject.outcome).
    MISSING = "missing"
    UNKNOWN_USER = "unknown-user"
    BAD_PASSWORD = "bad-password"  # noqa: S105
    STALE_NONCE = "stale-nonce"
    REPLAY = "replay"
    BAD_NONCE = "bad-nonce"
    WRONG_REALM = "wrong-realm"
    UNSUPPORTED_SCHEME = "unsupported-scheme"
    NO_DIGEST_SECRET = "no-digest-secret"  # noqa: S105
    NO_BASIC_SECRET = "no-basic-secret"  # noqa: S105
    # What the proxy records around the verifier.
    BAD_REQUEST = "bad-request"  # malformed request or credentials (400, 413, 431 ...)
    THROTTLED = "throttled"  # refused with 429 before the credentials were looked at
    # a connection refused at a connection limit (503, or closed on the TLS listener); SIP: a source over its share
    # of the transaction table (503), or over the rate of answers to it (dropped)
    OVER_LIMIT = "over-limit"
    NONE = "none"  # no decision was reached (the connection ended first)

    @property
    def failed(self) -> bool:
        """Whether credentials were presented and refused: counted by the sign-in throttle and matched by the
        fail2ban filter. ``missing`` is the normal first step of the 407 exchange, and ``stale-nonce`` means
        the client knew the password, so neither counts."""
        return self in _FAILED

    def client_text(self, role: Role) -> str:
        """What a challenge (407 for a proxy, 401 for an origin) answering this outcome says to the client, in
        ``role``'s words. Never echoes what the client sent."""
        text = _CLIENT_TEXT.get(self, "the {who} did not accept the credentials")
        return text.format(who=role.name, field=role.credentials_field)


_FAILED = frozenset({
    Outcome.UNKNOWN_USER, Outcome.BAD_PASSWORD, Outcome.REPLAY, Outcome.BAD_NONCE, Outcome.WRONG_REALM,
    Outcome.NO_DIGEST_SECRET, Outcome.NO_BASIC_SECRET,
})

#: Every outcome a ``Reject`` may carry.
REJECT_OUTCOMES = frozenset({
    Outcome.MISSING, Outcome.UNKNOWN_USER, Outcome.BAD_PASSWORD, Outcome.STALE_NONCE, Outcome.REPLAY,
    Outcome.BAD_NONCE, Outcome.WRONG_REALM, Outcome.UNSUPPORTED_SCHEME, Outcome.NO_DIGEST_SECRET,
    Outcome.NO_BASIC_SECRET,
})

#: The outcomes counted as failed sign-ins, sorted (for the fail2ban filter and the README).
FAILED_OUTCOMES: tuple[Outcome, ...] = tuple(sorted(_FAILED, key=lambda o: list(Outcome).index(o)))

_CLIENT_TEXT: dict[Outcome, str] = {
    Outcome.MISSING: "this {who} requires credentials ({field}) and none were sent",
    Outcome.UNKNOWN_USER: _NOT_ACCEPTED,
    Outcome.BAD_PASSWORD: _NOT_ACCEPTED,
    Outcome.NO_DIGEST_SECRET: _NOT_ACCEPTED,
    Outcome.NO_BASIC_SECRET: _NOT_ACCEPTED,
    Outcome.STALE_NONCE: "the Digest nonce has expired; answer the new challenge (stale=true)",
    Outcome.REPLAY: "this Digest nonce count (nc) was already used; a replayed request is refused",
    Outcome.BAD_NONCE: "the Digest nonce or opaque value was not issued by this {who}",
    Outcome.WRONG_REALM: "the credentials are for another realm",
    Outcome.UNSUPPORTED_SCHEME: "the credentials use a scheme or algorithm this {who} does not offer here",
}
