"""The proxy's protocol logic as playbooks: these bytes in, these commands out (no sockets, no loop, no sleeps).

Each test drives ``authproxy.engine.connection.Connection`` through the recording sinks of ``engine_support`` and
reads back what it asked the driver to do.
"""

from __future__ import annotations

import sys

import bcrypt
import pytest

from authproxy.auth.basic import encode_basic
from authproxy.auth.outcomes import Outcome
from authproxy.auth.policy import AuthPolicy
from authproxy.auth.schemes import SCHEMES
from authproxy.auth.store import UserEntry
from authproxy.engine.authn import Authenticator
from authproxy.engine.commands import ConnectFailure
from authproxy.engine.connection import Connection
from authproxy.engine.decision import Allowed, Refused
from authproxy.engine.states import TIMERS, ConnState, ExchangeState, Timer
from authproxy.state.memory import MemoryNonceCounterStore
from authproxy.users.memory import MemoryUserStore

from engine_support import BASIC, ORIGIN_ADDRESS, PASSWORD, REALM, Playbook, get, status_of
from helpers import Handshake, digest_authorization

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def state_of(p: Playbook) -> ExchangeState:
    assert p.conn.active is not None
    return p.conn.active.state


# == the 407 exchange and forwarding ==========================================================================
def test_no_credentials_get_407_with_a_challenge_and_keep_alive() -> None:
    p = Playbook()
    p.conn.data_received(get(auth=None))
    commands = p.sink.take()
    assert [c[0] for c in commands] == ["send"]
    response = commands[0][1]
    assert status_of(response) == 407
    assert b"\r\nProxy-Authenticate: Digest " in response and b"\r\nProxy-Authenticate: Basic " in response
    assert b"Connection: keep-alive" in response
    assert p.sink.records[0].outcome is Outcome.MISSING
    assert p.conn.conn_state is ConnState.IDLE


def test_signed_in_request_is_forwarded_without_credentials_and_relayed() -> None:
    p = Playbook()
    p.conn.data_received(get("http://origin.test/a?b=1"))
    assert p.sink.take() == [("decide", "alice", "origin.test", 80), ("pause_reading",),
                             ("open_origin", "origin.test", ORIGIN_ADDRESS, 80)]
    assert state_of(p) is ExchangeState.CONNECTING
    origin = p.connect()
    [(name, head)] = p.origin_take()
    assert name == "origin.write"
    assert head.startswith(b"GET /a?b=1 HTTP/1.1\r\nHost: origin.test\r\n")
    assert b"Proxy-Authorization" not in head and b"\r\nVia: 1.1 authproxy\r\n" in head
    assert state_of(p) is ExchangeState.WAITING
    origin.data_received(OK)
    sent = p.sink.sent()
    assert sent.startswith(b"HTTP/1.1 200 OK\r\n") and sent.endswith(b"\r\n\r\nok")
    assert b"Via: 1.1 authproxy" in sent
    assert p.origin_take() == [("origin.release", True)]
    record = p.sink.records[-1]
    assert (record.user, record.status, record.outcome, record.peer) == ("alice", 200, Outcome.OK, "origin.test:80")


def test_keep_alive_reuses_the_pooled_origin_and_authenticates_each_request() -> None:
    p = Playbook()
    p.conn.data_received(get())
    origin = p.connect()
    origin.data_received(OK)
    p.sink.take()
    p.origin_take()
    p.sink.pooled = origin
    p.conn.data_received(get())
    assert [c[0] for c in p.sink.take()] == ["decide"]  # no open_origin: the pooled connection is used
    assert p.origin_take()[0][0] == "origin.write"
    origin.data_received(OK)
    assert status_of(p.sink.sent()) == 200
    # The next request on the same connection without credentials is challenged again.
    p.conn.data_received(get(auth=None))
    assert status_of(p.sink.sent()) == 407


