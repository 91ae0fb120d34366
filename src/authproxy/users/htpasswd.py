"""Apache htpasswd files as a user store: ``name:hash`` lines, serving Basic only (RFC 7617).

The format is what Apache's mod_authn_file reads: one user per line, the name up to the first ':' and the hash
after it; blank lines and lines starting with '#' are ignored, and surrounding whitespace is dropped. A salted
one-way hash cannot give the H(name:realm:password) Digest needs, so these users cannot use Digest.

A user whose hash authproxy cannot check (DES crypt, SHA-crypt, plain text...) is still loaded, so that the
proxy can say why that user is refused (:meth:`HtpasswdFile.unsupported_reason`) instead of "unknown user".
"""

from __future__ import annotations

from collections.abc import Iterator

from authproxy.auth.errors import UserStoreError
from authproxy.auth.passwords import describe_hash, is_supported_hash
from authproxy.auth.store import UserEntry
from authproxy.auth.text import has_control
from authproxy.users._file import UserFile


class HtpasswdFile(UserFile):
    """An htpasswd file, kept in memory and reloaded when it changes (see ``UserFile.refresh``)."""

    kind = "htpasswd file"

    def _parse(self, lines: Iterator[tuple[int, str]]) -> list[UserEntry]:
        entries: dict[str, UserEntry] = {}
        first_line: dict[str, int] = {}
        for number, raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{self.path}, line {number}"
            name, colon, password_hash = line.partition(":")
            # Never quote the line: it holds a hash (or, for a broken file, maybe a password).
            if not colon:
                raise UserStoreError(f"{where}: expected 'name:hash', found no ':'")
            if not name:
                raise UserStoreError(f"{where}: empty user name")
            if has_control(name):
                raise UserStoreError(f"{where}: user name contains a control character")
            if not password_hash:
                raise UserStoreError(f"{where}: user {name!r} has an empty hash")
            if name in entries:
                raise UserStoreError(f"{where}: user {name!r} is already defined on line {first_line[name]}")
            entries[name] = UserEntry(name=name, password_hash=password_hash)
            first_line[name] = number
        return list(entries.values())

    def unsupported_reason(self, name: str) -> str | None:
        """Why ``name``'s password can never be checked, e.g. "DES crypt hash"; None if it can, or no user.

        Suitable for a log line such as "user X has a DES crypt hash, which authproxy cannot check".
        """
        entry = self.lookup(name)
        if entry is None or entry.password_hash is None or is_supported_hash(entry.password_hash):
            return None
        kind = describe_hash(entry.password_hash)
        return kind.removeprefix("unsupported (").removesuffix(")") + " hash"
