"""The kind of user store goes by the configured value's form, never by what a file holds (issue 8 part 2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from authproxy.auth.errors import ConfigError
from authproxy.cli import main
from authproxy.config import Config
from authproxy.users import NativeUserFile, open_user_store
from authproxy.users.location import parse_store_location
from authproxy.users.native import add_user


@pytest.mark.parametrize("value", ["authproxy.users", "/etc/authproxy/users", "./users:2024", "users file"])
def test_a_path_is_a_users_file(value: str) -> None:
    location = parse_store_location(value)
    assert (location.kind, location.path) == ("file", value)


@pytest.mark.parametrize(("value", "words"), [
    ("ldap://dir.example.org/ou=people", "ldap:// (an LDAP directory) is not supported yet"),
    ("LDAPS://dir.example.org", "ldaps:// (an LDAP directory) is not supported yet"),
    ("helper:/usr/lib/squid/basic_ncsa_auth", "helper: (a helper process (Squid's helper protocol)) is not supported"),
    ("redis://127.0.0.1", "redis:// is not a kind of user store"),
    ("file:///etc/users", "file:// is not a kind of user store"),
    ("", "must name a users file"),
])
def test_other_forms_are_refused_by_name(value: str, words: str) -> None:
    with pytest.raises(ConfigError, match=r"^users: ") as caught:
        parse_store_location(value)
    assert words in caught.value.message
    with pytest.raises(ConfigError, match=r"^users: "):
        Config(users=value)
    with pytest.raises(ConfigError, match=r"^users: "):
        open_user_store(value, "r")


def test_the_form_decides_even_when_a_file_of_that_name_exists(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    add_user(tmp_path / "helper:x", "alice", "pw", "r")  # a valid users file, named like a helper
    with pytest.raises(ConfigError, match="not supported yet"):
        open_user_store("helper:x", "r")
    assert isinstance(open_user_store("./helper:x", "r"), NativeUserFile)  # spelled as a path, it is one


def test_serve_refuses_a_reserved_form_before_creating_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["serve", "--users", "helper:auth", "--listen", "127.0.0.1:0"]) == 2
    assert "users: helper: (a helper process" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
