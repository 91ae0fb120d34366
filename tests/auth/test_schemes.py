"""Roles and schemes as data (issue 8 part 3): the verifier in either role, the scheme registry, and a
connection-bound scheme (a two-leg handshake, NTLM-like) kept per connection without weakening Basic or
Digest, all driven in memory."""

from __future__ import annotations

from typing import Any

import pytest

from authproxy.auth import driver
from authproxy.auth.basic import encode_basic
from authproxy.auth.digest import BASE_ALGORITHMS, compute_ha1
from authproxy.auth.errors import ConfigError
from authproxy.auth.flow import Allow, ConnectionAuth, Reject
from authproxy.auth.headers import parse_challenges
from authproxy.auth.nonces import NonceIssuer
from authproxy.auth.outcomes import Outcome
from authproxy.auth.policy import AuthPolicy
from authproxy.auth.roles import ORIGIN, PROXY, Role
from authproxy.auth.schemes import SCHEMES, BasicScheme, SchemeFactory
from authproxy.auth.store import UserEntry
from authproxy.auth.verifier import Verifier
from authproxy.state import MemoryNonceCounterStore
from authproxy.users.memory import MemoryUserStore

from helpers import Handshake, digest_authorization

REALM = "schemes"
NOW = 1_700_000_000.0
TARGET = "http://origin.test/p"
STORE = MemoryUserStore([UserEntry("alice", REALM, {a: compute_ha1(a, "alice", REALM, "pw") for a in BASE_ALGORITHMS})])


def verifier(role: Role = PROXY, known: dict[str, SchemeFactory] | None = None, **policy: Any) -> Verifier:
    pol = AuthPolicy(realm=REALM, known_schemes=known or SCHEMES, **policy)
    return Verifier(pol, NonceIssuer(b"k" * 32, REALM, pol.nonce_lifetime), role)


def run(v: Verifier, auth: str | None, connection: ConnectionAuth | None = None) -> Allow | Reject:
    return driver.run(v.verify("GET", TARGET, auth, NOW, connection), STORE, MemoryNonceCounterStore(), NOW)


BASIC = "Basic " + encode_basic("alice", "pw")


# --- roles ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [PROXY, ORIGIN])
def test_the_verifier_answers_in_its_role(role: Role) -> None:
    v = verifier(role)
    missing = run(v, None)
    assert isinstance(missing, Reject) and missing.role is role and missing.status == role.status
    assert missing.challenge_field == role.challenge_field
    assert missing.detail == f"no {role.credentials_field} field"
    assert Outcome.MISSING.client_text(role).startswith(f"this {role.name} requires credentials")
    allowed = run(v, BASIC)
    assert isinstance(allowed, Allow) and allowed.role is role
    wrong = run(v, "Basic " + encode_basic("alice", "nope"))
    assert isinstance(wrong, Reject) and wrong.role is role and wrong.outcome is Outcome.BAD_PASSWORD
    # Digest answers in the role's info field.
    auth = digest_authorization(v.challenges(NOW, b"r" * 16)[0], "alice", "pw", "GET", TARGET)
    digest = run(v, auth)
    assert isinstance(digest, Allow) and digest.scheme == "digest" and digest.info_field == role.info_field
    assert digest.auth_info is not None and "rspauth=" in digest.auth_info


# --- the registry --------------------------------------------------------------------------------------------


def test_the_registry_names_the_schemes_strongest_first() -> None:
    assert list(SCHEMES) == ["digest", "basic"]
    values = verifier(schemes=("basic", "digest")).challenges(NOW, b"r" * 16)
    assert [c.scheme_key for c in parse_challenges(values)] == ["digest", "digest", "basic"]
    with pytest.raises(ConfigError, match="unknown scheme 'ntlm' \\(known: digest, basic\\)"):
        AuthPolicy(realm=REALM, schemes=("ntlm",))


def test_scheme_names_are_case_insensitive_and_unoffered_ones_refused() -> None:
    assert isinstance(run(verifier(), "bAsIc " + encode_basic("alice", "pw")), Allow)
    refused = run(verifier(schemes=("digest",)), BASIC)
    assert isinstance(refused, Reject) and refused.outcome is Outcome.UNSUPPORTED_SCHEME
    refused = run(verifier(), "Bearer abc")
    assert isinstance(refused, Reject) and refused.outcome is Outcome.UNSUPPORTED_SCHEME


# --- a connection-bound scheme -------------------------------------------------------------------------------


def answer(token: str, password: str = "pw") -> str:
    return f"Handshake {token} alice {password}"


WITH_HANDSHAKE: dict[str, SchemeFactory] = {**SCHEMES, "handshake": Handshake}


def test_a_connection_bound_scheme_signs_its_connection_in_and_no_other() -> None:
    v = verifier(known=WITH_HANDSHAKE, schemes=("handshake", "digest", "basic"))
    conn = ConnectionAuth()
    leg1 = run(v, "Handshake hello", conn)
    assert isinstance(leg1, Reject) and leg1.challenge == "Handshake t1" and conn.handshakes == {"handshake": "t1"}
    leg2 = run(v, answer("t1"), conn)
    assert isinstance(leg2, Allow) and leg2.scheme == "handshake" and conn.signed_in == leg2
    # The connection is signed in: a later request on it needs no credentials ...
    assert run(v, None, conn) == leg2
    # ... and another connection, or a caller that keeps no connection state, is not.
    assert isinstance(run(v, None, ConnectionAuth()), Reject)
    assert isinstance(run(v, None), Reject)


def test_a_connection_bound_scheme_needs_the_connection_state() -> None:
    v = verifier(known=WITH_HANDSHAKE, schemes=("handshake",))
    refused = run(v, "Handshake hello")
    assert isinstance(refused, Reject) and refused.outcome is Outcome.UNSUPPORTED_SCHEME
    # A second leg on another connection finds no handshake in progress.
    run(v, "Handshake hello", ConnectionAuth())
    other = run(v, answer("t1"), ConnectionAuth())
    assert isinstance(other, Reject) and other.outcome is Outcome.BAD_NONCE


def test_basic_and_digest_stay_per_request_on_a_signed_in_connection() -> None:
    v = verifier(known=WITH_HANDSHAKE, schemes=("handshake", "digest", "basic"))
    conn = ConnectionAuth()
    run(v, "Handshake hello", conn)
    assert isinstance(run(v, answer("t1"), conn), Allow)
    # Credentials of a per-request scheme are checked on their own, whatever the connection did before.
    wrong = run(v, "Basic " + encode_basic("alice", "nope"), conn)
    assert isinstance(wrong, Reject) and wrong.outcome is Outcome.BAD_PASSWORD
    forged = run(v, 'Digest username="alice", realm="schemes", nonce="forged", uri="http://origin.test/p", '
                    f'response="{"0" * 32}", qop=auth, nc=00000001, cnonce="c", opaque="x"', conn)
    assert isinstance(forged, Reject) and forged.outcome is Outcome.BAD_NONCE
    # And a per-request scheme never signs a connection in.
    fresh = ConnectionAuth()
    assert isinstance(run(v, BASIC, fresh), Allow) and fresh.signed_in is None
    assert isinstance(run(v, None, fresh), Reject)


def test_basic_is_a_registered_scheme_object() -> None:
    scheme = verifier().schemes["basic"]
    assert isinstance(scheme, BasicScheme) and not scheme.connection_bound
    assert scheme.challenges(NOW, b"", False) == [f'Basic realm="{REALM}", charset="UTF-8"']
