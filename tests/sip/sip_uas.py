"""A small SIP user agent server of the tests' own, over UDP on 127.0.0.1: it challenges with
authproxy.sip.challenge, verifies with authproxy.sip.verify, and answers 200 to what passes.

Each verifier is one hop asking for credentials: a proxy (407, its realm) and/or a registrar (401, its realm),
checked in that order, so one server plays "proxy in front of registrar". A retransmission (same Call-ID, CSeq
and top Via branch: RFC 3261 section 17.2.3) gets the response the first copy got, never a second verification
(which would call its nc a replay). ``drop_first`` drops that many datagrams unanswered, to make the client
retransmit. ``tcp`` serves TCP instead of UDP (each message answered on its connection); ``tls`` (a server
context) TLS over it.

As the far side of a dialog (RFC 3261 section 12.1.1): its 200 to an INVITE copies the Record-Route and names
its Contact; ACKs and the responses it gets (to requests a test sends from its socket with ``send``) are kept,
and ``wait`` waits for a condition on what it has.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from hashlib import sha256

from authproxy.auth.digest import BASE_ALGORITHMS, compute_ha1
from authproxy.auth.flow import Allow, Reject
from authproxy.auth.nonces import NonceIssuer
from authproxy.auth.policy import AuthPolicy
from authproxy.auth.roles import ORIGIN, PROXY, Role
from authproxy.auth.store import UserEntry
from authproxy.auth.verifier import Verifier
from authproxy.sip.challenge import NEVER_CHALLENGED, challenge_response, offers_for
from authproxy.sip.fields import SipError
from authproxy.sip.message import SipRequest, SipResponse, response_to
from authproxy.sip.parse import parse_datagram, parse_stream
from authproxy.sip.verify import authenticate
from authproxy.state import MemoryNonceCounterStore
from authproxy.users.memory import MemoryUserStore

REALMS = {PROXY: "proxy.example.org", ORIGIN: "registrar.example.org"}


@dataclass
class Hop:
    """One challenging hop: its verifier, users and nonce counts."""

    verifier: Verifier
    store: MemoryUserStore
    counters: MemoryNonceCounterStore = field(default_factory=MemoryNonceCounterStore)


@dataclass
class Seen:
    """One request as the UAS got it, and what each hop decided."""

    request: SipRequest
    results: list[Allow | Reject]
    status: int


class Uas:
    def __init__(self, users: dict[str, str], *, roles: tuple[Role, ...] = (ORIGIN,),
                 algorithms: tuple[str, ...] = ("MD5",), qop: tuple[str, ...] = ("auth",),
                 drop_first: int = 0, tcp: bool = False, tls: ssl.SSLContext | None = None) -> None:
        self.hops: list[Hop] = []
        for role in roles:
            realm = REALMS[role]
            policy = AuthPolicy(realm, schemes=("digest",), digest_algorithms=algorithms, qop=qop, userhash=False)
            entries = [UserEntry(name, realm, {a: compute_ha1(a, name, realm, pw) for a in BASE_ALGORITHMS})
                       for name, pw in users.items()]
            verifier = Verifier(policy, NonceIssuer(os.urandom(32), realm, policy.nonce_lifetime), role)
            self.hops.append(Hop(verifier, MemoryUserStore(entries)))
        self.drop_first = drop_first
        self.seen: list[Seen] = []
        self.acks: list[SipRequest] = []
        self.responses: list[SipResponse] = []
        self.changed = threading.Condition()
        self.datagrams = 0
        self._answered: dict[tuple[str, str, str | None], bytes] = {}
        self.tcp = tcp = tcp or tls is not None
        self.tls = tls
        self.connections = 0
        self.handshake_failures: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        if tcp:
            self.sock.listen(16)
        self.port: int = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept if tcp else self._serve, daemon=True)

    def __enter__(self) -> Uas:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.datagrams += 1
            if self.datagrams <= self.drop_first:
                continue
            answer = self.answer(data)
            if answer is not None:
                self.sock.sendto(answer, addr)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _addr = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._serve_stream, args=(conn,), daemon=True).start()

    def _handshake(self, conn: socket.socket) -> socket.socket | None:
        """``conn`` over TLS when this UAS serves TLS (None when the handshake fails: the reason kept)."""
        if self.tls is None:
            return conn
        conn.settimeout(5)
        try:
            return self.tls.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            self.handshake_failures.append(str(exc))
            conn.close()
            return None

    def _serve_stream(self, conn: socket.socket) -> None:
        """One TCP connection: messages framed by Content-Length (RFC 3261 section 18.3), each answered on it."""
        buffer = b""
        wrapped = self._handshake(conn)
        if wrapped is None:
            return
        conn = wrapped
        conn.settimeout(0.2)
        with conn:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65535)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                buffer += chunk
                while (framed := parse_stream(buffer)) is not None:
                    _message, used = framed
                    self.datagrams += 1
                    answer = self.answer(buffer[:used])
                    buffer = buffer[used:]
                    if answer is not None:
                        conn.sendall(answer)

    def answer(self, data: bytes) -> bytes | None:
        try:
            request = parse_datagram(data)
        except SipError:
            return None
        with self.changed:
            try:
                if isinstance(request, SipResponse):
                    self.responses.append(request)
                    return None
                if request.method == "ACK":
                    self.acks.append(request)
                    return None
                key = (request.call_id, str(request.cseq), request.vias[0].branch)
                if key in self._answered:
                    return self._answered[key]
                wire = self._respond(request).to_bytes()
                self._answered[key] = wire
                return wire
            finally:
                self.changed.notify_all()

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        """A request of the far side's own, from the UAS's UDP socket (its responses land in ``responses``)."""
        self.sock.sendto(data, to)

    def wait(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        with self.changed:
            assert self.changed.wait_for(condition, timeout), "the UAS did not get what was awaited"

    def _respond(self, request: SipRequest) -> SipResponse:
        # A stateless server's To tag: derived from the request, so every copy gets the same one.
        tag = sha256(f"{request.call_id} {request.from_.tag}".encode()).hexdigest()[:10]
        results: list[Allow | Reject] = []
        if request.method not in NEVER_CHALLENGED:
            for hop in self.hops:
                now = time.time()
                result = authenticate(hop.verifier, request, hop.store, hop.counters, now, transport="udp")
                results.append(result)
                if isinstance(result, Reject):
                    offers = offers_for(hop.verifier, now=now, rand=os.urandom(16), transport="udp",
                                        stale=result.stale)
                    response = challenge_response(request, hop.verifier.role, offers, to_tag=tag,
                                                  transport="udp")
                    self.seen.append(Seen(request, results, response.status))
                    return response
        extra: list[tuple[str, str]] = []
        if request.method == "INVITE":  # section 12.1.1: the route set back to the caller, and where we are
            extra = [("Record-Route", value) for value in request.get_all("Record-Route")]
            extra.append(("Contact", f"<sip:uas@127.0.0.1:{self.port}>"))
        if request.method == "REGISTER":
            extra = [("Contact", value) for value in request.get_all("Contact")]
            extra.append(("Expires", request.get("Expires") or "3600"))
        response = response_to(request, 200, "OK", to_tag=tag, headers=extra)
        self.seen.append(Seen(request, results, 200))
        return response
