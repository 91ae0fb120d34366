"""Route, Record-Route and the trusted next hop of `authproxy sip serve` over real sockets on 127.0.0.1 (RFC 3261
sections 16.4, 16.6, 12.1.1): a client's outbound-proxy Route stops at the proxy, a call is record-routed, and
the callee's BYE (from the next hop, the tests' UAS) comes back through the proxy, unchallenged, to the caller's
own socket (UDP) or connection (TCP), and its 200 goes back to the UAS."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sip_uas import Uas
from test_sip_serve import UdpClient, outcomes

from authproxy.sip.client import SipAuthenticator, drive
from authproxy.sip.message import SipRequest, SipResponse, response_to
from authproxy.sip.parse import parse_datagram, parse_stream

from helpers import USERS, SipProxyProcess, chained_sip_proxies, make_users_file, start_sip_proxy

REALM = "sip-test"
PASSWORD = USERS["alice"]


@pytest.fixture(scope="module")
def uas() -> Iterator[Uas]:
    with Uas({}, roles=()) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, uas: Uas) -> Iterator[SipProxyProcess]:
    tmp = tmp_path_factory.mktemp("sip-route")
    users = make_users_file(tmp / "sip.users", REALM)
    proc = start_sip_proxy(tmp, users, f"sip:127.0.0.1:{uas.port}", "--digest-algorithms", "MD5")
    yield proc
    proc.stop()


class TcpClient:
    """A UA on one TCP connection to the proxy: requests and responses framed by Content-Length (section 18.3)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.local = self.sock.getsockname()[1]
        self.buffer = b""

    def receive(self) -> SipRequest | SipResponse:
        while (framed := parse_stream(self.buffer)) is None:
            chunk = self.sock.recv(65535)
            assert chunk, "the proxy closed the connection"
            self.buffer += chunk
        message, used = framed
        self.buffer = self.buffer[used:]
        return message

    def send(self, request: SipRequest) -> SipResponse:
        self.sock.sendall(request.to_bytes())
        while True:
            message = self.receive()
            if isinstance(message, SipResponse) and message.status >= 200:
                return message


def invite(transport: str, local: int, proxy_port: int, call_id: str) -> SipRequest:
    """alice's INVITE with the Route an outbound proxy setting gives (baresip's outbound=, linphone's reg_route)."""
    return SipRequest(method="INVITE", uri="sip:bob@example.org", headers=(
        ("Via", f"SIP/2.0/{transport.upper()} 127.0.0.1:{local};branch=z9hG4bK{os.urandom(6).hex()};rport"),
        ("Max-Forwards", "70"), ("Route", f"<sip:127.0.0.1:{proxy_port};transport={transport};lr>"),
        ("From", "<sip:alice@example.org>;tag=alice1"), ("To", "<sip:bob@example.org>"), ("Call-ID", call_id),
        ("CSeq", "1 INVITE"), ("Contact", f"<sip:alice@127.0.0.1:{local};transport={transport}>"),
        ("Content-Length", "0")))


def far_side_bye(uas: Uas, ok: SipResponse, reached: SipRequest) -> SipRequest:
    """The callee's BYE (section 12.2.1.1): to the caller's Contact, its route set the INVITE's Record-Route as
    the UAS got it, in order."""
    contact = (reached.get("Contact") or "").strip("<>")
    return SipRequest(method="BYE", uri=contact, headers=(
        ("Via", f"SIP/2.0/UDP 127.0.0.1:{uas.port};branch=z9hG4bK{os.urandom(6).hex()}"), ("Max-Forwards", "70"),
        *[("Route", value) for value in reached.values("Record-Route")],
        ("From", ok.get("To") or ""), ("To", ok.get("From") or ""), ("Call-ID", ok.call_id), ("CSeq", "1 BYE"),
        ("Content-Length", "0")))


def call_through(client: UdpClient | TcpClient, uas: Uas, request: SipRequest) -> tuple[SipResponse, SipRequest]:
    """alice's ``request`` signed in through the proxy ``client`` talks to: the final response she gets, and the
    request as the UAS received it."""
    auth = SipAuthenticator("alice", PASSWORD, random=os.urandom, userhash=False)
    answer = drive(auth.exchange(request), client.send)
    (reached,) = [seen.request for seen in uas.seen if seen.request.call_id == request.call_id]
    return answer, reached


