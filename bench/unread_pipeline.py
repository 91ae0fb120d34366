"""How much a client that never reads makes the proxy grow (issue 9 item 1): RSS of a real proxy process.

Two cases, each on a fresh proxy (``authproxy serve --allow-private``, no access log):
- ``--requests N``: N pipelined credential-less GETs of 35 bytes ("GET http://a/ HTTP/1.1", "Host: a"), each
  answered with a 407 of about 900 bytes;
- ``--answers M``: M pipelined GETs with Basic credentials for a 60,000-byte answer from an origin of this script's
  own on 127.0.0.1 that writes each answer in one go and closes (``--origin-keep-alive``: keeps the connection).

The client sends as fast as the proxy takes the bytes (pieces of 50 requests, for at most 20 s) and reads nothing;
the RSS is read from /proc/PID/status once it has not moved for 2 s. The proxy is the one on PYTHONPATH:

    PYTHONPATH=src .venv/bin/python bench/unread_pipeline.py --requests 100000 --answers 2500
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers import ScriptedOrigin, basic_authorization, make_users_file, rss_bytes, start_proxy

BARE_GET = b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n"


def push(sock: socket.socket, data: bytes, piece: int, seconds: float = 20.0) -> int:
    """Send ``data`` in pieces of ``piece`` bytes as fast as the peer takes them; the bytes sent."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    view, sent = memoryview(data), 0
    deadline = time.monotonic() + seconds
    while sent < len(data) and time.monotonic() < deadline:
        try:
            sent += sock.send(view[sent:sent + piece])
        except BlockingIOError:
            time.sleep(0.01)
        except OSError as exc:
            print(f"  (the proxy cut the connection after {sent} bytes: {exc})")
            break
    return sent


def settled(pid: int, most: float = 40.0) -> int:
    last, since = rss_bytes(pid), time.monotonic()
    deadline = since + most
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = rss_bytes(pid)
        if abs(now - last) > 256 << 10:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > 2:
            break
    return rss_bytes(pid)


def measure(label: str, request: bytes, count: int) -> None:
    tmp = Path(tempfile.mkdtemp())
    proxy = start_proxy(tmp, make_users_file(tmp / "users"), "--access-log", "")
    try:
        with socket.create_connection(("127.0.0.1", proxy.port)) as warm:
            warm.sendall(BARE_GET)
            warm.recv(65536)
        time.sleep(0.5)
        before = rss_bytes(proxy.proc.pid)
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sent = push(sock, request * count, len(request) * 50)
            after = settled(proxy.proc.pid)
        print(f"{count:,} {label}: +{(after - before) / 1e6:.1f} MB "
              f"(RSS {before / 1e6:.0f} -> {after / 1e6:.0f} MB; {sent:,} of {len(request) * count:,} bytes taken)")
    finally:
        proxy.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--answers", type=int, default=2_500)
    parser.add_argument("--origin-keep-alive", action="store_true")
    args = parser.parse_args()
    if args.requests:
        measure("unread pipelined requests", BARE_GET, args.requests)
    if args.answers:
        close = not args.origin_keep_alive
        answer = (b"HTTP/1.1 200 OK\r\nContent-Length: 60000\r\n" + (b"Connection: close\r\n" if close else b"")
                  + b"\r\n" + b"x" * 60_000)

        def reply(conn: socket.socket, _path: str) -> bool:
            conn.sendall(answer)
            return not close

        origin = ScriptedOrigin(reply)
        request = (f"GET http://{origin.authority}/60k HTTP/1.1\r\nHost: x\r\n"
                   f"Proxy-Authorization: {basic_authorization('alice', 'wonderland')}\r\n\r\n").encode()
        measure("unread pipelined GETs of a 60 KB answer", request, args.answers)
        origin.close()


if __name__ == "__main__":
    main()
