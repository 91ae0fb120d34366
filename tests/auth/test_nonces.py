"""Stateless HMAC nonces: issue/check, expiry, forgery, realm and key separation, and the fuzz invariant."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authproxy.auth.errors import AuthHeaderError, ConfigError
from authproxy.auth.headers import quote_string
from authproxy.auth.nonces import NonceIssuer, NonceStatus

KEY = b"k" * 32
RAND = bytes(range(16))
T0 = 1_700_000_000.25


def issuer(key: bytes = KEY, realm: str = "proxy", lifetime: float = 300.0) -> NonceIssuer:
    return NonceIssuer(key, realm, lifetime)


def test_valid_then_expired() -> None:
    iss = issuer()
    nonce = iss.issue(T0, RAND)
    assert iss.check(nonce, T0) is NonceStatus.VALID
    assert iss.check(nonce, T0 + 299.9) is NonceStatus.VALID
    assert iss.check(nonce, T0 + 300.0) is NonceStatus.EXPIRED
    assert iss.check(nonce, T0 + 10_000) is NonceStatus.EXPIRED
    assert iss.issued_at(nonce) == T0
    assert iss.expires_at(nonce) == T0 + 300.0


def test_format() -> None:
    nonce = issuer().issue(T0, RAND)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", nonce)
    assert len(nonce) >= 40
    assert quote_string(nonce) == f'"{nonce}"'  # nothing to escape


def test_randomness_and_time_make_distinct_nonces() -> None:
    iss = issuer()
    assert iss.issue(T0, RAND) != iss.issue(T0, bytes(16))
    assert iss.issue(T0, RAND) != iss.issue(T0 + 1, RAND)
    assert iss.issue(T0, RAND) == iss.issue(T0, RAND + b"extra")  # only 16 bytes are used


def test_future_beyond_skew_is_invalid() -> None:
    iss = issuer()
    nonce = iss.issue(T0 + 60, RAND)
    assert iss.check(nonce, T0) is NonceStatus.INVALID
    assert iss.check(iss.issue(T0 + 4, RAND), T0) is NonceStatus.VALID


def test_other_realm_or_key_is_invalid() -> None:
    nonce = issuer().issue(T0, RAND)
    assert issuer(realm="other").check(nonce, T0) is NonceStatus.INVALID
    assert issuer(key=b"x" * 32).check(nonce, T0) is NonceStatus.INVALID


def test_every_single_bit_flip_is_invalid() -> None:
    iss = issuer()
    nonce = iss.issue(T0, RAND)
    raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
    for i in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[i // 8] ^= 1 << (i % 8)
        forged = base64.urlsafe_b64encode(bytes(flipped)).rstrip(b"=").decode()
        # Even an expired-looking forgery is INVALID, never EXPIRED (no stale=true for forgeries).
        assert iss.check(forged, T0 + 10_000) is NonceStatus.INVALID


@pytest.mark.parametrize("bad", ["", "abc", "!" * 55, "A" * 55, "A" * 56, "A" * 54])
def test_malformed_is_invalid(bad: str) -> None:
    iss = issuer()
    assert iss.check(bad, T0) is NonceStatus.INVALID
    with pytest.raises(AuthHeaderError):
        iss.issued_at(bad)
    with pytest.raises(AuthHeaderError):
        iss.expires_at(bad)


def test_opaque_is_stable_and_keyed() -> None:
    assert issuer().opaque == issuer().opaque
    assert issuer().opaque != issuer(key=b"x" * 32).opaque
    assert issuer().opaque != issuer(realm="other").opaque
    assert re.fullmatch(r"[A-Za-z0-9_-]+", issuer().opaque)


def test_bad_configuration() -> None:
    with pytest.raises(ConfigError, match="key"):
        NonceIssuer(b"short", "r", 300)
    with pytest.raises(ConfigError, match="nonce_lifetime"):
        NonceIssuer(KEY, "r", 0)
    with pytest.raises(ConfigError, match="nonce_lifetime"):
        NonceIssuer(KEY, "r", float("nan"))
    with pytest.raises(ValueError):
        issuer().issue(T0, b"short")
    with pytest.raises(ValueError):
        issuer().issue(float("inf"), RAND)


@given(st.floats(min_value=0, max_value=4e9), st.binary(min_size=16, max_size=16))
def test_issue_check_round_trip(now: float, rand: bytes) -> None:
    iss = issuer()
    nonce = iss.issue(now, rand)
    assert iss.check(nonce, now) is NonceStatus.VALID
    assert iss.issued_at(nonce) == now


@given(st.text(max_size=80) | st.text(alphabet="AZaz09-_", min_size=55, max_size=55))
def test_any_string_checks_to_invalid(s: str) -> None:
    assert issuer().check(s, T0) is NonceStatus.INVALID