def callee_hangs_up(client: UdpClient, uas: Uas, ok: SipResponse, reached: SipRequest, port: int) -> SipRequest:
    """The callee's BYE sent from the UAS to the proxy at ``port``: the BYE as alice's own socket gets it
    (checked to be one, its Route used up), her 200 to it sent back, and seen at the UAS."""
    uas.send(far_side_bye(uas, ok, reached).to_bytes(), ("127.0.0.1", port))
    bye = parse_datagram(client.sock.recv(65535))
    assert isinstance(bye, SipRequest) and bye.method == "BYE" and bye.get_all("Route") == []
    client.sock.sendto(response_to(bye, 200, "OK", to_tag="alice1").to_bytes(), ("127.0.0.1", client.server[1]))
    uas.wait(lambda: any(r.call_id == ok.call_id and r.cseq.method == "BYE" for r in uas.responses))
    return bye


def test_udp_call_record_routed_and_hung_up_by_the_callee(proxy: SipProxyProcess, uas: Uas) -> None:
    port = proxy.ports["udp"]
    client = UdpClient(port)
    try:
        call_id = f"rr-udp-{os.urandom(4).hex()}@127.0.0.1"
        ok, reached = call_through(client, uas, invite("udp", client.local, port, call_id))
        assert ok.status == 200
        assert reached.get_all("Route") == []  # its Route named the proxy: it stopped there (section 16.4)
        (record_route,) = reached.values("Record-Route")
        assert record_route.startswith("<sip:") and record_route.endswith(f"@127.0.0.1:{port};transport=udp;lr>")
        assert ok.values("Record-Route") == [record_route]  # the UAS's 200 copies it back to alice
        # The callee hangs up: from the next hop, through the proxy (Route: its Record-Route), not challenged.
        bye = callee_hangs_up(client, uas, ok, reached, port)
        assert (bye.vias[0].host, bye.vias[0].port) == ("127.0.0.1", port) and len(bye.vias) == 2
        (done,) = [r for r in uas.responses if r.call_id == call_id]
        assert done.status == 200 and len(done.vias) == 1  # the proxy's Via popped on the way back
    finally:
        client.close()
    assert outcomes(proxy, call_id, 3) == [("ANSWERED", 407, None, "missing"), ("FORWARDED", None, "alice", "ok"),
                                           ("FORWARDED", None, None, "none")]  # the callee's BYE: no sign-in


def test_tcp_caller_gets_the_callees_bye_on_its_connection(proxy: SipProxyProcess, uas: Uas) -> None:
    """A client over TCP, the next hop over UDP: two Record-Route values (RFC 5658), and the callee's BYE goes to
    the caller's own connection (the flow token), not to the Contact's port where nothing listens."""
    port = proxy.ports["tcp"]
    client = TcpClient(port)
    try:
        call_id = f"rr-tcp-{os.urandom(4).hex()}@127.0.0.1"
        # A Contact port nobody listens on.
        ok, reached = call_through(client, uas, invite("tcp", client.local + 1, port, call_id))
        assert ok.status == 200
        assert reached.get_all("Route") == []
        top, second = reached.values("Record-Route")
        assert top.endswith(f"@127.0.0.1:{proxy.ports['udp']};transport=udp;lr>")
        assert second.endswith(f"@127.0.0.1:{port};transport=tcp;lr>")
        uas.send(far_side_bye(uas, ok, reached).to_bytes(), ("127.0.0.1", proxy.ports["udp"]))
        bye = client.receive()
        assert isinstance(bye, SipRequest) and bye.method == "BYE" and bye.get_all("Route") == []
        assert bye.vias[0].transport == "TCP"
        client.sock.sendall(response_to(bye, 200, "OK", to_tag="alice1").to_bytes())
        uas.wait(lambda: any(r.call_id == call_id and r.cseq.method == "BYE" for r in uas.responses))
    finally:
        client.sock.close()


def test_a_stranger_cannot_use_the_record_route(proxy: SipProxyProcess, uas: Uas) -> None:
    """The Record-Route's flow token from another address: challenged, and it never reaches the caller."""
    port = proxy.ports["udp"]
    client = UdpClient(port)
    stranger = UdpClient(port)
    try:
        call_id = f"rr-stranger-{os.urandom(4).hex()}@127.0.0.1"
        ok, reached = call_through(client, uas, invite("udp", client.local, port, call_id))
        bye = far_side_bye(uas, ok, reached)
        forged = SipRequest(method="BYE", uri=bye.uri, headers=tuple(
            (n, f"SIP/2.0/UDP 127.0.0.1:{stranger.local};branch=z9hG4bKstranger" if n == "Via" else v)
            for n, v in bye.headers))
        assert stranger.send(forged).status == 407
        client.sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            client.sock.recv(65535)  # nothing reached alice
    finally:
        client.close()
        stranger.close()


