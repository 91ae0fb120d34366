#!/usr/bin/env python3
"""How much a forged flood gets reflected: ``count`` OPTIONS without credentials from one UDP socket, at ``rate``
a second, to a fresh ``authproxy sip serve`` with its defaults; what comes back, counted by status and in bytes
(RFC 3261 section 26.3.2.4: a source address can be forged over UDP, and the answers go to it).

    .venv/bin/python bench/sipreflect.py --count 10000 --rate 2000
    PYTHONPATH=/path/to/other/src .venv/bin/python bench/sipreflect.py   # another tree's proxy

The next hop is a UDP socket of this script's that never answers (nothing is forwarded unsigned anyway).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"


def request(local_port: int, n: int) -> bytes:
    return (f"OPTIONS sip:bob@example.org SIP/2.0\r\nVia: SIP/2.0/UDP {LOOPBACK}:{local_port};branch=z9hG4bK{n:x}r;"
            f"rport\r\nMax-Forwards: 70\r\nFrom: <sip:a@x>;tag=t{n:x}\r\nTo: <sip:bob@example.org>\r\nCall-ID: "
            f"c{n:x}@x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--rate", type=int, default=2_000, help="requests a second")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        users = Path(tmp) / "users"
        subprocess.run([sys.executable, "-m", "authproxy", "users", "add", "alice", "--users", str(users),
                        "--realm", "r", "--password-stdin"], input=b"pw\n", check=True, capture_output=True)
        hop = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        hop.bind((LOOPBACK, 0))
        proxy = subprocess.Popen([sys.executable, "-m", "authproxy", "sip", "serve", "--users", str(users),
                                  "--listen", f"udp:{LOOPBACK}:0", "--next-hop",
                                  f"sip:{LOOPBACK}:{hop.getsockname()[1]}", "--access-log", ""],
                                 stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            assert proxy.stderr is not None
            found = re.search(rf"udp:{LOOPBACK}:(\d+)", proxy.stderr.readline().decode())
            if found is None:
                raise SystemExit("the proxy did not say where it listens")
            port = int(found.group(1))
            flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
            flood.bind((LOOPBACK, 0))
            local = flood.getsockname()[1]
            sent = back = 0
            statuses: dict[str, int] = {}

            def take(answer: bytes) -> None:
                nonlocal back
                back += len(answer)
                status = answer[8:11].decode("ascii", "replace")
                statuses[status] = statuses.get(status, 0) + 1

            # Answers are read while the flood goes on: left in the socket's buffer, the kernel would drop them
            # past its size and the count would be the buffer's, not the proxy's.
            flood.setblocking(False)
            started = time.monotonic()
            for n in range(a.count):
                data = request(local, n)
                flood.sendto(data, (LOOPBACK, port))
                sent += len(data)
                while time.monotonic() < started + (n + 1) / a.rate:
                    with contextlib.suppress(BlockingIOError):
                        take(flood.recv(65535))
            flood.settimeout(1.0)
            try:
                while True:
                    take(flood.recv(65535))
            except TimeoutError:
                pass
        finally:
            proxy.terminate()
            proxy.wait(10)
    print(f"sent {a.count:,} requests ({sent:,} bytes) in {a.count / a.rate:.1f} s from one address; got "
          f"{sum(statuses.values()):,} answers {dict(sorted(statuses.items()))}, {back:,} bytes: "
          f"{back / sent:.2f}x what was sent")


if __name__ == "__main__":
    main()
