"""The UserStore contract, run against every store: NativeUserFile, HtpasswdFile, HtdigestFile."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import authproxy.users._file as file_module
from authproxy.auth.digest import BASE_ALGORITHMS, get_algorithm
from authproxy.auth.errors import UserStoreError
from authproxy.auth.store import UserStore, check_basic_password
from authproxy.users import open_user_store
from authproxy.users._file import UserFile

from user_files import REALM, STORE_KINDS, USERS, FakeClock, StoreKind, write_atomically


def open_store(kind: StoreKind, tmp_path: Path, clock: FakeClock, users: dict[str, str] = USERS) -> UserFile:
    path = tmp_path / f"users.{kind.name}"
    write_atomically(path, kind.render(users))
    return kind.open(path, clock)


def test_is_a_user_store(kind: StoreKind, tmp_path: Path, clock: FakeClock) -> None:
    store: UserStore = open_store(kind, tmp_path, clock)  # mypy checks the protocol here
    assert str(tmp_path) in store.description


def test_lookup(kind: StoreKind, tmp_path: Path, clock: FakeClock) -> None:
    store = open_store(kind, tmp_path, clock)
    for name, password in USERS.items():
        entry = store.lookup(name)
        assert entry is not None
        assert entry.name == name
        assert entry.can_basic(REALM)
        assert check_basic_password(entry, password, REALM)
        assert not check_basic_password(entry, password + "!", REALM)
        assert not check_basic_password(entry, password.upper(), REALM)
        if kind.digest:
            assert entry.realm == REALM
            assert entry.digest_algorithms(REALM)
        else:
            assert entry.digest_algorithms(REALM) == ()


def test_unknown_user(kind: StoreKind, tmp_path: Path, clock: FakeClock) -> None:
    store = open_store(kind, tmp_path, clock)
    assert store.lookup("mallory") is None
    assert store.lookup("ALICE") is None  # names are case-sensitive
    assert store.lookup("") is None


def test_iteration(kind: StoreKind, tmp_path: Path, clock: FakeClock) -> None:
    store = open_store(kind, tmp_path, clock)
    assert sorted(entry.name for entry in store) == sorted(USERS)
    assert len(store) == len(USERS)


def test_lookup_userhash(kind: StoreKind, tmp_path: Path, clock: FakeClock) -> None:
    store = open_store(kind, tmp_path, clock)
    for name in USERS:
        for base in BASE_ALGORITHMS:
            algorithm = get_algorithm(base)
            assert algorithm is not None
            hashed = algorithm.h(f"{name}:{REALM}")  # RFC 7616 section 3.4.4
            found = store.lookup_userhash(base, REALM, hashed)
            if kind.digest:
                assert found == store.lookup(name)
                # The -sess variant hashes the same way; hex is case-insensitive.
                assert store.lookup_userhash(base.lower() + "-sess", REALM, hashed.upper()) == found
            else:
                assert found is None  # no HA1, so no Digest, so nothing to identify
            assert store.lookup_userhash(base, "other realm", hashed) is None
    assert store.lookup_userhash("MD5", REALM, "0" * 32) is None
    assert store.lookup_userhash("SHA-1", REALM, "0" * 40) is None


def test_refresh_picks_up_changes(kind: StoreKind, tmp_path: Path, clock: FakeClock) -> None:
    store = open_store(kind, tmp_path, clock)
    path = tmp_path / f"users.{kind.name}"
    changed = {"alice": "new password", "carol": "c:a:r:o:l"}
    write_atomically(path, kind.render(changed))

    clock.advance(0.1)
    store.refresh()  # within the throttle interval: not even a stat
    assert store.lookup("carol") is None

    clock.advance(0.5)
    store.refresh()
    assert store.lookup("zoë") is None
    carol = store.lookup("carol")
    alice = store.lookup("alice")
    assert carol is not None and alice is not None
    assert check_basic_password(carol, "c:a:r:o:l", REALM)
    assert check_basic_password(alice, "new password", REALM)
    assert not check_basic_password(alice, USERS["alice"], REALM)


def test_refresh_reads_only_on_change(
    kind: StoreKind, tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(kind, tmp_path, clock)
    reads: list[str] = []
    real_read = file_module.read_signed

    def counting_read(path: str) -> tuple[bytes, file_module.FileSignature]:
        reads.append(path)
        return real_read(path)

    monkeypatch.setattr(file_module, "read_signed", counting_read)
    for _ in range(5):
        clock.advance(1)
        store.refresh()
    assert reads == []
    write_atomically(tmp_path / f"users.{kind.name}", kind.render({"dave": "d"}))
    clock.advance(1)
    store.refresh()
    assert len(reads) == 1
    assert [entry.name for entry in store] == ["dave"]


def test_refresh_keeps_last_good_users(kind: StoreKind, tmp_path: Path, clock: FakeClock) -> None:
    store = open_store(kind, tmp_path, clock)
    path = tmp_path / f"users.{kind.name}"
    bad_text, bad_line = kind.bad
    write_atomically(path, bad_text)
    clock.advance(1)
    with pytest.raises(UserStoreError, match=f"line {bad_line}.*keeping the users"):
        store.refresh()
    assert store.lookup("alice") is not None
    clock.advance(1)
    store.refresh()  # the same bad version is reported once, not on every request
    assert store.lookup("alice") is not None

    path.unlink()
    clock.advance(1)
    with pytest.raises(UserStoreError, match="gone"):
        store.refresh()
    clock.advance(1)
    store.refresh()
    assert store.lookup("alice") is not None

    write_atomically(path, kind.render({"erin": "e"}))
    clock.advance(1)
    store.refresh()
    assert [entry.name for entry in store] == ["erin"]


def test_bad_line_names_file_and_line(kind: StoreKind, tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / f"users.{kind.name}"
    bad_text, bad_line = kind.bad
    write_atomically(path, bad_text)
    with pytest.raises(UserStoreError) as caught:
        kind.open(path, clock)
    message = caught.value.message
    assert str(path) in message
    assert f"line {bad_line}" in message
    assert "0" * 31 not in message and "nothex" not in message and "$apr1$" not in message


def test_invalid_utf8_names_line(kind: StoreKind, tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / f"users.{kind.name}"
    text = kind.render(USERS)
    path.write_bytes(text.encode() + b"caf\xe9:x\n")
    with pytest.raises(UserStoreError, match=f"line {text.count(chr(10)) + 1}: not valid UTF-8"):
        kind.open(path, clock)


def test_missing_file(kind: StoreKind, tmp_path: Path, clock: FakeClock) -> None:
    with pytest.raises(UserStoreError, match="no such file"):
        kind.open(tmp_path / "absent", clock)


def test_crlf_and_bom(kind: StoreKind, tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / f"users.{kind.name}"
    path.write_bytes(b"\xef\xbb\xbf" + kind.render(USERS).replace("\n", "\r\n").encode())
    store = kind.open(path, clock)
    entry = store.lookup("zoë")
    assert entry is not None and check_basic_password(entry, USERS["zoë"], REALM)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_any_file_loads_or_raises_user_store_error(data: bytes) -> None:
    # The parser invariant of DESIGN.md: any input parses or raises our error, never anything else.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "users"
        path.write_bytes(data)
        for kind in STORE_KINDS.values():
            with contextlib.suppress(UserStoreError):
                list(kind.open(path, FakeClock()))
        with contextlib.suppress(UserStoreError):
            list(open_user_store(path, REALM))


def test_passwords_are_checked_through_the_store(kind: StoreKind, tmp_path: Path, clock: FakeClock) -> None:
    """check_password answers for a known user, and for nobody (None) it answers False after a check of the
    store's usual kind (issue 9 item 9), the same way fast or slow as a known user's."""
    store = open_store(kind, tmp_path, clock)
    for name, password in USERS.items():
        entry = store.lookup(name)
        assert store.check_password(entry, password, REALM)
        assert not store.check_password(entry, password + "!", REALM)
        assert not store.check_password(None, password, REALM)
        assert store.password_check_is_slow(None, REALM) == store.password_check_is_slow(entry, REALM)
