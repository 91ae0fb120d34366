"""SIP messages (authproxy.sip): round trips, compact forms, comma lists, Via/rport, the limits, torture cases in
the style of RFC 4475 (written here, not copied), and the fuzz invariant: any bytes give a message or SipError."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sip_strategies import messages, name_addrs, requests, tokens, vias

from authproxy.sip import addresses as addresses_module
from authproxy.sip import via as via_module
from authproxy.sip.addresses import NameAddr
from authproxy.sip.fields import COMPACT_FORMS, CSeq, SipError, split_list
from authproxy.sip.message import SipRequest, SipResponse
from authproxy.sip.parse import Limits, parse_datagram, parse_stream
from authproxy.sip.via import Via, remember_via

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bKnashds8;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 14\r\n"
    b"\r\n"
    b"v=0\r\no=alice\r\n"
)
RESPONSE_200 = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK1;received=192.0.2.3, "
    b"SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8;rport=5060;received=192.0.2.4\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n"
)
REAL = [INVITE, RESPONSE_200]


# --- round trips -------------------------------------------------------------------------------------------


@given(messages, st.booleans())
def test_round_trip_datagram(message: SipRequest | SipResponse, compact: bool) -> None:
    assert parse_datagram(message.to_bytes(compact=compact)) == message


@given(messages, st.binary(max_size=30))
def test_round_trip_stream(message: SipRequest | SipResponse, after: bytes) -> None:
    wire = message.to_bytes()
    assert parse_stream(b"\r\n" + wire + after) == (message, len(wire) + 2)
    assert parse_stream(wire[: len(wire) - 1]) is None  # one byte short: wait for more


@given(vias())
def test_via_round_trip(via: Via) -> None:
    assert Via.parse(str(via)) == via


@given(name_addrs())
def test_name_addr_round_trip(na: NameAddr) -> None:
    assert NameAddr.parse(str(na)) == na


@given(requests())
def test_typed_views_of_a_parsed_request(request: SipRequest) -> None:
    parsed = parse_datagram(request.to_bytes(compact=True))
    assert isinstance(parsed, SipRequest)
    assert parsed.cseq.method == parsed.method
    assert parsed.from_.tag is not None
    assert len(parsed.vias) >= 1 and all(v.branch for v in parsed.vias)
    assert parsed.content_length == len(parsed.body)


# --- what is read ------------------------------------------------------------------------------------------


def test_real_invite() -> None:
    m = parse_datagram(INVITE)
    assert isinstance(m, SipRequest)
    assert (m.method, m.uri, m.call_id, m.cseq) == (
        "INVITE", "sip:bob@biloxi.example.com", "a84b4c76e66710@pc33.atlanta.example.com", CSeq(314159, "INVITE"))
    assert m.max_forwards == 70 and m.body == b"v=0\r\no=alice\r\n"
    (via,) = m.vias
    assert (via.transport, via.host, via.port, via.branch, via.wants_rport, via.rport) == (
        "UDP", "pc33.atlanta.example.com", 5060, "z9hG4bKnashds8", True, None)
    assert m.from_ == NameAddr("sip:alice@atlanta.example.com", "Alice", (("tag", "1928301774"),))
    assert m.to.tag is None and m.to.display == "Bob"


def test_response_with_two_vias_on_one_line() -> None:
    m = parse_datagram(RESPONSE_200)
    assert isinstance(m, SipResponse) and (m.status, m.reason) == (200, "OK")
    assert [v.host for v in m.vias] == ["proxy.example.com", "pc33.atlanta.example.com"]
    assert m.vias[1].rport == 5060 and m.vias[1].received == "192.0.2.4"


def test_compact_forms_are_expanded() -> None:
    wire = (b"OPTIONS sip:carol@chicago.example.com SIP/2.0\r\n"
            b"v: SIP/2.0/TCP host.example.com;branch=z9hG4bK1\r\n"
            b"f: <sip:a@b.example>;tag=x\r\nt: sip:carol@chicago.example.com\r\ni: 1@h\r\n"
            b"CSeq: 1 OPTIONS\r\nk: path\r\nm: <sip:a@h>\r\ns: hi\r\nc: text/plain\r\ne: gzip\r\nl: 0\r\n\r\n")
    m = parse_datagram(wire)
    assert [name for name, _ in m.headers] == [
        "Via", "From", "To", "Call-ID", "CSeq", "Supported", "Contact", "Subject", "Content-Type",
        "Content-Encoding", "Content-Length"]
    assert m.get("t") == m.get("TO") == "sip:carol@chicago.example.com"
    assert m.to_bytes(compact=True).count(b"\r\nv: ") == 1
    assert parse_datagram(m.to_bytes(compact=True)) == m
    assert {COMPACT_FORMS[c] for c in "cefiklmstv"} == {
        "Content-Type", "Content-Encoding", "From", "Call-ID", "Supported", "Content-Length", "Contact", "Subject",
        "To", "Via"}


def test_comma_lists_split_outside_quotes_and_angles() -> None:
    assert split_list('"Doe, John" <sip:j@h;a=1,2>;q=0.5, <sip:x@y>') == [
        '"Doe, John" <sip:j@h;a=1,2>;q=0.5', "<sip:x@y>"]
    assert split_list(r'"a\",b" <sip:a@b>, sip:c@d') == [r'"a\",b" <sip:a@b>', "sip:c@d"]
    for bad in ('"open, <sip:a@b>', "<sip:a@b, c", "a,,b", ",a"):
        with pytest.raises(SipError):
            split_list(bad)
    m = SipRequest(method="OPTIONS", uri="sip:a@b", headers=(
        ("Contact", '"Doe, John" <sip:j@h>, <sip:x@y>'), ("Contact", "<sip:z@w>"),
        ("Date", "Sat, 13 Nov 2010 23:29:00 GMT"),
        ("Proxy-Authorization", 'Digest username="a", realm="b"')))
    assert m.values("m") == ['"Doe, John" <sip:j@h>', "<sip:x@y>", "<sip:z@w>"]
    assert m.values("Date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]  # not a list field
    # RFC 3261 section 7.3.1: the authentication fields are never split on their commas.
    assert m.values("Proxy-Authorization") == ['Digest username="a", realm="b"']


def test_with_received_and_rport() -> None:
    via = Via.parse("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKa;rport")
    stamped = via.with_received("192.0.2.7", 40000)
    assert str(stamped) == "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKa;rport=40000;received=192.0.2.7"
    same = Via.parse("SIP/2.0/UDP 192.0.2.7;branch=z9hG4bKa")
    assert same.with_received("192.0.2.7", 5060) == same  # section 18.2.1: only when the address differs
    assert Via.parse("SIP/2.0/UDP h;branch=z9hG4bKb").with_received("2001:db8::1", 1).received == "2001:db8::1"


# --- torture cases in the style of RFC 4475 ----------------------------------------------------------------

TORTURE_VALID = [
    # leading CRLFs (section 7.5), folding, whitespace around ':' and '/', odd case in names and transport
    b"\r\n\r\nREGISTER sip:registrar.example.com SIP/2.0\r\n"
    b"via  :   SIP / 2.0 / udp   host.example.com:5060 ;  branch = z9hG4bKx\r\n"
    b"TO : \"Long\r\n   Name\" <sip:u@example.com>\r\nfrom:<sip:u@example.com>;tag=abc\r\n"
    b"call-id:\t x@y\r\ncseq:  9\r\n\tREGISTER\r\nMAX-FORWARDS: 0\r\nX-Unknown-Header: ;;,,\"\r\nl:0\r\n\r\n",
    # a display name with escaped quotes and a comma, IPv6 sent-by and received, an empty Subject
    b"MESSAGE sip:u@[2001:db8::10] SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP [2001:db8::9]:5061;branch=z9hG4bKq;received=2001:db8::99\r\n"
    b"From: \"J \\\"Hacker\\\", Esq.\" <sip:j@h.example>;tag=t\r\nTo: <sip:u@[2001:db8::10]>\r\n"
    b"Call-ID: abc\r\nCSeq: 1 MESSAGE\r\nSubject:\r\nContent-Length: 2\r\n\r\nhi",
    # an extension method, and a response with an empty reason phrase
    b"NEWMETHOD sip:u@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\n"
    b"To: <sip:u@h>\r\nCall-ID: c\r\nCSeq: 2 NEWMETHOD\r\n\r\n",
    b"SIP/2.0 180 \r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:u@h>;tag=2\r\n"
    b"Call-ID: c\r\nCSeq: 2 INVITE\r\nContent-Length: 0\r\n\r\n",
]


def test_torture_valid() -> None:
    first = parse_datagram(TORTURE_VALID[0])
    assert isinstance(first, SipRequest)
    assert first.vias[0] == Via("UDP", "host.example.com", 5060, (("branch", "z9hG4bKx"),))
    assert first.to.display == "Long Name" and first.cseq == CSeq(9, "REGISTER") and first.max_forwards == 0
    second = parse_datagram(TORTURE_VALID[1])
    assert second.from_.display == 'J "Hacker", Esq.'
    assert second.vias[0].received == "2001:db8::99" and second.body == b"hi"
    assert parse_datagram(TORTURE_VALID[2]).body == b""
    third = parse_datagram(TORTURE_VALID[3])
    assert isinstance(third, SipResponse) and third.reason == ""
    for wire in TORTURE_VALID:
        m = parse_datagram(wire)
        assert parse_datagram(m.to_bytes()) == m


def _replace(old: bytes, new: bytes, wire: bytes = INVITE) -> bytes:
    assert old in wire
    return wire.replace(old, new, 1)


TORTURE_INVALID: list[tuple[str, bytes, int]] = [
    ("no Call-ID", _replace(b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n", b""), 400),
    ("no Via", _replace(b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bKnashds8;rport\r\n", b""), 400),
    ("two CSeq", _replace(b"CSeq: 314159 INVITE\r\n", b"CSeq: 314159 INVITE\r\nCSeq: 314160 INVITE\r\n"), 400),
    ("CSeq method mismatch", _replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 ACK"), 400),
    ("CSeq too large", _replace(b"CSeq: 314159", b"CSeq: 4294967296"), 400),
    ("negative Content-Length", _replace(b"Content-Length: 14", b"Content-Length: -1"), 400),
    ("Content-Length beyond the datagram", _replace(b"Content-Length: 14", b"Content-Length: 9999"), 400),
    ("version 7.0", _replace(b"SIP/2.0\r\nVia", b"SIP/7.0\r\nVia"), 505),
    ("garbage version", _replace(b"SIP/2.0\r\nVia", b"HTTP/1.1\r\nVia"), 400),
    ("space in the Request-URI", _replace(b"sip:bob@biloxi.example.com SIP", b"sip:bob@biloxi .example.com SIP"), 400),
    ("Request-URI in angle brackets", _replace(b"sip:bob@biloxi.example.com SIP", b"<sip:bob@biloxi.example.com> SIP"),
     400),
    ("bare LF line ending", _replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\n"), 400),
    ("NUL in a value", _replace(b"Max-Forwards: 70", b"Max-Forwards: 7\x000"), 400),
    ("Max-Forwards 300", _replace(b"Max-Forwards: 70", b"Max-Forwards: 300"), 400),
    ("Max-Forwards in Arabic digits", _replace(b"Max-Forwards: 70", "Max-Forwards: ٧٠".encode()), 400),
    ("unterminated quote in From", _replace(b'"Alice" <sip', b'"Alice <sip'), 400),
    ("Via without sent-by", _replace(b"SIP/2.0/UDP pc33.atlanta.example.com:5060", b"SIP/2.0/UDP"), 400),
    ("Via port out of range", _replace(b"example.com:5060;branch", b"example.com:70000;branch"), 400),
    ("Via parameter twice", _replace(b";rport\r\n", b";branch=z9hG4bKo\r\n"), 400),
    ("rport not a number", _replace(b";rport\r\n", b";rport=abc\r\n"), 400),
    ("received not an address", _replace(b";rport\r\n", b";received=host.example\r\n"), 400),
    ("header without colon", _replace(b"Max-Forwards: 70", b"Max-Forwards 70"), 400),
    ("folding before any field", _replace(b"SIP/2.0\r\nVia", b"SIP/2.0\r\n Via"), 400),
    ("invalid UTF-8", _replace(b"Bob <sip", b"B\xffb <sip"), 400),
    ("status 700", _replace(b"200 OK", b"700 OK", RESPONSE_200), 400),
    ("status 2000", _replace(b"200 OK", b"2000 OK", RESPONSE_200), 400),
    ("no empty line", INVITE.split(b"\r\n\r\n")[0], 400),
]


@pytest.mark.parametrize(("why", "wire", "status"), TORTURE_INVALID, ids=[c[0] for c in TORTURE_INVALID])
def test_torture_invalid(why: str, wire: bytes, status: int) -> None:
    with pytest.raises(SipError) as info:
        parse_datagram(wire)
    assert info.value.status_hint == status
    assert b"biloxi" not in str(info.value).encode()  # messages never echo the input


def test_framing_udp_and_stream() -> None:
    # UDP: bytes beyond Content-Length are dropped (RFC 3261 section 18.3); no Content-Length: the datagram ends it.
    assert parse_datagram(INVITE + b"trailing junk").body == b"v=0\r\no=alice\r\n"
    no_length = _replace(b"Content-Length: 14\r\n", b"")
    assert parse_datagram(no_length).body == b"v=0\r\no=alice\r\n"
    # Stream: Content-Length is required, and a second message follows the first.
    with pytest.raises(SipError, match="required"):
        parse_stream(no_length)
    first = parse_stream(INVITE + RESPONSE_200)
    assert first is not None and first[1] == len(INVITE)
    second = parse_stream((INVITE + RESPONSE_200)[first[1]:])
    assert second is not None and isinstance(second[0], SipResponse)
    assert parse_stream(b"\r\n\r\n") is None  # keep-alive CRLFs only (RFC 5626)


def test_limits() -> None:
    small = Limits(max_message_size=200)
    with pytest.raises(SipError) as info:
        parse_datagram(INVITE + b"x" * 100, small)
    assert info.value.status_hint == 513
    with pytest.raises(SipError) as info:
        parse_stream(b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"y" * 300, small)
    assert info.value.status_hint == 513
    with pytest.raises(SipError) as info:
        parse_stream(_replace(b"Content-Length: 14", b"Content-Length: 100000"))
    assert info.value.status_hint == 413
    many = _replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\n" + b"X-A: b\r\n" * 100)
    with pytest.raises(SipError) as info:
        parse_datagram(many)
    assert info.value.status_hint == 513
    long_line = _replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nX-A: " + b"b" * 9000 + b"\r\n")
    with pytest.raises(SipError) as info:
        parse_datagram(long_line)
    assert info.value.status_hint == 513
    folded = _replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nX-A: b\r\n" + b" " + b"c" * 100 + b"\r\n")
    with pytest.raises(SipError):
        parse_datagram(folded, Limits(max_line_length=60))


def test_display_name_without_angle_brackets_is_refused_fast() -> None:
    """fuzz/fuzz_sip.py found a To value of ~200 token characters and no '<' taking 13 s in a backtracking
    regular expression; each of these took longer than the test's timeout before the fix."""
    for value in ("sip" + "Nzcw2u7DxVCk" * 250, "ab " * 2000, "x" * 3000 + " <"):
        wire = _replace(b"To: Bob <sip:bob@biloxi.example.com>", b"To: " + value.encode())
        started = time.perf_counter()
        with pytest.raises(SipError):
            parse_datagram(wire)
        assert time.perf_counter() - started < 1.0


