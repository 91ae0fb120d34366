"""authproxy's own users file: the format, the mutations, and that concurrent writers lose nothing."""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.synchronize
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authproxy.auth.digest import BASE_ALGORITHMS, compute_ha1
from authproxy.auth.errors import UserStoreError
from authproxy.auth.store import UserEntry, check_basic_password
from authproxy.users.native import (
    HEADER,
    NativeUserFile,
    NoSuchUserError,
    UserExistsError,
    add_user,
    decode_field,
    encode_field,
    ensure_default_user,
    format_record,
    list_users,
    make_entry,
    parse_record,
    remove_user,
    set_password,
)

from user_files import FakeClock

REALM = "authproxy"


# --- format ----------------------------------------------------------------------------------------------


def test_record_layout() -> None:
    entry = make_entry("alice", "secret", REALM)
    line = format_record(entry)
    name, realm, md5, sha256, sha512_256 = line.split(":")
    assert (name, realm) == ("alice", REALM)
    assert md5 == "md5=" + compute_ha1("MD5", "alice", REALM, "secret")
    assert sha256 == "sha-256=" + compute_ha1("SHA-256", "alice", REALM, "secret")
    assert sha512_256 == "sha-512-256=" + compute_ha1("SHA-512-256", "alice", REALM, "secret")
    assert set(entry.ha1) == set(BASE_ALGORITHMS)


def test_percent_encoding_of_awkward_names_and_realms() -> None:
    entry = make_entry("#50% off zoë", "pw", "realm: with colon\u3000and wide space")
    line = format_record(entry)
    assert line.startswith("%2350%25%20off%20zoë:realm%3A%20with%20colon%E3%80%80and%20wide%20space:")
    assert parse_record(line, "test") == entry


