"""Checking a Basic password (RFC 7617) against an htpasswd-style hash: CPU work, no IO.

Formats Apache's ``htpasswd`` writes and authproxy can check: bcrypt (``$2y$``, ``$2b$``, ``$2a$``), Apache
MD5-crypt (``$apr1$``, and the identical BSD ``$1$`` that glibc's crypt makes) and ``{SHA}`` (base64 SHA-1,
unsalted). DES crypt, the SHA-crypt family, plain text and anything else are recognised well enough to say
*why* a user cannot sign in, but never match.

Every comparison of a computed value with a stored one goes through ``hmac.compare_digest``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re

# bcrypt: $2<variant>$<cost>$<22 salt chars><31 hash chars>, in bcrypt's own base64 alphabet.
_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
# MD5-crypt: the salt is at most 8 characters and ends at the next '$'; the checksum is 22 characters.
_MD5_CRYPT = re.compile(r"(?P<magic>\$apr1\$|\$1\$)(?P<salt>[^$:\n]{0,8})\$(?P<checksum>[./0-9A-Za-z]{22})")
_DES_CRYPT = re.compile(r"[./0-9A-Za-z]{13}")

# The crypt(3) base64 alphabet, used by MD5-crypt's output encoding.
_CRYPT64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# bcrypt only reads the first 72 bytes of a password; Apache's htpasswd truncates silently, and bcrypt >= 5
# raises instead, so truncate here to agree with the hashes Apache wrote.
_BCRYPT_MAX_PASSWORD_BYTES = 72


def describe_hash(stored: str) -> str:
    """The format of ``stored``: "bcrypt", "apr1-md5", "md5-crypt", "sha1" or "unsupported (<reason>)".

    The reason in "unsupported (...)" never quotes the hash itself, so it is safe to log.
    """
    if _BCRYPT.fullmatch(stored):
        return "bcrypt"
    match = _MD5_CRYPT.fullmatch(stored)
    if match:
        return "apr1-md5" if match["magic"] == "$apr1$" else "md5-crypt"
    if stored.startswith("{SHA}"):
        return "sha1" if _sha1_digest(stored) is not None else "unsupported (malformed {SHA} hash)"
    return f"unsupported ({_unsupported_reason(stored)})"


def is_supported_hash(stored: str) -> bool:
    """Whether :func:`verify_password_hash` can ever return True for ``stored``."""
    return not describe_hash(stored).startswith("unsupported")


def is_slow_hash(stored: str) -> bool:
    """Whether checking ``stored`` costs enough CPU (bcrypt: milliseconds) to run it off the event loop."""
    return describe_hash(stored) == "bcrypt"


def verify_password_hash(password: str, stored: str) -> bool:
    """Whether ``password`` (as the client sent it, decoded from UTF-8) matches the htpasswd hash ``stored``.

    Unsupported or malformed hashes never match; this function does not raise for any input.
    """
    secret = password.encode("utf-8", "surrogatepass")
    kind = describe_hash(stored)
    if kind == "bcrypt":
        # hashpw with the stored hash as salt keeps its "$2y$"/"$2a$" prefix, so the strings compare equal.
        import bcrypt  # imported when first needed: a proxy without bcrypt users does not carry it

        computed = bcrypt.hashpw(secret[:_BCRYPT_MAX_PASSWORD_BYTES], stored.encode("ascii"))
        return hmac.compare_digest(computed, stored.encode("ascii"))
    if kind in ("apr1-md5", "md5-crypt"):
        match = _MD5_CRYPT.fullmatch(stored)
        assert match is not None
        computed_str = md5_crypt(secret, match["salt"].encode("utf-8"), magic=match["magic"].encode("ascii"))
        return hmac.compare_digest(computed_str.encode("utf-8"), stored.encode("utf-8"))
    if kind == "sha1":
        expected = _sha1_digest(stored)
        assert expected is not None
        # {SHA} is what htpasswd -s writes; SHA-1 here is for compatibility, not a choice.
        return hmac.compare_digest(hashlib.sha1(secret, usedforsecurity=False).digest(), expected)
    return False


def hash_shape(stored: str) -> str:
    """What checking ``stored`` costs, as a key: ``$2y$12$`` for bcrypt (variant and cost), else its format."""
    kind = describe_hash(stored)
    if kind == "bcrypt":
        return stored[:7]
    return "unsupported" if kind.startswith("unsupported") else kind


# bcrypt's base64 alphabet; the bit order is standard base64's.
_BCRYPT64 = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
    b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
)


def dummy_hash_like(shape: str, rand: bytes) -> str:
    """A hash of ``shape`` (see :func:`hash_shape`) that costs as much to check and that no password matches
    but by a collision of the hash function: the salt comes from ``rand`` (at least 20 bytes), the stored
    checksum is a constant no real computation is expected to give."""
    if shape.startswith("$2"):
        salt = base64.b64encode(rand[:16]).translate(_BCRYPT64).decode("ascii")[:22]
        return f"{shape}{salt}{'.' * 31}"
    if shape in ("apr1-md5", "md5-crypt"):
        salt = _crypt64(int.from_bytes(rand[:6], "big"), 8)
        return f"{'$apr1$' if shape == 'apr1-md5' else '$1$'}{salt}${'.' * 22}"
    if shape == "sha1":
        return "{SHA}" + base64.b64encode(rand[:20]).decode("ascii")
    return "!"  # an unsupported hash: checking it costs nothing, as for the real ones


def md5_crypt(password: bytes, salt: bytes, *, magic: bytes = b"$apr1$") -> str:
    """The MD5-crypt string for ``password``: Poul-Henning Kamp's algorithm, as in Apache's apr_md5.c.

    ``magic`` is ``$apr1$`` (Apache) or ``$1$`` (BSD/glibc); it only changes the prefix and the hash input.
    ``salt`` is cut to 8 bytes, as both implementations do.
    """
    salt = salt[:8]
    inner = hashlib.md5(password + salt + password, usedforsecurity=False).digest()
    ctx = hashlib.md5(password + magic + salt, usedforsecurity=False)
    remaining = len(password)
    while remaining > 0:
        ctx.update(inner[: min(remaining, 16)])
        remaining -= 16
    # The original code feeds "final[0]" after zeroing it, so a set bit adds a NUL byte, not the digest.
    bits = len(password)
    while bits:
        ctx.update(b"\0" if bits & 1 else password[:1])
        bits >>= 1
    digest = ctx.digest()
    # 1000 rounds, meant in 1994 to slow an attacker down; the pattern of inputs is part of the algorithm.
    for i in range(1000):
        round_input = password if i & 1 else digest
        if i % 3:
            round_input += salt
        if i % 7:
            round_input += password
        round_input += digest if i & 1 else password
        digest = hashlib.md5(round_input, usedforsecurity=False).digest()
    encoded = "".join(
        _crypt64((digest[a] << 16) | (digest[b] << 8) | digest[c], 4)
        for a, b, c in ((0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5))
    )
    encoded += _crypt64(digest[11], 2)
    return f"{magic.decode('ascii')}{salt.decode('utf-8', 'replace')}${encoded}"


def _crypt64(value: int, count: int) -> str:
    chars = []
    for _ in range(count):
        chars.append(_CRYPT64[value & 0x3F])
        value >>= 6
    return "".join(chars)


def _sha1_digest(stored: str) -> bytes | None:
    try:
        raw = base64.b64decode(stored[len("{SHA}") :], validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 20 else None


def _unsupported_reason(stored: str) -> str:
    if stored.startswith("$2"):
        return "malformed or unknown bcrypt variant"
    if stored.startswith(("$apr1$", "$1$")):
        return "malformed MD5-crypt hash"
    if stored.startswith("$5$"):
        return "SHA-256-crypt"
    if stored.startswith("$6$"):
        return "SHA-512-crypt"
    if stored.startswith(("$y$", "$7$")):
        return "yescrypt/scrypt"
    if stored.startswith("$argon2"):
        return "Argon2"
    if stored.startswith("{SSHA}"):
        return "salted SHA-1 {SSHA}"
    if _DES_CRYPT.fullmatch(stored):
        return "DES crypt"
    if stored == "":
        return "empty hash"
    return "plain text or unknown format"
