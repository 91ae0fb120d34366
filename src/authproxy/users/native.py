"""authproxy's own users file (default ``./authproxy.users``): Basic and every Digest algorithm per user.

Format, version 1 (UTF-8 text, one record a line)::

    # authproxy users v1
    # any other line starting with '#' is a comment; blank lines are ignored
    alice:authproxy:md5=<32 hex>:sha-256=<64 hex>:sha-512-256=<64 hex>

- The first line is the header, exactly ``# authproxy users v1``; it names the format and its version. An
  empty file is an empty users file (the first write adds the header).
- A record is ``name:realm`` followed by one or more ``algorithm=HA1`` fields, all separated by ':'. The
  algorithms are the base Digest algorithms (``md5``, ``sha-256``, ``sha-512-256``, case-insensitive), each at
  most once, and the HA1 is hex H(name:realm:password) of RFC 7616 section 3.4.2 under that algorithm.
  ``authproxy users add`` writes all three, which serves Digest with any algorithm (and its -sess variant) in
  that realm; Basic (RFC 7617) is checked by computing the SHA-256 HA1 of the presented password.
- ``name`` and ``realm`` are percent-encoded: '%', ':', '#', whitespace and control characters are written as
  %XX of their UTF-8 bytes, every other character as itself. So any realm fits, the fields split on ':'
  unambiguously, and a record never looks like a comment. A decoded name must be non-empty and hold no ':' and
  no control character (RFC 7617 section 2); a name appears at most once in a file.

The file holds no password, but an HA1 is as good as a password for Digest in its realm: keep the file private
(new files are created with mode 0600).

Writers (:func:`add_user`, :func:`remove_user`, :func:`set_password`, :func:`ensure_default_user`) are
atomic and serialised: each takes an exclusive ``flock`` on ``<file>.lock`` (which is left in place:
removing it would let two writers lock two different files), re-reads the file under the lock, writes a
temporary file in the same directory, fsyncs it, renames it over the file and fsyncs the directory. Readers
never lock: they see the old or the new file, never a mix, and no concurrent change is lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Callable, Iterator
from typing import TypeVar

from authproxy.auth.digest import BASE_ALGORITHMS, compute_ha1
from authproxy.auth.errors import UserStoreError
from authproxy.auth.store import UserEntry
from authproxy.auth.text import has_control, realm_problem
from authproxy.users._file import UserFile, decoded_lines

#: The first line of a version 1 file.
HEADER = "# authproxy users v1"
#: What every version's header starts with; ``open_user_store`` detects the format by it.
HEADER_PREFIX = "# authproxy users "

DEFAULT_PATH = "./authproxy.users"
DEFAULT_ADMIN_NAME = "admin"

# Field key in the file -> base algorithm name as in authproxy.auth.digest.
_KEYS: dict[str, str] = {name.lower(): name for name in BASE_ALGORITHMS}
_HEX_LENGTH: dict[str, int] = {"MD5": 32, "SHA-256": 64, "SHA-512-256": 64}
_HEX = re.compile(r"[0-9a-fA-F]+")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")

_T = TypeVar("_T")

#: A parsed file: records, and the other lines (header, comments, blanks) kept verbatim so rewrites keep them.
Document = list[str | UserEntry]


class UserExistsError(UserStoreError):
    """``add_user`` for a name the file already holds."""


class NoSuchUserError(UserStoreError):
    """``remove_user`` or ``set_password`` for a name the file does not hold."""


# --- the line format ------------------------------------------------------------------------------------


def _needs_escape(ch: str) -> bool:
    return ch in "%:#" or ch.isspace() or has_control(ch)


def encode_field(text: str) -> str:
    """``text`` with '%', ':', '#', whitespace and control characters percent-encoded (UTF-8)."""
    return "".join(
        "".join(f"%{byte:02X}" for byte in ch.encode("utf-8")) if _needs_escape(ch) else ch for ch in text
    )


def decode_field(text: str) -> str:
    """The inverse of :func:`encode_field`; ValueError for a stray '%' or escapes that are not UTF-8."""
    if "%" in _PERCENT.sub("", text):
        raise ValueError("'%' not followed by two hex digits")
    out = bytearray()
    pos = 0
    for match in _PERCENT.finditer(text):
        out += text[pos : match.start()].encode("utf-8")
        out.append(int(match[1], 16))
        pos = match.end()
    out += text[pos:].encode("utf-8")
    return out.decode("utf-8")  # UnicodeDecodeError is a ValueError


def format_record(entry: UserEntry) -> str:
    """The file line for ``entry`` (which must have a realm and at least one HA1)."""
    assert entry.realm is not None and entry.ha1
    fields = [encode_field(entry.name), encode_field(entry.realm)]
    fields += [f"{alg.lower()}={entry.ha1[alg]}" for alg in BASE_ALGORITHMS[::-1] if alg in entry.ha1]
    return ":".join(fields)


def parse_record(line: str, where: str) -> UserEntry:
    """The entry on one record line; UserStoreError prefixed by ``where`` (never quoting an HA1)."""
    fields = line.split(":")
    if len(fields) < 3:
        raise UserStoreError(f"{where}: expected 'name:realm:algorithm=HA1...', found {len(fields)} field(s)")
    try:
        name = decode_field(fields[0])
        realm = decode_field(fields[1])
    except ValueError as exc:
        raise UserStoreError(f"{where}: bad percent-encoding in the name or realm ({exc})") from None
    problem = name_problem(name) or realm_problem(realm)
    if problem:
        raise UserStoreError(f"{where}: {problem}")
    ha1: dict[str, str] = {}
    for number, field in enumerate(fields[2:], start=3):
        key, equals, value = field.partition("=")
        algorithm = _KEYS.get(key.strip().lower())
        if not equals or algorithm is None:
            raise UserStoreError(
                f"{where}: user {name!r}: field {number} is not one of "
                + ", ".join(f"'{k}=HA1'" for k in _KEYS)
            )
        if algorithm in ha1:
            raise UserStoreError(f"{where}: user {name!r}: {key} is given twice")
        value = value.strip()
        if not _HEX.fullmatch(value) or len(value) != _HEX_LENGTH[algorithm]:
            raise UserStoreError(
                f"{where}: user {name!r}: the {key} HA1 must be {_HEX_LENGTH[algorithm]} hex digits"
            )
        ha1[algorithm] = value.lower()
    return UserEntry(name=name, realm=realm, ha1=ha1)


def parse_document(lines: Iterator[tuple[int, str]], source: str) -> Document:
    """Every line of a native file, records parsed; UserStoreError naming ``source`` and the line."""
    document: Document = []
    seen: dict[str, int] = {}
    for number, raw in lines:
        line = raw.strip()
        if not document and line != HEADER:
            if line.startswith(HEADER_PREFIX):
                raise UserStoreError(
                    f"{source}, line {number}: unsupported format version {line[len(HEADER_PREFIX):]!r}"
                    f" (this authproxy reads {HEADER!r})"
                )
            if line:
                raise UserStoreError(
                    f"{source}, line {number}: not an authproxy users file"
                    f" (the first line must be {HEADER!r})"
                )
            continue  # leading blank lines: an empty file is an empty users file
        if not line or line.startswith("#"):
            document.append(raw)
            continue
        entry = parse_record(line, f"{source}, line {number}")
        if entry.name in seen:
            raise UserStoreError(
                f"{source}, line {number}: user {entry.name!r} is already defined on line {seen[entry.name]}"
            )
        seen[entry.name] = number
        document.append(entry)
    if not document:
        document.append(HEADER)
    # A trailing newline leaves an empty last "line"; drop it so a rewrite does not grow blank lines.
    while len(document) > 1 and document[-1] == "":
        document.pop()
    return document


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a user name (RFC 7617 section 2), or None."""
    if not name:
        return "empty user name"
    if ":" in name:
        return "a user name cannot contain ':' (RFC 7617 section 2)"
    if has_control(name):
        return "a user name cannot contain control characters (RFC 7617 section 2)"
    return None


