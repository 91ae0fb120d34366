"""The load each scenario puts on a proxy: wrk runs, Digest request files, CONNECT downloads, idle sockets."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import selectors
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from harness import LOOPBACK, BenchError, pinned, run_bounded
from peers import BIG_SIZE, probe

from authproxy.auth.digest import DigestChallenge, compute_ha1, get_algorithm, request_digest
from authproxy.auth.headers import parse_challenges

LUA = Path(__file__).resolve().parent / "proxy.lua"
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def basic_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass(frozen=True)
class WrkResult:
    rps: float  # responses with a 2xx/3xx status per second
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx/3xx statuses, connect and write errors, timeouts
    # Connections the peer closed without saying "Connection: close" first (tinyproxy does it after every
    # response) or reset: the response before it was counted all the same.
    read_errors: int

    def as_dict(self) -> dict[str, float | int]:
        return {"rps": self.rps, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "requests": self.requests,
                "errors": self.errors, "read_errors": self.read_errors}


def run_wrk(*, proxy_port: int | None, origin_port: int, auth: str, close: bool, duration: float,
            connections: int, cpu: int | None, digest_file: Path | None = None) -> WrkResult:
    """One wrk run of ``duration`` seconds; 1 thread (one Lua state, so Digest counts stay in order)."""
    target = f"http://{LOOPBACK}:{origin_port}/small" if proxy_port else "/small"
    env = {**os.environ, "BENCH_TARGET": target, "BENCH_HOST": f"{LOOPBACK}:{origin_port}", "BENCH_AUTH": auth,
           "BENCH_CLOSE": "1" if close else "0", "BENCH_DIGEST_FILE": str(digest_file or "")}
    argv = pinned(cpu, ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "5s", "--latency",
                        "-s", str(LUA), f"http://{LOOPBACK}:{proxy_port or origin_port}/"])
    out = run_bounded(argv, timeout=duration + 60, env=env)
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise BenchError(f"wrk printed no result: {out.strip()[-300:]}")
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    seconds = raw["duration_us"] / 1e6
    errors = raw["status_errors"] + raw["connect_errors"] + raw["write_errors"] + raw["timeouts"]
    ok = raw["requests"] - raw["status_errors"]
    return WrkResult(rps=ok / seconds if seconds else 0.0, p50_ms=raw["p50_us"] / 1000,
                     p99_ms=raw["p99_us"] / 1000, requests=raw["requests"], errors=errors,
                     read_errors=raw["read_errors"])


def prepare_digest(*, proxy_port: int, origin_port: int, user: str, password: str, count: int,
                   path: Path, want_algorithm: str) -> str:
    """Write wrk's Digest request file: one nonce from the proxy's 407, then ``count`` responses for
    nc=1..count (qop=auth, a fixed cnonce). Returns the algorithm used."""
    status, challenges_raw, _ = probe(proxy_port, origin_port, {})
    if status != 407:
        raise BenchError(f"expected a 407 to take a nonce from, got {status}")
    offered = [DigestChallenge.from_challenge(c) for c in parse_challenges(challenges_raw)
               if c.scheme.lower() == "digest"]
    usable = [c for c in offered if c is not None and "auth" in c.qop]
    chosen = next((c for c in usable if c.algorithm == want_algorithm), usable[0] if usable else None)
    if chosen is None:
        raise BenchError("no Digest challenge with qop=auth in the 407")
    alg = get_algorithm(chosen.algorithm)
    assert alg is not None
    ha1 = compute_ha1(chosen.algorithm, user, chosen.realm, password)
    uri = f"http://{LOOPBACK}:{origin_port}/small"
    cnonce = "0a4f113b"
    head = (f'Digest username="{user}", realm="{chosen.realm}", nonce="{chosen.nonce}", uri="{uri}", '
            f'algorithm={chosen.algorithm}, qop=auth, cnonce="{cnonce}", ')
    if chosen.opaque is not None:
        head += f'opaque="{chosen.opaque}", '
    head += "nc="
    with path.open("w") as f:
        f.write(head + "\n" + '"' + "\n")
        for n in range(1, count + 1):
            nc = f"{n:08x}"
            response = request_digest(alg, ha1=ha1, nonce=chosen.nonce, nc=nc, cnonce=cnonce, qop="auth",
                                      method="GET", uri=uri)
            f.write(f'{nc}, response="{response}\n')
    return chosen.algorithm


def _read_head(sock: socket.socket, limit: int = 65536) -> bytes:
    """Read exactly one HTTP head (through the blank line), leaving what follows it in the socket."""
    while True:
        peeked = sock.recv(limit, socket.MSG_PEEK)
        if not peeked:
            raise BenchError("connection closed before a response head")
        end = peeked.find(b"\r\n\r\n")
        if end >= 0:
            return sock.recv(end + 4)
        if len(peeked) >= limit:
            raise BenchError("response head too large")
        time.sleep(0.001)


def _content_length(head: bytes) -> int:
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        raise BenchError(f"origin answered {status.decode(errors='replace')!r}")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise BenchError("the response has no Content-Length")


def _drain(sock: socket.socket, length: int, null_fd: int, pipe: tuple[int, int] | None, buf: bytearray) -> None:
    """Discard ``length`` body bytes: spliced through a pipe into /dev/null (no copy to user space), or read."""
    left = length
    while left:
        if pipe is not None:
            n = os.splice(sock.fileno(), pipe[1], min(left, len(buf)))
            if n == 0:
                raise BenchError(f"connection closed with {left} body bytes to go")
            moved = 0
            while moved < n:
                moved += os.splice(pipe[0], null_fd, n - moved)
        else:
            n = sock.recv_into(buf, min(left, len(buf)))
            if n == 0:
                raise BenchError(f"connection closed with {left} body bytes to go")
        left -= n


def connect_download(*, proxy_port: int | None, origin_port: int, user: str, password: str, seconds: float,
                     min_downloads: int = 3) -> float:
    """MB/s (10^6 bytes) of 100 MiB GETs, one after another on one connection, for at least ``seconds`` and
    ``min_downloads``: through one CONNECT tunnel (Basic) when ``proxy_port`` is set, else straight from the
    origin. The client splices the bodies into /dev/null so that it costs almost nothing on its CPU."""
    sock = socket.create_connection((LOOPBACK, proxy_port or origin_port), timeout=30)
    # Blocking (splice on a non-blocking socket fails with EAGAIN), with the kernel's receive timeout as bound.
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 30, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 30, 0))
    null_fd = os.open(os.devnull, os.O_WRONLY)
    pipe: tuple[int, int] | None = None
    buf = bytearray(1 << 20)
    try:
        if hasattr(os, "splice"):
            pipe = os.pipe()
            with contextlib.suppress(OSError):
                fcntl.fcntl(pipe[1], F_SETPIPE_SZ, len(buf))
        if proxy_port:
            sock.sendall(f"CONNECT {LOOPBACK}:{origin_port} HTTP/1.1\r\nHost: {LOOPBACK}:{origin_port}\r\n"
                         f"Proxy-Authorization: {basic_header(user, password)}\r\n\r\n".encode())
            head = _read_head(sock)
            if head.split(b" ", 2)[1:2] != [b"200"]:
                raise BenchError(f"CONNECT answered {head.splitlines()[0].decode(errors='replace')!r}")
        request = f"GET /big HTTP/1.1\r\nHost: {LOOPBACK}:{origin_port}\r\n\r\n".encode()
        total = 0
        downloads = 0
        started = time.monotonic()
        while downloads < min_downloads or time.monotonic() - started < seconds:
            sock.sendall(request)
            length = _content_length(_read_head(sock))
            if length != BIG_SIZE:
                raise BenchError(f"expected {BIG_SIZE} bytes, the origin announced {length}")
            _drain(sock, length, null_fd, pipe, buf)
            total += length
            downloads += 1
        return total / (time.monotonic() - started) / 1e6
    except OSError as exc:
        raise BenchError(f"CONNECT download: {type(exc).__name__}: {exc}") from exc
    finally:
        sock.close()
        os.close(null_fd)
        if pipe is not None:
            os.close(pipe[0])
            os.close(pipe[1])


def hold_idle(port: int, count: int, timeout: float = 60.0) -> tuple[list[socket.socket], int]:
    """Open ``count`` TCP connections to ``port`` that send nothing; returns them and how many failed."""
    socks: list[socket.socket] = []
    failed = 0
    deadline = time.monotonic() + timeout
    for _ in range(count):
        if time.monotonic() > deadline:
            failed += count - len(socks) - failed
            break
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(3)
        try:
            s.connect((LOOPBACK, port))
        except OSError:
            s.close()
            failed += 1
            continue
        socks.append(s)
    return socks, failed


def still_held(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the peer has neither closed nor written to (readable means either)."""
    sel = selectors.DefaultSelector()
    try:
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        return len(socks) - len(sel.select(timeout=0))
    finally:
        sel.close()


def release(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()
