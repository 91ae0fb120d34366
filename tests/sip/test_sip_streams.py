"""`authproxy sip serve`'s TCP and TLS connections over real sockets on 127.0.0.1, with short timeouts: closed
when idle (`idle_timeout`; RFC 5626 keep-alive pings answered and counted as activity), when a message begun
does not end (`message_timeout`, however slowly it trickles), when a TLS handshake does not finish
(`tls_handshake_timeout`), and a TLS connection counted against `max_connections` from accept."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sip_uas import Uas
from test_sip_serve import REALM

from authproxy.sip.log import DROPPED, parse_sip_line
from authproxy.sip.message import SipRequest, SipResponse
from authproxy.sip.parse import parse_stream

from helpers import SipProxyProcess, make_users_file, start_sip_proxy, write_tls_files

IDLE, MESSAGE, HANDSHAKE = 1.5, 1.0, 1.0
SLACK = 1.5  # a loaded machine's lateness, on top of a timeout


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SipProxyProcess]:
    tmp = tmp_path_factory.mktemp("sip-streams")
    users = make_users_file(tmp / "sip.users", REALM)
    cert, key, _ca = write_tls_files(tmp)
    with Uas({}, roles=()) as uas:
        proc = start_sip_proxy(tmp, users, f"sip:127.0.0.1:{uas.port}", "--tls-cert", str(cert), "--tls-key",
                               str(key), listen=("udp:127.0.0.1:0", "tcp:127.0.0.1:0", "tls:127.0.0.1:0"),
                               config_text=f"[sip]\nidle_timeout = {IDLE}\nmessage_timeout = {MESSAGE}\n"
                                           f"tls_handshake_timeout = {HANDSHAKE}\n")
        yield proc
        proc.stop()


def request_bytes() -> bytes:
    """An OPTIONS as a TCP user agent would send it, without credentials."""
    tag = os.urandom(6).hex()
    headers = (("Via", f"SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK{tag}"), ("Max-Forwards", "70"),
               ("From", f"<sip:alice@example.org>;tag={tag}"), ("To", "<sip:bob@example.org>"),
               ("Call-ID", f"{tag}@127.0.0.1"), ("CSeq", "1 OPTIONS"), ("Content-Length", "0"))
    return SipRequest(method="OPTIONS", uri="sip:bob@example.org", headers=headers).to_bytes()


def closed_after(sock: socket.socket, *, feed: bytes = b"", every: float = 0.0, limit: float = 15.0) -> float:
    """Seconds until the proxy closes ``sock`` (reading what it sends meanwhile); with ``feed``, one byte of it
    is sent every ``every`` seconds while waiting."""
    start = time.monotonic()
    sock.settimeout(every or limit)
    sent = 0
    while time.monotonic() - start < limit:
        try:
            data = sock.recv(65535)
        except TimeoutError:
            if sent < len(feed):
                sock.sendall(feed[sent:sent + 1])
                sent += 1
            continue
        except ConnectionResetError:
            return time.monotonic() - start
        if not data:
            return time.monotonic() - start
    raise AssertionError(f"still open after {limit} s")


def test_an_idle_connection_is_closed(proxy: SipProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", proxy.ports["tcp"]), timeout=5) as sock:
        sock.sendall(request_bytes())
        buffer = b""
        while (framed := parse_stream(buffer)) is None:
            buffer += sock.recv(65535)
        assert isinstance(framed[0], SipResponse) and framed[0].status == 407
        assert IDLE - 0.2 < closed_after(sock) < IDLE + SLACK


def test_keep_alive_pings_are_answered_and_keep_it_open(proxy: SipProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", proxy.ports["tcp"]), timeout=5) as sock:
        start = time.monotonic()
        while time.monotonic() - start < 2 * IDLE:  # twice the idle timeout, a ping every third of it
            sock.sendall(b"\r\n\r\n")
            assert sock.recv(16) == b"\r\n"  # RFC 5626 section 3.5.1: the pong
            time.sleep(IDLE / 3)
        assert IDLE - 0.2 - IDLE / 3 < closed_after(sock) < IDLE + SLACK  # idle from the last ping on


def test_a_message_that_does_not_end_is_cut_off_however_slowly_it_comes(proxy: SipProxyProcess) -> None:
    whole = request_bytes()
    with socket.create_connection(("127.0.0.1", proxy.ports["tcp"]), timeout=5) as sock:
        sock.sendall(whole[:40])
        # One more byte every 0.2 s: activity enough for idle_timeout, not for message_timeout.
        assert MESSAGE - 0.2 < closed_after(sock, feed=whole[40:], every=0.2) < MESSAGE + SLACK
    lines = proxy.log_lines(lambda ls: any("message_timeout" in line for line in ls))
    (dropped,) = [parse_sip_line(line) for line in lines if "message_timeout" in line]
    assert dropped.action == DROPPED and dropped.transport == "tcp"


def test_a_tls_handshake_that_does_not_finish_is_cut_off(proxy: SipProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", proxy.ports["tls"]), timeout=5) as sock:
        assert HANDSHAKE - 0.2 < closed_after(sock) < HANDSHAKE + SLACK  # not a byte of a ClientHello
    # Told to the operator as the HTTP proxy tells it (flushed once a second).
    told = "TLS handshake with 127.0.0.1 failed: not finished within tls_handshake_timeout (1 s)"
    deadline = time.monotonic() + 5
    while not any(told in line for line in proxy.stderr_lines) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any(told in line for line in proxy.stderr_lines), proxy.stderr_lines


def test_tls_connections_count_from_accept(tmp_path: Path) -> None:
    users = make_users_file(tmp_path / "sip.users", REALM)
    cert, key, _ca = write_tls_files(tmp_path)
    proc = start_sip_proxy(tmp_path, users, "sip:127.0.0.1:9", "--tls-cert", str(cert), "--tls-key", str(key),
                           listen=("udp:127.0.0.1:0", "tls:127.0.0.1:0"),
                           config_text="[sip]\nmax_connections = 2\ntls_handshake_timeout = 30\n")
    try:
        held = [socket.create_connection(("127.0.0.1", proc.ports["tls"]), timeout=5) for _ in range(2)]
        time.sleep(0.3)  # both accepted (the proxy says nothing to a connection before its ClientHello)
        with socket.create_connection(("127.0.0.1", proc.ports["tls"]), timeout=5) as third:
            assert closed_after(third) < SLACK  # two handshakes pending fill max_connections = 2
        for sock in held:
            sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                sock.recv(1)  # still open, waiting for their ClientHello
            sock.close()
    finally:
        proc.stop()
