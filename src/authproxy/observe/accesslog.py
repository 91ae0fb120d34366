"""The access log: one line per request, Squid-native or JSON.

Fields: time, duration, client, user, method, target, status, bytes, the origin reached and the auth outcome
(``ok``, ``missing``, ``unknown-user``, ``bad-password``, ``stale-nonce``, ``replay``, ``bad-request``...).
A credential never reaches this module: the proxy passes a user *name* and an outcome, nothing else. Query
strings are left out of logged URLs by default (Squid's ``strip_query_terms on``): they often carry tokens.
"""

from __future__ import annotations

import json
import os
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
    """Collects formatted lines and writes them in one ``write`` per flush (the housekeeping timer, or every
    ``batch`` lines). One write of whole lines to a file opened O_APPEND keeps lines whole even when several
    worker processes share the file."""

    def __init__(self, stream: TextIO | None, fmt: str = "squid", *, fd: int | None = None,
                 batch: int = 512) -> None:
        self._stream = stream
        self._fd = fd
        self._format = format_json if fmt == "json" else format_squid
        self._pending: list[str] = []
        self._batch = batch

    @classmethod
    def open(cls, where: str, fmt: str) -> AccessLog:
        if where == "":
            return cls(None, fmt)
        if where == "-":
            return cls(sys.stdout, fmt)
        fd = os.open(where, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        return cls(None, fmt, fd=fd)

    @property
    def enabled(self) -> bool:
        return self._stream is not None or self._fd is not None

    def write(self, record: AccessRecord) -> None:
        if self.enabled:
            self._pending.append(self._format(record) + "\n")
            if len(self._pending) >= self._batch:
                self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        data, self._pending = "".join(self._pending), []
        if self._fd is not None:
            encoded = memoryview(data.encode("utf-8", "replace"))
            while encoded:
                written = os.write(self._fd, encoded)
                encoded = encoded[written:]
        elif self._stream is not None:
            self._stream.write(data)
            self._stream.flush()

    def close(self) -> None:
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
