"""Where a request may go: the destination policy's answer, as the engine acts on it.

The policy itself (``authproxy.proxy.policy``) resolves names, so it lives with the driver; the engine only
needs the shape of its answer: connect to this checked address, or refuse with this status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias


@dataclass(frozen=True)
class Allowed:
    """Connect to ``address`` (the one that was checked), with socket family ``family``."""

    address: str
    family: int


@dataclass(frozen=True)
class Refused:
    """Answer ``status`` with RFC 9209 error type ``error`` and ``detail`` (one sentence for a person)."""

    status: int
    error: str
    detail: str


Decision: TypeAlias = Allowed | Refused
