"""`authproxy sip serve` over real sockets on 127.0.0.1: sipsak (a real SIP client) over UDP and TCP, Python's own
client (authproxy.sip.udp, SHA-256), replays and retransmissions, refusals, and two chained proxies, each in its
own realm. The next hop is the tests' own UAS (tests/sip/sip_uas.py) answering 200."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sip_uas import Uas
from test_sip_client import sipsak

from authproxy.sip.client import SipAuthenticator, drive
from authproxy.sip.log import DROPPED, parse_sip_line
from authproxy.sip.message import SipRequest, SipResponse
from authproxy.sip.parse import parse_datagram, parse_stream
from authproxy.sip.udp import register

from helpers import (
    USERS,
    SipProxyProcess,
    chained_sip_proxies,
    make_users_file,
    rss_bytes,
    start_sip_proxy,
    write_tls_files,
)

REALM = "sip-test"
PASSWORD = USERS["alice"]


@pytest.fixture(scope="module")
def uas() -> Iterator[Uas]:
    with Uas({}, roles=()) as server:  # no hop of its own: answers 200 to every request
        yield server


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_users_file(tmp_path_factory.mktemp("sip") / "sip.users", REALM)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, users: Path, uas: Uas) -> Iterator[SipProxyProcess]:
    # MD5 first: sipsak answers only MD5 and reads only the first challenge.
    proc = start_sip_proxy(tmp_path_factory.mktemp("sip-proxy"), users, f"sip:127.0.0.1:{uas.port}",
                           "--digest-algorithms", "MD5,SHA-256")
    yield proc
    proc.stop()


class UdpClient:
    """A SIP UA on a UDP socket of its own, talking to one server synchronously."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))  # another 127.0.0.x: another client address
        self.sock.settimeout(5)
        self.server = ("127.0.0.1", port)
        self.local = self.sock.getsockname()[1]
        self.count = 0

    def request(self, method: str = "OPTIONS", *, max_forwards: str = "70",
                uri: str = "sip:bob@example.org") -> SipRequest:
        self.count += 1
        headers = (("Via", f"SIP/2.0/UDP 127.0.0.1:{self.local};branch=z9hG4bK{os.urandom(6).hex()};rport"),
                   ("Max-Forwards", max_forwards), ("From", f"<sip:alice@example.org>;tag=t{self.local}"),
                   ("To", "<sip:bob@example.org>"), ("Call-ID", f"c{self.local}-{self.count}@127.0.0.1"),
                   ("CSeq", f"1 {method}"), ("Content-Length", "0"))
        return SipRequest(method=method, uri=uri, headers=headers)

    def send_raw(self, data: bytes) -> SipResponse:
        self.sock.sendto(data, self.server)
        while True:
            answer = parse_datagram(self.sock.recv(65535))
            if isinstance(answer, SipResponse) and answer.status >= 200:
                return answer

    def send(self, request: SipRequest) -> SipResponse:
        return self.send_raw(request.to_bytes())

    def close(self) -> None:
        self.sock.close()


def outcomes(proxy: SipProxyProcess, call_id: str, count: int) -> list[tuple[str, int | None, str | None, str]]:
    """(action, status, user, outcome) of the log lines of ``call_id``, once there are ``count`` of them."""
    def mine(lines: list[str]) -> list[tuple[str, int | None, str | None, str]]:
        parsed = [parse_sip_line(line) for line in lines]
        return [(p.action, p.status, p.user, p.outcome) for p in parsed if p.call_id_or_reason == call_id]

    return mine(proxy.log_lines(lambda lines: len(mine(lines)) >= count))