def test_frozen_and_self_validating() -> None:
    m = parse_datagram(INVITE)
    with pytest.raises(AttributeError):
        m.body = b""  # type: ignore[misc]
    with pytest.raises(SipError):
        SipRequest(method="INVITE", uri="sip:a@b", headers=(("X", "a\r\nInjected: yes"),))
    with pytest.raises(SipError):
        SipRequest(method="IN VITE", uri="sip:a@b")
    with pytest.raises(SipError):
        SipResponse(status=99)
    with pytest.raises(SipError):
        Via("UDP", "bad host", 5060)
    with pytest.raises(SipError):
        CSeq(2**31, "INVITE")


# --- the fuzz invariant: parsed, or our own error ----------------------------------------------------------


def _parse_or_sip_error(data: bytes) -> None:
    for parse in (parse_datagram, parse_stream):
        try:
            result = parse(data)
        except SipError:
            continue
        if isinstance(result, tuple):
            result = result[0]
        if result is not None:  # and every typed view of a parsed message reads without an exception
            result.check()
            assert len(result.values("Via")) == len(result.vias)
            assert parse_datagram(result.to_bytes()) == result  # and builds to what parses the same


@given(st.binary(max_size=600))
@settings(max_examples=400)
@example(b"INVITE sip:a@b SIP/2.0\r\n\r\n")
@example(b"SIP/2.0 200 OK\r\nl: 99999999999\r\n\r\n")
def test_fuzz_random_bytes(data: bytes) -> None:
    _parse_or_sip_error(data)


