"""`authproxy users add|remove|list|passwd`, driven through the argparse glue with stdin faked."""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from authproxy.auth.store import check_basic_password
from authproxy.users.commands import add_users_parser, run_users_command
from authproxy.users.native import NativeUserFile, list_users

from user_files import htdigest_text, htpasswd_text


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="authproxy")
    add_users_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


class TtyInput(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(monkeypatch: pytest.MonkeyPatch, stdin: str | io.StringIO, *argv: str) -> int:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin) if isinstance(stdin, str) else stdin)
    return run_users_command(parse(*argv))


def check(path: Path, name: str, password: str, realm: str = "authproxy") -> bool:
    entry = NativeUserFile(path).lookup(name)
    return entry is not None and check_basic_password(entry, password, realm)


@pytest.fixture
def users(tmp_path: Path) -> Path:
    return tmp_path / "authproxy.users"


def test_defaults() -> None:
    args = parse("users", "add", "alice")
    assert (args.users, args.realm, args.password_stdin) == ("./authproxy.users", "authproxy", False)
    assert parse("users", "list").users_command == "list"


def test_add_from_stdin_keeps_spaces_and_colons(
    monkeypatch: pytest.MonkeyPatch, users: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    password = "  se:cr et  "
    assert run(monkeypatch, password + "\nignored second line\n",
               "users", "add", "alice", "--users", str(users), "--password-stdin") == 0
    out, err = capsys.readouterr()
    assert "added user 'alice'" in out and err == ""
    assert password not in out
    assert check(users, "alice", password)


def test_add_crlf_and_no_final_newline(monkeypatch: pytest.MonkeyPatch, users: Path) -> None:
    assert run(monkeypatch, "pw1\r\n", "users", "add", "a", "--users", str(users), "--password-stdin") == 0
    assert run(monkeypatch, "pw2", "users", "add", "b", "--users", str(users), "--password-stdin") == 0
    assert check(users, "a", "pw1") and check(users, "b", "pw2")


def test_add_non_ascii_with_realm(monkeypatch: pytest.MonkeyPatch, users: Path) -> None:
    argv = ("users", "add", "Ünïcødé 名前", "--users", str(users), "--realm", "Корпус", "--password-stdin")
    assert run(monkeypatch, "pässwörd:€\n", *argv) == 0
    assert check(users, "Ünïcødé 名前", "pässwörd:€", "Корпус")


def test_add_existing_user_fails(
    monkeypatch: pytest.MonkeyPatch, users: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ("users", "add", "alice", "--users", str(users), "--password-stdin")
    assert run(monkeypatch, "first\n", *argv) == 0
    assert run(monkeypatch, "second\n", *argv) == 1
    err = capsys.readouterr().err
    assert "'alice' already exists" in err and "passwd" in err and "second" not in err
    assert check(users, "alice", "first")


@pytest.mark.parametrize(
    ("stdin", "problem"),
    [("", "standard input is empty"), ("\n", "empty password"), ("a\x07b\n", "control characters")],
)
def test_add_bad_stdin(
    monkeypatch: pytest.MonkeyPatch, users: Path, capsys: pytest.CaptureFixture[str], stdin: str, problem: str
) -> None:
    assert run(monkeypatch, stdin, "users", "add", "alice", "--users", str(users), "--password-stdin") == 1
    assert problem in capsys.readouterr().err
    assert not users.exists()


def test_add_bad_name(
    monkeypatch: pytest.MonkeyPatch, users: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(monkeypatch, "pw\n", "users", "add", "a:b", "--users", str(users), "--password-stdin") == 1
    assert "cannot contain ':'" in capsys.readouterr().err


def prompts(monkeypatch: pytest.MonkeyPatch, answers: list[str]) -> list[str]:
    asked: list[str] = []
    replies: Iterator[str] = iter(answers)

    def fake_getpass(prompt: str = "Password: ", stream: object = None) -> str:
        asked.append(prompt)
        return next(replies)

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    return asked


def test_add_prompts_twice_on_a_tty(monkeypatch: pytest.MonkeyPatch, users: Path) -> None:
    asked = prompts(monkeypatch, ["tty pw", "tty pw"])
    assert run(monkeypatch, TtyInput(), "users", "add", "alice", "--users", str(users)) == 0
    assert len(asked) == 2
    assert check(users, "alice", "tty pw")


def test_add_prompt_mismatch(
    monkeypatch: pytest.MonkeyPatch, users: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts(monkeypatch, ["one", "two"])
    assert run(monkeypatch, TtyInput(), "users", "add", "alice", "--users", str(users)) == 1
    err = capsys.readouterr().err
    assert "differ" in err and "one" not in err
    assert not users.exists()


def test_add_without_tty_or_stdin_flag(
    monkeypatch: pytest.MonkeyPatch, users: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asked = prompts(monkeypatch, [])
    assert run(monkeypatch, "pw\n", "users", "add", "alice", "--users", str(users)) == 1
    assert "--password-stdin" in capsys.readouterr().err
    assert asked == []


def test_passwd_and_remove(
    monkeypatch: pytest.MonkeyPatch, users: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ("--users", str(users))
    assert run(monkeypatch, "old\n", "users", "add", "alice", *base, "--password-stdin") == 0
    assert run(monkeypatch, "new:pw\n", "users", "passwd", "alice", *base, "--password-stdin") == 0
    assert check(users, "alice", "new:pw") and not check(users, "alice", "old")
    assert run(monkeypatch, "x\n", "users", "passwd", "bob", *base, "--password-stdin") == 1
    assert "no user 'bob'" in capsys.readouterr().err

    assert run(monkeypatch, "", "users", "remove", "alice", *base) == 0
    assert "removed user 'alice'" in capsys.readouterr().out
    assert list_users(users) == []
    assert run(monkeypatch, "", "users", "remove", "alice", *base) == 1
    assert "no user 'alice'" in capsys.readouterr().err


def test_remove_or_passwd_on_missing_file(
    monkeypatch: pytest.MonkeyPatch, users: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(monkeypatch, "", "users", "remove", "alice", "--users", str(users)) == 1
    assert "no such file" in capsys.readouterr().err
    argv = ("users", "passwd", "alice", "--users", str(users), "--password-stdin")
    assert run(monkeypatch, "pw\n", *argv) == 1
    assert "no such file" in capsys.readouterr().err
    assert not users.exists()


def test_list(monkeypatch: pytest.MonkeyPatch, users: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("alice", "zoë"):
        assert run(monkeypatch, "pw\n", "users", "add", name, "--users", str(users), "--password-stdin") == 0
    capsys.readouterr()
    assert run(monkeypatch, "", "users", "list", "--users", str(users)) == 0
    out = capsys.readouterr().out
    assert f"authproxy users file {users}: 2 user(s)" in out
    assert "alice: Basic and Digest SHA-512-256, SHA-256, MD5 (realm 'authproxy')" in out
    assert "zoë: Basic and Digest" in out


def test_list_missing_file(
    monkeypatch: pytest.MonkeyPatch, users: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(monkeypatch, "", "users", "list", "--users", str(users)) == 1
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kind", "original"),
    [("htpasswd", htpasswd_text({"alice": "pw"})), ("htdigest", htdigest_text({"alice": "pw"}, "authproxy"))],
)
def test_apache_files_are_read_only(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    original: str,
) -> None:
    path = tmp_path / kind
    path.write_text(original)
    for argv in (
        ("add", "bob", "--password-stdin"),
        ("passwd", "alice", "--password-stdin"),
        ("remove", "alice"),
    ):
        assert run(monkeypatch, "pw\n", "users", *argv, "--users", str(path)) == 1
        assert f"use Apache's {kind} tool" in capsys.readouterr().err
    assert path.read_text() == original
    # Reading is fine.
    assert run(monkeypatch, "", "users", "list", "--users", str(path)) == 0
    assert "alice: " in capsys.readouterr().out


def test_list_htdigest_mentions_other_realms(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "htdigest"
    path.write_text(htdigest_text({"alice": "pw"}, "authproxy") + htdigest_text({"bob": "pw"}, "intranet"))
    assert run(monkeypatch, "", "users", "list", "--users", str(path)) == 0
    out = capsys.readouterr().out
    assert "alice: Basic and Digest MD5 (realm 'authproxy')" in out
    assert "bob" not in out and "'intranet'" in out