# --- real clients ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("mode", ["OPTIONS", "REGISTER"])
def test_sipsak_signs_in_with_md5(proxy: SipProxyProcess, uas: Uas, transport: str, mode: str) -> None:
    port = proxy.ports[transport]
    before = len(uas.seen)
    extra = ["-U", "-C", "sip:alice@127.0.0.1:5999"] if mode == "REGISTER" else []
    done = sipsak(*extra, "-E", transport, "-s", f"sip:alice@127.0.0.1:{port}", "-u", "alice", "-a", PASSWORD)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "authorizing" in done.stdout  # it met the proxy's 407 and answered it
    (reached,) = [seen.request for seen in uas.seen[before:]]
    assert reached.method == mode and reached.get_all("Proxy-Authorization") == []
    ours, theirs = reached.vias
    assert ours.transport == "UDP" and theirs.transport == transport.upper()
    assert ours.branch is not None and ours.branch.startswith("z9hG4bKap")
    logged = outcomes(proxy, reached.call_id, 2)
    assert logged == [("ANSWERED", 407, None, "missing"), ("FORWARDED", None, "alice", "ok")]


def test_python_client_registers_with_sha256(tmp_path: Path, users: Path, uas: Uas) -> None:
    proc = start_sip_proxy(tmp_path, users, f"sip:127.0.0.1:{uas.port}", "--digest-algorithms", "SHA-256",
                           listen=("udp:127.0.0.1:0",))
    try:
        response = asyncio.run(register(("127.0.0.1", proc.ports["udp"]), "sip:alice@example.org", "alice",
                                        PASSWORD, expires=300))
        assert response.status == 200 and response.get("Expires") == "300"
        call_id = response.call_id
        assert outcomes(proc, call_id, 2)[-1] == ("FORWARDED", None, "alice", "ok")
        challenge = [seen for seen in uas.seen if seen.request.call_id == call_id]
        assert len(challenge) == 1  # the UAS saw only the authenticated REGISTER
    finally:
        proc.stop()


# --- replays, retransmissions, refusals ------------------------------------------------------------------


def test_replay_retransmission_and_refusals_over_udp(proxy: SipProxyProcess, uas: Uas) -> None:
    client = UdpClient(proxy.ports["udp"])
    try:
        auth = SipAuthenticator("alice", PASSWORD, random=os.urandom, userhash=False)
        sent: list[SipRequest] = []

        def send(request: SipRequest) -> SipResponse:
            sent.append(request)
            return client.send(request)

        assert drive(auth.exchange(client.request()), send).status == 200
        signed = sent[-1]
        reached = uas.datagrams
        # A retransmission (the same bytes): forwarded again, answered 200 again, not a replay, not logged.
        assert client.send(signed).status == 200 and uas.datagrams == reached + 1
        # The same credentials (nonce, nc) in a new transaction: a replay, refused and logged as one.
        replay = signed.to_bytes().replace((signed.vias[0].branch or "").encode(), b"z9hG4bKreplayed")
        assert client.send_raw(replay).status == 407
        assert outcomes(proxy, signed.call_id, 3)[1:] == [("FORWARDED", None, "alice", "ok"),
                                                          ("ANSWERED", 407, "alice", "replay")]
        field = signed.get("Proxy-Authorization") or ""

        def with_field(value: str, **kw: str) -> SipResponse:
            request = client.request(**kw)
            return client.send(request.replace_headers((*request.headers[:-1], ("Proxy-Authorization", value),
                                                        request.headers[-1])))

        forged = with_field(field.replace('nonce="', 'nonce="B', 1))
        other_realm = with_field(field.replace(f'realm="{REALM}"', 'realm="somewhere-else"'))
        uri_mismatch = with_field(field.replace("nc=00000001", "nc=00000005"), uri="sip:carol@example.org")
        assert (forged.status, other_realm.status, uri_mismatch.status) == (407, 407, 400)
        assert "Digest uri" in (uri_mismatch.get("Warning") or "")
        assert outcomes(proxy, forged.call_id, 1) == [("ANSWERED", 407, "alice", "bad-nonce")]
        assert outcomes(proxy, other_realm.call_id, 1) == [("ANSWERED", 407, None, "missing")]
        assert outcomes(proxy, uri_mismatch.call_id, 1) == [("ANSWERED", 400, None, "bad-request")]
        hops = client.send(client.request(max_forwards="0"))
        assert (hops.status, hops.reason) == (483, "Too Many Hops")
    finally:
        client.close()