@given(st.sampled_from(REAL + TORTURE_VALID), st.lists(st.tuples(st.integers(0, 2000), st.binary(max_size=4),
                                                                 st.integers(0, 4)), min_size=1, max_size=6))
@settings(max_examples=600)
def test_fuzz_mutated_real_messages(wire: bytes, edits: list[tuple[int, bytes, int]]) -> None:
    data = bytearray(wire)
    for position, insert, delete in edits:
        at = position % (len(data) + 1)
        data[at : at + delete] = insert
    _parse_or_sip_error(bytes(data))


def test_fuzz_many_seeded_mutations() -> None:
    """Thousands of byte-level mutations of real messages (flips, truncations, duplications, special bytes)."""
    rng = random.Random(3261)
    specials = [b"\r", b"\n", b"\r\n", b"\x00", b":", b";", b",", b'"', b"<", b">", b"\\", b" ", b"\t", b"\xff",
                b"=", b"/", b"[", b"]", b"9" * 12]
    for _ in range(4000):
        data = bytearray(rng.choice(REAL + TORTURE_VALID))
        for _ in range(rng.randint(1, 5)):
            at = rng.randrange(len(data) + 1)
            kind = rng.randrange(4)
            if kind == 0:
                data[at:at] = rng.choice(specials)
            elif kind == 1:
                del data[at : at + rng.randint(1, 8)]
            elif kind == 2 and at < len(data):
                data[at] = rng.randrange(256)
            else:
                data = data[:at]
        _parse_or_sip_error(bytes(data))


