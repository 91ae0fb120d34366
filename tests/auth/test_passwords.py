"""htpasswd hash checks: bcrypt, Apache MD5-crypt (vs openssl and fixed values), {SHA}; the rest refused."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess

import bcrypt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from authproxy.auth.passwords import (
    describe_hash,
    dummy_hash_like,
    hash_shape,
    is_slow_hash,
    is_supported_hash,
    md5_crypt,
    verify_password_hash,
)
from authproxy.auth.store import UserEntry, basic_check_is_slow, check_basic_password, dummy_entry

# Computed once with `openssl passwd -apr1 -salt SALT PASSWORD` (OpenSSL 3.0), so these run without openssl.
APR1_KNOWN = [
    ("password", "$apr1$SALT1234$89g/MHZO8Sp.hzB2omNUT/"),
    ("a", "$apr1$abc$RUt4qVhwNewYFWnPyK2Vf/"),
    ("", "$apr1$xyz$Pix4eE3fQHxJjb6LqtyMK1"),
    ("pass:word with spaces", "$apr1$s4ltS4lt$ucUC.MybPmvSwevwywTcF."),
    ("p" * 40, "$apr1$12345678$sy3NYBWtBhLneiaoEkVmf/"),
    ("pässwörd€", "$apr1$ab$j4aY624KubV8o4zQJ7UlG/"),
    ("ünïcödé pass", "$apr1$Zz9./Qq$dFCsBWwQWS8aKcI//WaVW."),
]
# `openssl passwd -1 -salt saltsalt 'hello world'`
MD5_CRYPT_KNOWN = ("hello world", "$1$saltsalt$Y.W/rxyzbusnDOkxKcE2b/")
# bcrypt.hashpw at cost 4, once.
BCRYPT_KNOWN = ("correct horse:battery", "$2b$04$WSrstDPliYlQUo/5c0Ju4.VWIt2xtWDDxe2e0tOx.U6XPi29IhG42")


@pytest.mark.parametrize(("password", "stored"), APR1_KNOWN)
def test_apr1_known_values(password: str, stored: str) -> None:
    assert describe_hash(stored) == "apr1-md5"
    assert verify_password_hash(password, stored)
    assert not verify_password_hash(password + "x", stored)
    assert not is_slow_hash(stored)


def test_md5_crypt_known_value() -> None:
    password, stored = MD5_CRYPT_KNOWN
    assert describe_hash(stored) == "md5-crypt"
    assert verify_password_hash(password, stored)
    assert not verify_password_hash("hello World", stored)


OPENSSL_CASES = [
    ("SALT1234", "password"),
    ("s", "x"),
    ("12345678", "exactly sixteen!"),
    ("abcdefgh", "seventeen chars!!"),
    ("./AZaz09", "a much longer password of more than thirty-two bytes"),
    ("q1w2e3", "colon:in:the:middle"),
    ("zz", "  leading and trailing spaces  "),
    ("Unicode", "пароль密码"),
    ("toolongsalt", "the salt is cut to eight"),
]


@pytest.mark.parametrize(("salt", "password"), OPENSSL_CASES)
def test_apr1_matches_openssl(salt: str, password: str) -> None:
    # `make test` installs openssl (scripts/install-system-tools); without it this fails rather than skips.
    assert shutil.which("openssl"), "openssl is not installed: run `make test` (as root on Debian) to install it"
    for flag, magic in (("-apr1", b"$apr1$"), ("-1", b"$1$")):
        expected = subprocess.run(
            ["openssl", "passwd", flag, "-salt", salt, password], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert md5_crypt(password.encode(), salt.encode(), magic=magic) == expected
        assert verify_password_hash(password, expected)
        assert not verify_password_hash(password[:-1], expected)


def test_bcrypt_variants() -> None:
    password, stored = BCRYPT_KNOWN
    # Apache's htpasswd -B writes $2y$; $2a$ is older software's; all name the same algorithm for UTF-8 input.
    for prefix in ("$2b$", "$2y$", "$2a$"):
        variant = prefix + stored[4:]
        assert describe_hash(variant) == "bcrypt"
        assert is_slow_hash(variant)
        assert verify_password_hash(password, variant)
        assert not verify_password_hash("correct horse battery", variant)


def test_bcrypt_long_password_truncated_like_apache() -> None:
    password = "ü" * 40  # 80 UTF-8 bytes: bcrypt reads 72, and bcrypt>=5 would raise if we passed them all
    stored = bcrypt.hashpw(password.encode()[:72], bcrypt.gensalt(4)).decode()
    assert verify_password_hash(password, stored)
    assert verify_password_hash(password + "ignored", stored)
    assert not verify_password_hash("ü" * 35, stored)


def test_sha1() -> None:
    stored = "{SHA}" + base64.b64encode(hashlib.sha1(b"secret").digest()).decode()
    assert stored == "{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ="
    assert describe_hash(stored) == "sha1"
    assert verify_password_hash("secret", stored)
    assert not verify_password_hash("Secret", stored)
    assert not is_slow_hash(stored)


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        ("rqXexS6ZhobKA", "DES crypt"),
        ("$5$salt$abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "SHA-256-crypt"),
        ("$6$salt$abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "SHA-512-crypt"),
        ("plain-text-password", "plain text or unknown format"),
        ("{SHA}not base64!", "malformed {SHA} hash"),
        ("{SSHA}abcdefgh", "salted SHA-1 {SSHA}"),
        ("$2y$05$tooshort", "malformed or unknown bcrypt variant"),
        ("$2x$05$" + "a" * 53, "malformed or unknown bcrypt variant"),
        ("$apr1$salt$short", "malformed MD5-crypt hash"),
        ("", "empty hash"),
    ],
)
def test_unsupported(stored: str, reason: str) -> None:
    assert describe_hash(stored) == f"unsupported ({reason})"
    assert not is_supported_hash(stored)
    assert not is_slow_hash(stored)
    assert not verify_password_hash(stored, stored)  # plain text is refused even when it is "the password"
    assert stored == "" or stored not in describe_hash(stored)


@given(st.text(), st.text())
def test_never_raises(password: str, stored: str) -> None:
    assert isinstance(verify_password_hash(password, stored), bool)
    assert isinstance(describe_hash(stored), str)


CRYPT64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@given(st.text(max_size=30), st.text(alphabet=CRYPT64, min_size=1, max_size=8))
def test_md5_crypt_round_trip(password: str, salt: str) -> None:
    stored = md5_crypt(password.encode("utf-8", "surrogatepass"), salt.encode())
    assert verify_password_hash(password, stored)


@pytest.mark.parametrize("stored", [
    bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode(),
    bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=5)).decode().replace("$2b$", "$2y$", 1),
    md5_crypt(b"pw", b"saltsalt"),
    md5_crypt(b"pw", b"abc", magic=b"$1$"),
    "{SHA}" + base64.b64encode(hashlib.sha1(b"pw").digest()).decode(),
    "rqXexS6ZhobKA",
])
def test_a_stand_in_hash_costs_what_the_real_one_costs_and_matches_nothing(stored: str) -> None:
    """Issue 9 item 9: the hash checked for an unknown user has the real one's format and cost factor."""
    shape = hash_shape(stored)
    dummy = dummy_hash_like(shape, bytes(range(32)))
    assert describe_hash(dummy) == describe_hash(stored) or describe_hash(stored).startswith("unsupported")
    assert hash_shape(dummy) == shape
    assert dummy != dummy_hash_like(shape, bytes(range(1, 33))) or shape == "unsupported"  # salted from rand
    for password in ("pw", "", "x" * 80):
        assert not verify_password_hash(password, dummy)


def test_the_stand_in_user_is_of_the_usual_kind() -> None:
    bc = [UserEntry(f"u{i}", password_hash=bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode())
          for i in range(3)]
    apr = UserEntry("apr", password_hash=md5_crypt(b"pw", b"salt"))
    dummy = dummy_entry([*bc, apr], bytes(32))
    assert dummy.password_hash is not None and dummy.password_hash.startswith("$2b$04$")
    assert basic_check_is_slow(dummy, "r") and not check_basic_password(dummy, "pw", "r")
    ha1 = [UserEntry("a", "r", {"MD5": "0" * 32, "SHA-256": "0" * 64}), apr]
    dummy = dummy_entry([*ha1, UserEntry("b", "r", {"MD5": "1" * 32, "SHA-256": "1" * 64})], bytes(range(32)))
    assert dummy.realm == "r" and sorted(dummy.ha1) == ["MD5", "SHA-256"] and dummy.can_basic("r")
    assert not basic_check_is_slow(dummy, "r")
    assert dummy_entry([], bytes(32)) == UserEntry("")