def test_ack_and_cancel_are_never_challenged(proxy: SipProxyProcess, uas: Uas) -> None:
    client = UdpClient(proxy.ports["udp"])
    try:
        cancel = client.request("CANCEL")
        assert client.send(cancel).status == 200  # forwarded without credentials; the UAS answered
        before = len(uas.seen)
        ack = client.request("ACK")
        client.sock.sendto(ack.to_bytes(), client.server)
        assert outcomes(proxy, ack.call_id, 1) == [("FORWARDED", None, None, "none")]
        assert outcomes(proxy, cancel.call_id, 1) == [("FORWARDED", None, None, "none")]
        assert len(uas.seen) == before  # the UAS records no ACK; it got it all the same (logged as forwarded)
    finally:
        client.close()


def test_malformed_input_gets_400_or_is_dropped(proxy: SipProxyProcess) -> None:
    client = UdpClient(proxy.ports["udp"])
    try:
        bad = client.request().to_bytes().replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE")
        answer = client.send_raw(bad)
        assert answer.status == 400 and "CSeq method" in (answer.get("Warning") or "")
        client.sock.sendto(b"\x16\x03\x01 not sip at all", client.server)
        lines = proxy.log_lines(lambda ls: any(parse_sip_line(x).action == DROPPED for x in ls))
        assert any(parse_sip_line(x).action == DROPPED for x in lines)
        assert client.send(client.request("CANCEL")).status == 200  # still serving
    finally:
        client.close()
    assert proxy.proc.poll() is None and not any("Traceback" in line for line in proxy.stderr_lines)


# --- two proxies in a chain ------------------------------------------------------------------------------


def test_two_chained_proxies_with_different_realms(tmp_path: Path, uas: Uas) -> None:
    with chained_sip_proxies(tmp_path, f"sip:127.0.0.1:{uas.port}", inner_algorithms="SHA-256") as (outer, inner):
        response = asyncio.run(register(("127.0.0.1", outer.ports["udp"]), "sip:alice@example.org", "alice",
                                        PASSWORD))
        assert response.status == 200 and len(response.vias) == 1
        call_id = response.call_id
        assert outcomes(outer, call_id, 3) == [("ANSWERED", 407, None, "missing"),
                                               ("FORWARDED", None, "alice", "ok"),
                                               ("FORWARDED", None, "alice", "ok")]
        assert outcomes(inner, call_id, 2) == [("ANSWERED", 407, None, "missing"),
                                               ("FORWARDED", None, "alice", "ok")]
        (reached,) = [seen.request for seen in uas.seen if seen.request.call_id == call_id]
        assert len(reached.vias) == 3 and reached.get_all("Proxy-Authorization") == []
        assert reached.max_forwards == 68


def test_config_file_sip_table(tmp_path: Path, users: Path, uas: Uas) -> None:
    config = tmp_path / "authproxy.toml"
    config.write_text(f'users = "{users}"\nrealm = "{REALM}"\n\n[sip]\nlisten = ["udp:127.0.0.1:0"]\n'
                      f'next_hop = "sip:127.0.0.1:{uas.port}"\ndigest_algorithms = ["MD5"]\n')
    proc = start_sip_proxy(tmp_path, users, f"sip:127.0.0.1:{uas.port}", "--config", str(config), listen=())
    try:
        assert set(proc.ports) == {"udp"} and "Digest MD5;" in "".join(proc.stderr_lines)
        done = sipsak("-s", f"sip:alice@127.0.0.1:{proc.ports['udp']}", "-u", "alice", "-a", PASSWORD)
        assert done.returncode == 0, done.stdout
    finally:
        proc.stop()


# --- other transports ------------------------------------------------------------------------------------


