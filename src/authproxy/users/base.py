"""The contract every user store keeps, and the one place a Basic password is checked against an entry.

A store answers lookups from memory; it never blocks the event loop on a file (reload is a cheap ``stat``).
Checking a password against a slow hash (bcrypt) is CPU work the caller runs off the loop.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from authproxy.auth.digest import compute_ha1
from authproxy.users.passwords import is_slow_hash, verify_password_hash


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
    """A source of users. Implementations: NativeUserFile, HtpasswdFile, HtdigestFile."""

    #: Human-readable name for logs and errors, e.g. "htpasswd file /etc/proxy/users".
    description: str

    def lookup(self, name: str) -> UserEntry | None:
        """The entry for ``name`` (exact, case-sensitive), or None."""
        ...

    def lookup_userhash(self, algorithm: str, realm: str, hashed: str) -> UserEntry | None:
        """The entry whose H(name:realm) under base ``algorithm`` is ``hashed`` (RFC 7616 section 3.4.4)."""
        ...

    def __iter__(self) -> Iterator[UserEntry]: ...

    def refresh(self) -> None:
        """Reload from the backing file if it changed (cheap when it did not)."""
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
