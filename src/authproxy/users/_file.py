"""What the three file-backed user stores share: reading a file into memory, the userhash index, and reload.

Each store parses its own line format (:meth:`UserFile._parse`); this module reads the bytes, decodes them
line by line so an error can name its line, and swaps the parsed users in as one snapshot. ``refresh`` costs
at most one ``stat`` per ``min_stat_interval`` and re-reads only when (st_mtime_ns, st_size, st_ino)
changed, so the proxy may call it on every request.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from authproxy.auth.digest import BASE_ALGORITHMS, get_algorithm
from authproxy.auth.errors import UserStoreError
from authproxy.users.base import UserEntry

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


def has_control_char(text: str) -> bool:
    """Whether ``text`` holds a CTL (RFC 5234 appendix B.1: %x00-1F / %x7F) or a C1 control character."""
    return any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in text)


def read_signed(path: str) -> tuple[bytes, FileSignature]:
    """The contents of ``path`` and the signature of the very version read (fstat of the open file, so a
    concurrent ``os.replace`` cannot pair old bytes with a new signature)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        data = f.read()
    return data, (st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass(frozen=True)
class _Snapshot:
    """One parsed version of the file; replaced whole, so a lookup in another thread never sees a mix."""

    entries: dict[str, UserEntry] = field(default_factory=dict)
    # (base algorithm, realm) -> H(name:realm) -> entry, RFC 7616 section 3.4.4.
    userhash: dict[tuple[str, str], dict[str, UserEntry]] = field(default_factory=dict)


def _build_snapshot(entries: Iterable[UserEntry]) -> _Snapshot:
    by_name: dict[str, UserEntry] = {}
    userhash: dict[tuple[str, str], dict[str, UserEntry]] = {}
    for entry in entries:
        by_name[entry.name] = entry
        if entry.realm is None or not entry.ha1:
            continue  # no Digest without an HA1, so no userhash either
        for base in BASE_ALGORITHMS:
            algorithm = get_algorithm(base)
            assert algorithm is not None
            hashed = algorithm.h(f"{entry.name}:{entry.realm}")
            userhash.setdefault((base, entry.realm), {})[hashed] = entry
    return _Snapshot(by_name, userhash)


class UserFile:
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
        self._snapshot = _Snapshot()
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
        self._snapshot = _build_snapshot(entries)

    def lookup(self, name: str) -> UserEntry | None:
        return self._snapshot.entries.get(name)

    def lookup_userhash(self, algorithm: str, realm: str, hashed: str) -> UserEntry | None:
        alg = get_algorithm(algorithm)
        if alg is None:
            return None
        return self._snapshot.userhash.get((alg.base, realm), {}).get(hashed.lower())

    def __iter__(self) -> Iterator[UserEntry]:
        return iter(list(self._snapshot.entries.values()))

    def __len__(self) -> int:
        return len(self._snapshot.entries)

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
