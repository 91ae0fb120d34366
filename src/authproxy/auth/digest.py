"""HTTP Digest authentication, RFC 7616 (and RFC 2617 section 3.2.2 for the qop-less form).

Algorithms (RFC 7616 section 3.2 and the IANA registry): MD5, SHA-256, SHA-512-256, each with ``-sess``.
SHA-512-256 is SHA-512/256 of FIPS 180-4 (its own initial values), not SHA-512 truncated: RFC 7616
section 3.9.2 prints the truncated values by mistake (erratum 4897).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass


def _sha512_256(data: bytes) -> str:
    return hashlib.new("sha512_256", data).hexdigest()


def _md5(data: bytes) -> str:
    # Digest MD5 is a protocol requirement, not a security choice (RFC 7616 section 3.2).
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class DigestAlgorithm:
    """One row of the algorithm table: its wire name, hash function, session variant and preference."""

    name: str  # as sent on the wire, e.g. "SHA-256-sess"
    base: str  # the name without "-sess"; user stores key their HA1 by it
    hexdigest: Callable[[bytes], str]
    sess: bool
    strength: int  # higher is stronger; clients pick the strongest offered

    def h(self, text: str) -> str:
        """H(data) of RFC 7616 section 3.4.1, over the UTF-8 encoding of ``text``."""
        return self.hexdigest(text.encode("utf-8"))


_BASES: tuple[tuple[str, Callable[[bytes], str], int], ...] = (
    ("MD5", _md5, 1),
    ("SHA-256", _sha256, 2),
    ("SHA-512-256", _sha512_256, 3),
)

#: Every algorithm we know, by upper-cased wire name (RFC 7616 section 3.3: the value is case-insensitive).
ALGORITHMS: dict[str, DigestAlgorithm] = {}
for _name, _fn, _strength in _BASES:
    ALGORITHMS[_name.upper()] = DigestAlgorithm(_name, _name, _fn, False, _strength)
    ALGORITHMS[(_name + "-sess").upper()] = DigestAlgorithm(_name + "-sess", _name, _fn, True, _strength)

#: The base algorithms a user store can hold an HA1 for, strongest first.
BASE_ALGORITHMS: tuple[str, ...] = ("SHA-512-256", "SHA-256", "MD5")


def get_algorithm(name: str | None) -> DigestAlgorithm | None:
    """The algorithm named ``name`` (absent means MD5, RFC 7616 section 3.3), or None when unknown."""
    if name is None:
        return ALGORITHMS["MD5"]
    return ALGORITHMS.get(name.upper())


def compute_ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """H(username ":" realm ":" passwd), RFC 7616 section 3.4.2, before any -sess step."""
    alg = get_algorithm(algorithm)
    if alg is None:
        raise ValueError(f"unknown Digest algorithm {algorithm!r}")
    return alg.h(f"{username}:{realm}:{password}")
