"""The proxy's auth driver: the verified-Basic cache, bcrypt off the loop, reloads ending cached sign-ins."""

from __future__ import annotations

import time
from pathlib import Path

import bcrypt

from authproxy.auth.basic import encode_basic
from authproxy.auth.verifier import Allow, Reject
from authproxy.config import Config
from authproxy.proxy.authn import Authenticator, PendingPassword
from authproxy.state.memory import MemoryNonceCounterStore
from authproxy.users import open_user_store
from authproxy.users.native import add_user, set_password

TARGET = "http://origin.test/"


def authenticator(users: Path, **options: object) -> Authenticator:
    config = Config(realm="r", users=str(users), **options)  # type: ignore[arg-type]
    return Authenticator(config, open_user_store(users, "r"), MemoryNonceCounterStore())


def basic(user: str, password: str) -> str:
    return "Basic " + encode_basic(user, password)


def test_bcrypt_runs_once_per_credentials(tmp_path: Path) -> None:
    users = tmp_path / "htpasswd"
    users.write_text("bc:" + bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode() + "\n")
    auth = authenticator(users)
    first = auth.start("GET", TARGET, basic("bc", "s3cret"))
    assert isinstance(first, PendingPassword)  # the slow check goes to a thread
    assert auth.resume_password(first, auth.check_slow_password(first)) == Allow("bc", "basic", None)
    assert auth.start("GET", TARGET, basic("bc", "s3cret")) == Allow("bc", "basic", None)  # cached: no bcrypt
    wrong = auth.start("GET", TARGET, basic("bc", "nope"))
    assert isinstance(wrong, PendingPassword)  # a different field is never a cache hit
    assert isinstance(auth.resume_password(wrong, auth.check_slow_password(wrong)), Reject)


def test_a_changed_password_ends_the_cached_sign_in(tmp_path: Path) -> None:
    users = tmp_path / "native"
    add_user(users, "alice", "old-password", "r")
    auth = authenticator(users)
    old = basic("alice", "old-password")
    assert auth.start("GET", TARGET, old) == Allow("alice", "basic", None)
    assert auth.start("GET", TARGET, old) == Allow("alice", "basic", None)
    set_password(users, "alice", "new-password", "r")
    time.sleep(0.6)  # the store looks at the file at most twice a second
    refused = auth.start("GET", TARGET, old)
    assert isinstance(refused, Reject) and refused.outcome == "bad-password"
    assert auth.start("GET", TARGET, basic("alice", "new-password")) == Allow("alice", "basic", None)


def test_ttl_zero_disables_the_cache(tmp_path: Path) -> None:
    users = tmp_path / "htpasswd"
    users.write_text("bc:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode() + "\n")
    auth = authenticator(users, basic_cache_ttl=0.0)
    for _ in range(2):
        step = auth.start("GET", TARGET, basic("bc", "pw"))
        assert isinstance(step, PendingPassword)
        assert auth.resume_password(step, auth.check_slow_password(step)) == Allow("bc", "basic", None)
