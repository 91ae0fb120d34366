"""Format detection by content, and the one-sentence capability summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from authproxy.auth.digest import BASE_ALGORITHMS
from authproxy.auth.errors import UserStoreError
from authproxy.auth.store import UserEntry
from authproxy.users import (
    HtdigestFile,
    HtpasswdFile,
    NativeUserFile,
    describe_capabilities,
    detect_format,
    open_user_store,
)
from authproxy.users.native import make_entry

from user_files import REALM, USERS, htdigest_text, htpasswd_text, native_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (native_text(USERS), NativeUserFile),
        ("\n\n" + native_text(USERS), NativeUserFile),
        ("", NativeUserFile),
        (htdigest_text(USERS), HtdigestFile),
        ("# a comment\n\n" + htdigest_text(USERS), HtdigestFile),
        (htpasswd_text(USERS), HtpasswdFile),
        ("alice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n", HtpasswdFile),
        ("alice:rqXexS6ZhobKA\n", HtpasswdFile),
    ],
)
def test_detection(tmp_path: Path, text: str, expected: type) -> None:
    path = tmp_path / "users"
    path.write_text(text, encoding="utf-8")
    store = open_user_store(path, REALM)
    assert isinstance(store, expected)


def test_htdigest_store_serves_the_given_realm(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(htdigest_text({"a": "1"}, "one") + htdigest_text({"b": "2"}, REALM))
    store = open_user_store(path, REALM)
    assert [e.name for e in store] == ["b"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserStoreError, match=f"users file {tmp_path / 'nope'}: no such file"):
        open_user_store(tmp_path / "nope", REALM)
    with pytest.raises(UserStoreError):
        detect_format(tmp_path / "nope")


def test_detect_format_names(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(htpasswd_text(USERS), encoding="utf-8")
    assert detect_format(path) == "htpasswd"


OFFERED = ("SHA-256", "MD5", "MD5-sess")


@pytest.mark.parametrize(
    ("entry", "sentence"),
    [
        (make_entry("alice", "pw", REALM), f"alice: Basic and Digest SHA-256, MD5 (realm {REALM!r})"),
        (
            UserEntry("carol", REALM, {"MD5": "0" * 32}),
            f"carol: Basic and Digest MD5 (realm {REALM!r})",
        ),
        (
            UserEntry("dave", REALM, {"SHA-512-256": "0" * 64}),
            "dave: Basic only (holds Digest SHA-512-256, which the proxy does not offer)",
        ),
        (
            make_entry("erin", "pw", "elsewhere"),
            f"erin: cannot sign in (the file holds its secrets for realm 'elsewhere'; the proxy serves realm"
            f" {REALM!r})",
        ),
        (
            UserEntry("bob", password_hash="$2y$05$" + "a" * 53),
            "bob: Basic only (bcrypt hash cannot serve Digest)",
        ),
        (
            UserEntry("apr", password_hash="$apr1$abc$RUt4qVhwNewYFWnPyK2Vf/"),
            "apr: Basic only (apr1-md5 hash cannot serve Digest)",
        ),
        (
            UserEntry("des", password_hash="rqXexS6ZhobKA"),
            "des: cannot sign in (DES crypt hash, which authproxy cannot check)",
        ),
        (UserEntry("nobody"), "nobody: cannot sign in (no password or HA1 on record)"),
    ],
)
def test_describe_capabilities(entry: UserEntry, sentence: str) -> None:
    described = describe_capabilities(entry, REALM, OFFERED)
    assert described == sentence
    for secret in (*entry.ha1.values(), entry.password_hash or "\0"):
        assert secret not in described


def test_describe_capabilities_all_algorithms() -> None:
    described = describe_capabilities(make_entry("zoë", "pw", REALM), REALM, BASE_ALGORITHMS)
    assert described == f"zoë: Basic and Digest SHA-512-256, SHA-256, MD5 (realm {REALM!r})"
