"""User stores: where the proxy finds a user's secrets (authproxy's own file, htpasswd, htdigest; more later).

:func:`open_user_store` picks the store for a file by its content, so ``--users`` takes any of the three
formats; :func:`describe_capabilities` says in one sentence what a user can sign in with, for
``authproxy users list`` and the startup log.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Literal

from authproxy.auth.digest import get_algorithm
from authproxy.auth.errors import UserStoreError
from authproxy.users._file import decoded_lines
from authproxy.users.base import UserEntry, UserStore
from authproxy.users.htdigest import HtdigestFile
from authproxy.users.htpasswd import HtpasswdFile
from authproxy.users.native import HEADER_PREFIX, NativeUserFile
from authproxy.users.passwords import describe_hash

__all__ = [
    "HtdigestFile",
    "HtpasswdFile",
    "NativeUserFile",
    "UserEntry",
    "UserStore",
    "describe_capabilities",
    "detect_format",
    "open_user_store",
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


def open_user_store(path: str | os.PathLike[str], realm: str) -> UserStore:
    """The store for the users file at ``path``, in whichever format it is, serving ``realm``.

    A missing file is an error: creating the default native file (``native.ensure_default_user``) is the
    caller's decision, made before calling this.
    """
    kind = detect_format(path)
    if kind == "native":
        return NativeUserFile(path)
    if kind == "htdigest":
        return HtdigestFile(path, realm)
    return HtpasswdFile(path)


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