def test_tcp_next_hop(tmp_path: Path, users: Path) -> None:
    with Uas({}, roles=(), tcp=True) as tcp_uas:
        proc = start_sip_proxy(tmp_path, users, f"sip:127.0.0.1:{tcp_uas.port};transport=tcp",
                               "--digest-algorithms", "MD5")
        try:
            for transport in ("udp", "tcp", "udp"):
                done = sipsak("-E", transport, "-s", f"sip:alice@127.0.0.1:{proc.ports[transport]}", "-u", "alice",
                              "-a", PASSWORD)
                assert done.returncode == 0, done.stdout + done.stderr
        finally:
            proc.stop()
    assert [seen.request.vias[0].transport for seen in tcp_uas.seen] == ["TCP"] * 3
    assert tcp_uas.connections == 1  # one connection to the next hop, kept and reused


class TlsClient:
    """A SIP UA over TLS: each request written on one connection, its final response framed by Content-Length."""

    def __init__(self, port: int, ca: Path) -> None:
        context = ssl.create_default_context(cafile=str(ca))
        self.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                                        server_hostname="127.0.0.1")
        self.buffer = b""

    def send(self, request: SipRequest) -> SipResponse:
        self.sock.sendall(request.to_bytes())
        while True:
            framed = parse_stream(self.buffer)
            if framed is None:
                chunk = self.sock.recv(65535)
                assert chunk, "the proxy closed the connection"
                self.buffer += chunk
                continue
            message, used = framed
            self.buffer = self.buffer[used:]
            if isinstance(message, SipResponse) and message.status >= 200:
                return message


def test_tls_listener(tmp_path: Path, users: Path, uas: Uas) -> None:
    cert, key, ca = write_tls_files(tmp_path)
    proc = start_sip_proxy(tmp_path, users, f"sip:127.0.0.1:{uas.port}", "--tls-cert", str(cert), "--tls-key",
                           str(key), listen=("udp:127.0.0.1:0", "tls:127.0.0.1:0"))
    try:
        client = TlsClient(proc.ports["tls"], ca)
        request = UdpClient(proc.ports["tls"]).request()  # only its builder; the Via says TLS below
        request = request.replace_headers(
            (n, v.replace("SIP/2.0/UDP", "SIP/2.0/TLS") if n == "Via" else v) for n, v in request.headers)
        auth = SipAuthenticator("alice", PASSWORD, random=os.urandom, userhash=False)
        assert drive(auth.exchange(request, secure=True), client.send).status == 200
        assert outcomes(proc, request.call_id, 2) == [("ANSWERED", 407, None, "missing"),
                                                      ("FORWARDED", None, "alice", "ok")]
        client.sock.close()
    finally:
        proc.stop()


# --- bounded memory --------------------------------------------------------------------------------------


def test_a_flood_of_transactions_stays_bounded(tmp_path: Path, users: Path, uas: Uas) -> None:
    """30,000 new transactions from 30 addresses (127.0.0.x): the table holds at most max_transactions, each
    source at most its share (the rest get 503), and the proxy's resident memory grows by little."""
    proc = start_sip_proxy(tmp_path, users, f"sip:127.0.0.1:{uas.port}", listen=("udp:127.0.0.1:0",),
                           config_text="[sip]\nmax_transactions = 5000\nmax_transactions_per_source = 500\n"
                                       "udp_answer_rate = 0\n")  # every 407 and 503 answered: the table's bound
    try:
        port = proc.ports["udp"]
        warm = UdpClient(port)
        assert warm.send(warm.request()).status == 407
        before = rss_bytes(proc.proc.pid)
        statuses: dict[int, int] = {}
        for index in range(30):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((f"127.0.0.{index + 2}", 0))
            sock.settimeout(5)
            flood = UdpClient(port)
            flood.sock.close()
            flood.sock, flood.local = sock, sock.getsockname()[1]
            for _ in range(20):  # 50 at a time: within the socket buffers, without a round trip each
                for _ in range(50):
                    sock.sendto(flood.request().to_bytes(), flood.server)
                for _ in range(50):
                    status = int(sock.recv(65535).split(b" ", 2)[1])
                    statuses[status] = statuses.get(status, 0) + 1
            sock.close()
        grown = rss_bytes(proc.proc.pid) - before
        assert statuses == {407: 15_000, 503: 15_000}  # 500 remembered per source, the rest refused
        # Measured: 8.5 MiB for the 5,000 remembered (each holds its 407); 15,000 would be three times that.
        assert grown < 16 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB"
    finally:
        proc.stop()


