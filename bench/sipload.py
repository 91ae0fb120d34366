#!/usr/bin/env python3
"""The SIP load: authenticated OPTIONS over UDP, as fast as one Python process on one CPU sends them.

One UDP socket keeps ``window`` requests in flight. Every request is a new transaction (its own Via branch,
Call-ID and CSeq: never a retransmission) carrying a ``Proxy-Authorization`` Digest answer (RFC 3261 section
22.3; RFC 7616 section 3.4) on the one nonce it holds, with nc = 1, 2, 3, ... (qop=auth, a fixed cnonce,
digest uri = Request-URI), so a proxy that checks replays sees every (nonce, nc) once. A 407 (the first one,
or a ``stale=true`` one when the proxy stops taking the nonce: kamailio's nonce_count does after nc 255)
gives a new nonce and nc starts again at 1. The answers are computed as the requests go (one MD5 over a short
string: HA1 and HA2 are fixed), which keeps the load the same for every proxy whatever it does with nonces.

A response to a request that was lost (UDP) never comes: when nothing arrives for ``stall`` seconds the
window is refilled. Counted: 200s (the figure), 407s, other statuses, refills.

With ``fresh``, a 407 per call, as a user agent that keeps no nonce goes (most do, for every INVITE and
REGISTER): each transaction is the request without credentials (CSeq 1), the proxy's 407, the same request
signed with that 407's nonce (CSeq 2, a new branch, nc 1), and the 200: one served request costs the proxy a
challenge, a fresh nonce's check, and the forwarding.

Also :func:`in_process`: the same requests through :class:`authproxy.sip.proxy.SipProxy` in memory, no
socket (CPU time of the proxy's decisions alone), for profiling and before/after figures.

    .venv/bin/python bench/sipload.py --port 5060 --duration 5          # against a running proxy
    .venv/bin/python bench/sipload.py --in-process 20000 [--profile]    # SipProxy in memory
"""

from __future__ import annotations

import argparse
import hashlib
import re
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

LOOPBACK = "127.0.0.1"
CNONCE = "0a4f113b"
_PARAM = re.compile(rb'(realm|nonce|opaque|algorithm|qop|stale)="?([^",\r\n]*)"?')


def _md5(text: str) -> str:
    # Digest MD5 is what every SIP user agent answers (RFC 3261 section 22.4), not a security choice here.
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


class SipLoadError(Exception):
    """The load could not start (no challenge, no answer): one line saying why."""


@dataclass(frozen=True)
class Challenge:
    realm: str
    nonce: str
    opaque: str | None
    algorithm: str


def challenges_in(response: bytes) -> list[Challenge]:
    """The Digest challenges of a 407's ``Proxy-Authenticate`` lines (MD5 ones only: the load answers MD5)."""
    found = []
    for line in response.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() != b"proxy-authenticate" or not value.strip().lower().startswith(b"digest"):
            continue
        params = {k.decode(): v.decode() for k, v in _PARAM.findall(value)}
        algorithm = params.get("algorithm", "MD5")
        if algorithm.upper() == "MD5" and "nonce" in params and "realm" in params:
            found.append(Challenge(params["realm"], params["nonce"], params.get("opaque"), "MD5"))
    return found


def status_of(response: bytes) -> int:
    return int(response[8:11]) if response.startswith(b"SIP/2.0 ") and response[8:11].isdigit() else 0


