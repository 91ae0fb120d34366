"""The SIP benchmark's load generator (bench/sipload.py) sends what a checking proxy accepts: every request a
new transaction with a Digest answer on the nonce of the proxy's 407 and the next nc (RFC 3261 section 22.3,
RFC 7616 section 3.4). Shown in memory through SipProxy and over real UDP through ``authproxy sip serve``; and
the nc it steps through matters (the same nc again is refused). No timing is asserted: the figures are the
benchmark's."""

from __future__ import annotations

import importlib.util
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from sip_uas import Uas

from authproxy.sip.log import ANSWERED, FORWARDED, parse_sip_line

from helpers import USERS, SipProxyProcess, make_users_file, start_sip_proxy

REALM = "sip-load"
BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load_sipload() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sipload", BENCH / "sipload.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sipload"] = module
    spec.loader.exec_module(module)
    return module


sipload = _load_sipload()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SipProxyProcess, Uas]]:
    tmp = tmp_path_factory.mktemp("sip-load")
    users = make_users_file(tmp / "sip.users", REALM)
    with Uas({}, roles=()) as uas:  # answers 200 to every request
        # One address sends everything, as in the bench: its share of the transaction table (2,000 per 32 s by
        # default) answers 503 past that, which a fast enough proxy reached within the load's 0.3 s (49 of 2,048
        # answers were 503). Raised as bench/sippeers.py raises it; the table still bounds memory.
        proc = start_sip_proxy(tmp, users, f"sip:127.0.0.1:{uas.port}", "--digest-algorithms", "MD5",
                               listen=("udp:127.0.0.1:0",),
                               config_text="[sip]\nmax_transactions = 100000\nmax_transactions_per_source = 100001\n"
                                           "udp_answer_rate = 0\n")
        try:
            yield proc, uas
        finally:
            proc.stop()


def test_in_process_every_request_is_forwarded() -> None:
    # in_process raises AssertionError when SipProxy does anything but forward one of the requests.
    assert sipload.in_process(300) > 0


def test_over_udp_every_answer_is_accepted(proxy: tuple[SipProxyProcess, Uas]) -> None:
    proc, uas = proxy
    before = len(uas.seen)
    result = sipload.run_load(proc.ports["udp"], user="alice", password=USERS["alice"], duration=0.3, window=4)
    assert result.ok > 0
    assert (result.challenged, result.other) == (0, 0)
    assert len(uas.seen) - before >= result.ok  # every 200 came from the next hop, through the proxy
    assert all(seen.request.get("Proxy-Authorization") is None for seen in uas.seen[before:])
    proc.stop()  # flushes the access log
    lines = [parse_sip_line(line) for line in proc.log_path.read_text().splitlines()]
    forwarded = [line for line in lines if line.action == FORWARDED]
    assert len(forwarded) >= result.ok and {line.user for line in forwarded} == {"alice"}


def test_with_a_407_per_call_every_call_is_challenged_then_forwarded(tmp_path: Path) -> None:
    """The bench's second SIP load (--fresh): each call's unsigned request gets its 407, the request signed with
    that 407's nonce is forwarded; the load's one address has the whole transaction table and unbounded answers,
    as in the bench (two transactions a call)."""
    users = make_users_file(tmp_path / "sip.users", REALM)
    with Uas({}, roles=()) as uas:
        proc = start_sip_proxy(tmp_path, users, f"sip:127.0.0.1:{uas.port}", "--digest-algorithms", "MD5",
                               listen=("udp:127.0.0.1:0",),
                               config_text="[sip]\nmax_transactions = 100000\nmax_transactions_per_source = 100001\n"
                                           "udp_answer_rate = 0\n")
        try:
            result = sipload.run_load(proc.ports["udp"], user="alice", password=USERS["alice"], duration=0.3,
                                      window=4, fresh=True)
        finally:
            proc.stop()  # flushes the access log
    assert result.ok > 0 and (result.challenged, result.other) == (0, 0)
    lines = [parse_sip_line(line) for line in proc.log_path.read_text().splitlines()]
    calls: dict[str | None, list[tuple[str, str]]] = {}
    for line in lines:
        calls.setdefault(line.call_id_or_reason, []).append((line.action, line.outcome))
    done = [call for call in calls.values() if call == [(ANSWERED, "missing"), (FORWARDED, "ok")]]
    assert len(done) >= result.ok  # every 200 the load counted: a 407, then a signed request forwarded


def test_the_same_nc_again_is_refused(tmp_path: Path) -> None:
    users = make_users_file(tmp_path / "sip.users", REALM)
    with Uas({}, roles=()) as uas:
        proc = start_sip_proxy(tmp_path, users, f"sip:127.0.0.1:{uas.port}", "--digest-algorithms", "MD5",
                               listen=("udp:127.0.0.1:0",))
        try:
            port = proc.ports["udp"]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("127.0.0.1", 0))
                sock.connect(("127.0.0.1", port))
                sock.settimeout(5)
                requests = sipload.Requests("alice", USERS["alice"], ("127.0.0.1", port), sock.getsockname())
                sock.send(requests.make(1))
                first = sock.recv(65535)
                assert sipload.status_of(first) == 407
                requests.take(sipload.challenges_in(first)[0])
                sock.send(requests.make(2))  # nc=1
                assert sipload.status_of(sock.recv(65535)) == 200
                requests.nc = 0
                sock.send(requests.make(3))  # nc=1 again, in a new transaction: a replay
                assert sipload.status_of(sock.recv(65535)) == 407
                sock.send(requests.make(4))  # nc=2
                assert sipload.status_of(sock.recv(65535)) == 200
        finally:
            proc.stop()