def password_problem(password: str) -> str | None:
    """Why ``password`` cannot be a password, or None. RFC 7617 section 2 forbids control characters."""
    if not password:
        return "empty password"
    if has_control(password):
        return "a password cannot contain control characters (RFC 7617 section 2)"
    return None


def make_entry(name: str, password: str, realm: str) -> UserEntry:
    """The entry for ``name`` with every base algorithm's HA1 of ``password`` in ``realm``; ValueError if any
    of the three is unacceptable (the message never quotes the password)."""
    problem = name_problem(name) or realm_problem(realm) or password_problem(password)
    if problem:
        raise ValueError(problem)
    ha1 = {alg: compute_ha1(alg, name, realm, password) for alg in BASE_ALGORITHMS}
    return UserEntry(name=name, realm=realm, ha1=ha1)


# --- the store -------------------------------------------------------------------------------------------


class NativeUserFile(UserFile):
    """An authproxy users file, kept in memory and reloaded when it changes (see ``UserFile.refresh``)."""

    kind = "authproxy users file"

    def _parse(self, lines: Iterator[tuple[int, str]]) -> list[UserEntry]:
        return [item for item in parse_document(lines, self.path) if isinstance(item, UserEntry)]


# --- reading and writing the file ------------------------------------------------------------------------