@given(vias(), st.sampled_from(["z9hG4bKap0123", "z9hG4bK-x.y"]))
def test_a_remembered_via_parses_to_itself(via: Via, branch: str) -> None:
    """What remember_via relies on: a Via (and the same Via with another branch, a proxy's own) parses back from its
    text to an equal value, so giving the remembered value instead of parsing the text changes nothing."""
    for value in (via, via.with_branch(branch), via.with_received("192.0.2.1", 5080)):
        text = str(value)
        remember_via(text, value)
        assert Via.parse(text) == value
        assert via_module._SENT_VIAS.pop(text) is value
        assert Via.parse(text) == value  # and parsed, it is the same
    # The proxy writes its own Via as its prefix and the branch: the text of the Via it remembers.
    own = Via(via.transport, via.host, via.port)
    assert str(own.with_branch(branch)) == f"{own};branch={branch}"


@given(vias(), name_addrs(tag=True), tokens, tokens)
def test_a_value_parsed_by_its_shape_is_what_a_full_parse_gives(via: Via, na: NameAddr, one: str, two: str) -> None:
    """Via.parse and NameAddr.parse keep each value by its text without the branch (Via) or tag (From/To), and
    give the next value of that shape by putting the new token in (params.parse_by_shape): the result must be
    what parsing the text from scratch gives, whatever came first."""
    for first, second in ((via.with_branch("z9hG4bK" + one), via.with_branch("z9hG4bK" + two)),):
        Via.parse(str(first))
        assert Via.parse(str(second)) == Via._parse(str(second)) == second
    tagged = [NameAddr(na.uri, na.display, tuple((n, tag if n == "tag" else v) for n, v in na.params))
              for tag in (one, two)]
    NameAddr.parse(str(tagged[0]))
    assert NameAddr.parse(str(tagged[1])) == NameAddr._parse(str(tagged[1])) == tagged[1]


