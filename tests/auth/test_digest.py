"""RFC 7616 Digest: every published vector, the -sess/auth-int/userhash/rspauth rules, RFC 8187 ext-values,
and DigestChallenge / DigestCredentials validation with round-trip and fuzz properties."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authproxy.auth.digest import (
    ALGORITHMS,
    DigestChallenge,
    DigestCredentials,
    compute_ha1,
    compute_userhash,
    decode_ext_value,
    encode_ext_value,
    get_algorithm,
    request_digest,
    response_auth,
    session_ha1,
)
from authproxy.auth.errors import AuthHeaderError
from authproxy.auth.headers import (
    Challenge,
    Credentials,
    build_challenge,
    build_credentials,
    parse_challenges,
    parse_credentials,
)

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "vectors" / "digest_vectors.json").read_text(encoding="utf-8")
)


def _alg(v: dict[str, Any]) -> Any:
    alg = get_algorithm(v["algorithm"])
    assert alg is not None
    return alg


def _body_hash(v: dict[str, Any]) -> str | None:
    if v.get("h_entity_body") is not None:
        return str(v["h_entity_body"])
    if v.get("entity_body") is not None:
        return str(_alg(v).h(v["entity_body"]))
    return None


@pytest.mark.parametrize("v", VECTORS, ids=[v["id"] for v in VECTORS])
def test_vector_response(v: dict[str, Any]) -> None:
    alg = _alg(v)
    ha1 = compute_ha1(v["algorithm"], v["username"], v["realm"], v["password"])
    if "expected_ha1" in v:
        got = session_ha1(alg, ha1, v["nonce"], v["cnonce"]) if alg.sess else ha1
        assert got == v["expected_ha1"]
    response = request_digest(
        alg,
        ha1=ha1,
        nonce=v["nonce"],
        nc=v["nc"],
        cnonce=v["cnonce"],
        qop=v["qop"],
        method=v["method"],
        uri=v["uri"],
        body_hash=_body_hash(v),
    )
    assert response == v["expected_response"]
    if "expected_rspauth" in v:
        rspauth = response_auth(
            alg, ha1=ha1, nonce=v["nonce"], nc=v["nc"], cnonce=v["cnonce"], qop=v["qop"], uri=v["uri"]
        )
        assert rspauth == v["expected_rspauth"]
    if "expected_username_hash" in v:
        assert compute_userhash(alg, v["username"], v["realm"]) == v["expected_username_hash"]


@pytest.mark.parametrize("v", [v for v in VECTORS if v["qop"]], ids=lambda v: str(v["id"]))
def test_vector_credentials_round_trip(v: dict[str, Any]) -> None:
    alg = _alg(v)
    username = compute_userhash(alg, v["username"], v["realm"]) if v["userhash"] else v["username"]
    creds = DigestCredentials(
        username=username,
        userhash=v["userhash"],
        realm=v["realm"],
        nonce=v["nonce"],
        uri=v["uri"],
        response=v["expected_response"],
        algorithm=alg,
        cnonce=v["cnonce"],
        nc=v["nc"],
        qop=v["qop"],
        opaque=v["opaque"],
    )
    wire = build_credentials(creds.to_credentials())
    assert DigestCredentials.from_credentials(parse_credentials(wire)) == creds


def test_rfc7616_3_9_1_wire_credentials() -> None:
    wire = (
        'Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", '
        'algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001, '
        'cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth, '
        'response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    creds = DigestCredentials.from_credentials(parse_credentials(wire))
    assert creds.username == "Mufasa"
    assert creds.algorithm is ALGORITHMS["SHA-256"]
    assert creds.nc == "00000001" and creds.nc_value == 1
    ha1 = compute_ha1("SHA-256", "Mufasa", creds.realm, "Circle of Life")
    expected = request_digest(
        creds.algorithm,
        ha1=ha1,
        nonce=creds.nonce,
        nc=creds.nc,
        cnonce=creds.cnonce,
        qop=creds.qop,
        method="GET",
        uri=creds.uri,
    )
    assert expected == creds.response
    # Built back in the RFC's own order and quoting.
    assert build_credentials(creds.to_credentials()) == wire


def test_rfc7616_3_9_2_username_star_and_userhash() -> None:
    star = DigestCredentials.from_credentials(
        parse_credentials(
            'Digest username*=UTF-8\'\'J%C3%A4s%C3%B8n%20Doe, realm="api@example.org", uri="/doe.json", '
            'algorithm=SHA-512-256, nonce="n", nc=00000001, cnonce="c", qop=auth, '
            'response="3798d4131c277846293534c3edc11bd8a5e4cdcbff78b05db9d95eeb1cec68a5"'
        )
    )
    assert star.username == "Jäsøn Doe" and not star.userhash
    assert build_credentials(star.to_credentials()).startswith(
        "Digest username*=UTF-8''J%C3%A4s%C3%B8n%20Doe,"
    )
    hashed = DigestCredentials.from_credentials(
        parse_credentials(
            'Digest username="793263caabb707a56211940d90411ea4a575adeccb7e360aeb624ed06ece9b0b", '
            'realm="api@example.org", uri="/doe.json", algorithm=SHA-512-256, nonce="n", nc=00000001, '
            'cnonce="c", qop=auth, userhash=true, '
            'response="3798d4131c277846293534c3edc11bd8a5e4cdcbff78b05db9d95eeb1cec68a5"'
        )
    )
    assert hashed.userhash
    assert hashed.username == compute_userhash(hashed.algorithm, "Jäsøn Doe", "api@example.org")


def test_challenge_round_trip_rfc7616() -> None:
    wire = (
        'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    dc = DigestChallenge.from_challenge(parse_challenges([wire])[0])
    assert dc == DigestChallenge(
        realm="http-auth@example.org",
        nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
        algorithm="SHA-256",
        qop=("auth", "auth-int"),
    )
    assert build_challenge(dc.to_challenge()) == wire


def test_challenge_details() -> None:
    c = parse_challenges(
        [
            'digest realm="r", nonce="n", algorithm=sha-256-SESS, stale=TRUE, userhash=true, '
            'charset=utf-8, qop="auth,,auth-int , auth-conf"'
        ]
    )[0]
    dc = DigestChallenge.from_challenge(c)
    assert dc is not None
    assert dc.algorithm == "SHA-256-sess" and dc.alg.sess
    assert dc.stale and dc.userhash and dc.charset_utf8
    assert dc.qop == ("auth", "auth-int", "auth-conf")
    # No algorithm means MD5 (section 3.3); stale anything-but-true is false.
    plain = DigestChallenge.from_challenge(
        Challenge("Digest", params=(("realm", "r"), ("nonce", "n"), ("stale", "maybe")))
    )
    assert plain == DigestChallenge("r", "n")
    # An unknown algorithm is skipped, not an error.
    assert (
        DigestChallenge.from_challenge(
            Challenge("Digest", params=(("realm", "r"), ("nonce", "n"), ("algorithm", "SHA3-256")))
        )
        is None
    )
    rebuilt = DigestChallenge.from_challenge(
        DigestChallenge("r", "n", stale=True, userhash=True, charset_utf8=True).to_challenge()
    )
    assert rebuilt == DigestChallenge("r", "n", stale=True, userhash=True, charset_utf8=True)


@pytest.mark.parametrize(
    "challenge",
    [
        Challenge("Digest", params=(("nonce", "n"),)),
        Challenge("Digest", params=(("realm", "r"),)),
        Challenge("Basic", params=(("realm", "r"), ("nonce", "n"))),
        Challenge("Digest", token68="abc"),
        Challenge("Digest", params=(("realm", "r"), ("nonce", "n"), ("qop", "auth, a b"))),
    ],
)
def test_bad_challenges(challenge: Challenge) -> None:
    with pytest.raises(AuthHeaderError):
        DigestChallenge.from_challenge(challenge)


GOOD = {
    "username": "u",
    "realm": "r",
    "nonce": "n",
    "uri": "/",
    "response": "0" * 32,
    "qop": "auth",
    "nc": "00000001",
    "cnonce": "c",
}


def _creds(**changes: str | None) -> Credentials:
    params = dict(GOOD)
    for k, v in changes.items():
        if v is None:
            params.pop(k, None)
        else:
            params[k] = v
    return Credentials("Digest", params=tuple(params.items()))


def test_good_minimal_credentials() -> None:
    dc = DigestCredentials.from_credentials(_creds())
    assert dc.algorithm is ALGORITHMS["MD5"]
    assert dc.qop == "auth"
    assert DigestCredentials.from_credentials(_creds(response="A" * 32)).response == "a" * 32
    assert DigestCredentials.from_credentials(_creds(qop=None, nc=None, cnonce=None)).qop is None


@pytest.mark.parametrize(
    "changes",
    [
        {"username": None},
        {"realm": None},
        {"nonce": None},
        {"uri": None},
        {"response": None},
        {"algorithm": "SHA3-256"},
        {"qop": "auth-conf"},
        {"cnonce": None},
        {"nc": None},
        {"qop": None},  # cnonce and nc without qop (Squid PR#1906)
        {"qop": None, "nc": None},
        {"qop": None, "cnonce": None},
        {"qop": None, "nc": None, "cnonce": None, "algorithm": "MD5-sess"},
        {"nc": "1"},
        {"nc": "000000001"},
        {"nc": "0000000g"},
        {"nc": "+0000001"},
        {"response": "0" * 31},
        {"response": "0" * 64},  # right length for SHA-256, not MD5
        {"response": "z" * 32},
        {"algorithm": "SHA-256", "response": "0" * 32},
        {"username*": "UTF-8''x"},  # both username and username*
        {"username": None, "username*": "UTF-8''x", "userhash": "true"},
        {"username": None, "username*": "UTF-8''a%0D%0Ab"},  # CRLF after decoding
        {"username": None, "username*": "UTF-8''%FF"},
        {"username": None, "username*": "x"},
        {"userhash": "yes"},
    ],
)
def test_bad_credentials(changes: dict[str, str | None]) -> None:
    with pytest.raises(AuthHeaderError):
        DigestCredentials.from_credentials(_creds(**changes))


def test_not_digest() -> None:
    with pytest.raises(AuthHeaderError):
        DigestCredentials.from_credentials(Credentials("Basic", token68="QQ=="))


def test_ext_value() -> None:
    assert decode_ext_value("UTF-8''J%C3%A4s%C3%B8n%20Doe") == "Jäsøn Doe"
    assert decode_ext_value("utf-8'en'%e2%82%ac%20rates") == "€ rates"
    assert decode_ext_value("iso-8859-1'en'%A3%20rates") == "£ rates"
    assert encode_ext_value("Jäsøn Doe") == "UTF-8''J%C3%A4s%C3%B8n%20Doe"
    for bad in ["J%C3%A4s", "UTF-8'J", "UTF-8''%", "UTF-8''%zz", "UTF-8''a b", "KOI8-R''a", "UTF-8''%C3"]:
        with pytest.raises(AuthHeaderError):
            decode_ext_value(bad)


def test_misuse_raises_value_error() -> None:
    md5_sess = ALGORITHMS["MD5-SESS"]
    md5 = ALGORITHMS["MD5"]
    with pytest.raises(ValueError):
        request_digest(md5_sess, ha1="x", nonce="n", nc=None, cnonce=None, qop=None, method="GET", uri="/")
    with pytest.raises(ValueError):
        request_digest(
            md5, ha1="x", nonce="n", nc="00000001", cnonce="c", qop="auth-int", method="GET", uri="/"
        )
    with pytest.raises(ValueError):
        request_digest(md5, ha1="x", nonce="n", nc=None, cnonce="c", qop="auth", method="GET", uri="/")
    with pytest.raises(ValueError):
        request_digest(md5, ha1="x", nonce="n", nc="1", cnonce="c", qop="bogus", method="GET", uri="/")


# --- properties -------------------------------------------------------------------------------------------

text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)


@given(st.text(max_size=40))
def test_ext_value_round_trip(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return
    assert decode_ext_value(encode_ext_value(s)) == s


@given(st.text(max_size=40))
def test_ext_value_decodes_or_raises_our_error(s: str) -> None:
    with contextlib.suppress(AuthHeaderError):
        decode_ext_value(s)


@st.composite
def digest_credentials(draw: st.DrawFn) -> DigestCredentials:
    alg = draw(st.sampled_from(sorted(ALGORITHMS.values(), key=lambda a: a.name)))
    with_qop = alg.sess or draw(st.booleans())
    userhash = draw(st.booleans())
    hexchars = "0123456789abcdef"
    size = len(alg.h(""))
    return DigestCredentials(
        username=draw(st.text(alphabet=hexchars, min_size=size, max_size=size)) if userhash else draw(text),
        userhash=userhash,
        realm=draw(text),
        nonce=draw(text),
        uri=draw(text),
        response=draw(st.text(alphabet=hexchars, min_size=size, max_size=size)),
        algorithm=alg,
        cnonce=draw(text) if with_qop else None,
        nc=draw(st.text(alphabet=hexchars + "ABCDEF", min_size=8, max_size=8)) if with_qop else None,
        qop=draw(st.sampled_from(["auth", "auth-int"])) if with_qop else None,
        opaque=draw(st.none() | text),
    )


@given(digest_credentials())
def test_digest_credentials_round_trip(dc: DigestCredentials) -> None:
    assert DigestCredentials.from_credentials(parse_credentials(build_credentials(dc.to_credentials()))) == dc


@given(
    st.builds(
        DigestChallenge,
        realm=text,
        nonce=text,
        opaque=st.none() | text,
        algorithm=st.sampled_from(sorted(a.name for a in ALGORITHMS.values())),
        qop=st.lists(st.sampled_from(["auth", "auth-int", "auth-conf"]), unique=True).map(tuple),
        stale=st.booleans(),
        userhash=st.booleans(),
        charset_utf8=st.booleans(),
    )
)
def test_digest_challenge_round_trip(dc: DigestChallenge) -> None:
    assert DigestChallenge.from_challenge(parse_challenges([build_challenge(dc.to_challenge())])[0]) == dc


WORDS = st.sampled_from(
    [
        "Digest ",
        "username=",
        "username*=",
        "realm=",
        "nonce=",
        "uri=",
        "response=",
        "qop=",
        "nc=",
        "cnonce=",
        "algorithm=",
        "userhash=",
        '"u"',
        "auth",
        "auth-int",
        "00000001",
        '"' + "0" * 32 + '"',
        "MD5-sess",
        "SHA-256",
        "true",
        ", ",
        "UTF-8''%C3%A4",
        "%",
        "'",
    ]
)


@given(st.lists(WORDS, max_size=30).map("".join) | st.text(max_size=60))
def test_any_digest_credentials_parse_or_raise_our_error(value: str) -> None:
    with contextlib.suppress(AuthHeaderError):
        DigestCredentials.from_credentials(parse_credentials(value))
    with contextlib.suppress(AuthHeaderError):
        for c in parse_challenges([value]):
            DigestChallenge.from_challenge(c)