def test_answers_to_one_address_are_bounded_over_udp(tmp_path: Path, users: Path, uas: Uas) -> None:
    """1,000 unsigned requests from one address, as a forger sends them in a victim's name (RFC 3261 section
    26.3.2.4): at most the burst and the rate are answered (each 407 is 3.5 times such a request), one log line
    says so; another address is answered meanwhile, and the flooded one again once a token is back."""
    rate, burst = 20, 50
    proc = start_sip_proxy(tmp_path, users, f"sip:127.0.0.1:{uas.port}", listen=("udp:127.0.0.1:0",),
                           config_text=f"[sip]\nudp_answer_rate = {rate}\nudp_answer_burst = {burst}\n")
    try:
        port = proc.ports["udp"]
        flood, other = UdpClient(port, "127.0.0.2"), UdpClient(port, "127.0.0.3")
        started = time.monotonic()
        for n in range(1000):
            flood.sock.sendto(flood.request().to_bytes(), flood.server)
            if n % 50 == 49:
                time.sleep(0.01)  # 5,000 a second, within the proxy's socket buffer (else the kernel drops them)
        assert other.send(other.request()).status == 407
        flood.sock.settimeout(1.0)
        answers, last = [], started
        with contextlib.suppress(TimeoutError):
            while True:
                answers.append(flood.sock.recv(65535))
                last = time.monotonic()
        assert all(answer.startswith(b"SIP/2.0 407 ") for answer in answers)
        assert burst <= len(answers) <= burst + rate * (last - started) + 1, (len(answers), last - started)
        lines = proc.log_lines(lambda lines: any(" DROPPED/" in line for line in lines))
        dropped = [parse_sip_line(line) for line in lines if " DROPPED/" in line]
        assert [(d.client.split(":")[0], d.status, d.outcome) for d in dropped] == [("127.0.0.2", 407, "over-limit")]
        assert dropped[0].call_id_or_reason == (f"over {rate} answers a second (burst {burst}) to this address: "
                                                "answers dropped until it slows")
        time.sleep(2 / rate)
        assert flood.send(flood.request()).status == 407
        flood.close()
        other.close()
    finally:
        proc.stop()


def test_a_junk_flood_is_not_one_log_line_per_datagram(tmp_path: Path, users: Path, uas: Uas) -> None:
    """2,000 datagrams of junk (nothing to answer, each a DROPPED line): the access log takes at most 50 a
    second, stderr says how many more there were, and the proxy goes on answering."""
    proc = start_sip_proxy(tmp_path, users, f"sip:127.0.0.1:{uas.port}", listen=("udp:127.0.0.1:0",))
    try:
        port = proc.ports["udp"]
        junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        started = time.monotonic()
        for n in range(2000):
            junk.sendto(b"\x00\xff not SIP %d" % n, ("127.0.0.1", port))
            if n % 50 == 49:
                time.sleep(0.005)  # within the proxy's socket buffer: every datagram is read
        junk.close()
        client = UdpClient(port)
        assert client.send(client.request()).status == 407  # read after the whole flood
        elapsed = time.monotonic() - started
        client.close()
        lines = proc.log_lines(lambda lines: any(" ANSWERED/407 " in line for line in lines))
        dropped = [line for line in lines if " DROPPED/" in line]
        assert 50 <= len(dropped) <= 50 * (elapsed + 2), (len(dropped), elapsed)

        def not_shown(said: list[str]) -> int:
            return sum(int(line.split()[1]) for line in said if "more DROPPED lines" in line)

        said = proc.stderr_until(lambda said: not_shown(said) >= 2000 - len(dropped))
        assert len(dropped) + not_shown(said) == 2000  # every one counted
        summary = next(line for line in said if "more DROPPED lines" in line)
        assert summary == (f"authproxy: {summary.split()[1]} more DROPPED lines in the SIP access log not shown (at "
                           "most 50 lines a second)")
    finally:
        proc.stop()