def _read_document(path: str) -> Document | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserStoreError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_document(decoded_lines(data, path), path)


def _render(document: Document) -> bytes:
    lines = [format_record(item) if isinstance(item, UserEntry) else item for item in document]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _write_atomically(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = 0o600
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # The rename is durable only once the directory entry is on disk.
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _update(path: str | os.PathLike[str], change: Callable[[Document], tuple[_T, bool]]) -> _T:
    """Run ``change`` on the current document under the file's lock; write it back if ``change`` says so."""
    target = os.fspath(path)
    try:
        lock_fd = os.open(target + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise UserStoreError(f"{target}.lock: cannot open the lock file: {exc.strerror}") from None
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        # Read under the lock: whatever another writer committed before we got it is in this document.
        document = _read_document(target) or [HEADER]
        result, changed = change(document)
        if changed:
            try:
                _write_atomically(target, _render(document))
            except OSError as exc:
                raise UserStoreError(f"{target}: cannot write: {exc.strerror}") from None
        return result
    finally:
        os.close(lock_fd)  # releases the flock


def _index(document: Document, name: str) -> int | None:
    for i, item in enumerate(document):
        if isinstance(item, UserEntry) and item.name == name:
            return i
    return None


def add_user(path: str | os.PathLike[str], name: str, password: str, realm: str) -> None:
    """Add ``name`` with ``password`` in ``realm``, creating the file (mode 0600) if needed.

    Raises ValueError for an unacceptable name, realm or password, UserExistsError if ``name`` is taken, and
    UserStoreError if the file cannot be read or written.
    """
    entry = make_entry(name, password, realm)

    def change(document: Document) -> tuple[None, bool]:
        if _index(document, name) is not None:
            raise UserExistsError(
                f"{os.fspath(path)}: user {name!r} already exists (use passwd to change the password)"
            )
        document.append(entry)
        return None, True

    _update(path, change)


def set_password(path: str | os.PathLike[str], name: str, password: str, realm: str) -> None:
    """Replace ``name``'s HA1 values with those of ``password`` in ``realm`` (which may be a new realm)."""
    entry = make_entry(name, password, realm)

    def change(document: Document) -> tuple[None, bool]:
        i = _index(document, name)
        if i is None:
            raise NoSuchUserError(f"{os.fspath(path)}: no user {name!r}")
        document[i] = entry
        return None, True

    _update(path, change)


def remove_user(path: str | os.PathLike[str], name: str) -> None:
    """Remove ``name``; NoSuchUserError if the file (or the user) does not exist."""
    target = os.fspath(path)
    if not os.path.exists(target):
        raise NoSuchUserError(f"{target}: no such file, so no user {name!r}")

    def change(document: Document) -> tuple[None, bool]:
        i = _index(document, name)
        if i is None:
            raise NoSuchUserError(f"{target}: no user {name!r}")
        del document[i]
        return None, True

    _update(path, change)


def list_users(path: str | os.PathLike[str]) -> list[UserEntry]:
    """The users in the file, in file order; UserStoreError if it is missing or malformed."""
    target = os.fspath(path)
    document = _read_document(target)
    if document is None:
        raise UserStoreError(f"{target}: no such file")
    return [item for item in document if isinstance(item, UserEntry)]


def ensure_default_user(
    path: str | os.PathLike[str], realm: str, *, name: str = DEFAULT_ADMIN_NAME
) -> tuple[str, str] | None:
    """Make sure a first run has someone to sign in as.

    If the file does not exist or holds no user, add ``name`` with a fresh random password and return
    (name, password) for the caller to show once; otherwise change nothing and return None.
    """
    password = secrets.token_urlsafe(15)
    entry = make_entry(name, password, realm)

    def change(document: Document) -> tuple[tuple[str, str] | None, bool]:
        if any(isinstance(item, UserEntry) for item in document):
            return None, False
        document.append(entry)
        return (name, password), True

    return _update(path, change)