@pytest.mark.parametrize(("first", "second"), [
    # a ';tag=' inside <...> is the URI's, not the field's
    ("<sip:a@b;tag=u>;tag=x", "<sip:a@b;tag=v>;tag=x"),
    ("<sip:a@b;tag=u>", "<sip:a@b;tag=v>"),
    ("sip:a@b;tag=1;x=2", "sip:a@b;tag=3;x=2"),  # addr-spec: the first ';' starts the field's parameters
    ('"A;tag=1" <sip:a@b>;tag=1', '"A;tag=2" <sip:a@b>;tag=1'),  # another display name: another shape
    ('"Alice" <sip:a@b>;tag=1', '"Alice" <sip:a@b>;tag=2'),  # a display name: by shape
    ('"A\\"> ;tag=9" <sip:a@b>;tag=1', '"A\\"> ;tag=9" <sip:a@b>;tag=2'),  # quotes, '>' and ';tag=' in it
    ('<sip:a@b>;x="y>z";tag=1', '<sip:a@b>;x="y>z";tag=2'),  # a quoted parameter: never by shape
    ('<sip:a@b>;tag=1;x="a;tag=2"', '<sip:a@b>;tag=3;x="a;tag=2"'),
    ('<sip:a@b>;x=";tag=1;";tag=1', '<sip:a@b>;x=";tag=2;";tag=1'),  # ';tag=' inside a quoted parameter
    ("<sip:a@b>;TAG=1", "<sip:a@b>;TAG=2"),
    ("<sip:a@b>;tag=1;x", "<sip:a@b>;tag=2;x"),
])
def test_from_to_shapes_do_not_mix_up_parameters(first: str, second: str) -> None:
    NameAddr.parse(first)
    assert NameAddr.parse(second) == NameAddr._parse(second)


