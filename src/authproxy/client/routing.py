"""Per-target routing shared by the sync and async clients: which proxy (or none), one pool and one
responder per proxy, so the nonce cache is shared by every connection to that proxy."""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from authproxy.auth.responder import Responder
from authproxy.client.settings import ProxyEndpoint, ProxyOptions, ProxySelector

logger = logging.getLogger("authproxy.client")

P = TypeVar("P")


def make_responder(endpoint: ProxyEndpoint, options: ProxyOptions) -> Responder:
    return Responder(
        endpoint.username,
        endpoint.password if endpoint.username is not None else None,
        random=secrets.token_bytes,  # cnonces: RFC 7616 section 5.12 wants them unpredictable
        warn=lambda text: logger.warning("authproxy.client: %s (proxy %s)", text, endpoint.url),
        allow_basic_cleartext=options.allow_basic_cleartext,
        prefer_auth_int=options.prefer_auth_int,
        userhash=options.userhash,
    )


class Routes(Generic[P]):
    """The pools of one client: one per proxy in use, and one for direct (NO_PROXY) targets."""

    def __init__(self, selector: ProxySelector, proxy_pool: Callable[[ProxyEndpoint], P],
                 direct_pool: Callable[[], P]) -> None:
        self._selector = selector
        self._proxy_pool = proxy_pool
        self._direct_pool = direct_pool
        self._pools: dict[ProxyEndpoint | None, P] = {}
        self._lock = threading.Lock()

    def pool_for(self, scheme: str, host: str, port: int) -> P:
        endpoint = self._selector.select(scheme, host, port)
        with self._lock:
            pool = self._pools.get(endpoint)
            if pool is None:
                pool = self._proxy_pool(endpoint) if endpoint is not None else self._direct_pool()
                self._pools[endpoint] = pool
            return pool

    def take_all(self) -> list[P]:
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        return pools
