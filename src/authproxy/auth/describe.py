"""Challenges in words, for the errors a person reads ("it offered: Digest SHA-256 (qop auth; realm "x")")."""

from __future__ import annotations

from collections.abc import Sequence

from authproxy.auth.errors import AuthHeaderError, ProxyAuthError
from authproxy.auth.headers import Challenge, parse_challenges
from authproxy.auth.messages import ProxyResponse
from authproxy.auth.roles import ORIGIN


def describe_challenge(challenge: Challenge) -> str:
    """One challenge in words: ``Digest SHA-256 (qop auth, auth-int; realm "x"; userhash)``."""
    realm = challenge.param("realm")
    if challenge.scheme_key == "digest":
        alg = challenge.param("algorithm") or "MD5"
        parts: list[str] = []
        qop = challenge.param("qop")
        parts.append(f"qop {qop}" if qop else "no qop (RFC 2069 form)")
        if realm is not None:
            parts.append(f'realm "{realm}"')
        if (challenge.param("userhash") or "").lower() == "true":
            parts.append("userhash")
        if (challenge.param("stale") or "").lower() == "true":
            parts.append("stale")
        return f"Digest {alg} ({'; '.join(parts)})"
    if realm is not None:
        return f'{challenge.scheme} (realm "{realm}")'
    return challenge.scheme


def offered(challenges: Sequence[Challenge]) -> str:
    return ", ".join(describe_challenge(c) for c in challenges) or "nothing"


def answered_401(response: ProxyResponse) -> ProxyAuthError:
    """A proxy that answers CONNECT with 401 (an origin's status) most likely refused the credentials."""
    challenges: list[Challenge] = []
    for value in response.get_all(ORIGIN.challenge_field):
        try:
            challenges.extend(parse_challenges([value]))
        except AuthHeaderError:
            continue
    return ProxyAuthError(
        "the proxy answered the CONNECT with 401 instead of 407 (RFC 9110 section 15.5.2: 401 is an "
        "origin's answer); it most likely refused the credentials, and since a 401 asks for origin "
        f"credentials they are not sent again; it offered: {offered(challenges)}",
        status=response.status, headers=response.headers, body_text=response.body_text,
        challenges=challenges, reason="answered-401",
    )
