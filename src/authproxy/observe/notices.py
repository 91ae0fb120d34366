"""Notices for the operator (stderr) about events a flood can repeat, such as failed TLS handshakes: one line
each, at most ``per_second`` lines a second, the rest counted and summed up in one line, so that a flood can
neither fill the disk nor stall the event loop writing."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def stderr(line: str) -> None:
    """One line for the operator on standard error, flushed (the proxies' one way to say things there)."""
    print(line, file=sys.stderr, flush=True)


class RateLimitedNotices:
    """Lines of one kind (``what``: "TLS handshake failures"), rate-bounded. The summary goes where the lines
    go, or to ``summarise`` when given (lines in a log of fixed form, such as the SIP access log's DROPPED
    lines, whose count is the operator's to know)."""

    def __init__(self, what: str, per_second: int = 10, write: Callable[[str], None] = stderr,
                 clock: Callable[[], float] = time.monotonic,
                 summarise: Callable[[str], None] | None = None) -> None:
        self.what = what
        self.per_second = per_second
        self.write = write
        self.summarise = summarise or write
        self.clock = clock
        self.window = 0.0  # the start of the current one-second window
        self.shown = 0
        self.dropped = 0  # lines not written since the last summary

    def notice(self, line: str) -> None:
        now = self.clock()
        if now - self.window >= 1.0:
            self.flush()
            self.window, self.shown = now, 0
        if self.shown < self.per_second:
            self.shown += 1
            self.write(line)
        else:
            self.dropped += 1

    def flush(self) -> None:
        """Say how many lines were left out (called by the next line's new window, and by the housekeeping tick)."""
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            self.summarise(f"authproxy: {dropped} more {self.what} not shown (at most {self.per_second} lines a "
                           "second)")
