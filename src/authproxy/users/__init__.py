"""User stores: where the proxy finds a user's secrets (authproxy's own file, htpasswd, htdigest; more later).

:func:`open_user_store` picks the kind of store by the form of the configured value (a path today;
``ldap://`` and ``helper:`` are reserved, see :mod:`authproxy.users.location`), and for a path the file's
format by its content, so ``--users`` takes any of the three formats. :func:`describe_capabilities` says in
one sentence what a user can sign in with, for ``authproxy users list`` and the startup log.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable
from typing import Literal

from authproxy.auth.digest import get_algorithm
from authproxy.auth.errors import ConfigError, UserStoreError
from authproxy.auth.passwords import describe_hash
from authproxy.auth.store import UserEntry, UserStore
from authproxy.users._file import decoded_lines
from authproxy.users.htdigest import HtdigestFile
from authproxy.users.htpasswd import HtpasswdFile
from authproxy.users.location import parse_store_location
from authproxy.users.native import DEFAULT_PATH, HEADER_PREFIX, NativeUserFile

__all__ = [
    "HtdigestFile",
    "HtpasswdFile",
    "NativeUserFile",
    "UserEntry",
    "UserStore",
    "describe_capabilities",
    "detect_format",
    "open_user_store",
    "realm_mismatch",
    "user_realms",
    "usual_realm",
]

FileFormat = Literal["native", "htpasswd", "htdigest"]

_MD5_HEX = re.compile(r"[0-9a-fA-F]{32}")


def detect_format(path: str | os.PathLike[str]) -> FileFormat:
    """Which format the file at ``path`` is in, judged by its first meaningful line.

    The native header line means "native", and so does an empty file (a users file nobody has added to yet);
    a ``user:realm:<32 hex>`` record means "htdigest"; anything else is taken for htpasswd, whose parser then
    reports what is wrong with it. A missing or unreadable file raises UserStoreError.
    """
    target = os.fspath(path)
    try:
        with open(target, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UserStoreError(f"users file {target}: no such file") from None
    except OSError as exc:
        raise UserStoreError(f"users file {target}: cannot read: {exc.strerror}") from None
    for _, raw in decoded_lines(data, target):
        line = raw.strip()
        if not line:
            continue
        if line.startswith(HEADER_PREFIX):
            return "native"
        if line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) == 3 and _MD5_HEX.fullmatch(fields[2]):
            return "htdigest"
        return "htpasswd"
    return "native"


def open_user_store(value: str | os.PathLike[str], realm: str) -> UserStore:
    """The store ``value`` names (the ``users`` option), serving ``realm``.

    The kind of store goes by the value's form (:func:`~authproxy.users.location.parse_store_location`); a
    path is a users file in whichever format it is. A missing file is an error: creating the default native
    file (``native.ensure_default_user``) is the caller's decision, made before calling this.
    """
    path = parse_store_location(os.fspath(value)).path
    kind = detect_format(path)
    if kind == "native":
        return NativeUserFile(path)
    if kind == "htdigest":
        return HtdigestFile(path, realm)
    return HtpasswdFile(path)


def user_realms(store: UserStore) -> dict[str, int]:
    """How many users have their secrets bound to each realm (an HA1 is H(name:realm:password), RFC 7616
    section 3.4.2), in file order; the whole file, whichever realm the store serves. htpasswd users have none."""
    if isinstance(store, HtdigestFile):
        return store.realm_counts()
    counts: dict[str, int] = {}
    for entry in store:
        if entry.realm is not None and entry.ha1:
            counts[entry.realm] = counts.get(entry.realm, 0) + 1
    return counts


def usual_realm(store: UserStore) -> str | None:
    """The realm to serve when none is configured: the realm of most users (the first in the file on a tie);
    None for a store without realms (htpasswd, or no users yet)."""
    counts = user_realms(store)
    return max(counts, key=lambda realm: counts[realm]) if counts else None


def realm_mismatch(store: UserStore, realm: str, path: str) -> str | None:
    """Why no user of ``store`` (the file at ``path``) can sign in to ``realm`` although it has users, with
    the command that fixes it; None when someone can (or the store is empty, or holds htpasswd hashes, which
    check a Basic password in any realm)."""
    counts = user_realms(store)
    if not counts or realm in counts or any(entry.password_hash is not None for entry in store):
        return None
    held = ", ".join(repr(r) for r in counts)
    theirs = f"their realm is {held}" if len(counts) == 1 else f"their realms are {held}"
    usual = usual_realm(store)
    assert usual is not None
    if isinstance(store, HtdigestFile):
        fix = f"add them to that realm with `htdigest {shlex.quote(path)} {shlex.quote(realm)} NAME`"
    else:
        users = "" if os.path.abspath(path) == os.path.abspath(DEFAULT_PATH) else f" --users {shlex.quote(path)}"
        fix = f"set the passwords again with `authproxy users passwd NAME{users} --realm {shlex.quote(realm)}`"
    return (f"no user in {path} can sign in to realm {realm!r} ({theirs}); {fix}, "
            f"or serve with --realm {shlex.quote(usual)}")


def open_serving_store(value: str, realm: str) -> UserStore:
    """The users file ``value`` as a store serving ``realm``, for a server about to start (or reload): a realm
    none of its users can sign in to (their HA1s are bound to another realm) is a ConfigError naming the
    command that fixes it (:func:`realm_mismatch`), since a server that refuses every right password is worse
    than one that does not start."""
    store = open_user_store(value, realm)
    problem = realm_mismatch(store, realm, value)
    if problem is not None:
        raise ConfigError(problem)
    return store


def describe_capabilities(entry: UserEntry, realm: str, offered_algorithms: Iterable[str]) -> str:
    """One sentence on what ``entry`` can sign in with when the proxy serves ``realm`` and offers
    ``offered_algorithms`` (wire names; "-sess" variants count as their base), e.g.
    "alice: Basic and Digest SHA-256, MD5 (realm 'proxy')" or "bob: Basic only (bcrypt hash cannot serve
    Digest)". It never quotes a hash.
    """
    offered: list[str] = []
    for name in offered_algorithms:
        algorithm = get_algorithm(name)
        if algorithm is not None and algorithm.base not in offered:
            offered.append(algorithm.base)
    if entry.ha1:
        if entry.realm != realm:
            return (
                f"{entry.name}: cannot sign in (the file holds its secrets for realm {entry.realm!r};"
                f" the proxy serves realm {realm!r})"
            )
        usable = [base for base in offered if base in entry.ha1]
        if usable:
            return f"{entry.name}: Basic and Digest {', '.join(usable)} (realm {realm!r})"
        held = ", ".join(entry.ha1)
        return f"{entry.name}: Basic only (holds Digest {held}, which the proxy does not offer)"
    if entry.password_hash is not None:
        kind = describe_hash(entry.password_hash)
        if kind.startswith("unsupported"):
            reason = kind.removeprefix("unsupported (").removesuffix(")")
            return f"{entry.name}: cannot sign in ({reason} hash, which authproxy cannot check)"
        return f"{entry.name}: Basic only ({kind} hash cannot serve Digest)"
    return f"{entry.name}: cannot sign in (no password or HA1 on record)"