class Requests:
    """The request bytes: number ``n`` is a new transaction; with a challenge, answered with the next nc."""

    def __init__(self, user: str, password: str, target: tuple[str, int], local: tuple[str, int]) -> None:
        self.user, self.password = user, password
        self.uri = f"sip:{user}@{target[0]}:{target[1]}"
        self.ha2 = _md5(f"OPTIONS:{self.uri}")
        self.via = f"SIP/2.0/UDP {local[0]}:{local[1]};rport;branch=z9hG4bKld"
        self.challenge: Challenge | None = None
        self.nc = 0
        self._head = b""
        self._ha1 = ""
        self._realm = ""

    def take(self, challenge: Challenge) -> None:
        """Answer ``challenge`` from now on, nc from 1."""
        self.challenge, self.nc = challenge, 0
        self._realm = challenge.realm
        self._ha1 = _md5(f"{self.user}:{challenge.realm}:{self.password}")
        opaque = f', opaque="{challenge.opaque}"' if challenge.opaque is not None else ""
        self._head = (f'Proxy-Authorization: Digest username="{self.user}", realm="{challenge.realm}", '
                      f'nonce="{challenge.nonce}", uri="{self.uri}", algorithm=MD5{opaque}, qop=auth, '
                      f'cnonce="{CNONCE}", nc=').encode()

    def unsigned(self, n: int) -> bytes:
        """Call ``n``'s first request, without credentials (CSeq 1)."""
        return self._start(n, "", 1) + b"Content-Length: 0\r\n\r\n"

    def signed(self, n: int, nonce: str, opaque: str | None) -> bytes:
        """Call ``n``'s request again (CSeq 2, a new branch) answering a 407's ``nonce`` with nc 1."""
        response = _md5(f"{self._ha1}:{nonce}:00000001:{CNONCE}:auth:{self.ha2}")
        extra = f', opaque="{opaque}"' if opaque is not None else ""
        return self._start(n, "s", 2) + (
            f'Proxy-Authorization: Digest username="{self.user}", realm="{self._realm}", nonce="{nonce}", '
            f'uri="{self.uri}", algorithm=MD5{extra}, qop=auth, cnonce="{CNONCE}", nc=00000001, '
            f'response="{response}"\r\nContent-Length: 0\r\n\r\n').encode()

    def _start(self, n: int, branch: str, cseq: int) -> bytes:
        return (f"OPTIONS {self.uri} SIP/2.0\r\nVia: {self.via}{n:x}{branch}\r\nMax-Forwards: 70\r\n"
                f"From: <sip:{self.user}@bench>;tag=ld{n:x}\r\nTo: <{self.uri}>\r\nCall-ID: {n:x}@bench.load\r\n"
                f"CSeq: {cseq} OPTIONS\r\n").encode()

    def make(self, n: int) -> bytes:
        start = (f"OPTIONS {self.uri} SIP/2.0\r\nVia: {self.via}{n:x}\r\nMax-Forwards: 70\r\n"
                 f"From: <sip:{self.user}@bench>;tag=ld{n:x}\r\nTo: <{self.uri}>\r\nCall-ID: {n:x}@bench.load\r\n"
                 f"CSeq: {n} OPTIONS\r\n").encode()
        challenge = self.challenge
        if challenge is None:
            return start + b"Content-Length: 0\r\n\r\n"
        self.nc += 1
        nc = f"{self.nc:08x}"
        response = _md5(f"{self._ha1}:{challenge.nonce}:{nc}:{CNONCE}:auth:{self.ha2}")
        return start + self._head + f'{nc}, response="{response}"\r\nContent-Length: 0\r\n\r\n'.encode()


