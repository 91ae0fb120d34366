"""The authenticating SIP proxy's decisions (authproxy.sip.proxy), as playbooks in memory: these bytes from this
address at this time in, these sends and log records out. No socket, a fake clock."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sip_strategies import requests

from authproxy.auth.digest import BASE_ALGORITHMS, compute_ha1
from authproxy.auth.headers import parse_challenges
from authproxy.auth.nonces import NonceIssuer
from authproxy.auth.outcomes import Outcome
from authproxy.auth.policy import AuthPolicy
from authproxy.auth.roles import PROXY
from authproxy.auth.store import UserEntry
from authproxy.auth.verifier import Verifier
from authproxy.sip.actions import Send
from authproxy.sip.client import SipAuthenticator, drive
from authproxy.sip.log import ANSWERED, DROPPED, FORWARDED, SipRecord, format_sip_squid, parse_sip_line
from authproxy.sip.message import SipRequest, SipResponse, replace_top_via, response_to
from authproxy.sip.parse import parse_datagram
from authproxy.sip.proxy import SipProxy
from authproxy.sip.routing import BRANCH_PREFIX, NextHop
from authproxy.state import MemoryNonceCounterStore
from authproxy.users.memory import MemoryUserStore

USERS = {"alice": "wonderland", "bob": "pa:ss, \"word\""}
CLIENT = ("127.0.0.1", 5070)
HOP = NextHop("127.0.0.9", 5080, "udp")
NOW = 1_800_000_000.0


def make_proxy(realm: str = "sip.example.org", algorithms: tuple[str, ...] = ("MD5", "SHA-256"),
               local: tuple[str, int] = ("127.0.0.1", 5060), next_hop: NextHop = HOP,
               max_transactions: int = 20_000, max_transactions_per_source: int = 2_000,
               **options: Any) -> SipProxy:
    policy = AuthPolicy(realm, schemes=("digest",), digest_algorithms=algorithms, qop=("auth",), userhash=False)
    entries = [UserEntry(name, realm, {a: compute_ha1(a, name, realm, pw) for a in BASE_ALGORITHMS})
               for name, pw in USERS.items()]
    verifier = Verifier(policy, NonceIssuer(os.urandom(32), realm, policy.nonce_lifetime), PROXY)
    return SipProxy(verifier, MemoryUserStore(entries), MemoryNonceCounterStore(), next_hop=next_hop,
                    local={next_hop.transport: local}, random=os.urandom,
                    max_transactions=max_transactions, max_transactions_per_source=max_transactions_per_source,
                    **options)


def options(branch: str = "z9hG4bKc1", cseq: int = 1, *, extra: tuple[tuple[str, str], ...] = (),
            method: str = "OPTIONS", max_forwards: str | None = "70") -> SipRequest:
    headers = [("Via", f"SIP/2.0/UDP 10.0.0.1:5070;branch={branch};rport")]
    if max_forwards is not None:
        headers.append(("Max-Forwards", max_forwards))
    headers += [("From", "<sip:alice@example.org>;tag=f1"), ("To", "<sip:bob@example.org>"),
                ("Call-ID", "call-1@10.0.0.1"), ("CSeq", f"{cseq} {method}"), *extra, ("Content-Length", "0")]
    return SipRequest(method=method, uri="sip:bob@example.org", headers=tuple(headers))


def sends(actions: list[Send | SipRecord]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def records(actions: list[Send | SipRecord]) -> list[SipRecord]:
    return [a for a in actions if isinstance(a, SipRecord)]


def only_send(actions: list[Send | SipRecord]) -> tuple[Send, SipRequest | SipResponse]:
    (send,) = sends(actions)
    return send, parse_datagram(send.data)


def next_hop_answers(request: SipRequest, status: int = 200) -> bytes:
    return response_to(request, status, "OK", to_tag="uas").to_bytes()


class Client:
    """A UA whose every request goes through ``proxies`` in turn (each one's next hop the next), ending at a
    UAS that answers 200: ``send`` returns the response the UA receives."""

    def __init__(self, *proxies: SipProxy, now: Callable[[], float] = lambda: NOW) -> None:
        self.proxies, self.now = proxies, now
        self.log: list[SipRecord] = []
        self.reached: list[SipRequest] = []

    def send(self, request: SipRequest) -> SipResponse:
        data, source = request.to_bytes(), CLIENT
        for i, proxy in enumerate(self.proxies):
            actions = proxy.datagram(data, source, "udp", self.now())
            self.log += records(actions)
            send, message = only_send(actions)
            if isinstance(message, SipResponse):  # answered by proxy i: back through those before it
                return self._back(send, i - 1)
            data, source = send.data, proxy.local["udp"]
        assert isinstance(message, SipRequest)
        self.reached.append(message)
        return self._back(Send(next_hop_answers(message), self.proxies[-1].local["udp"], "udp"),
                          len(self.proxies) - 1)

    def _back(self, send: Send, last: int) -> SipResponse:
        """``send``, a response, relayed by proxies ``last``..0, each receiving it from its next hop."""
        for proxy in reversed(self.proxies[: last + 1]):
            assert send.to == proxy.local["udp"]
            send, _ = only_send(proxy.datagram(send.data, proxy.next_hop.address, "udp", self.now()))
        assert send.to == CLIENT
        response = parse_datagram(send.data)
        assert isinstance(response, SipResponse)
        return response


# --- the 407 and the forwarded request -------------------------------------------------------------------


def test_challenges_with_407_copying_the_transaction_fields() -> None:
    proxy = make_proxy()
    send, response = only_send(proxy.datagram(options().to_bytes(), CLIENT, "udp", NOW))
    assert isinstance(response, SipResponse) and response.status == 407
    assert send.to == CLIENT  # rport asked: the source address and port (RFC 3581 section 4)
    via = response.vias[0]
    assert (via.branch, via.received, via.rport) == ("z9hG4bKc1", "127.0.0.1", 5070)
    assert response.to.tag and response.from_.tag == "f1" and response.call_id == "call-1@10.0.0.1"
    challenges = parse_challenges(response.get_all("Proxy-Authenticate"))
    assert [c.param("algorithm") for c in challenges] == ["MD5", "SHA-256"]  # operator's order, one line each
    assert (response.get("Warning") or "").startswith('399 authproxy "this proxy requires credentials')
    (record,) = records(proxy.datagram(options("z9hG4bKc2").to_bytes(), CLIENT, "udp", NOW))
    assert (record.action, record.status, record.outcome, record.user) == (ANSWERED, 407, Outcome.MISSING, None)


@pytest.mark.parametrize("algorithms", [("MD5", "SHA-256"), ("SHA-256", "MD5"), ("SHA-512-256",)])
def test_authenticated_request_is_forwarded_and_the_response_comes_back(algorithms: tuple[str, ...]) -> None:
    proxy = make_proxy(algorithms=algorithms)
    client = Client(proxy)
    auth = SipAuthenticator("bob", USERS["bob"], random=os.urandom, userhash=False)
    response = drive(auth.exchange(options()), client.send)
    assert response.status == 200 and len(response.vias) == 1  # own Via popped
    assert response.vias[0].branch == client.reached[0].vias[1].branch
    (forwarded,) = client.reached
    ours, theirs = forwarded.vias
    assert ours.branch is not None and ours.branch.startswith(BRANCH_PREFIX)
    assert (ours.transport, ours.host, ours.port) == ("UDP", "127.0.0.1", 5060)
    assert (theirs.received, theirs.rport) == ("127.0.0.1", 5070)
    assert forwarded.get_all("Proxy-Authorization") == [] and forwarded.max_forwards == 69
    assert [(r.action, r.outcome, r.user) for r in client.log] == [
        (ANSWERED, Outcome.MISSING, None), (FORWARDED, Outcome.OK, "bob")]
    assert client.log[1].peer == HOP.address


def test_max_forwards_added_when_missing_and_483_at_zero() -> None:
    proxy = make_proxy()
    for method in ("ACK", "CANCEL"):  # never challenged: forwarded without credentials
        send, forwarded = only_send(proxy.datagram(options(method=method, max_forwards=None).to_bytes(), CLIENT,
                                                   "udp", NOW))
        assert send.to == HOP.address and isinstance(forwarded, SipRequest) and forwarded.max_forwards == 70
        assert forwarded.headers[-1] == ("Content-Length", "0")
    _send, response = only_send(proxy.datagram(options(max_forwards="0").to_bytes(), CLIENT, "udp", NOW))
    assert isinstance(response, SipResponse) and (response.status, response.reason) == (483, "Too Many Hops")
    ack = proxy.datagram(options(method="ACK", max_forwards="0").to_bytes(), CLIENT, "udp", NOW)
    assert sends(ack) == [] and records(ack)[0].action == DROPPED  # an ACK is never answered


def test_unverified_request_with_unparseable_credentials_is_forwarded_without_them() -> None:
    """ACK and CANCEL are not verified, a trusted peer's requests neither: a Proxy-Authorization line that does
    not parse is dropped on forwarding (whose it is cannot be told), the others of other realms kept. Found by
    the SIP fuzz target, which raised AuthHeaderError out of the proxy."""
    other = 'Digest username="bob", realm="next.example", nonce="n", uri="sip:bob@example.com", response="00"'
    for method in ("ACK", "CANCEL"):
        for garbage in ('ab"', "a,b", 'x y="'):
            request = options(method=method, extra=(("Proxy-Authorization", garbage),
                                                    ("Proxy-Authorization", other)))
            send, forwarded = only_send(make_proxy().datagram(request.to_bytes(), CLIENT, "udp", NOW))
            assert send.to == HOP.address and isinstance(forwarded, SipRequest)
            assert forwarded.get_all("Proxy-Authorization") == [other]


def test_proxy_require_is_refused_with_420() -> None:
    _send, response = only_send(make_proxy().datagram(
        options(extra=(("Proxy-Require", "foo"),)).to_bytes(), CLIENT, "udp", NOW))
    assert isinstance(response, SipResponse) and response.status == 420 and response.get("Unsupported") == "foo"


# --- replays and retransmissions -------------------------------------------------------------------------


def authenticated(proxy: SipProxy, user: str = "alice") -> tuple[Client, SipRequest]:
    """A client signed in through ``proxy``; returns the request that carried the right answer."""
    client = Client(proxy)
    auth = SipAuthenticator(user, USERS[user], random=os.urandom, userhash=False)
    sent: list[SipRequest] = []

    def capture(request: SipRequest) -> SipResponse:
        sent.append(request)
        return client.send(request)

    assert drive(auth.exchange(options()), capture).status == 200
    return client, sent[-1]


def test_a_retransmission_gets_the_same_treatment_not_a_replay() -> None:
    proxy = make_proxy()
    _client, answered = authenticated(proxy)
    wire = answered.to_bytes()
    first = proxy.datagram(wire, CLIENT, "udp", NOW + 1)  # UDP retransmission of the signed-in request
    again = proxy.datagram(wire, CLIENT, "udp", NOW + 4)
    assert sends(first) == sends(again) and len(sends(first)) == 1 and sends(first)[0].to == HOP.address
    assert records(first) == records(again) == []  # one log line per transaction
    challenged = options("z9hG4bKretx").to_bytes()
    assert sends(proxy.datagram(challenged, CLIENT, "udp", NOW)) == sends(proxy.datagram(challenged, CLIENT,
                                                                                         "udp", NOW + 0.5))


def test_a_replayed_answer_in_a_new_transaction_is_refused() -> None:
    proxy = make_proxy()
    _client, answered = authenticated(proxy)
    # The same Proxy-Authorization (same nonce and nc) in a new transaction, from another address.
    replay = SipRequest(method="OPTIONS", uri=answered.uri, headers=tuple(
        (n, v.replace(answered.vias[0].branch or "", "z9hG4bKreplay") if n == "Via" else v)
        for n, v in answered.headers))
    actions = proxy.datagram(replay.to_bytes(), ("127.0.0.2", 5070), "udp", NOW + 2)
    _send, response = only_send(actions)
    assert isinstance(response, SipResponse) and response.status == 407
    (record,) = records(actions)
    assert (record.outcome, record.user) == (Outcome.REPLAY, "alice") and record.outcome.failed


def test_stale_nonce_forged_nonce_no_qop_wrong_realm_and_uri_mismatch() -> None:
    proxy = make_proxy()
    _client, answered = authenticated(proxy)
    field = answered.get("Proxy-Authorization") or ""

    def attempt(value: str, branch: str, *, now: float = NOW, uri: str | None = None) -> tuple[int, Outcome]:
        headers = tuple((n, value if n == "Proxy-Authorization" else
                         v.replace("z9hG4bK", branch, 1) if n == "Via" else v) for n, v in answered.headers)
        request = SipRequest(method="OPTIONS", uri=uri or answered.uri, headers=headers)
        actions = proxy.datagram(request.to_bytes(), CLIENT, "udp", now)
        _send, response = only_send(actions)
        assert isinstance(response, SipResponse)
        return response.status, records(actions)[0].outcome

    # nc is under the digest: changing it without the password is a wrong answer, not a fresh count.
    assert attempt(field.replace("nc=00000001", "nc=00000002"), "z9hG4bKnc") == (407, Outcome.BAD_PASSWORD)
    forged = field.replace('nonce="', 'nonce="A', 1)
    assert attempt(forged, "z9hG4bKforged") == (407, Outcome.BAD_NONCE)
    no_qop = ", ".join(p for p in field.split(", ") if not p.startswith(("qop=", "nc=", "cnonce=")))
    assert attempt(no_qop, "z9hG4bKnoqop") == (407, Outcome.UNSUPPORTED_SCHEME)
    other_realm = field.replace('realm="sip.example.org"', 'realm="elsewhere"')
    assert attempt(other_realm, "z9hG4bKrealm") == (407, Outcome.MISSING)  # another proxy's: not read here
    assert attempt(field, "z9hG4bKuri", uri="sip:carol@example.org") == (400, Outcome.BAD_REQUEST)


def test_stale_true_for_a_right_answer_on_an_expired_nonce() -> None:
    proxy = make_proxy()
    now = [NOW]
    client = Client(proxy, now=lambda: now[0])
    auth = SipAuthenticator("alice", USERS["alice"], random=os.urandom, userhash=False)
    assert drive(auth.exchange(options("z9hG4bKa")), client.send).status == 200
    now[0] = NOW + 301  # the nonce's 300 s are over; the client still answers with it first
    assert drive(auth.exchange(options("z9hG4bKb", cseq=10)), client.send).status == 200
    outcomes = [r.outcome for r in client.log]
    assert outcomes == [Outcome.MISSING, Outcome.OK, Outcome.STALE_NONCE, Outcome.OK]
    assert not Outcome.STALE_NONCE.failed


# --- chained proxies -------------------------------------------------------------------------------------


def test_two_chained_proxies_each_take_their_own_credentials() -> None:
    second = make_proxy("inner.example.org", algorithms=("SHA-256",), local=("127.0.0.9", 5080),
                        next_hop=NextHop("127.0.0.10", 5090))
    first = make_proxy("outer.example.org", algorithms=("MD5",), local=("127.0.0.1", 5060),
                       next_hop=NextHop("127.0.0.9", 5080))
    client = Client(first, second)
    auth = SipAuthenticator("alice", USERS["alice"], random=os.urandom, userhash=False)
    response = drive(auth.exchange(options()), client.send)
    assert response.status == 200 and len(response.vias) == 1
    (reached,) = client.reached
    assert reached.get_all("Proxy-Authorization") == [] and len(reached.vias) == 3 and reached.max_forwards == 68
    assert [(r.outcome, r.user) for r in client.log] == [
        (Outcome.MISSING, None), (Outcome.OK, "alice"), (Outcome.MISSING, None), (Outcome.OK, "alice"),
        (Outcome.OK, "alice")]


# --- what is dropped, what is bounded ---------------------------------------------------------------------


def test_malformed_request_gets_400_with_a_warning_and_garbage_is_dropped() -> None:
    proxy = make_proxy()
    bad = options().to_bytes().replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE")
    send, response = only_send(proxy.datagram(bad, CLIENT, "udp", NOW))
    assert isinstance(response, SipResponse) and response.status == 400 and send.to == CLIENT
    assert "CSeq method" in (response.get("Warning") or "")
    for junk in (b"\x00\xff garbage", b"OPTIONS sip:x SIP/2.0\r\nVia: nonsense\r\n\r\n",
                 options(method="ACK").to_bytes().replace(b"CSeq: 1 ACK", b"CSeq: 1 BYE")):
        actions = proxy.datagram(junk, CLIENT, "udp", NOW)
        assert sends(actions) == [] and records(actions)[0].action == DROPPED


def test_responses_not_for_this_proxy_are_dropped() -> None:
    proxy = make_proxy()
    _send, forwarded = only_send(proxy.datagram(options(method="CANCEL").to_bytes(), CLIENT, "udp", NOW))
    assert isinstance(forwarded, SipRequest)
    ok = next_hop_answers(forwarded)
    assert only_send(proxy.datagram(ok, HOP.address, "udp", NOW))[0].to == ("127.0.0.1", 5070)
    from_elsewhere = proxy.datagram(ok, ("127.0.0.66", 5080), "udp", NOW)
    not_ours = proxy.datagram(next_hop_answers(options()), HOP.address, "udp", NOW)
    malformed = proxy.datagram(ok.replace(b"CSeq:", b"CSeq: x"), HOP.address, "udp", NOW)
    for actions in (from_elsewhere, not_ours, malformed):
        assert sends(actions) == [] and records(actions)[0].action == DROPPED
    assert proxy.datagram(next_hop_answers(forwarded, 100), HOP.address, "udp", NOW) == []  # hop-by-hop


def test_transaction_table_is_bounded_and_expires() -> None:
    proxy = make_proxy(max_transactions=5, max_transactions_per_source=3)
    for i in range(3):
        proxy.datagram(options(f"z9hG4bKs{i}").to_bytes(), CLIENT, "udp", NOW)
    _send, busy = only_send(proxy.datagram(options("z9hG4bKs9").to_bytes(), CLIENT, "udp", NOW))
    assert isinstance(busy, SipResponse) and busy.status == 503 and busy.get("Retry-After") == "5"
    for i in range(4):
        proxy.datagram(options(f"z9hG4bKo{i}").to_bytes(), (f"127.0.1.{i}", 5070), "udp", NOW + 1)
    assert len(proxy) == 5  # the oldest went to make room
    proxy.expire(NOW + 32.5)
    assert len(proxy) == 4 and proxy.datagram(b"", CLIENT, "udp", NOW + 34) and len(proxy) == 4
    proxy.datagram(options("z9hG4bKlast").to_bytes(), CLIENT, "udp", NOW + 34)
    assert len(proxy) == 1


def test_answers_over_udp_to_one_address_are_bounded() -> None:
    """RFC 3261 sections 26.1.5 and 26.3.2.4: a UDP source can be forged, and a 407 is several times the request
    asking for it. Past the burst, one DROPPED line for the flood, then silence; nothing remembered; other
    addresses, streams and forwarded requests untouched; answered again once the rate allows."""
    proxy = make_proxy(answer_rate=8, answer_burst=20)
    flood = [options(f"z9hG4bKf{i}").to_bytes() for i in range(100)]
    answered, logged = [], []
    for data in flood:
        actions = proxy.datagram(data, CLIENT, "udp", NOW)
        answered += sends(actions)
        logged += records(actions)
    assert len(answered) == 20 and all(send.data.startswith(b"SIP/2.0 407 ") for send in answered)
    (dropped,) = [record for record in logged if record.action == DROPPED]
    assert (dropped.status, dropped.outcome) == (407, Outcome.OVER_LIMIT)
    assert dropped.reason == "over 8 answers a second (burst 20) to this address: answers dropped until it slows"
    assert len(proxy) == 20  # the dropped were not remembered
    # Another address, the same address over TCP (its peer has shown its address), and a signed-in request
    # from it (forwarded, not answered): all as before.
    assert sends(proxy.datagram(options("z9hG4bKo1").to_bytes(), ("127.0.0.2", 5070), "udp", NOW))
    assert sends(proxy.datagram(options("z9hG4bKt1").to_bytes(), CLIENT, "tcp", NOW))
    one = make_proxy(answer_rate=8, answer_burst=1)
    client, _ = authenticated(one)  # its 407 took the one token; the signed-in request went on all the same
    assert [record.action for record in client.log] == [ANSWERED, FORWARDED]
    assert records(one.datagram(options("z9hG4bKx").to_bytes(), CLIENT, "udp", NOW))[0].action == DROPPED
    # A retransmission of a dropped request, once a token is back: a new transaction, answered; one token only.
    later = NOW + 0.125
    _send, response = only_send(proxy.datagram(flood[50], CLIENT, "udp", later))
    assert isinstance(response, SipResponse) and response.status == 407
    assert proxy.datagram(flood[51], CLIENT, "udp", later) == []  # the same flood: said once only


def test_a_remembered_answer_sent_again_counts_too() -> None:
    proxy = make_proxy(answer_rate=8, answer_burst=5)
    data = options().to_bytes()
    answers = [sends(proxy.datagram(data, CLIENT, "udp", NOW)) for _ in range(30)]  # one request, resent
    assert sum(len(sent) for sent in answers) == 5
    assert len({sent[0].data for sent in answers if sent}) == 1  # the same 407 each time


def test_malformed_requests_answers_count_too_and_zero_means_no_bound() -> None:
    bad = options().to_bytes().replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE")
    bounded, unbounded = make_proxy(answer_rate=8, answer_burst=3), make_proxy(answer_rate=0)
    assert sum(len(sends(bounded.datagram(bad, CLIENT, "udp", NOW))) for _ in range(10)) == 3
    assert sum(len(sends(unbounded.datagram(bad, CLIENT, "udp", NOW))) for _ in range(1000)) == 1000


def test_what_cannot_reach_the_next_hop_is_a_503_for_a_request_and_dropped_otherwise() -> None:
    """Section 16.9: a transport error forwarding a request is a 503 from that hop, relayed as one would be."""
    proxy = make_proxy()
    _send, forwarded = only_send(proxy.datagram(options(method="CANCEL").to_bytes(), CLIENT, "udp", NOW))
    assert isinstance(forwarded, SipRequest)
    actions = proxy.unreachable(forwarded.to_bytes(), HOP.address, "udp", "cannot connect (refused)", NOW)
    send, answer = only_send(actions)
    assert isinstance(answer, SipResponse) and answer.status == 503 and send.to == ("127.0.0.1", 5070)
    assert answer.get("Warning") == ('399 authproxy "the next hop 127.0.0.9:5080 is unreachable: cannot connect '
                                     '(refused)"')
    assert [(r.action, r.status, r.peer) for r in records(actions)] == [(ANSWERED, 503, HOP.address)]
    ack = options(method="ACK").to_bytes()
    for data in (ack, next_hop_answers(forwarded), b"junk"):
        (record,) = proxy.unreachable(data, HOP.address, "udp", "why", NOW)
        assert isinstance(record, SipRecord) and record.action == DROPPED
        assert record.reason == "could not be sent to 127.0.0.9:5080: why"


@given(requests(), st.sampled_from([("127.0.0.1", 5070), ("2001:db8::5", 40000)]), st.booleans())
def test_the_proxys_own_responses_are_what_response_to_makes(request: SipRequest, source: tuple[str, int],
                                                             tagged: bool) -> None:
    """Answers._response_bytes writes the proxy's responses straight to bytes from the parsed request; they must
    be what the checked way makes (the top Via stamped by replace_top_via, then response_to) and parse."""
    if tagged and request.to.tag is None:
        request = request.replace_headers([(n, f"{v};tag=uas" if n == "To" else v) for n, v in request.headers])
    parsed = parse_datagram(request.to_bytes())
    assert isinstance(parsed, SipRequest)
    proxy = make_proxy()
    headers = [("Proxy-Authenticate", 'Digest realm="r", nonce="n"'), ("Warning", '399 authproxy "why"')]
    direct = proxy._response_bytes(parsed, source, 407, "Proxy Authentication Required", headers)
    stamped = replace_top_via(parsed, parsed.vias[0].with_received(*source))
    checked = response_to(stamped, 407, "Proxy Authentication Required", to_tag=proxy._to_tag(parsed),
                          headers=headers)
    assert direct == checked.to_bytes()
    assert parse_datagram(direct) == checked


def test_log_line_reads_back_and_holds_no_secret() -> None:
    proxy = make_proxy()
    client, answered = authenticated(proxy)
    line = format_sip_squid(client.log[-1])
    back = parse_sip_line(line)
    assert (back.action, back.status, back.method, back.user, back.outcome) == (FORWARDED, None, "OPTIONS",
                                                                                "alice", "ok")
    assert USERS["alice"] not in line and "response=" not in line and back.call_id_or_reason == answered.call_id


def test_next_hop_parsing() -> None:
    assert NextHop.parse("sip:127.0.0.1:5080;transport=tcp") == NextHop("127.0.0.1", 5080, "tcp")
    assert NextHop.parse("sip:[::1]:5060") == NextHop("::1", 5060, "udp")
    for bad in ("127.0.0.1:5060", "sip:host", "sip:h:5060;transport=sctp", "sip:alice@h:5060", "sip:h:0"):
        with pytest.raises(Exception, match="next_hop"):
            NextHop.parse(bad)


def test_no_input_raises() -> None:
    proxy = make_proxy()
    for data in (b"", b"\r\n\r\n", b"SIP/2.0 200 OK\r\n\r\n", b"INVITE sip:a SIP/2.0\r\n" * 3, bytes(range(256))):
        (record,) = proxy.datagram(data, CLIENT, "udp", NOW)  # never an exception: one DROPPED line
        assert isinstance(record, SipRecord) and record.action == DROPPED


def test_the_ack_of_its_own_407_ends_at_the_proxy() -> None:
    proxy = make_proxy()
    invite = options("z9hG4bKinv", method="INVITE")
    _send, challenge = only_send(proxy.datagram(invite.to_bytes(), CLIENT, "udp", NOW))
    assert isinstance(challenge, SipResponse) and challenge.status == 407 and challenge.to.tag
    # Section 17.1.1.3: the ACK of a non-2xx has the INVITE's branch and the response's To (with its tag).
    ack = SipRequest(method="ACK", uri=invite.uri, headers=tuple(
        (n, challenge.get("To") or "" if n == "To" else "1 ACK" if n == "CSeq" else v) for n, v in invite.headers))
    assert proxy.datagram(ack.to_bytes(), CLIENT, "udp", NOW) == []  # absorbed: not forwarded, no line
    dialog = SipRequest(method="ACK", uri=invite.uri, headers=tuple(
        (n, "<sip:bob@example.org>;tag=uas-tag" if n == "To" else v) for n, v in ack.headers))
    send, forwarded = only_send(proxy.datagram(dialog.to_bytes(), CLIENT, "udp", NOW))  # a 2xx's ACK goes on
    assert send.to == HOP.address and isinstance(forwarded, SipRequest) and forwarded.method == "ACK"


def test_warning_text_stays_a_quoted_string() -> None:
    proxy = make_proxy()
    assert proxy._warning('say "hi" \\ bye') == "399 authproxy \"say 'hi' / bye\""
