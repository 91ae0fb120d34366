"""Operating the proxy: TLS listener, connection limits, body limit, SIGHUP reload, SIGTERM drain."""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

from helpers import (
    REALM,
    OriginServer,
    basic_authorization,
    challenges_of,
    raw_exchange,
    read_response,
    start_proxy,
    status_of,
    write_tls_files,
)

ALICE = basic_authorization("alice", "wonderland")


def get(port: int, path: str = "/", auth: str | None = ALICE, extra: str = "") -> bytes:
    lines = [f"GET http://127.0.0.1:{port}{path} HTTP/1.1", "Host: x"]
    if auth:
        lines.append(f"Proxy-Authorization: {auth}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def test_tls_listener_with_curl(tmp_path: Path, users_file: Path, origin: OriginServer) -> None:
    cert_path, key_path, ca_path = write_tls_files(tmp_path)
    proxy = start_proxy(tmp_path, users_file, "--tls-cert", str(cert_path), "--tls-key", str(key_path))
    try:
        curl = shutil.which("curl")
        assert curl is not None
        done = subprocess.run(
            [curl, "-sS", "--max-time", "10", "--proxy", f"https://127.0.0.1:{proxy.port}", "--proxy-cacert",
             str(ca_path), "--proxy-user", "alice:wonderland", "--proxy-basic", "-o", "/dev/null", "-w",
             "%{http_code}", f"http://127.0.0.1:{origin.port}/over-tls"],
            capture_output=True, timeout=20)
        assert done.stdout == b"200", done.stderr
        # A client speaking cleartext to the TLS listener gets nothing it could mistake for HTTP.
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(get(origin.port))
            assert not sock.recv(100).startswith(b"HTTP/1.1 200")
        context = ssl.create_default_context(cafile=str(ca_path))
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(get(origin.port))
            assert status_of(read_response(sock)) == 200
    finally:
        proxy.stop()


def test_connection_limit_per_client(tmp_path: Path, users_file: Path, origin: OriginServer) -> None:
    config = tmp_path / "limits.toml"
    config.write_text("max_connections_per_client = 3\nmax_body_size = 2048\n")
    proxy = start_proxy(tmp_path, users_file, "--config", str(config))
    try:
        held = [socket.create_connection(("127.0.0.1", proxy.port), timeout=5) for _ in range(3)]
        time.sleep(0.2)
        response = raw_exchange(proxy.port, get(origin.port))
        assert status_of(response) == 503 and b"per client" in response
        for sock in held:
            sock.close()
        time.sleep(0.3)
        assert status_of(raw_exchange(proxy.port, get(origin.port))) == 200
        # Bodies over max_body_size: 413, whether declared up front or streamed in chunks.
        big = raw_exchange(proxy.port, get(origin.port, extra="Content-Length: 4096\r\n") + b"x" * 4096)
        assert status_of(big) == 413
        chunked = get(origin.port, extra="Transfer-Encoding: chunked\r\n") + b"800\r\n" + b"y" * 2048 + \
            b"\r\n800\r\n" + b"y" * 2048 + b"\r\n0\r\n\r\n"
        assert status_of(raw_exchange(proxy.port, chunked)) == 413
    finally:
        proxy.stop()


def test_sighup_reloads_config_and_keeps_connections(tmp_path: Path, users_file: Path, origin: OriginServer) -> None:
    config = tmp_path / "reload.toml"
    config.write_text('schemes = ["digest", "basic"]\n')
    proxy = start_proxy(tmp_path, users_file, "--config", str(config))
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(get(origin.port, auth=None))
            assert [c.split()[0] for c in challenges_of(read_response(sock))] == ["Digest", "Digest", "Basic"]
            config.write_text('schemes = ["basic"]\n')
            proxy.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 5
            while not any("reloaded" in line for line in proxy.stderr_lines):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            sock.sendall(get(origin.port, auth=None))  # the same connection, still open
            assert challenges_of(read_response(sock)) == [f'Basic realm="{REALM}", charset="UTF-8"']
        config.write_text("schemes = 5\n")  # a bad edit: refused, the proxy keeps running
        proxy.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert any("reload refused" in line and "schemes" in line for line in proxy.stderr_lines)
        assert status_of(raw_exchange(proxy.port, get(origin.port))) == 200
    finally:
        proxy.stop()


def test_sigterm_drains_in_flight_requests(tmp_path: Path, users_file: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    slow_port = listener.getsockname()[1]

    def slow_origin() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            time.sleep(1.0)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")

    thread = threading.Thread(target=slow_origin, daemon=True)
    thread.start()
    proxy = start_proxy(tmp_path, users_file)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(get(slow_port, "/slow"))
            time.sleep(0.3)
            proxy.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            try:  # new connections are refused while draining
                with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as late:
                    late.sendall(get(slow_port))
                    assert late.recv(100) == b""
            except ConnectionRefusedError:
                pass
            response = read_response(sock)
        assert status_of(response) == 200 and response.endswith(b"slow")
        assert b"Connection: close" in response
        assert proxy.proc.wait(10) == 0
    finally:
        listener.close()
        if proxy.proc.poll() is None:
            proxy.stop()
