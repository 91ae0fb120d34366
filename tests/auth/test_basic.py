"""RFC 7617 Basic: the published vectors, the colon rule, strict decoding, and the fuzz invariant."""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authproxy.auth.basic import MAX_TOKEN68_LENGTH, basic_challenge, decode_basic, encode_basic
from authproxy.auth.errors import AuthHeaderError
from authproxy.auth.headers import build_challenge, parse_credentials

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "vectors" / "basic_vectors.json").read_text(encoding="utf-8")
)


@pytest.mark.parametrize("v", VECTORS, ids=[v["id"] for v in VECTORS])
def test_vectors(v: dict[str, Any]) -> None:
    assert encode_basic(v["user_id"], v["password"]) == v["expected_token68"]
    assert decode_basic(v["expected_token68"]) == (v["user_id"], v["password"])
    if "header" in v:
        creds = parse_credentials(v["header"].split(":", 1)[1].strip())
        assert creds.scheme_key == "basic"
        assert creds.token68 is not None
        assert decode_basic(creds.token68) == (v["user_id"], v["password"])


def test_challenge() -> None:
    assert build_challenge(basic_challenge("foo")) == 'Basic realm="foo", charset="UTF-8"'


def test_password_with_colons() -> None:
    token = encode_basic("alice", "a:b::c:")
    assert decode_basic(token) == ("alice", "a:b::c:")


def test_empty_password() -> None:
    assert decode_basic(encode_basic("alice", "")) == ("alice", "")


def test_non_ascii() -> None:
    assert decode_basic(encode_basic("Jäsøn Doe", "pässwörd€")) == ("Jäsøn Doe", "pässwörd€")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


@pytest.mark.parametrize(
    "token",
    [
        b64(b"nocolon"),
        b64(b"user\r\n:pw"),
        b64(b"user:pw\nX-Injected: 1"),
        b64(b"user:p\x00w"),
        b64(b"user:p\x7fw"),
        b64(b"us\x85er:pw"),  # not UTF-8
        b64("us\x85er:pw".encode()),  # C1 control
        "QWxhZGRpbjpvcGVuIHNlc2FtZQ",  # missing padding
        "QWxhZGRpbjpvcGVuIHNlc2FtZQ==QQ==",  # data after padding
        "QWxh ZGRp",
        "QWxhZGRpbjpvcGVuIHNlc2FtZR==",  # non-zero padding bits
        "@@@@",
        "",
        "A" * (MAX_TOKEN68_LENGTH + 4),
    ],
)
def test_rejected(token: str) -> None:
    with pytest.raises(AuthHeaderError):
        decode_basic(token)


@pytest.mark.parametrize(("user", "password"), [("a:b", "x"), ("a\r", "x"), ("a", "x\n"), ("a", "\x00")])
def test_encode_refuses(user: str, password: str) -> None:
    with pytest.raises(AuthHeaderError):
        encode_basic(user, password)


printable = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")),
    max_size=40,
)


@given(printable.filter(lambda u: ":" not in u), printable)
def test_round_trip(user: str, password: str) -> None:
    assert decode_basic(encode_basic(user, password)) == (user, password)


@given(st.text(max_size=60) | st.binary(max_size=60).map(b64))
def test_any_token_decodes_or_raises_our_error(token: str) -> None:
    with contextlib.suppress(AuthHeaderError):
        decode_basic(token)
