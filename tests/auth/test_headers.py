"""RFC 9110 section 11 grammar: parse_challenges, parse_credentials, the builders, and the fuzz invariant."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authproxy.auth.errors import AuthHeaderError
from authproxy.auth.headers import (
    MAX_FIELD_LENGTH,
    Challenge,
    Credentials,
    build_auth_params,
    build_challenge,
    build_credentials,
    parse_auth_params,
    parse_challenges,
    parse_credentials,
)

# --- examples from the RFCs -------------------------------------------------------------------------------


def test_rfc7616_challenges_one_per_line() -> None:
    # RFC 7616 section 3.9.1: two WWW-Authenticate lines, SHA-256 first.
    tail = (
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    lines = [
        'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, ' + tail,
        'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=MD5, ' + tail,
    ]
    got = parse_challenges(lines)
    assert [c.param("algorithm") for c in got] == ["SHA-256", "MD5"]
    assert got[0].scheme == "Digest" and got[0].scheme_key == "digest"
    assert got[0].param("QOP") == "auth, auth-int"
    assert got[0].param("realm") == "http-auth@example.org"
    assert got[0].param("missing") is None


def test_several_challenges_on_one_line() -> None:
    # RFC 9110 section 11.6.1 example.
    value = 'Basic realm="simple", Newauth realm="apps", type=1, title="Login to \\"apps\\""'
    got = parse_challenges([value])
    assert got == [
        Challenge("Basic", params=(("realm", "simple"),)),
        Challenge("Newauth", params=(("realm", "apps"), ("type", "1"), ("title", 'Login to "apps"'))),
    ]


def test_token68_and_bare_schemes() -> None:
    got = parse_challenges(["Negotiate, NTLM", "Negotiate abc+/def==, Basic realm=x"])
    assert got == [
        Challenge("Negotiate"),
        Challenge("NTLM"),
        Challenge("Negotiate", token68="abc+/def=="),
        Challenge("Basic", params=(("realm", "x"),)),
    ]


def test_empty_list_elements_and_bws() -> None:
    got = parse_challenges([' , ,Digest  realm = "r" ,, nonce=\t"n" , ', ","])
    assert got == [Challenge("Digest", params=(("realm", "r"), ("nonce", "n")))]


def test_params_continue_across_field_lines() -> None:
    # Field lines combine as a comma-separated list (RFC 9110 section 5.3).
    got = parse_challenges(['Digest realm="r"', 'nonce="n"'])
    assert got == [Challenge("Digest", params=(("realm", "r"), ("nonce", "n")))]


def test_param_names_case_insensitive_and_lowered() -> None:
    c = parse_challenges(['Digest REALM="r", Nonce="n"'])[0]
    assert c.params == (("realm", "r"), ("nonce", "n"))
    assert c.param("Realm") == "r"
    assert Challenge("X", params=(("Foo", "1"),)).params == (("foo", "1"),)


def test_credentials_rfc7617() -> None:
    c = parse_credentials("basic aGVsbG86d29ybGQ=")
    assert c == Credentials("basic", token68="aGVsbG86d29ybGQ=")
    assert c.scheme_key == "basic"


def test_credentials_digest() -> None:
    value = (
        'Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", algorithm=MD5, '
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001, '
        'cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth, '
        'response="8ca523f5e9506fed4657c9700eebdbec", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    c = parse_credentials(value)
    assert c.param("nc") == "00000001"
    assert c.param("response") == "8ca523f5e9506fed4657c9700eebdbec"
    assert parse_credentials(build_credentials(c)) == c


def test_build_quoting_rules() -> None:
    ch = Challenge(
        "Digest",
        params=(
            ("realm", "r"),
            ("qop", "auth, auth-int"),
            ("algorithm", "SHA-256"),
            ("stale", "true"),
            ("userhash", "true"),
            ("charset", "UTF-8"),
            ("nonce", 'a"b\\c'),
        ),
    )
    assert build_challenge(ch) == (
        'Digest realm="r", qop="auth, auth-int", algorithm=SHA-256, stale=true, userhash=true, '
        'charset="UTF-8", nonce="a\\"b\\\\c"'
    )
    cr = Credentials("Digest", params=(("qop", "auth"), ("nc", "00000001"), ("realm", "tok")))
    assert build_credentials(cr) == 'Digest qop=auth, nc=00000001, realm="tok"'
    # A token-valued parameter whose value is not a token falls back to quoting.
    quoted = build_credentials(Credentials("Digest", params=(("algorithm", "a b"),)))
    assert quoted == 'Digest algorithm="a b"'
    assert build_credentials(Credentials("Basic", token68="QQ==")) == "Basic QQ=="
    assert build_challenge(Challenge("Negotiate")) == "Negotiate"


def test_auth_info_round_trip() -> None:
    params = (("qop", "auth"), ("rspauth", "abc"), ("cnonce", "x y"), ("nc", "00000001"))
    value = build_auth_params(params)
    assert value == 'qop=auth, rspauth="abc", cnonce="x y", nc=00000001'
    assert parse_auth_params(value) == params
    with pytest.raises(AuthHeaderError):
        parse_auth_params("a=1, A=2")
    with pytest.raises(AuthHeaderError):
        parse_auth_params("Digest a=1")


# --- malformed input --------------------------------------------------------------------------------------

BAD_CHALLENGES = [
    'Digest realm="r", realm="s"',  # duplicate
    'Digest realm="r", REALM="s"',  # duplicate, other case
    'Digest realm="r',  # unterminated
    'Digest realm="r\\',  # unterminated quoted-pair
    'Digest realm="r" nonce="n"',  # missing comma
    "Digest realm=",  # no value -- token68 "realm=" is fine, so make it ambiguous below
    "Digest realm= , nonce=n",  # no value
    'Digest realm="a\r\nX-Injected: 1"',  # CR LF
    'Digest realm="a\x00"',  # NUL
    'Digest realm="a\x7f"',  # DEL
    'Digest realm="a\x1b"',  # other CTL
    "(bad) realm=x",  # scheme not a token
    "Basic foo bar",  # neither token68 nor param
    'realm="orphan"',  # parameter before any scheme
    "Negotiate abc=, realm=x",  # parameter after a token68
    'Basic"x"',
    "Digest realm=@",
]


@pytest.mark.parametrize("value", BAD_CHALLENGES)
def test_bad_challenges(value: str) -> None:
    if value == "Digest realm=":
        # A lone "realm=" is a legal token68; that is the grammar, not a bug.
        assert parse_challenges([value]) == [Challenge("Digest", token68="realm=")]
        return
    with pytest.raises(AuthHeaderError):
        parse_challenges([value])


@pytest.mark.parametrize("value", ["", " , ", "Basic abc, Digest x=y", "Basic a, b"])
def test_credentials_must_be_exactly_one(value: str) -> None:
    with pytest.raises(AuthHeaderError):
        parse_credentials(value)


def test_length_cap() -> None:
    long_value = 'Digest realm="' + "a" * MAX_FIELD_LENGTH + '"'
    with pytest.raises(AuthHeaderError):
        parse_challenges([long_value])
    with pytest.raises(AuthHeaderError):
        parse_credentials("Basic " + "A" * MAX_FIELD_LENGTH)


def test_dataclass_validation() -> None:
    with pytest.raises(AuthHeaderError):
        Challenge("Basic", token68="abc", params=(("realm", "x"),))
    with pytest.raises(AuthHeaderError):
        Challenge("Bad Scheme")
    with pytest.raises(AuthHeaderError):
        Credentials("Basic", token68="a b")
    with pytest.raises(AuthHeaderError):
        Credentials("Digest", params=(("a", "1"), ("A", "2")))
    with pytest.raises(AuthHeaderError):
        Credentials("Digest", params=(("a", "x\ny"),))
    with pytest.raises(AuthHeaderError):
        Credentials("Digest", params=(("bad name", "x"),))


def test_challenge_and_credentials_are_distinct_types() -> None:
    challenge: object = Challenge("Basic")  # as object: the comparison is the point, not a typing slip
    assert challenge != Credentials("Basic")


# --- property tests ---------------------------------------------------------------------------------------

TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(alphabet=TCHARS, min_size=1, max_size=12)
names = tokens.map(str.lower)
token68s = st.builds(
    lambda body, pad: body + "=" * pad,
    st.text(alphabet="abcXYZ019-._~+/", min_size=1, max_size=20),
    st.integers(0, 2),
)
# Any character but a CTL (HTAB allowed), including obs-text and beyond latin-1.
values = st.text(
    alphabet=st.characters(
        blacklist_categories=["Cs"], blacklist_characters=[*[chr(i) for i in range(0x20) if i != 9], "\x7f"]
    ),
    max_size=30,
)


@st.composite
def param_lists(draw: st.DrawFn) -> tuple[tuple[str, str], ...]:
    keys = draw(st.lists(names, unique=True, max_size=6))
    return tuple((k, draw(values)) for k in keys)


def items(cls: type[Challenge] | type[Credentials]) -> st.SearchStrategy[Challenge | Credentials]:
    return st.one_of(
        st.builds(cls, tokens),
        st.builds(lambda s, t: cls(s, token68=t), tokens, token68s),
        st.builds(lambda s, p: cls(s, params=p), tokens, param_lists()),
    )


@given(st.lists(items(Challenge), max_size=5))
def test_challenges_round_trip(challenges: list[Challenge]) -> None:
    assert parse_challenges([", ".join(build_challenge(c) for c in challenges)]) == challenges
    assert parse_challenges([build_challenge(c) for c in challenges]) == challenges


@given(items(Credentials))
def test_credentials_round_trip(creds: Credentials) -> None:
    assert parse_credentials(build_credentials(creds)) == creds


@given(param_lists())
def test_auth_params_round_trip(params: tuple[tuple[str, str], ...]) -> None:
    assert parse_auth_params(build_auth_params(params)) == params


@given(st.lists(st.text(max_size=80), max_size=3))
def test_any_challenge_input_parses_or_raises_our_error(lines: list[str]) -> None:
    with contextlib.suppress(AuthHeaderError):
        parse_challenges(lines)


GRAMMAR_ALPHABET = st.sampled_from([*'Digest realm="\\, =\t\r\nabc+/é\x00', "Basic", "nonce", '"'])


@given(st.text(max_size=80) | st.lists(GRAMMAR_ALPHABET, max_size=30).map("".join))
def test_any_credentials_input_parses_or_raises_our_error(value: str) -> None:
    for parse in (parse_credentials, parse_auth_params):
        with contextlib.suppress(AuthHeaderError):
            parse(value)


# The fast path of parse_credentials must agree with the general parser on every input.
_GRAMMAR_ALPHABET = st.sampled_from([*'aZ09=",\\ \t/.-_~+!é\x00\x7f', "Digest ", "Basic ", "username=",
                                     '"x y"', ", ", "=="])


def _outcome(parse: Callable[[str], object], value: str) -> object:
    try:
        return parse(value)
    except AuthHeaderError:
        return "error"


@given(st.lists(_GRAMMAR_ALPHABET, max_size=30).map("".join))
def test_fast_credentials_path_agrees_with_the_general_parser(value: str) -> None:
    from authproxy.auth.headers import _parse_credentials_general

    assert _outcome(parse_credentials, value) == _outcome(_parse_credentials_general, value)


@given(st.lists(st.tuples(st.from_regex(r"[a-z][a-z0-9*-]{0,8}", fullmatch=True),
                          st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=12)),
                max_size=6))
def test_fast_path_agrees_on_well_formed_credentials(params: list[tuple[str, str]]) -> None:
    from authproxy.auth.headers import _parse_credentials_general

    value = "Digest " + ", ".join(f'{name}="{text}"' if i % 2 else f"{name}={text or 'x'}"
                                  for i, (name, text) in enumerate(params))
    assert _outcome(parse_credentials, value) == _outcome(_parse_credentials_general, value)
