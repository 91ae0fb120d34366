"""--workers N: several processes on one port; nonces and replay protection hold across all of them."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from helpers import (
    OriginServer,
    challenges_of,
    digest_authorization,
    raw_exchange,
    read_response,
    start_proxy,
    status_of,
)


def get(port: int, auth: str | None) -> bytes:
    lines = [f"GET http://127.0.0.1:{port}/w HTTP/1.1", "Host: x"]
    if auth:
        lines.append(f"Proxy-Authorization: {auth}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def worker_pids(supervisor: int) -> set[int]:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return {int(pid) for pid in children}


def reads(pid: int) -> int:
    """Read syscalls a process has made: how we tell which worker served."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscr:"):
            return int(line.split()[1])
    raise AssertionError("no syscr")


def test_workers_share_nonces_and_refuse_replays_everywhere(tmp_path: Path, users_file: Path,
                                                             origin: OriginServer) -> None:
    config = tmp_path / "workers.toml"
    config.write_text("throttle_max_failures = 0\n")  # replays are failed sign-ins; here we count replays
    proxy = start_proxy(tmp_path, users_file, "--workers", "3", "--config", str(config))
    try:
        deadline = time.monotonic() + 10
        while len(worker_pids(proxy.proc.pid)) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        before = {pid: reads(pid) for pid in worker_pids(proxy.proc.pid)}
        uri = f"http://127.0.0.1:{origin.port}/w"
        challenge = challenges_of(raw_exchange(proxy.port, get(origin.port, None)))[0]
        # Many fresh connections land on different workers (SO_REUSEPORT spreads them): every count is
        # accepted once wherever it lands, and every replay is refused wherever it lands.
        for nc in range(1, 31):
            auth = digest_authorization(challenge, "alice", "wonderland", "GET", uri, nc=nc)
            assert status_of(raw_exchange(proxy.port, get(origin.port, auth))) == 200
        for nc in range(1, 31):
            auth = digest_authorization(challenge, "alice", "wonderland", "GET", uri, nc=nc)
            assert status_of(raw_exchange(proxy.port, get(origin.port, auth))) == 407
        busy = [pid for pid, count in before.items() if reads(pid) > count + 5]
        assert len(busy) >= 2, "the connections did not spread over the workers"
        # A worker that dies is replaced; the proxy keeps answering.
        victim = sorted(worker_pids(proxy.proc.pid))[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while victim in worker_pids(proxy.proc.pid) or len(worker_pids(proxy.proc.pid)) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(get(origin.port, None))
            assert status_of(read_response(sock)) == 407
    finally:
        assert proxy.stop() == 0
