"""Hypothesis strategies for request heads and auth headers: valid-ish by construction, hostile in the details."""

from __future__ import annotations

import base64

from hypothesis import strategies as st

_TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: Bytes that break parsers: CR, LF, NUL, other controls, separators, DEL, high bytes.
_NASTY = b"\r\n\x00\x01\x09\x0b\x0c\x1b\x7f\x80\xff :;,\"\\=@/?#[]%"

tokens = st.text(_TCHAR, min_size=1, max_size=12)
nasty_bytes = st.lists(st.sampled_from([bytes([b]) for b in _NASTY]) | st.binary(min_size=1, max_size=4),
                       max_size=8).map(b"".join)
text_bytes = st.text(_TCHAR + " \t", max_size=20).map(lambda s: s.encode())
field_bytes = st.one_of(text_bytes, nasty_bytes, st.tuples(text_bytes, nasty_bytes, text_bytes).map(b"".join))

METHODS = [b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"TRACE", b"DELETE", b"PATCH", b"CONNECT"]
methods = st.sampled_from(METHODS) | tokens.map(str.encode) | nasty_bytes
versions = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.1", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.1x",
                            b"http/1.1", b""]) | nasty_bytes

HEADER_NAMES = [b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Expect", b"Proxy-Connection",
                b"Proxy-Authorization", b"Max-Forwards", b"Upgrade", b"TE", b"Trailer", b"Keep-Alive", b"Via",
                b"Authorization", b"Cookie", b"X-Forwarded-For"]
header_names = st.sampled_from(HEADER_NAMES) | tokens.map(str.encode) | field_bytes
header_values = st.one_of(
    st.sampled_from([b"chunked", b"gzip, chunked", b"chunked, chunked", b"identity", b"close", b"keep-alive",
                     b"100-continue", b"0", b"5", b"-1", b"+5", b"0x10", b"99999999999999999999", b"1, 1", b"",
                     b"upgrade, te", b"websocket"]),
    st.integers(0, 1 << 20).map(lambda n: str(n).encode()),
    field_bytes,
)
line_ends = st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r", b"\r\r\n", b"\n\r"])

_DIGEST_PARAMS = ["username", "username*", "realm", "nonce", "uri", "response", "algorithm", "cnonce", "opaque",
                  "qop", "nc", "userhash"]
_param_values = st.one_of(
    st.text(_TCHAR, max_size=16).map(lambda s: f'"{s}"'),
    tokens,
    st.sampled_from(['"unterminated', '"a\\"b"', "SHA-256", "MD5-sess", "SHA-512-256", "auth", "auth-int",
                     "00000001", "true", "UTF-8''al%0D%0Aice", "UTF-8''%00", '""', "=", '"\\"']),
    st.text(max_size=8).map(lambda s: f'"{s}"'),
)
digest_param = st.tuples(st.sampled_from(_DIGEST_PARAMS) | tokens, st.sampled_from(["=", " = ", "= ", ""]),
                         _param_values).map(lambda t: "".join(t))
digest_credentials = st.lists(digest_param, max_size=14).map(
    lambda ps: "Digest " + ", ".join(ps))
basic_credentials = st.one_of(
    st.tuples(st.binary(max_size=24), st.binary(max_size=24)).map(
        lambda up: "Basic " + base64.b64encode(up[0] + b":" + up[1]).decode()),
    st.binary(max_size=40).map(lambda b: "Basic " + base64.b64encode(b).decode()),
    st.text(max_size=40).map(lambda s: "Basic " + s),
    st.just("Basic YWxpY2U6d29uZGVybGFuZA=="),  # alice:wonderland
)
auth_values = st.one_of(
    basic_credentials, digest_credentials, st.text(max_size=30),
    st.sampled_from(["Basic", "Digest", "Bearer x", "Basic YWxpY2U6d29uZGVybGFuZA==, Basic x"]),
).map(lambda s: s.encode("utf-8", "surrogateescape"))


clean_header_values = st.one_of(
    st.sampled_from([b"close", b"keep-alive", b"100-continue", b"0", b"text/plain", b"x"]),
    text_bytes,
)
ASPECTS = ["none", "none", "method", "target", "version", "separator", "line-end", "header", "auth", "body",
           "everything"]


@st.composite
def request_heads(draw: st.DrawFn, authority: str) -> bytes:
    """One request (sometimes two, pipelined) aimed at ``authority``: valid except for the aspect drawn hostile
    ("none": a valid request, "everything": hostile throughout)."""
    aspect = draw(st.sampled_from(ASPECTS))

    def hostile(name: str) -> bool:
        return aspect in (name, "everything")

    method = draw(methods if hostile("method") else st.sampled_from(METHODS[:8]))
    path = draw(st.sampled_from([b"/", b"/x?q=1", b"/%00", b"/a b", b"/\xff"]) | text_bytes.map(lambda b: b"/" + b)
                if hostile("target") else st.sampled_from([b"/", b"/x?q=1", b"/a/b"]))
    target = b"http://" + authority.encode() + path
    if method == b"CONNECT":
        target = authority.encode()
    if hostile("target"):
        target = draw(st.sampled_from([
            target, authority.encode(), b"http://user:pw@" + authority.encode() + path, path, b"*",
            b"https://" + authority.encode() + path,
        ]) | field_bytes)
    sp = draw(st.sampled_from([b" ", b"  ", b"\t"])) if hostile("separator") else b" "
    version = draw(versions) if hostile("version") else draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    end = draw(line_ends) if hostile("line-end") else b"\r\n"
    lines = [method + sp + target + (b" " + version if version else b"")]
    if not hostile("header") or draw(st.booleans()):
        lines.append(b"Host: " + authority.encode())
    if hostile("auth"):
        lines.append(b"Proxy-Authorization: " + draw(auth_values))
    elif draw(st.integers(0, 5)):
        lines.append(b"Proxy-Authorization: Basic YWxpY2U6d29uZGVybGFuZA==")
    names = header_names if hostile("header") else st.sampled_from([b"Accept", b"X-Test", b"Connection", b"Expect"])
    values = header_values if hostile("header") else clean_header_values
    for name, value in draw(st.lists(st.tuples(names, values), max_size=5)):
        sep = draw(st.sampled_from([b": ", b":", b" : ", b":\t"])) if hostile("header") else b": "
        lines.append(name + sep + value)
    body = b""
    if hostile("body"):
        body = draw(st.binary(max_size=40))
        framing = draw(st.sampled_from([b"Content-Length: %d" % len(body), b"Content-Length: %d" % (len(body) + 3),
                                        b"Transfer-Encoding: chunked", b""]))
        if framing:
            lines.append(framing)
        if framing == b"Transfer-Encoding: chunked" and draw(st.booleans()):
            body = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
    elif method in (b"POST", b"PUT", b"PATCH") and draw(st.booleans()):
        body = draw(st.binary(max_size=40))
        if draw(st.booleans()):
            lines.append(b"Content-Length: %d" % len(body))
        else:
            lines.append(b"Transfer-Encoding: chunked")
            body = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    raw = end.join(lines) + end + end + body
    if draw(st.integers(0, 4)) == 0:
        raw += (b"GET http://" + authority.encode() + b"/second HTTP/1.1\r\nHost: " + authority.encode()
                + b"\r\nProxy-Authorization: Basic YWxpY2U6d29uZGVybGFuZA==\r\n\r\n")
    return raw