def test_no_record_route_when_turned_off(tmp_path: Path, uas: Uas) -> None:
    users = make_users_file(tmp_path / "sip.users", REALM)
    proc = start_sip_proxy(tmp_path, users, f"sip:127.0.0.1:{uas.port}", "--digest-algorithms", "MD5",
                           "--no-record-route")
    client = UdpClient(proc.ports["udp"])
    try:
        call_id = f"no-rr-{os.urandom(4).hex()}@127.0.0.1"
        ok, reached = call_through(client, uas, invite("udp", client.local, proc.ports["udp"], call_id))
        assert ok.status == 200
        assert reached.get_all("Record-Route") == [] and reached.get_all("Route") == []
    finally:
        client.close()
        proc.stop()


def test_with_workers_the_record_route_names_the_listener(tmp_path: Path, uas: Uas) -> None:
    """With --workers, each worker sends to the next hop from a port of its own (its Via), but the Record-Route
    names the shared listener, which outlives a worker's restart; the callee's BYE reaches the caller whichever
    worker the kernel gives it to (the flow token and the branch carry all it needs)."""
    users = make_users_file(tmp_path / "sip.users", REALM)
    proc = start_sip_proxy(tmp_path, users, f"sip:127.0.0.1:{uas.port}", "--digest-algorithms", "MD5",
                           "--workers", "2")
    port = proc.ports["udp"]
    client = UdpClient(port)
    try:
        call_id = f"rr-workers-{os.urandom(4).hex()}@127.0.0.1"
        ok, reached = call_through(client, uas, invite("udp", client.local, port, call_id))
        assert reached.vias[0].port != port  # the worker's own next-hop port
        (record_route,) = reached.values("Record-Route")
        assert record_route.endswith(f"@127.0.0.1:{port};transport=udp;lr>")
        callee_hangs_up(client, uas, ok, reached, port)
    finally:
        client.close()
        proc.stop()


def test_with_workers_the_callees_requests_reach_a_tcp_caller_whichever_worker_gets_them(tmp_path: Path,
                                                                                       uas: Uas) -> None:
    """--workers 2, alice over TCP: her connection is one worker's. The far side's requests in her dialog come
    to the proxy's UDP listener from eight sockets (127.0.0.9, trusted), which the kernel spreads over both
    workers by their 4-tuples: every one reaches her connection (the worker that does not hold it hands it to
    the one that does, which the flow token names), and her 200 to each goes back to where it came from."""
    users = make_users_file(tmp_path / "sip.users", REALM)
    proc = start_sip_proxy(tmp_path, users, f"sip:127.0.0.1:{uas.port}", "--digest-algorithms", "MD5",
                           "--workers", "2", config_text='[sip]\ntrusted = ["127.0.0.9"]\n')
    port = proc.ports["tcp"]
    client = TcpClient(port)
    senders: list[socket.socket] = []
    try:
        call_id = f"rr-workers-tcp-{os.urandom(4).hex()}@127.0.0.1"
        ok, reached = call_through(client, uas, invite("tcp", client.local + 1, port, call_id))
        assert ok.status == 200
        bye = far_side_bye(uas, ok, reached)
        for n in range(8):
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sender.bind(("127.0.0.9", 0))
            sender.settimeout(5)
            senders.append(sender)
            via = f"SIP/2.0/UDP 127.0.0.9:{sender.getsockname()[1]};branch=z9hG4bKw{n}{os.urandom(4).hex()}"
            request = SipRequest(method="BYE", uri=bye.uri, headers=tuple(
                (name, via if name == "Via" else f"{n + 1} BYE" if name == "CSeq" else value)
                for name, value in bye.headers))
            sender.sendto(request.to_bytes(), ("127.0.0.1", proc.ports["udp"]))
        got = [client.receive() for _ in senders]
        assert all(isinstance(m, SipRequest) and m.method == "BYE" for m in got)
        assert sorted(m.cseq.number for m in got) == list(range(1, 9))
        for message in got:
            assert isinstance(message, SipRequest)
            client.sock.sendall(response_to(message, 200, "OK", to_tag="alice1").to_bytes())
        for n, sender in enumerate(senders):
            answer = parse_datagram(sender.recv(65535))
            assert isinstance(answer, SipResponse) and (answer.status, answer.cseq.number) == (200, n + 1)
    finally:
        client.sock.close()
        for sender in senders:
            sender.close()
        proc.stop()