@dataclass
class LoadResult:
    rps: float  # 200 responses per second
    ok: int
    challenged: int  # 407s after the first (a nonce the proxy no longer takes)
    other: int  # any other status
    refills: int  # times nothing came back for ``stall`` seconds and the window was refilled
    seconds: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def run_load(port: int, *, user: str, password: str, duration: float, window: int = 32, host: str = LOOPBACK,
             stall: float = 0.2, fresh: bool = False) -> LoadResult:
    """Authenticated OPTIONS to ``host:port`` for ``duration`` seconds, ``window`` in flight (``fresh``: a 407
    per call, see the module's docstring)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        sock.bind((LOOPBACK, 0))
        sock.connect((host, port))
        requests = Requests(user, password, (host, port), sock.getsockname())
        sock.settimeout(2.0)
        first: list[Challenge] = []
        for n in range(1, 6):  # the first 407: where the nonce comes from
            sock.send(requests.make(n))
            try:
                first = challenges_in(sock.recv(65535))
            except TimeoutError:
                continue
            except OSError as exc:
                raise SipLoadError(f"no answer from {host}:{port}: {exc}") from exc
            break
        if not first:
            raise SipLoadError(f"no 407 with an MD5 Digest challenge from {host}:{port}")
        requests.take(first[0])
        return (_loop_fresh if fresh else _loop)(sock, requests, duration, window, stall)
    finally:
        sock.close()


@dataclass
class _Counts:
    ok: int = 0
    challenged: int = 0
    other: int = 0


def _drive(sock: socket.socket, duration: float, window: int, stall: float, new_call: Callable[[int], bytes],
           follow_up: Callable[[bytes, _Counts], bytes | None]) -> LoadResult:
    """``window`` calls in flight for ``duration`` seconds: ``new_call(n)`` is call ``n``'s first request, and
    ``follow_up`` counts an answer and gives the call's next request, or None when the call is over (the next
    call then starts). When nothing arrives for ``stall`` seconds (lost on UDP), the window is refilled."""
    counts = _Counts()
    refills = received = 0
    n = 16
    sock.settimeout(stall)
    send, recv = sock.send, sock.recv
    started = time.monotonic()
    deadline = started + duration
    for _ in range(window):
        n += 1
        send(new_call(n))
    while True:
        try:
            data = recv(65535)
        except TimeoutError:
            refills += 1
            if time.monotonic() >= deadline:
                break
            for _ in range(window):
                n += 1
                send(new_call(n))
            continue
        received += 1
        if not received & 1023 and time.monotonic() >= deadline:
            break
        again = follow_up(data, counts)
        if again is not None:
            send(again)
            continue
        n += 1
        send(new_call(n))
    seconds = time.monotonic() - started
    return LoadResult(counts.ok / seconds, counts.ok, counts.challenged, counts.other, refills, seconds)


def _loop(sock: socket.socket, requests: Requests, duration: float, window: int, stall: float) -> LoadResult:
    """One nonce for the whole run, nc 1, 2, 3...: a call is one request; a 407 with a new nonce (stale) is
    answered from then on."""
    def follow_up(data: bytes, counts: _Counts) -> None:
        if data.startswith(b"SIP/2.0 200 "):
            counts.ok += 1
        elif data.startswith(b"SIP/2.0 407 "):
            counts.challenged += 1
            fresh = challenges_in(data)
            current = requests.challenge
            if fresh and current is not None and fresh[0].nonce != current.nonce:
                requests.take(fresh[0])
        else:
            counts.other += 1
        return None

    return _drive(sock, duration, window, stall, requests.make, follow_up)


_CALL = re.compile(rb"\r\n(?:Call-ID|i)[ \t]*:[ \t]*([0-9a-f]+)@bench\.load\r\n", re.IGNORECASE)
_FIRST = re.compile(rb"\r\nCSeq[ \t]*:[ \t]*1 ", re.IGNORECASE)
_NONCE = re.compile(rb'nonce="([^"]+)"')
_OPAQUE = re.compile(rb'opaque="([^"]*)"')


def _loop_fresh(sock: socket.socket, requests: Requests, duration: float, window: int, stall: float) -> LoadResult:
    """A 407 per call: each 407 to a call's first request is answered at once with its nonce; a 200 (or any
    other final answer) ends the call. ``challenged`` counts 407s to signed requests."""
    def follow_up(data: bytes, counts: _Counts) -> bytes | None:
        if data.startswith(b"SIP/2.0 407 "):
            call, nonce = _CALL.search(data), _NONCE.search(data)
            if call is not None and nonce is not None and _FIRST.search(data) is not None:
                opaque = _OPAQUE.search(data)
                return requests.signed(int(call.group(1), 16), nonce.group(1).decode(),
                                       None if opaque is None else opaque.group(1).decode())
            counts.challenged += 1
        elif data.startswith(b"SIP/2.0 200 "):
            counts.ok += 1
        else:
            counts.other += 1
        return None

    return _drive(sock, duration, window, stall, requests.unsigned, follow_up)


# ---------------------------------------------------------------------------------------------- in process

def answer_200(request: bytes) -> bytes:
    """The next hop's 200 to a forwarded request: its Via lines, From, To (with a tag), Call-ID and CSeq."""
    keep = [line for line in request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
            if line.split(b":", 1)[0].lower() in (b"via", b"from", b"to", b"call-id", b"cseq")]
    keep = [line + b";tag=uas" if line.lower().startswith(b"to:") else line for line in keep]
    return b"\r\n".join([b"SIP/2.0 200 OK", *keep, b"Content-Length: 0", b"", b""])


