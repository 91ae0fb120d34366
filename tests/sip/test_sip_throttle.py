"""The failed-sign-in throttle of `authproxy sip serve` over real sockets on 127.0.0.1: the HTTP proxy's
FailureThrottle and `throttle_*` keys, answered with 503 and Retry-After (SIP has no 429) and logged
`throttled`. Client addresses are 127.0.0.x, each UA on a UDP socket of its own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sip_uas import Uas
from test_sip_serve import PASSWORD, REALM, UdpClient, outcomes

from authproxy.auth.errors import ProxyAuthError
from authproxy.sip.client import SipAuthenticator
from authproxy.sip.message import SipRequest, SipResponse

from helpers import USERS, SipProxyProcess, make_users_file, start_sip_proxy

LOCKOUT = 60


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[SipProxyProcess]:
    users = make_users_file(tmp_path / "sip.users", REALM)
    with Uas({}, roles=()) as uas:
        # The throttle keys at the top of the file: shared with `authproxy serve`, as the users and realm are.
        proc = start_sip_proxy(tmp_path, users, f"sip:127.0.0.1:{uas.port}", listen=("udp:127.0.0.1:0",),
                               config_text=f"throttle_max_failures = 3\nthrottle_lockout = {LOCKOUT}\n")
        yield proc
        proc.stop()


def attempt(client: UdpClient, user: str, password: str) -> tuple[list[SipRequest], list[SipResponse]]:
    """One sign-in as ``user``: what was sent and answered, until a final answer or the client gives up (its
    answer refused)."""
    exchange = SipAuthenticator(user, password, random=os.urandom, userhash=False).exchange(client.request())
    sent, answers = [next(exchange)], []
    while True:
        answers.append(client.send(sent[-1]))
        try:
            sent.append(exchange.send(answers[-1]))
        except (StopIteration, ProxyAuthError):
            return sent, answers


def statuses(answers: list[SipResponse]) -> list[int]:
    return [answer.status for answer in answers]


def test_lockout_per_address_and_per_user_name(proxy: SipProxyProcess) -> None:
    port = proxy.ports["udp"]
    home, attacker, elsewhere, quiet = (UdpClient(port, f"127.0.0.{n}") for n in (2, 3, 4, 5))
    try:
        assert statuses(attempt(home, "alice", PASSWORD)[1]) == [407, 200]  # alice's known address
        # No credentials at all is the 407 exchange's first step: never counted.
        assert [quiet.send(quiet.request()).status for _ in range(5)] == [407] * 5
        for _ in range(2):
            sent, answers = attempt(attacker, "alice", "guess")
            assert statuses(answers) == [407, 407]
        # A retransmission of the last guess is the same transaction: the same 407, not a second failure.
        again = attacker.send(sent[-1])
        assert again.status == 407 and again.to_bytes() == answers[-1].to_bytes()
        assert outcomes(proxy, sent[-1].call_id, 2) == [("ANSWERED", 407, None, "missing"),
                                                        ("ANSWERED", 407, "alice", "bad-password")]
        # The third guess is still evaluated (2 failures so far), and locks the address and the name.
        sent, answers = attempt(attacker, "alice", "guess")
        assert statuses(answers) == [407, 407]
        # The address: every request refused before its credentials are looked at, even without any.
        locked = attacker.send(attacker.request())
        assert (locked.status, locked.reason) == (503, "Service Unavailable")
        assert 0 < int(locked.get("Retry-After") or "0") <= LOCKOUT
        assert "too many failed sign-ins from your address" in (locked.get("Warning") or "")
        assert outcomes(proxy, locked.call_id, 1) == [("ANSWERED", 503, None, "throttled")]
        # The name, from a new address: refused even with the right password (the answer does not tell).
        sent, answers = attempt(elsewhere, "alice", PASSWORD)
        assert statuses(answers) == [407, 503]
        assert "for this user name" in (answers[-1].get("Warning") or "")
        assert outcomes(proxy, sent[-1].call_id, 2)[-1] == ("ANSWERED", 503, "alice", "throttled")
        # ... but not from the address alice signed in from before, nor another user from the new address.
        assert statuses(attempt(home, "alice", PASSWORD)[1]) == [407, 200]
        assert statuses(attempt(elsewhere, "bob", USERS["bob"])[1]) == [407, 200]
    finally:
        for client in (home, attacker, elsewhere, quiet):
            client.close()
