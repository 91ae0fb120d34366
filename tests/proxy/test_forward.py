"""The pure head-rewriting functions of authproxy.engine.forward and the made-up responses."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authproxy.auth.errors import ProtocolError
from authproxy.engine import forward
from authproxy.engine.responses import made_up_response


@pytest.mark.parametrize(
    "target, host, port, origin_form, host_header",
    [
        (b"http://Example.COM/a/b?c=d#frag", "example.com", 80, b"/a/b?c=d", b"Example.COM"),
        (b"http://example.com", "example.com", 80, b"/", b"example.com"),
        (b"http://127.0.0.1:8080/x", "127.0.0.1", 8080, b"/x", b"127.0.0.1:8080"),
        (b"http://[::1]:81/v6", "::1", 81, b"/v6", b"[::1]:81"),
        (b"HTTP://example.com/upper-scheme", "example.com", 80, b"/upper-scheme", b"example.com"),
    ],
)
def test_absolute_targets(target: bytes, host: str, port: int, origin_form: bytes, host_header: bytes) -> None:
    parsed = forward.parse_absolute_target(target)
    assert (parsed.host, parsed.port, parsed.origin_form, parsed.host_header) == (host, port, origin_form,
                                                                                  host_header)


@pytest.mark.parametrize(
    "target, words",
    [
        (b"/origin-form", "absolute URI"),
        (b"*", "absolute URI"),
        (b"https://example.com/", "CONNECT"),
        (b"ftp://example.com/", "only http://"),
        (b"http://user:pw@example.com/", "user information"),
        (b"http://example.com:0/", "port"),
    ],
)
def test_refused_targets(target: bytes, words: str) -> None:
    with pytest.raises(ProtocolError) as info:
        forward.parse_absolute_target(target)
    assert words in info.value.message
    assert b"pw" not in info.value.message.encode()


@pytest.mark.parametrize(
    "target, expected",
    [
        (b"example.com:443", ("example.com", 443)),
        (b"[::1]:8443", ("::1", 8443)),
        (b"EXAMPLE.com:1", ("example.com", 1)),
    ],
)
def test_connect_authority(target: bytes, expected: tuple[str, int]) -> None:
    assert forward.parse_authority(target) == expected


@pytest.mark.parametrize("target", [b"example.com", b"example.com:", b":443", b"a:b", b"::1:443", b"u@h:443",
                                    b"h:70000", b"h:0"])
def test_bad_connect_authority(target: bytes) -> None:
    with pytest.raises(ProtocolError):
        forward.parse_authority(target)


@given(st.binary(max_size=200))
def test_target_parsers_accept_or_raise_protocol_error(data: bytes) -> None:
    for parse in (forward.parse_absolute_target, forward.parse_authority):
        with contextlib.suppress(ProtocolError):
            parse(data)


def test_hop_by_hop_and_connection_named_fields_are_removed() -> None:
    headers = [
        (b"Connection", b"close, X-Private"),
        (b"X-Private", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Proxy-Authorization", b"Basic c2VjcmV0"),
        (b"TE", b"trailers"),
        (b"Upgrade", b"websocket"),
        (b"Authorization", b"Bearer t"),
        (b"Content-Length", b"3"),
        (b"Accept", b"*/*"),
    ]
    kept = forward.end_to_end(headers, forward.connection_tokens(headers))
    assert kept == [(b"Authorization", b"Bearer t"), (b"Accept", b"*/*")]


def test_request_head_regenerates_host_and_adds_via() -> None:
    target = forward.parse_absolute_target(b"http://origin.test:8080/p?q")
    head = forward.build_request_head(b"POST", target, [(b"Host", b"evil"), (b"Max-Forwards", b"5")],
                                      via=b"1.1 authproxy", content_length=3, chunked=False, hop_limit=5)
    assert head == (b"POST /p?q HTTP/1.1\r\nHost: origin.test:8080\r\nMax-Forwards: 4\r\n"
                    b"Via: 1.1 authproxy\r\nContent-Length: 3\r\n\r\n")


def test_max_forwards() -> None:
    assert forward.max_forwards([(b"Max-Forwards", b"0")]) == 0
    assert forward.max_forwards([]) is None
    with pytest.raises(ProtocolError):
        forward.max_forwards([(b"Max-Forwards", b"-1")])


def test_trace_echo_hides_credentials() -> None:
    echo = forward.trace_echo(b"TRACE", b"http://h/", "1.1", [(b"Proxy-Authorization", b"Basic x"),
                                                              (b"Cookie", b"c"), (b"X-A", b"1")])
    assert echo == b"TRACE http://h/ HTTP/1.1\r\nX-A: 1\r\n\r\n"


def test_made_up_response_names_hop_and_reason() -> None:
    data = made_up_response(502, 'the origin "x" refused\nthe connection', proxy_name="authproxy",
                            error="connection_refused", keep_alive=False)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert b'Proxy-Status: authproxy; error=connection_refused; details="the origin \\"x\\" refused?the' in head
    assert b"Connection: close" in head
    assert body.startswith(b"authproxy: 502 Bad Gateway\n")
    assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) == len(body)
    with pytest.raises(ValueError):
        made_up_response(500, "x", proxy_name="p", error="not-a-type")


@pytest.mark.parametrize("value, loop", [
    (b"1.1 authproxy", True),
    (b"1.0 squid, 1.1 AuthProxy (looped)", True),
    (b"1.1 authproxy:3128", True),
    (b"1.1 authproxy(glued comment)", True),
    (b"1.1 squid,1.1 authproxy", True),
    (b"1.1 squid (via 1.1 authproxy)", False),  # our name inside another hop's comment is not a hop
    (b"1.1 squid (a, 1.1 authproxy)", False),  # nor after a comma inside that comment
    (b"1.1 squid (a, 1.1 authproxy b)", False),
    (b"1.1 squid (nested (1.1 authproxy) \\) 1.1 authproxy)", False),
    (b"1.1 squid (unterminated, 1.1 authproxy", False),
    (b"1.1 authproxy2 (authproxy)", False),
    (b"1.1 squid (x), 1.1 authproxy", True),
])
def test_via_lists_this_proxy_only_as_a_hop(value: bytes, loop: bool) -> None:
    """RFC 9110 section 7.6.3: a received-by names a hop; a comment is not one (section 5.6.5)."""
    assert forward.via_lists([(b"Via", value)], b"authproxy") is loop