# --- kamailio as the next hop ----------------------------------------------------------------------------

KAMAILIO_CFG = """#!KAMAILIO
debug=1
log_stderror=yes
children=1
listen=udp:127.0.0.1:{port}
mpath="{modules}"
loadmodule "sl.so"
loadmodule "rr.so"
request_route {{
    if (method == "ACK") {{ exit; }}
    if (loose_route()) {{ forward(); exit; }}  # a Route left: followed, as a registrar or SBC does
    sl_send_reply("200", "OK from kamailio");
}}
"""


@pytest.fixture
def kamailio(tmp_path: Path) -> Iterator[int]:
    """kamailio (Debian package, installed by scripts/install-system-tools) answering 200 to every request on a
    free UDP port of 127.0.0.1; stopped by its PID."""
    exe = shutil.which("kamailio") or ("/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None)
    assert exe is not None, "kamailio is missing: run scripts/install-system-tools (Debian package kamailio)"
    modules = next(Path("/usr/lib").glob("*/kamailio/modules/sl.so")).parent
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = tmp_path / "kamailio.cfg"
    cfg.write_text(KAMAILIO_CFG.format(port=port, modules=f"{modules}/"))
    proc = subprocess.Popen([exe, "-f", str(cfg), "-DD", "-E", "-Y", str(tmp_path), "-P", str(tmp_path / "k.pid"),
                             "-m", "32", "-M", "4"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        client = UdpClient(port)
        client.sock.settimeout(0.2)
        deadline = time.monotonic() + 15
        while True:  # ready when it answers
            try:
                assert client.send(client.request("OPTIONS")).status == 200
                break
            except TimeoutError:
                assert proc.poll() is None and time.monotonic() < deadline, "kamailio did not start"
        client.close()
        yield port
    finally:
        # kamailio forks its workers into its process group; on a loaded machine they take a while to stop, so
        # the whole group gets SIGTERM, then SIGKILL if it is not gone in time.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_kamailio_as_the_next_hop(tmp_path: Path, users: Path, kamailio: int) -> None:
    proc = start_sip_proxy(tmp_path, users, f"sip:127.0.0.1:{kamailio}", "--digest-algorithms", "MD5,SHA-256")
    try:
        for transport in ("udp", "tcp"):
            done = sipsak("-E", transport, "-s", f"sip:alice@127.0.0.1:{proc.ports[transport]}", "-u", "alice",
                          "-a", PASSWORD)
            assert done.returncode == 0 and "OK from kamailio" in done.stdout, done.stdout + done.stderr
        response = asyncio.run(register(("127.0.0.1", proc.ports["udp"]), "sip:alice@example.org", "alice",
                                        PASSWORD))
        assert (response.status, response.reason) == (200, "OK from kamailio")
        # An outbound-proxy Route naming authproxy (RFC 3261 section 16.4): removed there, so kamailio's
        # loose_route finds none to follow and answers; left in, kamailio would send it straight back.
        client = UdpClient(proc.ports["udp"])
        try:
            request = client.request("OPTIONS")
            request = request.replace_headers([*request.headers[:-1], ("Route", f"<sip:127.0.0.1:{proc.ports['udp']}"
                                                                                ";transport=udp;lr>"),
                                               request.headers[-1]])
            auth = SipAuthenticator("alice", PASSWORD, random=os.urandom, userhash=False)
            response = drive(auth.exchange(request), client.send)
            assert (response.status, response.reason) == (200, "OK from kamailio")
        finally:
            client.close()
    finally:
        proc.stop()
