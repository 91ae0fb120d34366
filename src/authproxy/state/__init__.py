"""Shared state behind small interfaces: the Digest nonce-count table (RFC 7616 section 3.4, ``nc``).

``base`` holds the contract, ``memory`` the in-process implementation; other backends (Redis) implement the
same :class:`~authproxy.state.base.NonceCounterStore` protocol.
"""

from authproxy.state.base import NonceCounterStore, NonceUse
from authproxy.state.memory import MemoryNonceCounterStore

__all__ = ["MemoryNonceCounterStore", "NonceCounterStore", "NonceUse"]
