"""`authproxy sip serve` towards its next hop over TCP and TLS, over real sockets on 127.0.0.1: a TLS next hop
(the tests' UAS, asking for the proxy's certificate too) gets the signed-in request over a connection whose
certificate the proxy checked; a next hop that cannot be reached (refused, or its certificate not trusted) is
answered 503 at the client as if it had answered it (RFC 3261 section 16.9), with a Warning naming it: never a
407, never silence."""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from sip_uas import Uas
from test_sip_serve import PASSWORD, REALM, UdpClient, outcomes

from authproxy.sip.client import SipAuthenticator, drive
from authproxy.sip.message import SipResponse

from helpers import SipProxyProcess, make_users_file, start_sip_proxy, write_tls_files


@pytest.fixture
def users(tmp_path: Path) -> Path:
    return make_users_file(tmp_path / "sip.users", REALM)


def sign_in(proc: SipProxyProcess) -> tuple[SipResponse, str]:
    """alice's OPTIONS signed in through the proxy over UDP: the final answer and its Call-ID."""
    client = UdpClient(proc.ports["udp"])
    try:
        request = client.request()
        auth = SipAuthenticator("alice", PASSWORD, random=os.urandom, userhash=False)
        return drive(auth.exchange(request), client.send), request.call_id
    finally:
        client.close()


def tls_uas_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """The next hop's side: its certificate, and the proxy's asked for and checked (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def start_towards_tls(tmp_path: Path, users: Path, port: int) -> SipProxyProcess:
    """A proxy with a certificate of its own (for its tls: listener, and for the next hop when it asks) towards a
    TLS next hop at ``port``, trusting the system's CAs."""
    cert, key, _ca = write_tls_files(tmp_path)
    return start_sip_proxy(tmp_path, users, f"sip:127.0.0.1:{port};transport=tls", "--tls-cert", str(cert),
                           "--tls-key", str(key), listen=("udp:127.0.0.1:0", "tls:127.0.0.1:0"))


@pytest.fixture
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return write_tls_files(tmp_path_factory.mktemp("uas-tls"))


@pytest.fixture
def tls_uas(tls_files: tuple[Path, Path, Path]) -> Iterator[Uas]:
    cert, key, ca = tls_files
    with Uas({}, roles=(), tls=tls_uas_context(cert, key, ca)) as uas:
        yield uas


def test_the_request_goes_to_a_tls_next_hop_whose_certificate_is_checked(tmp_path: Path, users: Path,
                                                                        tls_files: tuple[Path, Path, Path]) -> None:
    uas_cert, uas_key, uas_ca = tls_files
    proxy_dir = tmp_path / "proxy"
    proxy_dir.mkdir()
    proxy_cert, proxy_key, proxy_ca = write_tls_files(proxy_dir)
    trusts = tmp_path / "uas-trusts.pem"  # the UAS's own CA and the proxy's: it checks the proxy's certificate
    trusts.write_bytes(uas_ca.read_bytes() + proxy_ca.read_bytes())
    with Uas({}, roles=(), tls=tls_uas_context(uas_cert, uas_key, trusts)) as uas:
        proc = start_sip_proxy(proxy_dir, users, f"sip:127.0.0.1:{uas.port};transport=tls", "--tls-cert",
                               str(proxy_cert), "--tls-key", str(proxy_key),
                               listen=("udp:127.0.0.1:0", "tls:127.0.0.1:0"),
                               config_text=f'[sip]\nnext_hop_ca = "{uas_ca}"\n')
        try:
            for _ in range(2):
                answer, call_id = sign_in(proc)
                assert answer.status == 200
                (reached,) = [seen.request for seen in uas.seen if seen.request.call_id == call_id]
                assert reached.vias[0].transport == "TLS" and reached.vias[0].port == proc.ports["tls"]
                assert reached.get_all("Proxy-Authorization") == []
            assert uas.connections == 1 and uas.handshake_failures == []  # one connection, kept
        finally:
            proc.stop()


def test_a_tls_next_hop_with_an_untrusted_certificate_is_a_503_naming_it(tmp_path: Path, users: Path,
                                                                          tls_uas: Uas) -> None:
    proc = start_towards_tls(tmp_path, users, tls_uas.port)  # the system's CAs: not the UAS's
    try:
        answer, call_id = sign_in(proc)
        assert answer.status == 503 and answer.reason == "Service Unavailable"
        warning = answer.get("Warning") or ""
        # The reason is OpenSSL's (here: the UAS's CA is one of the tests', not the system's).
        assert warning.startswith(f'399 authproxy "the next hop 127.0.0.1:{tls_uas.port} is unreachable: its TLS '
                                  'certificate is not trusted (self-signed certificate in certificate chain)')
        assert tls_uas.seen == [] and len(answer.vias) == 1  # the proxy's Via popped, as a relayed 503's is
        assert outcomes(proc, call_id, 3) == [("ANSWERED", 407, None, "missing"),
                                              ("FORWARDED", None, "alice", "ok"), ("ANSWERED", 503, None, "none")]
    finally:
        proc.stop()


def test_a_tcp_next_hop_that_refuses_is_a_503_naming_it(tmp_path: Path, users: Path) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nobody listens there now
    proc = start_sip_proxy(tmp_path, users, f"sip:127.0.0.1:{port};transport=tcp")
    try:
        answer, _call_id = sign_in(proc)
        assert answer.status == 503
        assert (answer.get("Warning") or "").startswith(
            f'399 authproxy "the next hop 127.0.0.1:{port} is unreachable: cannot connect (Connection refused)')
    finally:
        proc.stop()
