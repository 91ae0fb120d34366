"""What the auth core asks of a user store: the user record, the store's contract, and the password check.

The verifier never reads a store itself: it yields needs (``NeedUser``, ``NeedPasswordCheck``...) and a driver
(:mod:`authproxy.auth.driver`) answers them from a :class:`UserStore`. A store answers lookups from memory;
a password check may be slow (bcrypt: milliseconds of CPU; a directory bind, a helper process: a round trip),
and the store says so through :meth:`UserStore.password_check_is_slow`, so the caller runs that check off the
event loop. Stores live in :mod:`authproxy.users` and import this module, never the reverse.

Unknown users (issue 9 item 9): asked to check a password for nobody (``entry`` None), a store spends what a
check of its typical user costs and answers False, so the time a refusal takes does not say whether the name
exists. :func:`dummy_entry` builds that typical user from the store's own entries.
"""

from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from authproxy.auth.digest import compute_ha1
from authproxy.auth.passwords import dummy_hash_like, hash_shape, is_slow_hash, verify_password_hash


@dataclass(frozen=True)
class UserEntry:
    """What a store knows of one user.

    ``ha1`` maps a base Digest algorithm ("MD5", "SHA-256", "SHA-512-256") to hex H(name:realm:password) for
    ``realm``; it is what Digest needs (RFC 7616 section 3.4.2) and it can check a Basic password too.
    ``password_hash`` is an htpasswd-style hash (bcrypt, ``$apr1$``, ``{SHA}``) that serves Basic only.
    """

    name: str
    realm: str | None = None
    ha1: Mapping[str, str] = field(default_factory=dict)
    password_hash: str | None = None

    def digest_algorithms(self, realm: str) -> tuple[str, ...]:
        """The base Digest algorithms this entry can answer in ``realm``."""
        if self.realm != realm:
            return ()
        return tuple(self.ha1)

    def can_basic(self, realm: str) -> bool:
        return self.password_hash is not None or bool(self.digest_algorithms(realm))


class UserStore(Protocol):
    """A source of users. Implementations: authproxy.users (NativeUserFile, HtpasswdFile, HtdigestFile).

    Lookups answer at once from memory. ``check_password`` may block (CPU or IO) when
    ``password_check_is_slow`` says so: the caller then runs it off the event loop.
    """

    #: Human-readable name for logs and errors, e.g. "htpasswd file /etc/proxy/users".
    description: str

    def lookup(self, name: str) -> UserEntry | None:
        """The entry for ``name`` (exact, case-sensitive), or None."""
        ...

    def lookup_userhash(self, algorithm: str, realm: str, hashed: str) -> UserEntry | None:
        """The entry whose H(name:realm) under base ``algorithm`` is ``hashed`` (RFC 7616 section 3.4.4)."""
        ...

    def password_check_is_slow(self, entry: UserEntry | None, realm: str) -> bool:
        """Whether ``check_password`` for ``entry`` (None: an unknown user) must run off the event loop."""
        ...

    def check_password(self, entry: UserEntry | None, password: str, realm: str) -> bool:
        """Whether ``password`` (a Basic credential) is ``entry``'s in ``realm``. For ``entry`` None (no such
        user, or one with no secret for Basic) spend what checking a real user costs, and return False."""
        ...

    def __iter__(self) -> Iterator[UserEntry]: ...

    def refresh(self) -> None:
        """Pick up changes from the backing source (cheap when there are none)."""
        ...


# Which HA1 checks a Basic password when an entry holds several: any one proves the password, so take the
# cheapest widely held one first.
_BASIC_HA1_PREFERENCE: tuple[str, ...] = ("SHA-256", "SHA-512-256", "MD5")


def check_basic_password(entry: UserEntry, password: str, realm: str) -> bool:
    """Whether ``password`` (a Basic credential, RFC 7617) is ``entry``'s password in ``realm``.

    An entry with an HA1 for ``realm`` is checked by computing H(name:realm:password) and comparing in
    constant time; otherwise its htpasswd ``password_hash`` is checked (which may be slow, see
    :func:`basic_check_is_slow`). An unsupported hash or a realm mismatch never matches.
    """
    if entry.realm == realm:
        for algorithm in _BASIC_HA1_PREFERENCE:
            stored = entry.ha1.get(algorithm)
            if stored is not None:
                computed = compute_ha1(algorithm, entry.name, realm, password)
                expected = stored.lower().encode("ascii", "replace")
                return hmac.compare_digest(computed.encode("ascii"), expected)
    if entry.password_hash is not None:
        return verify_password_hash(password, entry.password_hash)
    return False


def basic_check_is_slow(entry: UserEntry, realm: str) -> bool:
    """Whether :func:`check_basic_password` on ``entry`` costs enough CPU (bcrypt) to run it in a thread."""
    if entry.realm == realm and any(alg in entry.ha1 for alg in _BASIC_HA1_PREFERENCE):
        return False
    return entry.password_hash is not None and is_slow_hash(entry.password_hash)


def dummy_entry(entries: Iterable[UserEntry], rand: bytes) -> UserEntry:
    """A user no password matches, whose Basic check costs what the most common kind of ``entries`` costs.

    The most common kind is judged by realm and HA1 algorithms for HA1 entries, and by hash format and cost
    (``$2y$12$``...) for htpasswd hashes; its secret is built from ``rand`` (at least 32 bytes, from the
    caller's random source). An empty store gets an entry with nothing to check.
    """
    shapes: Counter[tuple[str | None, tuple[str, ...], str | None]] = Counter()
    for entry in entries:
        if entry.ha1:
            shapes[(entry.realm, tuple(sorted(entry.ha1)), None)] += 1
        elif entry.password_hash is not None:
            shapes[(None, (), hash_shape(entry.password_hash))] += 1
    if not shapes:
        return UserEntry("")
    realm, algorithms, shape = shapes.most_common(1)[0][0]
    if shape is not None:
        return UserEntry("", password_hash=dummy_hash_like(shape, rand))
    # Any hex of the right length: H(name:realm:password) is computed in full and compared in constant time.
    hexed = rand.hex()
    return UserEntry("", realm, {alg: hexed[: 32 if alg == "MD5" else 64] for alg in algorithms})
