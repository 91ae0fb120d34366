"""The project's one error hierarchy.

Expected outcomes (a wrong password, an expired nonce) are values, not exceptions. Exceptions are for
malformed input and misuse; each carries the HTTP status a server should answer with (h11's
``error_status_hint`` idea).
"""

from __future__ import annotations


class AuthProxyError(Exception):
    """Base of every error this project raises on purpose."""

    status_hint: int = 400

    def __init__(self, message: str, *, status_hint: int | None = None) -> None:
        super().__init__(message)
        if status_hint is not None:
            self.status_hint = status_hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ProtocolError(AuthProxyError):
    """A malformed HTTP message (RFC 9112): the peer gets 400, 431 or a closed connection."""


class AuthHeaderError(AuthProxyError):
    """A malformed challenge or credentials field (RFC 9110 section 11)."""


class ConfigError(AuthProxyError):
    """A bad configuration value; the message names the key."""


class UserStoreError(AuthProxyError):
    """A user file that cannot be read, parsed or written."""