def test_two_chained_proxies_both_record_route_and_the_bye_comes_back_through_both(tmp_path: Path,
                                                                                   uas: Uas) -> None:
    """alice -> outer (its realm) -> inner (another realm) -> UAS: each proxy record-routes with its own flow
    token; the callee's BYE, its Route both proxies' values, goes inner (from its next hop) -> outer (from its
    next hop, the inner proxy) -> alice, each removing its own value, neither challenging."""
    with chained_sip_proxies(tmp_path, f"sip:127.0.0.1:{uas.port}") as (outer, inner):
        port = outer.ports["udp"]
        client = UdpClient(port)
        try:
            call_id = f"rr-chain-{os.urandom(4).hex()}@127.0.0.1"
            ok, reached = call_through(client, uas, invite("udp", client.local, port, call_id))
            assert ok.status == 200
            first, second = reached.values("Record-Route")  # the inner proxy's on top
            assert first.endswith(f"@127.0.0.1:{inner.ports['udp']};transport=udp;lr>")
            assert second.endswith(f"@127.0.0.1:{port};transport=udp;lr>") and reached.get_all("Route") == []
            bye = callee_hangs_up(client, uas, ok, reached, inner.ports["udp"])
            assert len(bye.vias) == 3  # the UAS's, the inner proxy's, the outer proxy's
            assert outcomes(inner, call_id, 3) == [("ANSWERED", 407, None, "missing"),
                                                   ("FORWARDED", None, "alice", "ok"),
                                                   ("FORWARDED", None, None, "none")]
            assert outcomes(outer, call_id, 4) == [("ANSWERED", 407, None, "missing"),
                                                   ("FORWARDED", None, "alice", "ok"),
                                                   ("FORWARDED", None, "alice", "ok"),
                                                   ("FORWARDED", None, None, "none")]
        finally:
            client.close()


def test_an_alias_names_the_proxy_in_a_route(tmp_path: Path, uas: Uas) -> None:
    """User agents given the proxy by name (its domain) send Route: <sip:NAME;lr>: with --alias NAME it stops
    at the proxy like one naming its address."""
    users = make_users_file(tmp_path / "sip.users", REALM)
    proc = start_sip_proxy(tmp_path, users, f"sip:127.0.0.1:{uas.port}", "--digest-algorithms", "MD5",
                           "--alias", "outbound.example.test")
    client = UdpClient(proc.ports["udp"])
    try:
        request = client.request("OPTIONS")
        request = request.replace_headers([*request.headers[:-1], ("Route", "<sip:outbound.example.test;lr>"),
                                           request.headers[-1]])
        ok, reached = call_through(client, uas, request)
        assert ok.status == 200 and reached.get_all("Route") == []
    finally:
        client.close()
        proc.stop()


def test_path_brings_an_incoming_call_to_the_registered_client(proxy: SipProxyProcess, uas: Uas) -> None:
    """RFC 3327: alice registers through the proxy, which adds its Path; the registrar (the UAS here) sends a
    call for her contact with that Path as its Route: it reaches alice's own socket through the proxy,
    unchallenged, and her answer goes back to the UAS."""
    port = proxy.ports["udp"]
    client = UdpClient(port)
    try:
        register = client.request("REGISTER", uri="sip:example.org")
        register = register.replace_headers([*register.headers[:-1],
                                             ("Contact", f"<sip:alice@192.0.2.1:{client.local}>"),
                                             register.headers[-1]])
        ok, reached = call_through(client, uas, register)
        assert ok.status == 200
        (path,) = reached.values("Path")
        assert path.endswith(f"@127.0.0.1:{port};transport=udp;lr>")
        call_id = f"incoming-{os.urandom(4).hex()}@example.org"
        incoming = SipRequest(method="INVITE", uri=f"sip:alice@192.0.2.1:{client.local}", headers=(
            ("Via", f"SIP/2.0/UDP 127.0.0.1:{uas.port};branch=z9hG4bK{os.urandom(6).hex()}"),
            ("Max-Forwards", "70"), ("Route", path), ("From", "<sip:carol@example.org>;tag=carol"),
            ("To", "<sip:alice@example.org>"), ("Call-ID", call_id), ("CSeq", "1 INVITE"),
            ("Contact", f"<sip:carol@127.0.0.1:{uas.port}>"), ("Content-Length", "0")))
        uas.send(incoming.to_bytes(), ("127.0.0.1", port))  # 192.0.2.1 (the Contact) is not where alice is
        call = parse_datagram(client.sock.recv(65535))
        assert isinstance(call, SipRequest) and call.method == "INVITE" and call.call_id == call_id
        assert call.get_all("Route") == [] and len(call.vias) == 2
        client.sock.sendto(response_to(call, 200, "OK", to_tag="alice2").to_bytes(), ("127.0.0.1", port))
        uas.wait(lambda: any(r.call_id == call_id and r.status == 200 for r in uas.responses))
    finally:
        client.close()
