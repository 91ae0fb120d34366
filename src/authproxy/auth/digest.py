"""HTTP Digest authentication, RFC 7616 (and RFC 2617 section 3.2.2 for the qop-less form).

The computations (section 3.4.1 response, 3.4.2 A1 and -sess, 3.4.3 A2 and auth-int, 3.4.4 userhash, 3.5
rspauth), RFC 8187 ext-values for ``username*``, and the challenge (section 3.3) and credentials (section 3.4)
as validated values on top of the RFC 9110 grammar of :mod:`authproxy.auth.headers`.

Algorithms (RFC 7616 section 3.2 and the IANA registry): MD5, SHA-256, SHA-512-256, each with ``-sess``.
SHA-512-256 is SHA-512/256 of FIPS 180-4 (its own initial values), not SHA-512 truncated: RFC 7616
section 3.9.2 prints the truncated values by mistake (erratum 4897).
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from authproxy.auth.errors import AuthHeaderError
from authproxy.auth.headers import Challenge, Credentials, is_token
from authproxy.auth.text import has_control


def _sha512_256(data: bytes) -> str:
    return hashlib.new("sha512_256", data).hexdigest()


def _md5(data: bytes) -> str:
    # Digest MD5 is a protocol requirement, not a security choice (RFC 7616 section 3.2).
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class DigestAlgorithm:
    """One row of the algorithm table: its wire name, hash function, session variant and preference."""

    name: str  # as sent on the wire, e.g. "SHA-256-sess"
    base: str  # the name without "-sess"; user stores key their HA1 by it
    hexdigest: Callable[[bytes], str]
    sess: bool
    strength: int  # higher is stronger; clients pick the strongest offered
    #: Characters in one hex digest: 32 for MD5, 64 for the SHA-2 family (read on every Digest request).
    hex_length: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hex_length", 32 if self.base == "MD5" else 64)

    def h(self, text: str) -> str:
        """H(data) of RFC 7616 section 3.4.1, over the UTF-8 encoding of ``text``."""
        return self.hexdigest(text.encode("utf-8"))


_BASES: tuple[tuple[str, Callable[[bytes], str], int], ...] = (
    ("MD5", _md5, 1),
    ("SHA-256", _sha256, 2),
    ("SHA-512-256", _sha512_256, 3),
)

#: Every algorithm we know, by upper-cased wire name (RFC 7616 section 3.3: the value is case-insensitive).
ALGORITHMS: dict[str, DigestAlgorithm] = {}
for _name, _fn, _strength in _BASES:
    ALGORITHMS[_name.upper()] = DigestAlgorithm(_name, _name, _fn, False, _strength)
    ALGORITHMS[(_name + "-sess").upper()] = DigestAlgorithm(_name + "-sess", _name, _fn, True, _strength)

#: The base algorithms a user store can hold an HA1 for, strongest first.
BASE_ALGORITHMS: tuple[str, ...] = ("SHA-512-256", "SHA-256", "MD5")


def get_algorithm(name: str | None) -> DigestAlgorithm | None:
    """The algorithm named ``name`` (absent means MD5, RFC 7616 section 3.3), or None when unknown."""
    if name is None:
        return ALGORITHMS["MD5"]
    return ALGORITHMS.get(name.upper())


def compute_ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """H(username ":" realm ":" passwd), RFC 7616 section 3.4.2, before any -sess step."""
    alg = get_algorithm(algorithm)
    if alg is None:
        raise ValueError(f"unknown Digest algorithm {algorithm!r}")
    return alg.h(f"{username}:{realm}:{password}")


# --- the digest computations, RFC 7616 section 3.4.1 - 3.4.4 and 3.5 ---------------------------------------


def session_ha1(alg: DigestAlgorithm, ha1: str, nonce: str, cnonce: str) -> str:
    """The -sess HA1: H(H(user:realm:passwd) ":" nonce ":" cnonce), RFC 7616 section 3.4.2.

    The inner HA1 is the lower-case hex string, as RFC 2617 erratum 1649 settles.
    """
    return alg.h(f"{ha1}:{nonce}:{cnonce}")


def compute_userhash(alg: DigestAlgorithm, username: str, realm: str) -> str:
    """H(username ":" realm), the hashed user name of RFC 7616 section 3.4.4."""
    return alg.h(f"{username}:{realm}")


def request_digest(
    alg: DigestAlgorithm,
    *,
    ha1: str,
    nonce: str,
    nc: str | None,
    cnonce: str | None,
    qop: str | None,
    method: str,
    uri: str,
    body_hash: str | None = None,
) -> str:
    """The ``response`` parameter, RFC 7616 section 3.4.1.

    ``ha1`` is the base H(user:realm:passwd); the -sess step is applied here. ``qop=None`` gives the RFC 2069
    form H(HA1:nonce:HA2). For auth-int, ``body_hash`` is H(entity-body) and A2 = method:uri:H(body).
    """
    if alg.sess:
        if cnonce is None:
            raise ValueError(f"{alg.name} needs a cnonce")
        ha1 = session_ha1(alg, ha1, nonce, cnonce)
    if qop == "auth-int":
        if body_hash is None:
            raise ValueError("qop=auth-int needs the hash of the body")
        ha2 = alg.h(f"{method}:{uri}:{body_hash}")
    elif qop is None or qop == "auth":
        ha2 = _ha2(alg, method, uri)
    else:
        raise ValueError("qop must be auth or auth-int")
    if qop is None:
        # RFC 2069 compatibility (RFC 2617 section 3.2.2.1): no nc, no cnonce.
        return alg.h(f"{ha1}:{nonce}:{ha2}")
    if nc is None or cnonce is None:
        raise ValueError("a qop digest needs nc and cnonce")
    return alg.hexdigest(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode())


# H(method ":" uri) by (hash, method, uri): a client sends the same method and uri again and again (a SIP UA its
# OPTIONS and REGISTERs, a browser its page's resources). A memo of a pure function, bounded in entries and in
# the length of what it keeps; a flood of new uris only costs the hashes the memo would have saved.
_HA2: dict[tuple[str, str, str], str] = {}
_HA2_MAX_ENTRIES, _HA2_MAX_LENGTH = 4096, 512


def _ha2(alg: DigestAlgorithm, method: str, uri: str) -> str:
    """H(A2) for qop=auth and the RFC 2069 form, RFC 7616 section 3.4.3."""
    key = (alg.base, method, uri)
    ha2 = _HA2.get(key)
    if ha2 is None:
        ha2 = alg.h(f"{method}:{uri}")
        if len(method) + len(uri) <= _HA2_MAX_LENGTH:
            if len(_HA2) >= _HA2_MAX_ENTRIES:
                _HA2.clear()
            _HA2[key] = ha2
    return ha2


def response_auth(
    alg: DigestAlgorithm,
    *,
    ha1: str,
    nonce: str,
    nc: str | None,
    cnonce: str | None,
    qop: str | None,
    uri: str,
    body_hash: str | None = None,
) -> str:
    """The ``rspauth`` of (Proxy-)Authentication-Info, RFC 7616 section 3.5: A2 has an empty method.

    For auth-int, RFC 7616 uses the hash of the response body; the caller passes whatever it hashes.
    """
    return request_digest(
        alg, ha1=ha1, nonce=nonce, nc=nc, cnonce=cnonce, qop=qop, method="", uri=uri, body_hash=body_hash
    )


# --- RFC 8187 ext-value, for username* (RFC 7616 section 3.4) ---------------------------------------------

# RFC 8187 section 3.2.1: attr-char, the octets an ext-value carries unencoded.
_ATTR_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~")
_EXT_VALUE_RE = re.compile(
    r"(?P<charset>[A-Za-z0-9!#$%&+\-^_`{}~]+)"  # mime-charset
    r"'(?P<lang>[A-Za-z0-9\-]*)'"  # language (RFC 5646), not interpreted
    r"(?P<value>(?:%[0-9A-Fa-f]{2}|[A-Za-z0-9!#$&+\-.^_`|~])*)"  # value-chars
)
_HEX_RE = re.compile(r"[0-9a-fA-F]+")


def decode_ext_value(s: str) -> str:
    """The text of an RFC 8187 ext-value ``charset "'" [ language ] "'" value-chars``.

    UTF-8 and ISO-8859-1 are the charsets recipients must support (section 3.2.1); the language is ignored.
    """
    m = _EXT_VALUE_RE.fullmatch(s)
    if m is None:
        raise AuthHeaderError("malformed RFC 8187 ext-value")
    charset = m.group("charset").lower()
    if charset == "utf-8":
        encoding = "utf-8"
    elif charset == "iso-8859-1":
        encoding = "latin-1"
    else:
        raise AuthHeaderError("unsupported ext-value charset (UTF-8 and ISO-8859-1 are)")
    raw = urllib.parse.unquote_to_bytes(m.group("value"))
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise AuthHeaderError("ext-value is not valid UTF-8") from exc


def encode_ext_value(s: str) -> str:
    """``s`` as an RFC 8187 ext-value in UTF-8 with no language: ``UTF-8''J%C3%A4s%C3%B8n``."""
    out = []
    for byte in s.encode("utf-8"):
        ch = chr(byte)
        out.append(ch if ch in _ATTR_CHARS else f"%{byte:02X}")
    return "UTF-8''" + "".join(out)


# --- challenge and credentials as values, RFC 7616 sections 3.3 and 3.4 -----------------------------------

QOP_VALUES: tuple[str, ...] = ("auth", "auth-int")
_NC_RE = re.compile(r"[0-9a-fA-F]{8}")


def _flag(c: Challenge | Credentials, name: str, *, strict: bool) -> bool:
    value = c.param(name)
    if value is None:
        return False
    lowered = value.lower()
    if lowered == "true":
        return True
    if lowered == "false" or not strict:
        # A challenge is read leniently (anything but "true" is false, as RFC 7616 section 3.3 says for
        # stale); credentials are checked strictly.
        return False
    raise AuthHeaderError(f"{name} must be true or false")


def _require_digest(c: Challenge | Credentials) -> None:
    if c.scheme_key != "digest":
        raise AuthHeaderError("not a Digest challenge or credentials")
    if c.token68 is not None:
        raise AuthHeaderError("Digest takes auth-params, not a token68")


def _required(c: Challenge | Credentials, name: str) -> str:
    value = c.param(name)
    if value is None:
        raise AuthHeaderError(f"Digest {name} is missing")
    return value


@dataclass(frozen=True)
class DigestChallenge:
    """A Digest challenge, RFC 7616 section 3.3.

    ``algorithm`` is the table's wire name ("SHA-256-sess"); ``qop`` the offered values in order (empty: the
    server did not send qop, the RFC 2069 form). ``charset_utf8`` is ``charset="UTF-8"``.
    """

    realm: str
    nonce: str
    opaque: str | None = None
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    stale: bool = False
    userhash: bool = False
    charset_utf8: bool = False

    @property
    def alg(self) -> DigestAlgorithm:
        alg = get_algorithm(self.algorithm)
        if alg is None:
            raise ValueError(f"unknown Digest algorithm {self.algorithm!r}")
        return alg

    def to_challenge(self) -> Challenge:
        # Parameter order follows RFC 7616 section 3.9.1.
        params: list[tuple[str, str]] = [("realm", self.realm)]
        if self.qop:
            params.append(("qop", ", ".join(self.qop)))
        params.append(("algorithm", self.alg.name))
        params.append(("nonce", self.nonce))
        if self.opaque is not None:
            params.append(("opaque", self.opaque))
        if self.charset_utf8:
            params.append(("charset", "UTF-8"))
        if self.userhash:
            params.append(("userhash", "true"))
        if self.stale:
            params.append(("stale", "true"))
        return Challenge("Digest", params=tuple(params))

    @classmethod
    def from_challenge(cls, c: Challenge) -> DigestChallenge | None:
        """The Digest challenge ``c``; None when its algorithm is unknown (section 3.3: the client ignores
        it); AuthHeaderError when it is malformed."""
        _require_digest(c)
        realm = _required(c, "realm")
        nonce = _required(c, "nonce")
        alg = get_algorithm(c.param("algorithm"))
        if alg is None:
            return None
        qop_param = c.param("qop")
        qop: tuple[str, ...] = ()
        if qop_param is not None:
            qop = tuple(v.strip().lower() for v in qop_param.split(",") if v.strip())
            for value in qop:
                if not is_token(value):
                    raise AuthHeaderError("a qop value is not a token")
        charset = c.param("charset")
        return cls(
            realm=realm,
            nonce=nonce,
            opaque=c.param("opaque"),
            algorithm=alg.name,
            qop=qop,
            stale=_flag(c, "stale", strict=False),
            userhash=_flag(c, "userhash", strict=False),
            charset_utf8=charset is not None and charset.lower() == "utf-8",
        )


def _needs_ext_value(username: str) -> bool:
    # RFC 7616 section 3.4: username* when the name cannot go in a quoted-string as-is. Field values are
    # octets and only ASCII survives every hop unchanged, so anything beyond printable ASCII is encoded.
    return any(not (0x20 <= ord(ch) < 0x7F) for ch in username)


@dataclass(frozen=True)
class DigestCredentials:
    """Digest credentials, RFC 7616 section 3.4.

    ``username`` is the decoded name (from ``username`` or ``username*``), or with ``userhash`` the hex
    H(user:realm) the client sent. ``nc`` keeps the 8 hex digits as sent (they go into the digest verbatim).
    ``response`` is lower-case hex.
    """

    username: str
    userhash: bool
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: DigestAlgorithm
    cnonce: str | None = None
    nc: str | None = None
    qop: str | None = None
    opaque: str | None = None

    @property
    def nc_value(self) -> int | None:
        return None if self.nc is None else int(self.nc, 16)

    @classmethod
    def from_credentials(cls, c: Credentials) -> DigestCredentials:
        """Validate and decode ``c``; AuthHeaderError (a 400) for anything malformed."""
        _require_digest(c)
        userhash = _flag(c, "userhash", strict=True)
        param = c.params_by_name.get  # names are stored lower-cased: one dict lookup each
        plain = param("username")
        extended = param("username*")
        if plain is not None and extended is not None:
            raise AuthHeaderError("Digest credentials carry both username and username*")
        if extended is not None:
            if userhash:
                # RFC 7616 section 3.4: username* only when userhash is false.
                raise AuthHeaderError("username* cannot be used with userhash=true")
            username = decode_ext_value(extended)
        elif plain is not None:
            username = plain
        else:
            raise AuthHeaderError("Digest username is missing")
        if has_control(username):
            raise AuthHeaderError("control character in the Digest username")
        realm = _required(c, "realm")
        nonce = _required(c, "nonce")
        uri = _required(c, "uri")
        response = _required(c, "response").lower()
        alg_name = param("algorithm")
        alg = get_algorithm(alg_name)
        if alg is None:
            raise AuthHeaderError("unknown Digest algorithm")
        if len(response) != alg.hex_length or _HEX_RE.fullmatch(response) is None:
            raise AuthHeaderError(f"Digest response is not a {alg.base} hex digest")
        qop = param("qop")
        cnonce = param("cnonce")
        nc = param("nc")
        if qop is not None:
            qop = qop.lower()
            if qop not in QOP_VALUES:
                raise AuthHeaderError("qop must be auth or auth-int")
            if cnonce is None or nc is None:
                raise AuthHeaderError("qop needs both cnonce and nc")
            if _NC_RE.fullmatch(nc) is None:
                raise AuthHeaderError("nc must be exactly 8 hex digits")
        elif cnonce is not None or nc is not None:
            # Squid PR#1906: cnonce/nc without qop is ambiguous between the RFC 2069 and RFC 2617 forms.
            raise AuthHeaderError("cnonce and nc need qop")
        elif alg.sess:
            raise AuthHeaderError(f"{alg.name} needs qop, cnonce and nc")
        return cls(
            username=username,
            userhash=userhash,
            realm=realm,
            nonce=nonce,
            uri=uri,
            response=response,
            algorithm=alg,
            cnonce=cnonce,
            nc=nc,
            qop=qop,
            opaque=param("opaque"),
        )

    def to_credentials(self) -> Credentials:
        # Parameter order follows RFC 7616 section 3.9.1.
        if not self.userhash and _needs_ext_value(self.username):
            params: list[tuple[str, str]] = [("username*", encode_ext_value(self.username))]
        else:
            params = [("username", self.username)]
        params += [
            ("realm", self.realm),
            ("uri", self.uri),
            ("algorithm", self.algorithm.name),
            ("nonce", self.nonce),
        ]
        if self.nc is not None:
            params.append(("nc", self.nc))
        if self.cnonce is not None:
            params.append(("cnonce", self.cnonce))
        if self.qop is not None:
            params.append(("qop", self.qop))
        params.append(("response", self.response))
        if self.opaque is not None:
            params.append(("opaque", self.opaque))
        if self.userhash:
            params.append(("userhash", "true"))
        return Credentials("Digest", params=tuple(params))
