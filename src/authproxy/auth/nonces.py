"""Stateless, authenticated Digest nonces (RFC 7616 section 3.3 and section 5.4-5.5 on nonce design).

A nonce is ``base64url(version | issued_at | rand16 | tag16)`` where ``tag16`` is the first 16 bytes of
HMAC-SHA256(key, domain | realm | version | issued_at | rand16). The server keeps no table of issued nonces:
any nonce that carries a good tag was issued by us, for this realm, at ``issued_at``. This follows the
time-stamp + keyed hash design RFC 2617 section 3.2.1 suggests, with an HMAC instead of H(ts:ETag:key) and
randomness so two nonces from the same instant differ.

What the tag buys:

- a forged or altered nonce is INVALID, never EXPIRED, so it can never earn a ``stale=true`` answer (a stale
  challenge tells a client to retry silently; CVE-2014-9749 was a proxy honouring nonces it should not have);
- no pointer or counter inside the nonce is trusted before the tag is checked (CVE-2019-18679 leaked a
  pointer through the nonce).

Replay protection within the lifetime is the nonce-count table of :mod:`authproxy.state`. The module reads
no clock and draws no randomness: ``now`` and ``rand`` are passed in.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import math
import re
import struct

from authproxy.auth.errors import AuthHeaderError, ConfigError

_VERSION = 1
_PAYLOAD = struct.Struct(">Bd16s")  # version, issued_at (seconds, IEEE double), rand16
_TAG_SIZE = 16
_RAW_SIZE = _PAYLOAD.size + _TAG_SIZE
_ENCODED_SIZE = (_RAW_SIZE * 8 + 5) // 6  # unpadded base64url length
# The base64url alphabet needs no escaping inside a quoted-string, or anywhere in a URL.
_NONCE_RE = re.compile(rf"[A-Za-z0-9_-]{{{_ENCODED_SIZE}}}")
_DOMAIN = b"authproxy digest nonce\x00"
_OPAQUE_DOMAIN = b"authproxy digest opaque\x00"
_NEXT_DOMAIN = b"authproxy digest nextnonce\x00"

#: Smallest HMAC key accepted; 32 random bytes is what a deployment should use.
MIN_KEY_SIZE = 16


class NonceStatus(enum.Enum):
    VALID = "valid"
    EXPIRED = (
        "expired"  # ours and authentic, but older than the lifetime: answer stale=true if the digest is right
    )
    INVALID = "invalid"  # forged, malformed, for another realm or key, or issued in the future


# Read once (through the Enum class each read costs a metaclass __getattr__ call on Python 3.11): check() runs
# on every Digest request.
_VALID, _EXPIRED, _INVALID = NonceStatus.VALID, NonceStatus.EXPIRED, NonceStatus.INVALID


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class NonceIssuer:
    """Issues and checks the nonces of one realm under one key."""

    def __init__(self, key: bytes, realm: str, lifetime: float, *, skew: float = 5.0) -> None:
        if len(key) < MIN_KEY_SIZE:
            raise ConfigError(f"nonce key: at least {MIN_KEY_SIZE} bytes are needed, got {len(key)}")
        if not (lifetime > 0 and math.isfinite(lifetime)):
            raise ConfigError(f"nonce_lifetime: must be a positive number of seconds, got {lifetime!r}")
        if not (skew >= 0 and math.isfinite(skew)):
            raise ConfigError(f"nonce skew: must be a non-negative number of seconds, got {skew!r}")
        self._key = bytes(key)
        self._realm = realm.encode("utf-8")
        self.realm = realm
        self.lifetime = float(lifetime)
        # Several proxy processes may share the key; their clocks can disagree by a little.
        self.skew = float(skew)
        opaque = hmac.new(self._key, _OPAQUE_DOMAIN + self._realm, hashlib.sha256).digest()
        self._opaque = _b64url(opaque[:16])
        self._authentic: dict[str, float] = {}  # nonce -> issued_at, see _decode

    @property
    def opaque(self) -> str:
        """A stable value for the ``opaque`` parameter, derived from the key and realm, so it can be checked
        when the client echoes it (RFC 7616 section 3.3)."""
        return self._opaque

    def _tag(self, payload: bytes) -> bytes:
        # The realm is length-prefixed so that no (realm, payload) pair can collide with another.
        message = _DOMAIN + struct.pack(">I", len(self._realm)) + self._realm + payload
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_TAG_SIZE]

    def issue(self, now: float, rand: bytes) -> str:
        """A fresh nonce issued at ``now``; ``rand`` supplies at least 16 random bytes (only 16 are used)."""
        if len(rand) < 16:
            raise ValueError("a nonce needs 16 random bytes")
        if not math.isfinite(now):
            raise ValueError("now must be a finite time")
        payload = _PAYLOAD.pack(_VERSION, now, bytes(rand[:16]))
        return _b64url(payload + self._tag(payload))

    def next_nonce(self, previous: str, now: float, context: str) -> str:
        """A fresh nonce for a ``nextnonce`` (RFC 7616 section 3.5), when no random bytes are at hand.

        Its 16 "random" bytes are HMAC(key, previous nonce | context): unpredictable without the key, and
        distinct for every (nonce, nc, cnonce) the caller passes as context. Still no randomness of our own.
        """
        material = _NEXT_DOMAIN + previous.encode("utf-8", "surrogatepass") + b"\x00"
        material += context.encode("utf-8", "surrogatepass")
        rand = hmac.new(self._key, material, hashlib.sha256).digest()[:16]
        return self.issue(now, rand)

    def _decode(self, nonce: str) -> float | None:
        """issued_at of an authentic nonce, None for anything else.

        Authentic nonces are remembered (a bounded memo, not state: the answer is a pure function of the
        nonce and the key), since a client reuses one nonce for many requests. Forgeries are not, so they
        cannot crowd it out; each costs its HMAC.
        """
        known = self._authentic.get(nonce) if isinstance(nonce, str) else None
        if known is not None:
            return known
        issued_at = self._verify(nonce)
        if issued_at is not None:
            if len(self._authentic) >= 4096:
                self._authentic.clear()
            self._authentic[nonce] = issued_at
        return issued_at

    def _verify(self, nonce: str) -> float | None:
        if not isinstance(nonce, str) or _NONCE_RE.fullmatch(nonce) is None:
            return None
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) != _RAW_SIZE:
            return None
        payload, tag = raw[: _PAYLOAD.size], raw[_PAYLOAD.size :]
        # Constant time: a timing oracle on the tag would let an attacker forge one byte at a time.
        if not hmac.compare_digest(tag, self._tag(payload)):
            return None
        version, issued_at, _rand = _PAYLOAD.unpack(payload)
        if version != _VERSION or not math.isfinite(issued_at):
            return None
        return float(issued_at)

    def check(self, nonce: str, now: float) -> NonceStatus:
        """VALID, EXPIRED (authentic but too old) or INVALID."""
        issued_at = self._decode(nonce)
        if issued_at is None or issued_at > now + self.skew:
            return _INVALID
        if now >= issued_at + self.lifetime:
            return _EXPIRED
        return _VALID

    def issued_at(self, nonce: str) -> float:
        """When an authentic nonce was issued; AuthHeaderError if it is not one of ours."""
        issued_at = self._decode(nonce)
        if issued_at is None:
            raise AuthHeaderError("not a nonce issued here")
        return issued_at

    def expires_at(self, nonce: str) -> float:
        """When an authentic nonce stops being VALID."""
        return self.issued_at(nonce) + self.lifetime


class NonceUse(enum.Enum):
    """What a nonce-count store (:mod:`authproxy.state`) knows of one ``(nonce, nc)``: the answer to the
    verifier's ``NeedNonceUse``. A bounded store that forgot a nonce answers UNKNOWN, never REPLAY."""

    FRESH = "fresh"  # first time seen: accept
    REPLAY = "replay"  # seen before (or a count that can never be valid, nc < 1): refuse as a replay
    UNKNOWN = "unknown"  # the store cannot vouch for this nonce's counts (forgotten, expired): answer stale

    def __bool__(self) -> bool:
        # "Was it accepted?": lets a caller (or a test) that only asks that read the answer as the old bool.
        return self is NonceUse.FRESH
