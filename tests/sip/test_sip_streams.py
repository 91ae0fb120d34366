"""`authproxy sip serve`'s TCP and TLS connections over real sockets on 127.0.0.1, with short timeouts: closed
when idle (`idle_timeout`; RFC 5626 keep-alive pings answered and counted as activity), when a message begun
does not end (`message_timeout`, however slowly it trickles), when a TLS handshake does not finish
(`tls_handshake_timeout`), and a TLS connection counted against `max_connections` from accept."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sip_uas import Uas
from test_sip_serve import REALM

from authproxy.sip import streams
from authproxy.sip.log import DROPPED, parse_sip_line
from authproxy.sip.message import SipRequest, SipResponse
from authproxy.sip.parse import DEFAULT_LIMITS, parse_stream, stream_frame_length
from authproxy.sip.streams import Stream

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


# -- framing over many reads, in process -------------------------------------------------------------------
# No socket here: what is tested is how often a connection parses its buffer for a given sequence of reads, and
# a real socket cannot be made to deliver one byte per read (the kernel coalesces). The Stream, the parser and
# the framing are the real ones; the transport and the server around them are stand-ins that record.

class _Transport:
    def get_extra_info(self, name: str) -> tuple[str, int]:
        return ("127.0.0.1", 5999)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        raise AssertionError("closed: the framing was refused")

    def write(self, data: bytes) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def _stream(received: list[bytes]) -> Stream:
    config = SimpleNamespace(max_connections=10, idle_timeout=60.0, message_timeout=60.0)
    server = SimpleNamespace(config=config, limits=DEFAULT_LIMITS, proxy=None, streams={}, tls=None,
                             received=lambda raw, peer, name: received.append(raw), act=lambda actions: None)
    stream = Stream(server, "tcp")  # type: ignore[arg-type]  # the stand-in has what Stream reads
    stream.connection_made(_Transport())  # type: ignore[arg-type]
    return stream


def _message(body: bytes = b"") -> bytes:
    tag = os.urandom(4).hex()
    headers = (("Via", f"SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK{tag}"), ("From", f"<sip:a@example.org>;tag={tag}"),
               ("To", "<sip:b@example.org>"), ("Call-ID", tag), ("CSeq", "1 MESSAGE"),
               ("Content-Length", str(len(body))))
    return SipRequest(method="MESSAGE", uri="sip:b@example.org", headers=headers, body=body).to_bytes()


def test_a_message_trickling_in_one_byte_per_read_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """60 KB in 60,000 reads: before, every read parsed the whole buffer again (0.32 s of CPU for one message,
    an attacker's multiplier); now the head's end is searched only in what is new, and once the head is in
    the connection waits for the length it gave."""
    calls = 0

    def counted(buffer: bytes, limits: Any) -> int | None:
        nonlocal calls
        calls += 1
        return stream_frame_length(buffer, limits)

    monkeypatch.setattr(streams, "stream_frame_length", counted)
    message = _message(b"x" * 60_000)

    async def run() -> list[bytes]:
        received: list[bytes] = []
        stream = _stream(received)
        for i in range(len(message)):
            stream.data_received(message[i:i + 1])
        return received

    assert asyncio.run(run()) == [message]
    assert calls == 1  # and the proxy parses what the connection framed, once


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=4), st.lists(st.integers(1, 700), min_size=1),
       st.lists(st.sampled_from([b"", b"\r\n", b"\r\n\r\n"]), min_size=4, max_size=4))
def test_any_cut_of_a_stream_gives_the_same_messages(bodies: list[int], cuts: list[int], gaps: list[bytes]) -> None:
    """Messages (with the CRLFs section 7.5 allows between them) cut into reads of any sizes arrive whole, in
    order, as parse_stream frames them from one buffer. CRLFs that arrive on their own are dropped, those that
    come with a message stay in its bytes: compared without them. A CRLF cut between two reads is still one
    (a CR kept alone was dropped before, and the LF then read as a bare LF before the next start line)."""
    messages = [gap + _message(b"y" * size) for gap, size in zip(gaps, bodies, strict=False)]
    data = b"".join(messages)

    async def run() -> list[bytes]:
        received: list[bytes] = []
        stream = _stream(received)
        pos, i = 0, 0
        while pos < len(data):
            step = cuts[i % len(cuts)]
            stream.data_received(data[pos:pos + step])
            pos, i = pos + step, i + 1
        return received

    expected, rest = [], data
    while rest.strip(b"\r\n"):
        framed = parse_stream(rest)
        assert framed is not None
        expected.append(rest[:framed[1]])
        rest = rest[framed[1]:]
    plain = [message.lstrip(b"\r\n") for message in messages]
    assert [raw.lstrip(b"\r\n") for raw in asyncio.run(run())] == [raw.lstrip(b"\r\n") for raw in expected] == plain


def test_a_message_malformed_inside_its_frame_gets_400_and_the_connection_goes_on(proxy: SipProxyProcess) -> None:
    """Content-Length framed it, so the stream is still in step: the proxy answers that message 400 and reads
    the next one on the same connection (a message whose framing is broken still closes it: above)."""
    bad = request_bytes().replace(b"Max-Forwards: 70", b"Max-Forwards: seventy")
    with socket.create_connection(("127.0.0.1", proxy.ports["tcp"]), timeout=10) as sock:
        sock.sendall(bad + request_bytes())
        buffer, statuses = b"", list[int]()
        while len(statuses) < 2:
            data = sock.recv(65535)
            assert data, f"closed after {statuses}"
            buffer += data
            while (framed := parse_stream(buffer)) is not None:
                message, used = framed
                buffer = buffer[used:]
                assert isinstance(message, SipResponse)
                statuses.append(message.status)
    assert statuses == [400, 407]