def in_process(count: int, *, profile: bool = False) -> float:
    """Authenticated OPTIONS per CPU second through SipProxy in memory (MD5, one nonce, nc 1..count), each
    request and then the next hop's 200 to it: the proxy's decisions alone, no socket. With ``profile``,
    cProfile's 25 hottest functions are printed."""
    import os

    from authproxy.auth.digest import BASE_ALGORITHMS, compute_ha1
    from authproxy.auth.nonces import NonceIssuer
    from authproxy.auth.policy import AuthPolicy
    from authproxy.auth.roles import PROXY
    from authproxy.auth.store import UserEntry
    from authproxy.auth.verifier import Verifier
    from authproxy.sip.actions import Send
    from authproxy.sip.proxy import SipProxy
    from authproxy.sip.routing import NextHop
    from authproxy.state import MemoryNonceCounterStore
    from authproxy.users.memory import MemoryUserStore

    realm, user, password = "bench", "bench", "secret"
    policy = AuthPolicy(realm, schemes=("digest",), digest_algorithms=("MD5",), qop=("auth",), userhash=False)
    entry = UserEntry(user, realm, {a: compute_ha1(a, user, realm, password) for a in BASE_ALGORITHMS})
    verifier = Verifier(policy, NonceIssuer(os.urandom(32), realm, policy.nonce_lifetime), PROXY, auth_info=False)
    local, hop = (LOOPBACK, 5060), NextHop(LOOPBACK, 5080, "udp")
    proxy = SipProxy(verifier, MemoryUserStore([entry]), MemoryNonceCounterStore(), next_hop=hop,
                     local={"udp": local}, random=os.urandom, max_transactions=count + 10,
                     max_transactions_per_source=count + 10)
    client = (LOOPBACK, 5070)
    requests = Requests(user, password, local, client)
    now = time.time()
    (send, *_) = proxy.datagram(requests.make(1), client, "udp", now)
    assert isinstance(send, Send) and status_of(send.data) == 407, send
    requests.take(challenges_in(send.data)[0])
    datagrams = [requests.make(n) for n in range(2, count + 2)]

    forwarded: list[bytes] = []

    def requests_in() -> None:
        datagram = proxy.datagram
        for data in datagrams:
            actions = datagram(data, client, "udp", now)
            first = actions[0]
            if not isinstance(first, Send) or first.to != hop.address:
                raise AssertionError(f"not forwarded: {actions}")
            forwarded.append(first.data)

    def responses_in(answers: list[bytes]) -> None:
        datagram = proxy.datagram
        for data in answers:
            actions = datagram(data, hop.address, "udp", now)
            first = actions[0]
            if not isinstance(first, Send) or first.to != client or not first.data.startswith(b"SIP/2.0 200"):
                raise AssertionError(f"not relayed: {actions}")

    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
    t0 = time.process_time()
    if prof is not None:
        prof.runcall(requests_in)
    else:
        requests_in()
    spent = time.process_time() - t0
    answers = [answer_200(data) for data in forwarded]  # the next hop's work: not counted
    t0 = time.process_time()
    if prof is not None:
        prof.runcall(responses_in, answers)
        import pstats

        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    else:
        responses_in(answers)
    return count / (spent + time.process_time() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--port", type=int, help="the proxy's UDP port on 127.0.0.1")
    p.add_argument("--user", default="bench")
    p.add_argument("--password", default="secret")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--fresh", action="store_true", help="a 407 per call (the request unsigned, then signed)")
    p.add_argument("--in-process", type=int, metavar="N", help="N requests through SipProxy in memory instead")
    p.add_argument("--profile", action="store_true", help="with --in-process: cProfile's hottest functions")
    a = p.parse_args()
    if a.in_process:
        print(f"{in_process(a.in_process, profile=a.profile):,.0f} authenticated OPTIONS (request forwarded, 200 "
              "relayed) per CPU second in process")
        return
    if a.port is None:
        p.error("--port or --in-process")
    print(run_load(a.port, user=a.user, password=a.password, duration=a.duration, window=a.window,
                   fresh=a.fresh).as_dict())


if __name__ == "__main__":
    main()