def test_a_thousand_pipelined_requests_in_one_read_are_answered_in_order_without_recursion() -> None:
    p = Playbook()
    data = b"".join(get(f"http://origin.test/{i}", auth=None) for i in range(1000))
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)  # a recursive pipeline would need one frame or more per request
    try:
        p.conn.data_received(data)
    finally:
        sys.setrecursionlimit(limit)
    sent = b"".join(c[1] for c in p.sink.commands if c[0] == "send")
    assert sent.count(b"HTTP/1.1 407 ") == 1000
    assert [r.target for r in p.sink.records] == [f"http://origin.test/{i}" for i in range(1000)]
    assert not p.conn.closed and p.conn.conn_state is ConnState.IDLE
    assert ("pause_reading",) not in p.sink.commands or p.sink.commands[-1] == ("resume_reading",)


def test_pipelined_request_waits_for_the_one_ahead_and_reading_pauses() -> None:
    p = Playbook()
    p.conn.data_received(get("http://origin.test/1") + get("http://origin.test/2"))
    assert ("open_origin", "origin.test", ORIGIN_ADDRESS, 80) in p.sink.take()
    assert len(p.conn.queue) == 1 and not p.conn.reading
    origin = p.connect()
    origin.data_received(OK)
    assert status_of(p.sink.sent()) == 200
    p.sink.pooled = origin
    # The second starts from the loop, once the first is answered.
    assert p.conn.active is not None and p.conn.active.target == b"http://origin.test/2"


# == CONNECT ==================================================================================================
def test_connect_opens_a_tunnel_and_relays_both_ways_with_half_close() -> None:
    p = Playbook()
    p.conn.data_received(f"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n"
                         f"Proxy-Authorization: {BASIC}\r\n\r\n\x16\x03early".encode())
    assert ("open_tunnel", "origin.test", ORIGIN_ADDRESS, 443) in p.sink.take()
    p.conn.data_received(b"more")  # before the tunnel is up: held
    tunnel = p.origin("tunnel").io
    p.sink.exchanges.pop().tunnel_connected(tunnel)
    assert p.sink.sent() == b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert p.origin_take() == [("tunnel.write", b"\x16\x03early"), ("tunnel.write", b"more")]
    assert p.conn.conn_state is ConnState.TUNNEL
    p.conn.data_received(b"up")
    p.conn.tunnel_data(b"down")
    assert p.origin_take() == [("tunnel.write", b"up")] and p.sink.sent() == b"down"
    assert p.conn.tunnel_far_eof() is True and p.sink.take() == [("write_eof",)]
    assert p.conn.eof_received() is False
    assert p.origin_take() == [("tunnel.close",)]
    p.conn.tunnel_closed()
    assert p.sink.take() == [("close",)]
    record = p.sink.records[-1]
    assert record.tunnel and record.status == 200 and record.sent_bytes == len(
        b"HTTP/1.1 200 Connection established\r\n\r\n") + 4


def test_connect_whose_origin_cannot_be_reached_gets_502_and_the_next_request_is_parsed() -> None:
    p = Playbook()
    p.conn.data_received(f"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n"
                         f"Proxy-Authorization: {BASIC}\r\n\r\n".encode() + get(auth=None))
    p.sink.take()
    p.fail_connect(ConnectFailure.REFUSED)
    sent = p.sink.sent()
    assert status_of(sent) == 502
    assert sent.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 407 " in sent  # the request held behind it


