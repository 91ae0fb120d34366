"""Where the proxy refuses to go by default, the switches that open it, per-user rules, and the throttle."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import (
    OriginServer,
    ProxyProcess,
    basic_authorization,
    header_of,
    raw_exchange,
    read_response,
    start_proxy,
    status_of,
)

ALICE = basic_authorization("alice", "wonderland")
BOB = basic_authorization("bob", "pa:ss:word")


def request(target: str, auth: str | None = ALICE, method: str = "GET") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: x" if method != "CONNECT" else f"Host: {target}"]
    if auth:
        lines.append(f"Proxy-Authorization: {auth}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture(scope="module")
def strict_proxy(session_tmp: Path, users_file: Path) -> Iterator[ProxyProcess]:
    """The default destination policy: no private addresses, CONNECT to 443 only."""
    proxy = start_proxy(session_tmp, users_file, "--connect-ports", "443", allow_private=False)
    yield proxy
    proxy.stop()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "2130706433", "0177.0.0.1", "0x7f.1", "127.1",
                                  "[::1]", "[::ffff:127.0.0.1]", "10.0.0.1", "169.254.169.254", "0.0.0.0"])
def test_private_destinations_refused_in_every_spelling(strict_proxy: ProxyProcess, origin: OriginServer,
                                                        host: str) -> None:
    # The address is checked after one resolution and the proxy connects to that address: no rebinding.
    response = raw_exchange(strict_proxy.port, request(f"http://{host}:{origin.port}/"))
    assert status_of(response) == 403, response
    assert "error=destination_ip_prohibited" in (header_of(response, "Proxy-Status") or "")
    assert b"private" in response or b"loopback" in response or b"link-local" in response \
        or b"unspecified" in response or b"this network" in response


def test_connect_refused_to_private_and_to_other_ports(strict_proxy: ProxyProcess) -> None:
    response = raw_exchange(strict_proxy.port, request("127.0.0.1:443", method="CONNECT"))
    assert status_of(response) == 403
    response = raw_exchange(strict_proxy.port, request("example.invalid:22", method="CONNECT"))
    assert status_of(response) == 403 and b"port 22" in response


def test_refusal_needs_credentials_first(strict_proxy: ProxyProcess, origin: OriginServer) -> None:
    # The destination policy is not a way to probe the network without signing in.
    response = raw_exchange(strict_proxy.port, request(f"http://10.0.0.1:{origin.port}/", auth=None))
    assert status_of(response) == 407


def test_allow_list_and_per_user_rules(tmp_path: Path, users_file: Path, origin: OriginServer) -> None:
    config = tmp_path / "rules.toml"
    config.write_text(f'allow = ["127.0.0.1/32"]\n'
                      f'[[rules]]\nusers = ["bob"]\nhosts = ["127.0.0.1/32"]\nports = [{origin.port + 1}]\n'
                      f'[[rules]]\nusers = ["alice"]\nhosts = ["127.0.0.1/32"]\nports = [{origin.port}]\n')
    proxy = start_proxy(tmp_path, users_file, "--config", str(config), allow_private=False)
    try:
        target = f"http://127.0.0.1:{origin.port}/ruled"
        assert status_of(raw_exchange(proxy.port, request(target))) == 200
        denied = raw_exchange(proxy.port, request(target, auth=BOB))
        assert status_of(denied) == 403 and "error=http_request_denied" in (header_of(denied, "Proxy-Status") or "")
        # The allow list lifts the refusal for 127.0.0.1 only, not for ::1.
        assert status_of(raw_exchange(proxy.port, request(f"http://[::1]:{origin.port}/"))) == 403
    finally:
        proxy.stop()


def test_failed_sign_ins_are_throttled(tmp_path: Path, users_file: Path, origin: OriginServer) -> None:
    config = tmp_path / "throttle.toml"
    config.write_text("throttle_max_failures = 3\nthrottle_lockout = 60\n")
    proxy = start_proxy(tmp_path, users_file, "--config", str(config))
    try:
        target = f"http://127.0.0.1:{origin.port}/"
        for _ in range(10):  # requests without credentials are the start of the 407 exchange: never counted
            assert status_of(raw_exchange(proxy.port, request(target, auth=None))) == 407
        assert status_of(raw_exchange(proxy.port, request(target))) == 200
        wrong = basic_authorization("alice", "guess")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            for _ in range(3):
                sock.sendall(request(target, auth=wrong))
                assert status_of(read_response(sock)) == 407
            sock.sendall(request(target))  # now even the right password waits
            locked = read_response(sock)
        assert status_of(locked) == 429
        assert 0 < int(header_of(locked, "Retry-After") or 0) <= 60
        assert "auth=throttled" in proxy.access_log()
    finally:
        proxy.stop()


def test_no_traceback_in_proxy_output(strict_proxy: ProxyProcess) -> None:
    raw_exchange(strict_proxy.port, request("http://name.invalid/"))
    assert "Traceback" not in "".join(strict_proxy.stderr_lines)
