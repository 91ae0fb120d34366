"""The access log: one line per request, Squid-native or JSON.

Fields: time, duration, client, user, method, target, status, bytes, the origin reached and the auth outcome
(``ok``, ``missing``, ``unknown-user``, ``bad-password``, ``stale-nonce``, ``replay``, ``bad-request``...).
A credential never reaches this module: the proxy passes a user *name* and an outcome, nothing else. Query
strings are left out of logged URLs by default (Squid's ``strip_query_terms on``): they often carry tokens.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import TextIO

#: Outcomes that mean "someone presented credentials and they were refused": the fail2ban filter keys on them.
FAILED_OUTCOMES = frozenset({"unknown-user", "bad-password", "replay", "bad-nonce", "wrong-realm"})


@dataclass(slots=True)
class AccessRecord:
    """One finished request, as the server saw it."""

    started: float  # wall-clock seconds since the epoch
    duration: float  # seconds
    client: str
    user: str | None
    method: str
    target: str
    status: int
    sent_bytes: int
    outcome: str
    peer: str | None = None  # host:port of the origin reached, if any
    tunnel: bool = False


def _strip_query(target: str) -> str:
    cut = target.find("?")
    return target if cut < 0 else target[:cut] + "?"


def _squid_action(record: AccessRecord) -> str:
    if record.status in (407, 403):
        return "TCP_DENIED"
    if record.tunnel:
        return "TCP_TUNNEL"
    if record.peer is None:
        return "NONE_NONE"
    return "TCP_MISS"


def _safe(text: str) -> str:
    """Keep one record on one line: no spaces or control characters from the network."""
    return "".join(c if c.isprintable() and c != " " else "%%%02X" % (ord(c) & 0xFF) for c in text)


def format_squid(record: AccessRecord) -> str:
    """Squid's native format (``logformat squid``), with the auth outcome appended as the last field."""
    hier = f"HIER_DIRECT/{record.peer}" if record.peer else "HIER_NONE/-"
    return (
        f"{record.started:.3f} {round(record.duration * 1000):6d} {record.client} "
        f"{_squid_action(record)}/{record.status:03d} {record.sent_bytes} {record.method} "
        f"{_safe(_strip_query(record.target))} {_safe(record.user) if record.user else '-'} {hier} - "
        f"auth={record.outcome}"
    )


def format_json(record: AccessRecord) -> str:
    return json.dumps(
        {
            "time": round(record.started, 3),
            "duration_ms": round(record.duration * 1000, 3),
            "client": record.client,
            "user": record.user,
            "method": record.method,
            "target": _strip_query(record.target),
            "status": record.status,
            "bytes": record.sent_bytes,
            "peer": record.peer,
            "auth": record.outcome,
            "auth_failed": record.outcome in FAILED_OUTCOMES,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


class AccessLog:
    """Writes records to a stream; ``flush`` is called by the server's housekeeping timer, not per line."""

    def __init__(self, stream: TextIO | None, fmt: str = "squid") -> None:
        self._stream = stream
        self._format = format_json if fmt == "json" else format_squid

    @classmethod
    def open(cls, where: str, fmt: str) -> AccessLog:
        if where == "":
            return cls(None, fmt)
        if where == "-":
            return cls(sys.stdout, fmt)
        return cls(open(where, "a", encoding="utf-8", buffering=1 << 16), fmt)

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    def write(self, record: AccessRecord) -> None:
        if self._stream is not None:
            self._stream.write(self._format(record) + "\n")

    def flush(self) -> None:
        if self._stream is not None:
            self._stream.flush()

    def close(self) -> None:
        if self._stream is not None and self._stream is not sys.stdout:
            self._stream.close()