@given(st.text())
def test_field_round_trip(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return  # lone surrogates are not text a file can hold
    encoded = encode_field(text)
    assert ":" not in encoded and "#" not in encoded and not any(ch.isspace() for ch in encoded)
    assert decode_field(encoded) == text


@given(st.text())
def test_decode_field_raises_only_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        decode_field(text)


@given(st.text(max_size=200))
def test_parse_any_line_is_entry_or_user_store_error(line: str) -> None:
    # The parser invariant: any input parses or raises our error, never anything else.
    with contextlib.suppress(UserStoreError):
        parse_record(line, "fuzz")


def test_subset_of_algorithms_and_case(tmp_path: Path) -> None:
    ha1 = compute_ha1("SHA-256", "bob", REALM, "pw").upper()
    path = tmp_path / "users"
    path.write_text(f"{HEADER}\nbob:{REALM}:SHA-256={ha1}\n")
    entry = NativeUserFile(path).lookup("bob")
    assert entry is not None
    assert entry.digest_algorithms(REALM) == ("SHA-256",)
    assert entry.ha1["SHA-256"] == ha1.lower()
    assert check_basic_password(entry, "pw", REALM)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("alice:r:md5=" + "0" * 32 + "\n", r"line 1: not an authproxy users file"),
        ("# authproxy users v2\n", r"line 1: unsupported format version 'v2'"),
        (f"{HEADER}\nalice:r\n", r"line 2: expected 'name:realm:algorithm=HA1...'"),
        (f"{HEADER}\nalice:r:sha-1={'0' * 40}\n", r"line 2: user 'alice': field 3 is not one of"),
        (f"{HEADER}\nalice:r:md5={'0' * 32}:md5={'0' * 32}\n", r"line 2: user 'alice': md5 is given twice"),
        (f"{HEADER}\nalice:r:sha-256={'0' * 32}\n", r"line 2: user 'alice': the sha-256 HA1 must be 64 hex"),
        (f"{HEADER}\nal%3Aice:r:md5={'0' * 32}\n", r"line 2: a user name cannot contain ':'"),
        (f"{HEADER}\nal%0Aice:r:md5={'0' * 32}\n", r"line 2: a user name cannot contain control"),
        (f"{HEADER}\nal%ice:r:md5={'0' * 32}\n", r"line 2: bad percent-encoding"),
        (f"{HEADER}\nal%FFice:r:md5={'0' * 32}\n", r"line 2: bad percent-encoding"),
        (f"{HEADER}\n:r:md5={'0' * 32}\n", r"line 2: empty user name"),
        (f"{HEADER}\na::md5={'0' * 32}\n", r"line 2: empty realm"),
        (
            f"{HEADER}\n\na:r:md5={'0' * 32}\na:s:md5={'1' * 32}\n",
            r"line 4: user 'a' is already defined on line 3",
        ),
    ],
)
def test_bad_files(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "users"
    path.write_text(text)
    with pytest.raises(UserStoreError, match=problem) as caught:
        NativeUserFile(path)
    assert str(path) in caught.value.message
    assert "0" * 32 not in caught.value.message


def test_empty_file_is_an_empty_users_file(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("\n\n")
    assert list(NativeUserFile(path)) == []
    add_user(path, "alice", "pw", REALM)
    assert path.read_text().startswith(HEADER + "\n")


def test_users_in_another_realm(tmp_path: Path) -> None:
    path = tmp_path / "users"
    add_user(path, "alice", "pw", "elsewhere")
    entry = NativeUserFile(path).lookup("alice")
    assert entry is not None
    assert entry.digest_algorithms(REALM) == ()
    assert not entry.can_basic(REALM)
    assert not check_basic_password(entry, "pw", REALM)
    assert check_basic_password(entry, "pw", "elsewhere")


# --- mutations -------------------------------------------------------------------------------------------


def test_add_list_set_remove(tmp_path: Path) -> None:
    path = tmp_path / "users"
    add_user(path, "alice", "a:b c", REALM)
    add_user(path, "Ünïcødé 名前", "pässwörd:€", REALM)
    assert [e.name for e in list_users(path)] == ["alice", "Ünïcødé 名前"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "a:b c" not in path.read_text() and "pässwörd" not in path.read_text()

    with pytest.raises(UserExistsError, match="'alice' already exists"):
        add_user(path, "alice", "other", REALM)

    set_password(path, "alice", "new", "new realm")
    alice = NativeUserFile(path).lookup("alice")
    assert alice is not None and alice.realm == "new realm"
    assert check_basic_password(alice, "new", "new realm")
    with pytest.raises(NoSuchUserError):
        set_password(path, "bob", "pw", REALM)

    remove_user(path, "alice")
    assert [e.name for e in list_users(path)] == ["Ünïcødé 名前"]
    with pytest.raises(NoSuchUserError, match="no user 'alice'"):
        remove_user(path, "alice")
    with pytest.raises(NoSuchUserError, match="no such file"):
        remove_user(tmp_path / "absent", "alice")
    with pytest.raises(UserStoreError, match="no such file"):
        list_users(tmp_path / "absent")


@pytest.mark.parametrize(
    ("name", "realm", "password", "problem"),
    [
        ("al:ice", REALM, "pw", "cannot contain ':'"),
        ("al\x00ice", REALM, "pw", "control characters"),
        ("", REALM, "pw", "empty user name"),
        ("alice", "", "pw", "empty realm"),
        ("alice", REALM, "", "empty password"),
        ("alice", REALM, "new\nline", "control characters"),
    ],
)
def test_add_refuses_bad_values(tmp_path: Path, name: str, realm: str, password: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        add_user(tmp_path / "users", name, password, realm)
    assert not (tmp_path / "users").exists()
    assert password == "" or password not in str(caught.value)


def test_rewrite_keeps_comments_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(f"{HEADER}\n# managed by ops\n{format_record(make_entry('a', 'pw', REALM))}\n\n# end\n")
    path.chmod(0o640)
    add_user(path, "b", "pw", REALM)
    remove_user(path, "a")
    lines = path.read_text().splitlines()
    assert lines[:2] == [HEADER, "# managed by ops"]
    assert "# end" in lines
    assert lines[-1].startswith("b:")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    # Only the file and its lock: no temporary file left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users", "users.lock"]


def test_ensure_default_user(tmp_path: Path) -> None:
    path = tmp_path / "authproxy.users"
    created = ensure_default_user(path, REALM)
    assert created is not None
    name, password = created
    assert name == "admin" and len(password) >= 16
    assert password not in path.read_text()
    entry = NativeUserFile(path).lookup(name)
    assert entry is not None and check_basic_password(entry, password, REALM)
    assert ensure_default_user(path, REALM) is None  # someone is there now
    remove_user(path, name)
    again = ensure_default_user(path, REALM)
    assert again is not None and again[1] != password


def test_ensure_default_user_refuses_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("alice:$apr1$salt$aaaaaaaaaaaaaaaaaaaaaa\n")
    with pytest.raises(UserStoreError, match="not an authproxy users file"):
        ensure_default_user(path, REALM)


def test_store_sees_mutations_on_refresh(tmp_path: Path) -> None:
    path = tmp_path / "users"
    add_user(path, "alice", "pw", REALM)
    clock = FakeClock()
    store = NativeUserFile(path, clock=clock)
    add_user(path, "bob", "pw", REALM)
    clock.advance(0.6)
    store.refresh()
    assert store.lookup("bob") is not None


# --- concurrency -----------------------------------------------------------------------------------------

WRITERS = 8
USERS_PER_WRITER = 20


def _add_many(path: str, writer: int) -> None:
    for i in range(USERS_PER_WRITER):
        add_user(path, f"user-{writer}-{i}", f"pw:{writer}:{i}", REALM)


def _read_until_done(
    path: str, done: multiprocessing.synchronize.Event, result: multiprocessing.Queue[str]
) -> None:
    """Parse the file over and over while writers run; report a torn read or a count that went backwards."""
    seen = 0
    reads = 0
    while not done.is_set() or reads == 0:
        try:
            count = len(list_users(path))
        except UserStoreError as exc:
            if "no such file" in exc.message and seen == 0:
                continue
            result.put(f"torn read: {exc}")
            return
        if count < seen:
            result.put(f"went back from {seen} to {count} users")
            return
        seen = count
        reads += 1
    result.put(f"ok {reads}")


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "users")
    # spawn: fresh interpreters, as separate `authproxy users add` runs would be (and no fork-with-threads).
    ctx = multiprocessing.get_context("spawn")
    done = ctx.Event()
    result: multiprocessing.Queue[str] = ctx.Queue()
    reader = ctx.Process(target=_read_until_done, args=(path, done, result))
    reader.start()
    writers = [ctx.Process(target=_add_many, args=(path, w)) for w in range(WRITERS)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(timeout=60)
        assert p.exitcode == 0
    done.set()
    reader.join(timeout=30)
    outcome = result.get(timeout=5)
    assert outcome.startswith("ok"), outcome

    entries = list_users(path)
    assert len(entries) == WRITERS * USERS_PER_WRITER
    by_name: dict[str, UserEntry] = {e.name: e for e in entries}
    assert check_basic_password(by_name["user-7-19"], "pw:7:19", REALM)
    assert sorted(os.listdir(tmp_path)) == ["users", "users.lock"]
