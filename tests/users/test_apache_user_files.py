"""Apache formats: htpasswd (Basic only, each hash kind, unsupported ones explained) and htdigest (realms)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import bcrypt
import pytest

from authproxy.auth.digest import compute_ha1
from authproxy.auth.errors import UserStoreError
from authproxy.auth.passwords import md5_crypt
from authproxy.auth.store import basic_check_is_slow, check_basic_password
from authproxy.users.htdigest import HtdigestFile
from authproxy.users.htpasswd import HtpasswdFile

REALM = "proxy"


def test_htpasswd_hash_kinds(tmp_path: Path) -> None:
    bcrypt_hash = bcrypt.hashpw(b"b:pw", bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$", 1)
    sha1 = "{SHA}" + base64.b64encode(hashlib.sha1(b"s pw").digest()).decode()
    path = tmp_path / "htpasswd"
    path.write_text(
        "# written by htpasswd\n"
        f"bob:{bcrypt_hash}\n"
        f"  apr:{md5_crypt(b'a:pw', b'xyz')}  \n"
        "\n"
        f"sha:{sha1}\n"
        "des:rqXexS6ZhobKA\n"
        "plain:hunter2\n"
        f"jürgen:{md5_crypt('pässword'.encode(), b'abc')}\n",
        encoding="utf-8",
    )
    store = HtpasswdFile(path)
    assert store.description == f"htpasswd file {path}"
    assert [e.name for e in store] == ["bob", "apr", "sha", "des", "plain", "jürgen"]

    for name, password in [("bob", "b:pw"), ("apr", "a:pw"), ("sha", "s pw"), ("jürgen", "pässword")]:
        entry = store.lookup(name)
        assert entry is not None and entry.ha1 == {} and entry.realm is None
        assert entry.digest_algorithms(REALM) == ()
        assert check_basic_password(entry, password, REALM)
        assert not check_basic_password(entry, password + " ", REALM)
        assert basic_check_is_slow(entry, REALM) == (name == "bob")
        assert store.unsupported_reason(name) is None

    assert store.unsupported_reason("des") == "DES crypt hash"
    assert store.unsupported_reason("plain") == "plain text or unknown format hash"
    assert store.unsupported_reason("nobody") is None
    plain = store.lookup("plain")
    assert plain is not None and not check_basic_password(plain, "hunter2", REALM)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("alice\n", "line 1: expected 'name:hash', found no ':'"),
        (":$apr1$x$aaaaaaaaaaaaaaaaaaaaaa\n", "line 1: empty user name"),
        ("alice:\n", "line 1: user 'alice' has an empty hash"),
        ("a\x01b:hash\n", "line 1: user name contains a control character"),
        ("a:{SHA}x\n\nb:{SHA}y\na:{SHA}z\n", "line 4: user 'a' is already defined on line 1"),
    ],
)
def test_htpasswd_bad_files(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "htpasswd"
    path.write_text(text)
    with pytest.raises(UserStoreError, match=problem):
        HtpasswdFile(path)


def htdigest_line(name: str, realm: str, password: str) -> str:
    return f"{name}:{realm}:{compute_ha1('MD5', name, realm, password)}\n"


def test_htdigest_realm_selection(tmp_path: Path) -> None:
    path = tmp_path / "htdigest"
    path.write_text(
        htdigest_line("alice", REALM, "a:pw")
        + htdigest_line("alice", "other", "other pw")
        + "# comment\n"
        + htdigest_line("bob", "other", "b")
        + htdigest_line("zoë", REALM, "ü:pw").upper().replace("ZOË", "zoë").replace(REALM.upper(), REALM),
        encoding="utf-8",
    )
    store = HtdigestFile(path, REALM)
    assert store.realms() == (REALM, "other")
    assert [e.name for e in store] == ["alice", "zoë"]
    assert store.lookup("bob") is None  # other realm: not served, not logged
    alice = store.lookup("alice")
    assert alice is not None
    assert alice.ha1 == {"MD5": compute_ha1("MD5", "alice", REALM, "a:pw")}
    assert alice.digest_algorithms(REALM) == ("MD5",)
    assert check_basic_password(alice, "a:pw", REALM)
    assert not check_basic_password(alice, "other pw", REALM)
    zoe = store.lookup("zoë")
    assert zoe is not None and check_basic_password(zoe, "ü:pw", REALM)  # upper-case hex is fine

    other = HtdigestFile(path, "other")
    bob = other.lookup("bob")
    assert bob is not None and check_basic_password(bob, "b", "other")

    assert list(HtdigestFile(path, "absent realm")) == []
    with pytest.raises(UserStoreError, match="line 2: user 'alice' is already defined on line 1; choose one"):
        HtdigestFile(path)


def test_htdigest_without_realm_takes_all(tmp_path: Path) -> None:
    path = tmp_path / "htdigest"
    path.write_text(htdigest_line("alice", "a", "pw") + htdigest_line("bob", "b", "pw"))
    store = HtdigestFile(path)
    assert {(e.name, e.realm) for e in store} == {("alice", "a"), ("bob", "b")}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("alice:proxy\n", "line 1: expected 'user:realm:md5hex', found 2 field"),
        (f"alice:pro:xy:{'0' * 32}\n", "line 1: expected 'user:realm:md5hex', found 4 field"),
        (f"alice:proxy:{'g' * 32}\n", "line 1: user 'alice': the third field is not 32 hex digits"),
        (f":proxy:{'0' * 32}\n", "line 1: empty user name"),
        (f"\n\nal\x7fice:proxy:{'0' * 32}\n", "line 3: user name or realm contains a control character"),
        (f"a:proxy:{'0' * 32}\na:proxy:{'1' * 32}\n", "line 2: user 'a' is already defined on line 1$"),
    ],
)
def test_htdigest_bad_files(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "htdigest"
    path.write_text(text)
    with pytest.raises(UserStoreError, match=problem) as caught:
        HtdigestFile(path, REALM)
    assert "0" * 32 not in caught.value.message
