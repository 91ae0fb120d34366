"""Apache htdigest files as a user store: ``user:realm:md5hex`` lines, serving Digest MD5 and Basic.

The third field is the MD5 HA1 of RFC 7616 section 3.4.2, H(user:realm:password), which is exactly what Digest
with MD5 (and MD5-sess) needs, and which checks a Basic password too. An HA1 is bound to its realm, so a store
serves one realm: the one the proxy announces. A file may hold several realms (Apache's ``htdigest`` tool puts
them side by side); the entries of other realms are ignored, and :meth:`HtdigestFile.realms` lists them all so
that an error can say "the file has realms 'a' and 'b', the proxy serves 'c'".
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator

from authproxy.auth.errors import UserStoreError
from authproxy.auth.store import UserEntry
from authproxy.auth.text import has_control
from authproxy.users._file import DEFAULT_MIN_STAT_INTERVAL, UserFile

_MD5_HEX = re.compile(r"[0-9a-fA-F]{32}")


class HtdigestFile(UserFile):
    """An htdigest file, kept in memory and reloaded when it changes (see ``UserFile.refresh``).

    ``realm`` selects the realm the proxy serves. Left as None, every realm is loaded, and a name defined in
    two realms is an error, because ``lookup(name)`` could not choose.
    """

    kind = "htdigest file"

    def __init__(
        self,
        path: str | os.PathLike[str],
        realm: str | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        min_stat_interval: float = DEFAULT_MIN_STAT_INTERVAL,
    ) -> None:
        self.realm = realm
        self._realms: dict[str, int] = {}
        super().__init__(path, clock=clock, min_stat_interval=min_stat_interval)

    def _parse(self, lines: Iterator[tuple[int, str]]) -> list[UserEntry]:
        entries: dict[str, UserEntry] = {}
        first_line: dict[str, int] = {}
        realms: dict[str, int] = {}  # realm -> lines, in file order
        for number, raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{self.path}, line {number}"
            fields = line.split(":")
            if len(fields) != 3:
                # Never quote the line: it holds an HA1, which is as good as a password for Digest.
                raise UserStoreError(f"{where}: expected 'user:realm:md5hex', found {len(fields)} field(s)")
            name, realm, ha1 = fields
            if not name:
                raise UserStoreError(f"{where}: empty user name")
            if has_control(name) or has_control(realm):
                raise UserStoreError(f"{where}: user name or realm contains a control character")
            if not _MD5_HEX.fullmatch(ha1):
                raise UserStoreError(f"{where}: user {name!r}: the third field is not 32 hex digits")
            realms[realm] = realms.get(realm, 0) + 1
            if self.realm is not None and realm != self.realm:
                continue
            if name in entries:
                raise UserStoreError(
                    f"{where}: user {name!r} is already defined on line {first_line[name]}"
                    + ("" if self.realm is not None else "; choose one realm")
                )
            entries[name] = UserEntry(name=name, realm=realm, ha1={"MD5": ha1.lower()})
            first_line[name] = number
        self._realms = realms
        return list(entries.values())

    def realms(self) -> tuple[str, ...]:
        """Every realm the file holds, in the order they first appear (including those not served)."""
        return tuple(self._realms)

    def realm_counts(self) -> dict[str, int]:
        """How many users each realm of the file has, in the order the realms first appear."""
        return dict(self._realms)