# == refusals =================================================================================================
@pytest.mark.parametrize(("raw", "status"), [
    (b"GET http://origin.test/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"\x16\x03\x01garbage\r\n\r\n", 400),
    (b"GET /relative HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"POST http://origin.test/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n" + b"X: 1\r\n" * 101 + b"\r\n", 431),
])
def test_malformed_requests_are_refused_and_closed(raw: bytes, status: int) -> None:
    p = Playbook()
    p.conn.data_received(raw)
    commands = p.sink.take()
    assert status_of(commands[0][1]) == status
    assert b"Connection: close" in commands[0][1] and b"Proxy-Status: authproxy; error=" in commands[0][1]
    assert commands[-1] == ("close",)
    assert not any(c[0] in ("decide", "open_origin") for c in commands)


def test_destination_refused_by_the_policy_gets_its_status() -> None:
    p = Playbook()
    p.sink.decision = Refused(403, "destination_ip_prohibited", "no")
    p.conn.data_received(get())
    response = p.sink.sent()
    assert status_of(response) == 403 and b"error=destination_ip_prohibited" in response


def test_a_request_whose_via_names_this_proxy_is_a_loop() -> None:
    p = Playbook()
    p.conn.data_received(get(extra="Via: 1.1 authproxy\r\n"))
    assert status_of(p.sink.sent()) == 508


def test_body_over_the_limit_gets_413() -> None:
    p = Playbook(max_body_size=10)
    p.conn.data_received(get(extra="Content-Length: 11\r\n") + b"x" * 11)
    commands = p.sink.take()
    assert status_of(commands[0][1]) == 413 and commands[-1] == ("close",)


def test_failed_sign_ins_lock_the_address_out_with_429() -> None:
    p = Playbook(throttle_max_failures=2)
    wrong = "Basic " + __import__("base64").b64encode(b"alice:wrong").decode()
    for _ in range(2):
        p.conn.data_received(get(auth=wrong))
        assert status_of(p.sink.sent()) == 407
    p.conn.data_received(get())
    response = p.sink.sent()
    assert status_of(response) == 429 and b"Retry-After: " in response


@pytest.mark.parametrize(("failure", "status", "error"), [
    (ConnectFailure.REFUSED, 502, b"connection_refused"),
    (ConnectFailure.DNS, 502, b"dns_error"),
    (ConnectFailure.TIMEOUT, 504, b"connection_timeout"),
    (ConnectFailure.OTHER, 502, b"destination_unavailable"),
])
def test_origin_that_cannot_be_reached(failure: ConnectFailure, status: int, error: bytes) -> None:
    p = Playbook()
    p.conn.data_received(get())
    p.sink.take()
    p.fail_connect(failure)
    commands = p.sink.take()
    assert ("resume_reading",) in commands or p.conn.reading
    response = b"".join(c[1] for c in commands if c[0] == "send")
    assert status_of(response) == status and error in response


def test_origin_that_answers_garbage_gets_502_and_is_cut() -> None:
    p = Playbook()
    p.conn.data_received(get())
    origin = p.connect()
    p.origin_take()
    origin.data_received(b"SPDY/3 nonsense\r\n\r\n")
    assert status_of(p.sink.sent()) == 502
    assert ("origin.abort",) in p.origin_take()


def test_destination_decided_later_pauses_reading_until_decided() -> None:
    p = Playbook()
    p.sink.decision = None  # the name is not cached: the driver resolves it
    p.conn.data_received(get())
    assert p.sink.take() == [("decide", "alice", "origin.test", 80), ("pause_reading",)]
    assert p.conn.active is not None and p.conn.active.state is ExchangeState.DECIDING
    p.sink.exchanges.pop().decided(Allowed(ORIGIN_ADDRESS, 2))
    assert ("open_origin", "origin.test", ORIGIN_ADDRESS, 80) in p.sink.take()


# == timers (a fake clock) ====================================================================================
def test_idle_connection_is_closed_after_idle_timeout() -> None:
    p = Playbook(idle_timeout=5)
    p.clock.now += 5
    p.conn.timer(p.clock.now)
    assert p.sink.take() == []
    p.clock.now += 0.5
    p.conn.timer(p.clock.now)
    assert p.sink.take() == [("close",)]


def test_slow_request_head_gets_408() -> None:
    p = Playbook(header_timeout=3)
    p.conn.data_received(b"GET http://origin.test/ HTTP/1.1\r\nHost: ori")
    assert p.conn.conn_state is ConnState.HEAD
    p.clock.now += 3.5
    p.conn.timer(p.clock.now)
    commands = p.sink.take()
    assert status_of(commands[0][1]) == 408 and commands[-1] == ("close",)


def test_silent_origin_gets_504_after_read_timeout_and_a_cut_after_the_head() -> None:
    p = Playbook(read_timeout=7)
    p.conn.data_received(get())
    p.connect()
    p.sink.take()
    p.clock.now += 8
    p.conn.timer(p.clock.now)
    response = p.sink.sent()
    assert status_of(response) == 504 and b"http_response_timeout" in response
    # Once the head is relayed, all that is left is to cut the connection.
    q = Playbook(read_timeout=7)
    q.conn.data_received(get())
    origin = q.connect()
    origin.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    q.sink.take()
    q.clock.now += 8
    q.conn.timer(q.clock.now)
    assert q.sink.take() == [("abort",)]


def test_origin_head_that_spans_reads_arms_the_head_timer() -> None:
    p = Playbook(header_timeout=4)
    p.conn.data_received(get())
    origin = p.connect()
    p.origin_take()
    origin.data_received(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    assert p.origin_take() == [("origin.start_timer", 4)]
    origin.timer_fired()
    assert status_of(p.sink.sent()) == 504


# == back-pressure ============================================================================================
def test_client_not_reading_pauses_the_origin_and_the_client_side() -> None:
    p = Playbook()
    p.conn.data_received(get())
    origin = p.connect()
    p.origin_take()
    p.sink.take()
    p.conn.writing_paused()
    assert p.origin_take() == [("origin.pause_reading",)]
    assert ("pause_reading",) in p.sink.take()
    p.conn.writing_resumed()
    assert p.origin_take() == [("origin.resume_reading",)]
    origin.writing_paused()  # the origin does not take the body as fast as the client sends it
    assert ("pause_reading",) in p.sink.take() or not p.conn.reading
    assert "upstream" in p.conn.paused
    origin.writing_resumed()
    assert "upstream" not in p.conn.paused


def test_request_body_is_held_while_connecting_then_forwarded() -> None:
    p = Playbook()
    p.conn.data_received(get(extra="Content-Length: 5\r\n") + b"hel")
    p.conn.data_received(b"lo")  # read while connecting: held, not parsed
    p.connect()
    assert ("wake",) in p.sink.take()  # parsing goes on from the event loop, not inside this step
    p.conn.woken()
    writes = [c[1] for c in p.origin_take() if c[0] == "origin.write"]
    assert writes[0].startswith(b"GET / HTTP/1.1") and b"Content-Length: 5" in writes[0]
    assert b"".join(writes[1:]) == b"hello"


def test_a_body_of_tiny_chunks_is_forwarded_one_chunk_per_slice() -> None:
    """2,000 chunks of one byte (28 KB on the wire, two 16 KB slices) cost two writes to the origin, not 2,000 (a
    syscall each)."""
    p = Playbook()
    p.conn.data_received(get(extra="Transfer-Encoding: chunked\r\n") + b"1\r\na\r\n")
    p.connect()
    p.conn.woken()
    p.origin_take()
    p.conn.data_received(b"1;ext=x\r\nb\r\n" * 2000 + b"0\r\nX-Trailer: dropped\r\n\r\n")
    writes = [c[1] for c in p.origin_take() if c[0] == "origin.write"]
    assert len(writes) == 3 and writes[-1] == b"0\r\n\r\n"
    sizes = [int(w.split(b"\r\n", 1)[0], 16) for w in writes[:2]]
    assert sum(sizes) == 2000
    assert all(w.split(b"\r\n", 1)[1] == b"b" * n + b"\r\n" for w, n in zip(writes, sizes, strict=False))


def test_client_that_closes_mid_body_is_closed() -> None:
    p = Playbook()
    p.conn.data_received(get(extra="Content-Length: 50\r\n") + b"x" * 10)
    p.connect()
    assert p.conn.eof_received() is False


def test_every_state_has_a_timer_rule() -> None:
    assert set(TIMERS) == set(ConnState)
    assert [s for s, t in TIMERS.items() if t is Timer.NONE] == [ConnState.CLOSED]


def test_request_body_that_stops_arriving_gets_408() -> None:
    p = Playbook(read_timeout=6)
    p.conn.data_received(get(extra="Content-Length: 10\r\n") + b"abc")
    p.connect()
    p.conn.woken()
    p.sink.take()
    assert p.conn.conn_state is ConnState.BODY
    p.clock.now += 6.5
    p.conn.timer(p.clock.now)
    commands = p.sink.take()
    assert status_of(commands[0][1]) == 408 and commands[-1] == ("close",)


def test_client_that_reads_nothing_it_is_owed_is_aborted_after_write_timeout() -> None:
    p = Playbook(write_timeout=9)
    p.conn.data_received(get(auth=None) * 3)
    p.sink.take()
    p.conn.writing_paused()
    assert p.conn.conn_state is ConnState.SENDING and p.sink.take() == [("pause_reading",)]
    p.clock.now += 9.5
    p.conn.timer(p.clock.now)
    assert p.sink.take() == [("abort",)]


def test_refused_body_trickled_a_byte_at_a_time_is_drained_for_read_timeout_in_all() -> None:
    p = Playbook(read_timeout=6)
    p.conn.data_received(get(auth=None, extra="Content-Length: 1000\r\n"))
    assert status_of(p.sink.sent()) == 407
    assert p.conn.conn_state is ConnState.DRAINING
    for _ in range(5):
        p.clock.now += 1
        p.conn.data_received(b"x")
        p.conn.timer(p.clock.now)
    assert p.sink.take() == []
    p.clock.now += 1.5
    p.conn.timer(p.clock.now)
    assert p.sink.take() == [("close",)]


def open_tunnel(p: Playbook, early: bytes = b"") -> None:
    p.conn.data_received(f"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n"
                         f"Proxy-Authorization: {BASIC}\r\n\r\n".encode() + early)
    p.sink.exchanges.pop().tunnel_connected(p.origin("tunnel").io)
    assert p.conn.conn_state is ConnState.TUNNEL
    p.sink.take()
    p.origin_take()


def test_a_tunnel_silent_both_ways_is_cut_after_tunnel_idle_timeout() -> None:
    p = Playbook(tunnel_idle_timeout=30)
    open_tunnel(p)
    p.clock.now += 29
    p.conn.timer(p.clock.now)
    assert p.sink.take() == [] and p.origin_take() == []
    p.clock.now += 1.5
    p.conn.timer(p.clock.now)
    assert p.sink.take() == [("abort",)] and p.origin_take() == [("tunnel.abort",)]
    p.conn.tunnel_closed()
    assert p.sink.records[-1].tunnel and p.sink.records[-1].status == 200


@pytest.mark.parametrize("direction", ["up", "down"])
def test_bytes_either_way_keep_a_tunnel_open(direction: str) -> None:
    p = Playbook(tunnel_idle_timeout=30)
    open_tunnel(p)
    for _ in range(5):  # 100 s in all, never 30 s without a byte
        p.clock.now += 20
        if direction == "up":
            p.conn.data_received(b"x")
        else:
            p.conn.tunnel_data(b"y")
        p.conn.timer(p.clock.now)
    assert ("abort",) not in p.sink.take() and ("tunnel.abort",) not in p.origin_take()
    p.clock.now += 31  # the far end's byte is seen by the tick after it: up to one tick late, never early
    p.conn.timer(p.clock.now)
    p.clock.now += 1
    p.conn.timer(p.clock.now)
    assert p.sink.take() == [("abort",)]


def test_a_tunnel_whose_client_reads_nothing_is_cut_though_the_far_end_has_more() -> None:
    p = Playbook(tunnel_idle_timeout=30, write_timeout=5)
    open_tunnel(p)
    p.conn.tunnel_data(b"z" * 1000)
    p.sink.take()
    p.conn.writing_paused()  # the client reads nothing: the far end is paused, nothing moves either way
    assert ("tunnel.pause_reading",) in p.origin_take()
    p.clock.now += 1
    p.conn.timer(p.clock.now)  # this tick sees the last bytes relayed down: the 30 s count from it
    p.clock.now += 29
    p.conn.timer(p.clock.now)
    assert p.sink.take() == []
    p.clock.now += 1.5
    p.conn.timer(p.clock.now)
    assert p.sink.take() == [("abort",)]


@pytest.mark.parametrize("step", ["check_password", "decide", "open_origin", "open_tunnel"])
def test_each_slow_step_of_preparing_a_request_is_bounded_by_connect_timeout(step: str) -> None:
    p = Playbook(connect_timeout=10)
    if step == "check_password":  # an htpasswd user: bcrypt, checked in a thread
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
        p.state.auth = Authenticator(p.state.config, MemoryUserStore([UserEntry("alice", password_hash=hashed)]),
                                     MemoryNonceCounterStore(), nonce_key=b"k" * 32, clock=p.clock)
    if step == "decide":
        p.sink.decision = None
    is_connect = step == "open_tunnel"
    head = (f"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\nProxy-Authorization: {BASIC}\r\n"
            "\r\n").encode() if is_connect else get()
    p.clock.now += 100  # the head arrived long ago (queued, say): each step counts from its own start
    p.conn.data_received(head)
    asked = [name for name, _ in p.sink.asked]
    assert asked and asked[-1] == ("check_password" if step == "check_password" else step), asked
    assert p.conn.conn_state is ConnState.PREPARING
    p.sink.take()
    p.clock.now += 9.5
    p.conn.timer(p.clock.now)
    assert p.sink.take() == []
    p.clock.now += 1
    p.conn.timer(p.clock.now)
    sent = p.sink.take()
    expected = {"check_password": 503, "decide": 504, "open_origin": 504, "open_tunnel": 504}[step]
    assert status_of(sent[0][1]) == expected and sent[-1] == ("close",)
    # The step's late completion finds its exchange answered, and does nothing.
    late = p.sink.exchanges[-1]
    if step == "check_password":
        late.password_checked(p.sink.pending[-1], True)
    elif step == "decide":
        late.decided(Allowed(ORIGIN_ADDRESS, 2))
    elif step == "open_origin":
        late.upstream_connected(p.origin())
        assert p.origin_take() == [("origin.close",)]
    else:
        late.tunnel_connected(p.origin("tunnel").io)
        assert p.origin_take() == [("tunnel.close",)]
    assert p.sink.take() == []


def test_empty_lines_every_few_seconds_do_not_hold_an_idle_connection() -> None:
    """RFC 9112 section 2.2 lets a server skip empty lines before a request: they start none, so they do not
    restart idle_timeout (a CRLF every 25 s held a connection for ever), before or after a first request."""
    for first in (b"", get(auth=None)):
        p = Playbook(idle_timeout=60)
        p.conn.data_received(first)
        p.sink.take()
        for _ in range(2):
            p.clock.now += 25
            p.conn.data_received(b"\r\n")
            p.conn.timer(p.clock.now)
        assert p.sink.take() == [] and p.conn.conn_state is ConnState.IDLE
        p.clock.now += 25
        p.conn.data_received(b"\r\n")
        p.conn.timer(p.clock.now)
        assert p.sink.take() == [("close",)]


def test_a_body_read_before_authentication_has_read_timeout_in_all() -> None:
    """qop=auth-int: the body is read before the credentials can be checked (an unknown user's too), so a
    client without a valid password could trickle it a byte a minute; it gets read_timeout in all."""
    p = Playbook(read_timeout=60, qop=("auth", "auth-int"))
    p.conn.data_received(get(auth=None))
    challenge = next(v.decode() for n, v in parse_head(p.sink.sent()) if n == b"Proxy-Authenticate"
                     and b"SHA-256" in v)
    auth = digest_authorization(challenge, "nobody", "x", "POST", "http://origin.test/", qop="auth-int",
                                body=b"z" * 100)
    p.conn.data_received(f"POST http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 100\r\n"
                         f"Proxy-Authorization: {auth}\r\n\r\n".encode())
    assert p.sink.take() == [] and p.conn.conn_state is ConnState.BODY
    for _ in range(5):
        p.clock.now += 11
        p.conn.data_received(b"z")
        p.conn.timer(p.clock.now)
    assert p.sink.take() == []
    p.clock.now += 6
    p.conn.timer(p.clock.now)
    commands = p.sink.take()
    assert status_of(commands[0][1]) == 408 and commands[-1] == ("close",)


def test_chunk_framing_trickled_is_no_body_byte_for_read_timeout() -> None:
    """read_timeout runs from the last byte of body data: a chunk extension trickled a byte at a time (64 KiB of
    them would take weeks) does not restart it."""
    p = Playbook(read_timeout=60)
    p.conn.data_received(get(extra="Transfer-Encoding: chunked\r\n") + b"1\r\na\r\n")
    p.connect()
    p.conn.woken()
    p.sink.take()
    p.conn.data_received(b"1;e")
    for _ in range(5):
        p.clock.now += 11
        p.conn.data_received(b"e")
        p.conn.timer(p.clock.now)
    assert p.sink.take() == [] and p.conn.conn_state is ConnState.BODY
    p.clock.now += 6
    p.conn.timer(p.clock.now)
    commands = p.sink.take()
    assert status_of(commands[0][1]) == 408 and commands[-1] == ("close",)


def parse_head(response: bytes) -> list[tuple[bytes, bytes]]:
    head = response.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    return [(n, v.strip()) for n, _, v in (line.partition(b":") for line in head)]


# == a connection-bound scheme (NTLM, Negotiate: RFC 4559 section 4) ==========================================
def handshake_playbook() -> Playbook:
    """A proxy offering the tests' two-leg Handshake scheme (tests/helpers.py) before Digest and Basic."""
    policy = AuthPolicy(realm=REALM, schemes=("handshake", "digest", "basic"),
                        known_schemes={"handshake": Handshake, **SCHEMES})
    return Playbook(policy)


def test_a_connection_bound_handshake_signs_in_its_connection_only() -> None:
    p = handshake_playbook()
    p.conn.data_received(get(auth="Handshake hello"))
    [(_, leg1)] = p.sink.take()
    # Leg 1: a 407 carrying only the scheme's next leg, on a connection kept open (the handshake lives on it).
    assert status_of(leg1) == 407 and b"\r\nProxy-Authenticate: Handshake t1\r\n" in leg1
    assert b"Digest" not in leg1 and b"Connection: keep-alive" in leg1
    p.conn.data_received(get(auth="Handshake t1 alice " + PASSWORD))
    assert p.sink.take()[0] == ("decide", "alice", "origin.test", 80)
    p.connect().data_received(OK)
    assert status_of(p.sink.sent()) == 200
    # Signed in: the next request on this connection needs no credentials ...
    p.conn.data_received(get(auth=None))
    assert ("decide", "alice", "origin.test", 80) in p.sink.take()
    p.connect().data_received(OK)
    assert status_of(p.sink.sent()) == 200 and p.sink.records[-1].user == "alice"
    # ... while Basic on it is still checked on its own (a wrong password is refused, whatever came before) ...
    p.conn.data_received(get(auth="Basic " + encode_basic("alice", "wrong")))
    [(_, refused)] = p.sink.take()
    assert status_of(refused) == 407 and p.sink.records[-1].outcome is Outcome.BAD_PASSWORD
    # ... and another connection is not signed in.
    other = Connection(p.state, p.sink, "192.0.2.8")
    other.data_received(get(auth=None))
    [(_, fresh)] = p.sink.take()
    assert status_of(fresh) == 407 and b"Proxy-Authenticate: Handshake\r\n" in fresh
    last = p.sink.records[-1]
    assert last.outcome is Outcome.MISSING


def test_a_handshake_leg_from_another_connection_is_refused() -> None:
    p = handshake_playbook()
    p.conn.data_received(get(auth="Handshake hello"))
    p.sink.take()
    other = Connection(p.state, p.sink, "192.0.2.8")
    other.data_received(get(auth="Handshake t1 alice " + PASSWORD))
    [(_, refused)] = p.sink.take()
    assert status_of(refused) == 407 and p.sink.records[-1].outcome is Outcome.BAD_NONCE


def test_basic_and_digest_alone_keep_no_connection_state() -> None:
    p = Playbook()
    assert not p.state.auth.connection_bound
    p.conn.data_received(get())
    assert p.conn.auth_state is None
