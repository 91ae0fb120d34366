"""HTTP Basic authentication, RFC 7617.

The token68 is base64 (RFC 4648 section 4, padded) of ``user-id ":" password`` in UTF-8, the only charset RFC
7617 section 2.1 lets a server announce. The user-id cannot contain a colon, so the pair splits on the FIRST
colon and the password may contain any number of them (mitmproxy splits on every colon and gets it wrong).
Neither part may contain a control character (section 2): a decoded CR/LF would otherwise be a header
injection the moment anything logs or forwards the name.
"""

from __future__ import annotations

import binascii
import re

from authproxy.auth.errors import AuthHeaderError
from authproxy.auth.headers import Challenge
from authproxy.auth.text import has_control

#: Longest token68 accepted. 4 KiB of base64 is a 3 KiB user:password, far beyond any real credential.
MAX_TOKEN68_LENGTH = 4096

_BASE64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _check_part(what: str, text: str) -> None:
    if has_control(text):
        raise AuthHeaderError(f"control character in the Basic {what}")


def encode_basic(user: str, password: str) -> str:
    """The token68 of Basic credentials for ``user`` and ``password`` (RFC 7617 section 2)."""
    if ":" in user:
        raise AuthHeaderError("a Basic user-id cannot contain ':' (RFC 7617 section 2)")
    _check_part("user-id", user)
    _check_part("password", password)
    return binascii.b2a_base64(f"{user}:{password}".encode(), newline=False).decode("ascii")


def decode_basic(token68: str) -> tuple[str, str]:
    """``(user, password)`` from a Basic token68; AuthHeaderError unless it is strict, canonical base64 of
    UTF-8 ``user ":" password`` without control characters."""
    if len(token68) > MAX_TOKEN68_LENGTH:
        raise AuthHeaderError("Basic credentials too long")
    if len(token68) % 4 or _BASE64_RE.fullmatch(token68) is None:
        raise AuthHeaderError("Basic credentials are not base64")
    try:
        raw = binascii.a2b_base64(token68, strict_mode=True)
    except binascii.Error as exc:
        raise AuthHeaderError("Basic credentials are not base64") from exc
    # Non-zero padding bits decode fine but re-encode differently: one credential, one spelling.
    if binascii.b2a_base64(raw, newline=False).decode("ascii") != token68:
        raise AuthHeaderError("Basic credentials are not canonical base64")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AuthHeaderError("Basic credentials are not UTF-8") from exc
    user, colon, password = text.partition(":")
    if not colon:
        raise AuthHeaderError("Basic credentials have no ':' between user-id and password")
    _check_part("user-id", user)
    _check_part("password", password)
    return user, password


def basic_challenge(realm: str) -> Challenge:
    """``Basic realm="..." charset="UTF-8"`` (RFC 7617 sections 2 and 2.1)."""
    return Challenge("Basic", params=(("realm", realm), ("charset", "UTF-8")))
