"""Hypothesis-generated request heads sent over real sockets to the proxy run through its CLI.

Invariant: the proxy answers with a well-formed sequence of HTTP/1.1 responses whose first status is one it may
make up or relay, or it closes; it never hangs once the client has finished sending; it stays alive (a valid
request afterwards succeeds) and never prints a traceback.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import harness
import pytest
from hypothesis import HealthCheck, event, given, settings

from helpers import OriginServer, ProxyProcess, basic_authorization, raw_exchange, start_proxy, status_of
from request_strategies import request_heads

#: Statuses the proxy makes up (RFC 9110 / 9209 uses in this project) or relays from the test origin.
ALLOWED = {100, 200, 400, 403, 404, 405, 407, 408, 413, 429, 431, 501, 502, 504, 505}
SILENCE = 0.05  # seconds without new bytes after which the client stops waiting and half-closes
HANG = 5.0  # seconds the proxy has, after the client's FIN, to finish and close


@pytest.fixture(scope="module")
def proxy(session_tmp: Path, users_file: Path) -> Iterator[ProxyProcess]:
    """A proxy of this module's own: the fuzzer's bad credentials must not lock out other tests' client."""
    proc = start_proxy(session_tmp, users_file)
    yield proc
    proc.stop()


def converse(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=HANG) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw)
        out = b""
        sock.settimeout(SILENCE)
        try:
            while chunk := sock.recv(65536):
                out += chunk
            return out
        except TimeoutError:
            pass
        except ConnectionResetError:
            return out
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return out
        sock.settimeout(HANG)
        deadline = time.monotonic() + HANG
        try:
            while chunk := sock.recv(65536):
                out += chunk
                if time.monotonic() > deadline:
                    break
            else:
                return out
        except ConnectionResetError:
            return out
        except TimeoutError:
            pass
        pytest.fail(f"the proxy neither finished nor closed within {HANG} s of the client's FIN; "
                    f"sent {raw[:300]!r}, got {out[:300]!r}")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(data=request_heads("127.0.0.1:{port}"))
def test_fuzzed_requests_get_well_formed_answers(proxy: ProxyProcess, origin: OriginServer, data: bytes) -> None:
    raw = data.replace(b"{port}", str(origin.port).encode())
    out = converse(proxy.port, raw)
    event(f"status {out[9:12].decode('latin-1') or 'closed'}")
    if out:
        problem = harness.check_response_stream(out)
        assert problem is None, f"{problem}: sent {raw[:300]!r}, got {out[:300]!r}"
        assert int(out[9:12]) in ALLOWED, f"sent {raw[:300]!r}, got {out[:300]!r}"
    assert proxy.proc.poll() is None, f"the proxy died on {raw[:300]!r}"


def test_proxy_alive_and_quiet_after_fuzzing(proxy: ProxyProcess, origin: OriginServer) -> None:
    raw = (f"GET http://127.0.0.1:{origin.port}/after HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n"
           f"Proxy-Authorization: {basic_authorization('alice', 'wonderland')}\r\n\r\n").encode()
    assert status_of(raw_exchange(proxy.port, raw)) == 200
    stderr = "".join(proxy.stderr_lines)
    assert "Traceback" not in stderr and "exception was never retrieved" not in stderr, stderr[-3000:]
