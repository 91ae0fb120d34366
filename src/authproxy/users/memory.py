"""A user store held in memory: the lookups every store answers, and the base of the file-backed stores.

The users are kept as one snapshot (by name, and by H(name:realm) for userhash, RFC 7616 section 3.4.4) that
:meth:`MemoryUserStore.replace` swaps whole, so a lookup in another thread (a password check runs in one)
never sees a mix of two versions. The snapshot also holds the stand-in checked for a user who is not there
(:func:`authproxy.auth.store.dummy_entry`, issue 9 item 9).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from authproxy.auth.digest import BASE_ALGORITHMS, get_algorithm
from authproxy.auth.store import UserEntry, basic_check_is_slow, check_basic_password, dummy_entry


@dataclass(frozen=True)
class _Snapshot:
    """One version of the users; replaced whole."""

    entries: dict[str, UserEntry] = field(default_factory=dict)
    # (base algorithm, realm) -> H(name:realm) -> entry, RFC 7616 section 3.4.4.
    userhash: dict[tuple[str, str], dict[str, UserEntry]] = field(default_factory=dict)
    # Checked in place of a user who is not there, at the cost of the typical user's check.
    dummy: UserEntry = field(default_factory=lambda: UserEntry(""))


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
    return _Snapshot(by_name, userhash, dummy_entry(by_name.values(), secrets.token_bytes(32)))


class MemoryUserStore:
    """Users given as entries (tests, embedding); implements :class:`authproxy.auth.store.UserStore`."""

    description = "users in memory"

    def __init__(self, entries: Iterable[UserEntry] = ()) -> None:
        self._snapshot = _build_snapshot(entries)

    def replace(self, entries: Iterable[UserEntry]) -> None:
        """Serve ``entries`` from now on, in place of the users before."""
        self._snapshot = _build_snapshot(entries)

    def lookup(self, name: str) -> UserEntry | None:
        return self._snapshot.entries.get(name)

    def lookup_userhash(self, algorithm: str, realm: str, hashed: str) -> UserEntry | None:
        alg = get_algorithm(algorithm)
        if alg is None:
            return None
        return self._snapshot.userhash.get((alg.base, realm), {}).get(hashed.lower())

    def password_check_is_slow(self, entry: UserEntry | None, realm: str) -> bool:
        return basic_check_is_slow(self._snapshot.dummy if entry is None else entry, realm)

    def check_password(self, entry: UserEntry | None, password: str, realm: str) -> bool:
        if entry is None:
            check_basic_password(self._snapshot.dummy, password, realm)  # the same cost, answered False
            return False
        return check_basic_password(entry, password, realm)

    def __iter__(self) -> Iterator[UserEntry]:
        return iter(list(self._snapshot.entries.values()))

    def __len__(self) -> int:
        return len(self._snapshot.entries)

    def refresh(self) -> None:
        """Nothing to pick up: the entries change only through :meth:`replace`."""