def test_a_quoted_display_name_does_not_keep_a_from_off_the_shape_path() -> None:
    """Most user agents' From has one ("Alice" <sip:...>;tag=...): the quoted-string rule looks only at what
    follows the URI, so such a value is kept by its shape too."""
    NameAddr.parse('"Alice Liddell" <sip:alice@example.org>;tag=first')
    assert '"Alice Liddell" <sip:alice@example.org>;tag=' in addresses_module._NAME_ADDR_SHAPES
    second = NameAddr.parse('"Alice Liddell" <sip:alice@example.org>;tag=second')
    assert second == NameAddr._parse('"Alice Liddell" <sip:alice@example.org>;tag=second')
    assert (second.display, second.tag) == ("Alice Liddell", "second")


@pytest.mark.parametrize(("first", "second"), [
    ('SIP/2.0/UDP h;x=";branch=a;";branch=a', 'SIP/2.0/UDP h;x=";branch=b;";branch=a'),
    ("SIP/2.0/UDP h;branch=a;rport", "SIP/2.0/UDP h;branch=b;rport"),
    ("SIP/2.0/UDP h;branch=a;received=192.0.2.1", "SIP/2.0/UDP h;branch=b;received=192.0.2.1"),
    ("SIP/2.0/UDP h;BRANCH=a", "SIP/2.0/UDP h;BRANCH=b"),
])
def test_via_shapes_do_not_mix_up_parameters(first: str, second: str) -> None:
    Via.parse(first)
    assert Via.parse(second) == Via._parse(second)


@pytest.mark.parametrize("bad", ['SIP/2.0/UDP h;branch=a"b', "SIP/2.0/UDP h;branch=a b", "SIP/2.0/UDP h;branch=;x",
                                 "SIP/2.0/UDP h;branch=a;branch=b"])
def test_a_malformed_via_of_a_known_shape_is_still_refused(bad: str) -> None:
    Via.parse("SIP/2.0/UDP h;branch=zz")
    Via.parse("SIP/2.0/UDP h;branch=zz;x")
    with pytest.raises(SipError):
        Via.parse(bad)
