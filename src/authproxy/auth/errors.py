"""The project's one error hierarchy.

Expected outcomes (a wrong password, an expired nonce) are values, not exceptions. Exceptions are for
malformed input and misuse; each carries the HTTP status a server should answer with (h11's
``error_status_hint`` idea).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # headers imports this module: the type only, to keep the import one-way
    from authproxy.auth.headers import Challenge


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


class ProxyError(AuthProxyError):
    """The proxy hop failed: it refused the request, could not reach the next hop, or misbehaved.

    Raised by the client side (:mod:`authproxy.auth.responder` and :mod:`authproxy.client`).
    ``status``/``headers``/``body_text`` are the proxy's answer (status 0 when there was none);
    ``challenges`` every challenge it offered; ``reason`` a stable keyword for programs; ``hop`` which hop
    failed ("proxy", "parent proxy", "origin") when known. The message says it in words.
    """

    status_hint = 502

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        headers: Sequence[tuple[str, str]] = (),
        body_text: str = "",
        challenges: Sequence[Challenge] = (),
        reason: str = "proxy-error",
        hop: str | None = "proxy",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = tuple(headers)
        self.body_text = body_text
        self.challenges = tuple(challenges)
        self.reason = reason
        self.hop = hop


class ProxyAuthError(ProxyError):
    """The proxy did not accept us: wrong credentials, nothing we can answer, or a broken exchange.

    ``reason`` is one of ``wrong-credentials``, ``no-credentials``, ``no-usable-challenge``,
    ``basic-refused``, ``body-not-replayable``, ``stale-loop``, ``rspauth-mismatch``, ``untrusted-auth-info``
    (a (Proxy-)Authentication-Info field repeated, with a parameter twice, or unparsable), ``answered-401``,
    ``malformed-challenge``, ``too-many-rounds``.
    """

    status_hint = 407
