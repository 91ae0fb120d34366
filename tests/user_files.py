"""Helpers for the user store tests: writing a users file in each format, and a clock to drive refresh."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from authproxy.auth.digest import compute_ha1
from authproxy.auth.passwords import md5_crypt
from authproxy.users._file import UserFile
from authproxy.users.htdigest import HtdigestFile
from authproxy.users.htpasswd import HtpasswdFile
from authproxy.users.native import HEADER, NativeUserFile, format_record, make_entry

REALM = "proxy realm"

#: Users every contract test starts from: a non-ASCII name and passwords with colons and spaces.
USERS: dict[str, str] = {
    "alice": "wonderland",
    "zoë": "pa:ss:wörd",
    "Ünïcødé 名前": " spaces and : colons ",
}


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` the way editors and Apache's tools do: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def native_text(users: Mapping[str, str], realm: str = REALM) -> str:
    lines = [HEADER] + [format_record(make_entry(name, pw, realm)) for name, pw in users.items()]
    return "\n".join(lines) + "\n"


def htpasswd_text(users: Mapping[str, str]) -> str:
    # apr1 keeps the suite fast; bcrypt has its own tests.
    return "".join(f"{name}:{md5_crypt(pw.encode(), b'salt' + str(i).encode())}\n"
                   for i, (name, pw) in enumerate(users.items()))


def htdigest_text(users: Mapping[str, str], realm: str = REALM) -> str:
    return "".join(f"{name}:{realm}:{compute_ha1('MD5', name, realm, pw)}\n" for name, pw in users.items())


@dataclass
class StoreKind:
    """One store type under test: how to write its file and how to open it."""

    name: str
    render: Callable[[Mapping[str, str]], str]
    open: Callable[[Path, FakeClock], UserFile]
    #: A file with a bad line, and the number of that line.
    bad: tuple[str, int]
    digest: bool  # whether its users can use Digest (and so be found by userhash)


STORE_KINDS = {
    "native": StoreKind(
        "native",
        native_text,
        lambda path, clock: NativeUserFile(path, clock=clock),
        (HEADER + "\n# comment\n\nbob:r:md5=nothex\n", 4),
        True,
    ),
    "htpasswd": StoreKind(
        "htpasswd",
        htpasswd_text,
        lambda path, clock: HtpasswdFile(path, clock=clock),
        ("# comment\nalice:$apr1$x$aaaaaaaaaaaaaaaaaaaaaa\nbob-without-colon\n", 3),
        False,
    ),
    "htdigest": StoreKind(
        "htdigest",
        htdigest_text,
        lambda path, clock: HtdigestFile(path, REALM, clock=clock),
        (f"alice:{REALM}:{'0' * 32}\n\nbob:{REALM}:{'0' * 31}\n", 3),
        True,
    ),
}
