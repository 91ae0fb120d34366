"""SIGHUP to `authproxy sip serve`, over real sockets on 127.0.0.1, as to `authproxy serve`: the config file read
again (what it may change now applies, what needs a restart is kept and said), the access log reopened (log
rotation), nonces issued before still good, a bad edit refused with the old config kept; with --workers 2 the
supervisor passes the signal on and every worker reloads."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sip_uas import Uas
from test_sip_serve import UdpClient
from test_sip_workers import on_two_workers

from authproxy.sip.client import drive
from authproxy.sip.log import parse_sip_line
from authproxy.sip.message import SipRequest, SipResponse

from helpers import SipProxyProcess, make_users_file, start_sip_proxy


@pytest.fixture
def uas() -> Iterator[Uas]:
    with Uas({}, roles=()) as server:
        yield server


@pytest.fixture
def users(tmp_path: Path) -> Path:
    return make_users_file(tmp_path / "sip.users", "sip-test")


def algorithms_offered(client: UdpClient) -> list[str]:
    challenge = client.send(client.request())
    assert challenge.status == 407
    return [value.split("algorithm=", 1)[1].split(",", 1)[0].strip('"')
            for value in challenge.get_all("Proxy-Authenticate")]


def told(proc: SipProxyProcess, text: str, count: int) -> None:
    """Wait until the proxy's stderr says ``text`` ``count`` times (5 s at most; two workers writing at once
    may interleave their lines, so the text is counted, not the lines)."""
    deadline = time.monotonic() + 5
    while "".join(proc.stderr_lines).count(text) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "".join(proc.stderr_lines).count(text) == count, "".join(proc.stderr_lines)


def test_sighup_reloads_every_worker(tmp_path: Path, users: Path, uas: Uas) -> None:
    proc = start_sip_proxy(tmp_path, users, f"sip:127.0.0.1:{uas.port}", "--workers", "2",
                           listen=("udp:127.0.0.1:0",),
                           config_text='[sip]\ndigest_algorithms = ["MD5", "SHA-256"]\n')
    (config,) = tmp_path.glob("sip-*.toml")  # the --config file start_sip_proxy wrote
    try:
        a, b = on_two_workers(proc.ports["udp"], uas)  # both workers up (their handlers in place)
        assert algorithms_offered(b.client) == ["MD5", "SHA-256"]
        before = proc.log_lines(lambda lines: len(lines) >= 5)
        rotated = proc.log_path.with_suffix(".1")
        proc.log_path.rename(rotated)
        config.write_text('[sip]\ndigest_algorithms = ["SHA-256"]\nvia_host = "localhost"\n')
        os.kill(proc.proc.pid, signal.SIGHUP)
        told(proc, "reloaded config and users", 2)
        told(proc, "via_host need a restart", 2)
        assert algorithms_offered(a.client) == algorithms_offered(b.client) == ["SHA-256"]
        # A's nonce, issued before the reload (MD5), answered with its next nc: still good after it.
        sent: list[SipRequest] = []

        def send(request: SipRequest) -> SipResponse:
            sent.append(request)
            return a.client.send(request)

        assert drive(a.auth.exchange(a.client.request()), send).status == 200 and len(sent) == 1
        # The log was reopened at its path: the new lines there, the old ones in the rotated file.
        after = proc.log_lines(lambda lines: any(sent[0].call_id in line for line in lines))
        assert any(parse_sip_line(line).call_id_or_reason == sent[0].call_id for line in after)
        assert rotated.read_text().splitlines()[:len(before)] == before
        # A bad edit is refused by every worker, and the config before it kept.
        config.write_text('[sip]\ndigest_algorithms = ["MD4"]\n')
        os.kill(proc.proc.pid, signal.SIGHUP)
        told(proc, "reload refused, still running with the previous config: digest_algorithms", 2)
        assert algorithms_offered(b.client) == ["SHA-256"]
        assert proc.proc.poll() is None
    finally:
        a.client.close()
        b.client.close()
        proc.stop()


def test_sighup_to_one_process(tmp_path: Path, users: Path, uas: Uas) -> None:
    proc = start_sip_proxy(tmp_path, users, f"sip:127.0.0.1:{uas.port}", listen=("udp:127.0.0.1:0",),
                           config_text='[sip]\ndigest_algorithms = ["MD5"]\n')
    (config,) = tmp_path.glob("sip-*.toml")
    client = UdpClient(proc.ports["udp"])
    try:
        assert algorithms_offered(client) == ["MD5"]
        config.write_text('[sip]\ndigest_algorithms = ["SHA-512-256", "MD5"]\n')
        os.kill(proc.proc.pid, signal.SIGHUP)  # before: the default action, the proxy gone
        told(proc, "reloaded config and users", 1)
        assert algorithms_offered(client) == ["SHA-512-256", "MD5"] and proc.proc.poll() is None
        # The bound on answers to one address, reloaded too: one answer, then none.
        config.write_text('[sip]\nudp_answer_rate = 0.01\nudp_answer_burst = 1\n')
        os.kill(proc.proc.pid, signal.SIGHUP)
        told(proc, "reloaded config and users", 2)
        assert client.send(client.request()).status == 407
        client.sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            client.send(client.request())
    finally:
        client.close()
        proc.stop()
