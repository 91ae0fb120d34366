"""Reading a 401 or 407's challenges: which this client can answer, ranked, and why not the others (RFC 9110
section 11.6.1: several challenges, the peer's preference first; RFC 7616 section 3.7: the strongest Digest
algorithm the client supports)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from authproxy.auth.describe import describe_challenge
from authproxy.auth.digest import DigestChallenge
from authproxy.auth.errors import AuthHeaderError
from authproxy.auth.headers import Challenge, parse_challenges
from authproxy.auth.messages import ProxyRequest, ProxyResponse
from authproxy.auth.roles import Role

KNOWN_QOP = ("auth", "auth-int")


@dataclass(frozen=True)
class Option:
    """One answerable challenge."""

    rank: int  # higher is stronger
    challenge: Challenge
    digest: DigestChallenge | None  # None: Basic


@dataclass
class Judged:
    """The challenges of one 407 (or 401), sorted into what we can answer and why not the rest."""

    challenges: list[Challenge] = field(default_factory=list)
    options: list[Option] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # reasons, in words
    unreadable: int = 0  # field lines that did not parse
    basic_refused: bool = False
    auth_int_declined: bool = False


def judge(response: ProxyResponse, request: ProxyRequest, *, role: Role, username: str | None,
          basic_allowed: bool, accept: Callable[[Challenge], bool] | None) -> Judged:
    """Sort the challenges of one 401/407 into what this client can answer (strongest first; among equals the
    peer's order, RFC 9110 section 11.6.1) and, in words, why not the rest."""
    judged = Judged()
    for value in response.get_all(role.challenge_field):
        try:
            judged.challenges.extend(parse_challenges([value]))
        except AuthHeaderError:
            judged.unreadable += 1
    for position, challenge in enumerate(judged.challenges):
        # Later in the list ranks lower among equals: the peer lists its preference first.
        order = -position
        if accept is not None and not accept(challenge):
            judged.skipped.append(f"{describe_challenge(challenge)} (excluded by the caller)")
            continue
        if challenge.scheme_key == "digest":
            try:
                dc = DigestChallenge.from_challenge(challenge)
            except AuthHeaderError as exc:
                judged.skipped.append(f"a malformed Digest challenge ({exc.message})")
                continue
            if dc is None:
                judged.skipped.append(f"Digest {challenge.param('algorithm')} (an algorithm we do not know)")
                continue
            known = tuple(q for q in dc.qop if q in KNOWN_QOP)
            if dc.qop and not known:
                judged.skipped.append(f"Digest {dc.algorithm} with qop {', '.join(dc.qop)} (unknown qop)")
                continue
            if known and "auth" not in known and request.body is None:
                judged.auth_int_declined = True
                judged.skipped.append(f"Digest {dc.algorithm} qop=auth-int (the body is a stream and "
                                      "cannot be hashed)")
                continue
            dc = DigestChallenge(dc.realm, dc.nonce, dc.opaque, dc.algorithm, known, dc.stale, dc.userhash,
                                 dc.charset_utf8)
            judged.options.append(Option(dc.alg.strength * 1000 + order, challenge, dc))
        elif challenge.scheme_key == "basic":
            if not basic_allowed:
                judged.basic_refused = True
                judged.skipped.append("Basic (refused: it would send the password in clear text to an "
                                      f"http:// {role.name})")
                continue
            if username is not None and ":" in username:
                judged.skipped.append("Basic (the user name contains ':', which Basic cannot carry)")
                continue
            judged.options.append(Option(order, challenge, None))
        else:
            judged.skipped.append(f"{challenge.scheme} (a scheme this client does not speak)")
    judged.options.sort(key=lambda o: -o.rank)
    return judged
