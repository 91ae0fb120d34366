"""What the three file-backed user stores share: reading a file into memory, and reload.

Each store parses its own line format (:meth:`UserFile._parse`); this module reads the bytes, decodes them
line by line so an error can name its line, and swaps the parsed users in as one snapshot
(:class:`~authproxy.users.memory.MemoryUserStore` answers the lookups). ``refresh`` costs
at most one ``stat`` per ``min_stat_interval`` and re-reads only when (st_mtime_ns, st_size, st_ino)
changed, so the proxy may call it on every request.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

from authproxy.auth.errors import UserStoreError
from authproxy.auth.store import UserEntry
from authproxy.users.memory import MemoryUserStore

#: (st_mtime_ns, st_size, st_ino) of a file version; None when the file is missing.
FileSignature = tuple[int, int, int]

#: How often ``refresh`` may ``stat`` the file at most, in seconds.
DEFAULT_MIN_STAT_INTERVAL = 0.5


def decoded_lines(data: bytes, source: str) -> Iterator[tuple[int, str]]:
    """(line number, text) for each line of ``data``, decoded as UTF-8, without its line ending.

    A leading byte order mark is skipped, because Windows editors add one. Invalid UTF-8 raises UserStoreError
    naming ``source`` and the line (never quoting it: it may hold a secret).
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UserStoreError(f"{source}, line {number}: not valid UTF-8") from None
        yield number, text.removesuffix("\r")


def read_signed(path: str) -> tuple[bytes, FileSignature]:
    """The contents of ``path`` and the signature of the very version read (fstat of the open file, so a
    concurrent ``os.replace`` cannot pair old bytes with a new signature)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        data = f.read()
    return data, (st.st_mtime_ns, st.st_size, st.st_ino)


class UserFile(MemoryUserStore):
    """Base of the file-backed stores; subclasses set ``kind`` and implement ``_parse``."""

    #: Names the format in ``description``, e.g. "htpasswd file".
    kind = "user file"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.monotonic,
        min_stat_interval: float = DEFAULT_MIN_STAT_INTERVAL,
    ) -> None:
        self.path = os.fspath(path)
        self.description = f"{self.kind} {self.path}"
        self._clock = clock
        self._min_stat_interval = min_stat_interval
        self._signature: FileSignature | None = None
        try:
            data, signature = read_signed(self.path)
        except FileNotFoundError:
            raise UserStoreError(f"{self.description}: no such file") from None
        except OSError as exc:
            raise UserStoreError(f"{self.description}: cannot read: {exc.strerror}") from None
        self._install(data, signature)
        self._last_stat = clock()

    def _parse(self, lines: Iterator[tuple[int, str]]) -> list[UserEntry]:
        """The entries in the file's lines; raise UserStoreError naming ``self.path`` and the line."""
        raise NotImplementedError

    def _install(self, data: bytes, signature: FileSignature) -> None:
        # Record the signature first: a version that fails to parse is reported once, not on every refresh.
        self._signature = signature
        entries = self._parse(decoded_lines(data, self.path))
        self.replace(entries)

    def refresh(self) -> None:
        """Reload if the file changed since the last load; at most one ``stat`` per ``min_stat_interval``.

        When the new version cannot be read or parsed (or the file is gone), the store keeps serving the last
        good users and raises UserStoreError, once per bad version; the next change is picked up as usual.
        Note that a rewrite in place keeping the size within one file-system timestamp tick goes unseen;
        writers should replace the file (as ``authproxy users`` and Apache's tools do).
        """
        now = self._clock()
        if now - self._last_stat < self._min_stat_interval:
            return
        self._last_stat = now
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._signature is not None:
                self._signature = None
                raise UserStoreError(
                    f"{self.description}: file is gone; keeping the users last read from it"
                ) from None
            return
        except OSError as exc:
            raise UserStoreError(f"{self.description}: cannot stat: {exc.strerror}") from None
        if (st.st_mtime_ns, st.st_size, st.st_ino) == self._signature:
            return
        try:
            data, signature = read_signed(self.path)
        except OSError as exc:
            self._signature = (st.st_mtime_ns, st.st_size, st.st_ino)  # report an unreadable version once
            raise UserStoreError(f"{self.description}: cannot read: {exc.strerror}") from None
        try:
            self._install(data, signature)
        except UserStoreError as exc:
            raise UserStoreError(f"{exc.message}; keeping the users last read from it") from None
