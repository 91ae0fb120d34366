"""In-process fuzz harnesses for authproxy: no sockets, no network, one event loop reused across inputs.

``ProtocolHarness`` drives ``authproxy.proxy.connection.ClientConnection`` (the proxy's asyncio.Protocol) with a
fake client transport, on a real ``ProxyServer`` built by ``server.build_server`` from a ``Config`` and a
temporary users file. Origins are fake too: the event loop's ``create_connection`` is replaced by one that hands
the proxy's protocol a fake transport answering in one of several ways (a normal response, chunked,
read-until-close, 100-continue, an error, garbage, silence, refusal, reset, 101), chosen by the input.

Invariants checked on every input (``InvariantError`` when one breaks, so atheris and hypothesis both see a
crash):
- no exception escapes ``data_received``, ``eof_received`` or ``connection_lost``: the protocol handles
  everything itself;
- no exception reaches the event loop's exception handler (a callback or task of the proxy that raised);
- what the proxy writes to the client is a well-formed sequence of HTTP/1.1 responses (``check_response_stream``):
  it starts with ``HTTP/1.1 <3-digit status> ``, every head ends, and bodies are framed by their heads. (Not
  "every write starts with HTTP/1.1": a relayed body or a final chunk legitimately arrives in a write of its own.)

``check_credentials`` is the credentials-parser invariant: any field value is accepted or refused with
``AuthHeaderError``, never anything else.

Used by tests/fuzz/test_protocol_fuzz.py (hypothesis, bounded) and by the atheris targets in this directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from authproxy.auth.basic import decode_basic
from authproxy.auth.digest import DigestCredentials
from authproxy.auth.errors import AuthHeaderError
from authproxy.auth.headers import parse_credentials
from authproxy.config import Config
from authproxy.engine.authn import Authenticator
from authproxy.observe.accesslog import AccessLog
from authproxy.proxy.connection import ClientConnection
from authproxy.proxy.server import ProxyServer, build_server
from authproxy.proxy.upstream import UpstreamConnection
from authproxy.state.memory import MemoryNonceCounterStore
from authproxy.users.native import add_user

REALM = "fuzz"
USERS = {"alice": "wonderland", "bob": "pa:ss:word"}
#: A fixed nonce key and clock make Digest answers computable ahead of time (seed inputs that authenticate).
NONCE_KEY = b"authproxy-fuzz-nonce-key-32bytes"
NOW = 1_700_000_000.0
#: Where every name resolves in the harness: a public address (example.com's), never contacted.
FAKE_ORIGIN_ADDRESS = "93.184.215.14"

_STATUS_LINE = re.compile(rb"HTTP/1\.1 [1-5][0-9][0-9] ")


class InvariantError(AssertionError):
    """An invariant of the harness broke: a bug in the proxy (or in the harness; read the message)."""


# == fake transports ===========================================================================================
class FakeTransport:
    """What a ClientConnection may call on its transport; records writes and flow control."""

    def __init__(self, peer: tuple[str, int] = ("192.0.2.7", 50000)) -> None:
        self.peer = peer
        self.writes: list[bytes] = []
        self.closing = False
        self.aborted = False
        self.eof_written = False
        self.paused = False
        self.pauses = 0

    # asyncio.WriteTransport
    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def writelines(self, lines: Iterable[bytes | bytearray | memoryview]) -> None:
        self.writes.append(b"".join(bytes(x) for x in lines))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    # asyncio.ReadTransport
    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False

    def is_reading(self) -> bool:
        return not self.paused

    # asyncio.BaseTransport
    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default


#: How a fake origin answers. Each entry: (bytes sent when a request head arrives, close after sending).
ORIGIN_ANSWERS: tuple[tuple[bytes | None, bool], ...] = (
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close", True),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", False),
    (b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"o\"\r\nContent-Length: 0\r\n"
     b"Connection: close\r\n\r\n", True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!", False),  # malformed
    (None, False),  # silence: only the proxy's read timeout ends it
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nProxy-Authenticate: Basic realm=\"p\"\r\n"
     b"Content-Length: 0\r\n\r\n", False),
)
MODE_SWITCHING_PROTOCOLS = 7
#: Modes past the canned answers: connection refused, reset right after the request head.
MODE_REFUSED = len(ORIGIN_ANSWERS)
MODE_RESET = MODE_REFUSED + 1
ORIGIN_MODES = MODE_RESET + 1
#: Origin modes to leave out (comma-separated numbers), to fuzz past a known, reported bug while it is open.
EXCLUDED_MODES = frozenset(int(m) for m in os.environ.get("AUTHPROXY_FUZZ_EXCLUDE_MODES", "").split(",") if m.strip())
ALLOWED_MODES = tuple(m for m in range(ORIGIN_MODES) if m not in EXCLUDED_MODES) or (0,)


class FakeOriginTransport(FakeTransport):
    """The transport a fake origin gives the proxy's UpstreamConnection or TunnelUpstream."""

    def __init__(self, loop: _NoNetworkLoop, protocol: asyncio.Protocol) -> None:
        super().__init__(("198.51.100.1", 80))
        self.loop = loop
        self.protocol = protocol
        self.lost = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        super().write(data)
        if self.closing or not isinstance(self.protocol, UpstreamConnection):
            return  # tunnels: the origin stays silent, so the client side only ever sees response heads
        first, _, rest = data.partition(b"\r\n")
        if not (first.endswith(b" HTTP/1.1") and rest.startswith(b"Host: ")):
            return  # a body piece, not a request head (a body that looks like a head gets an extra answer)
        mode = self.loop.origin_mode  # the current input's origin, also for a pooled connection
        if mode == MODE_RESET:
            self.loop.call_soon(self._lose, ConnectionResetError("reset by fake origin"))
            return
        if mode == MODE_REFUSED:
            mode = 0
        answer, close_after = ORIGIN_ANSWERS[mode]
        if answer is not None:
            self.loop.call_soon(self._answer, answer, close_after)

    def _answer(self, answer: bytes, close_after: bool) -> None:
        if self.closing or self.lost:
            return
        self.protocol.data_received(answer)
        if close_after and not self.closing:
            self.protocol.eof_received()
            self._lose(None)

    def _lose(self, exc: Exception | None) -> None:
        if not self.lost:
            self.lost = True
            self.closing = True
            self.protocol.connection_lost(exc)

    def close(self) -> None:
        if not self.closing:
            super().close()
            self.loop.call_soon(self._lose, None)

    def abort(self) -> None:
        super().abort()
        self.loop.call_soon(self._lose, None)


class _NoNetworkLoop(asyncio.SelectorEventLoop):
    """An event loop whose outgoing connections go to fake origins and whose names resolve without DNS.

    Every name resolves to a public documentation-range-free address (so the destination policy lets it through)
    except names under ``.invalid`` (RFC 6761), which fail as an unknown name does.
    """

    origin_mode = 0

    async def getaddrinfo(self, host: bytes | str | None, port: bytes | str | int | None, *,
                          family: int = 0, type: int = 0, proto: int = 0,
                          flags: int = 0) -> list[tuple[Any, ...]]:
        name = host.decode("ascii", "replace") if isinstance(host, bytes) else (host or "")
        if name.lower().rstrip(".").endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        number = int(port) if isinstance(port, int | str) and str(port).isdigit() else 0
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (FAKE_ORIGIN_ADDRESS, number))]

    async def create_connection(self, protocol_factory: Callable[[], asyncio.Protocol],  # type: ignore[override]
                                host: str | None = None, port: int | None = None,
                                **kwargs: Any) -> tuple[asyncio.Transport, asyncio.Protocol]:
        if self.origin_mode == MODE_REFUSED:
            raise ConnectionRefusedError(111, "Connection refused")
        protocol = protocol_factory()
        transport = FakeOriginTransport(self, protocol)
        protocol.connection_made(transport)  # type: ignore[arg-type]
        return transport, protocol  # type: ignore[return-value]


# == the ClientConnection harness ==============================================================================
class ProtocolHarness:
    """One proxy server, reused for every input; each input is one client connection."""

    def __init__(self, workdir: Path | None = None, *, log_format: str = "squid") -> None:
        self._tmp = None if workdir is not None else tempfile.TemporaryDirectory(prefix="authproxy-fuzz-")
        base = workdir if workdir is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        users = base / "fuzz.users"
        if not users.exists():
            for name, password in USERS.items():
                add_user(users, name, password, REALM)
        options: dict[str, Any] = {"users": str(users), "realm": REALM, "access_log": "", "connect_ports": None,
                                   "max_header_size": 8192, "auth_int_max_body": 4096,
                                   # No lockouts: the fuzzer sends bad credentials all the time, from one address.
                                   "throttle_max_failures": 0}
        known = {f.name for f in dataclasses.fields(Config)}
        self.config = Config(**{k: v for k, v in options.items() if k in known})
        self.server: ProxyServer = build_server(self.config)
        # Deterministic nonces (fixed key, fixed clock) so seed inputs can carry Digest answers that verify.
        self.server.auth = Authenticator(self.config, self.server.auth.store, MemoryNonceCounterStore(),
                                         nonce_key=NONCE_KEY, clock=lambda: NOW)
        self._log = io.StringIO()
        self.server.access_log = AccessLog(self._log, log_format)
        self.loop = _NoNetworkLoop()
        self.loop.set_exception_handler(self._loop_error)
        self._loop_errors: list[str] = []
        self.inputs = 0

    def close(self) -> None:
        self.server.pool.close_all()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        self._loop_errors.append(f"{context.get('message')}: {exc!r}")

    # -- running one input -----------------------------------------------------------------------------------
    def run_fuzz_input(self, data: bytes) -> FakeTransport:
        """Byte 0 chooses the origin's behaviour, byte 1 the size of each read; the rest is the client's bytes."""
        if len(data) < 2:
            return self.run(data)
        return self.run(data[2:], origin_mode=ALLOWED_MODES[data[0] % len(ALLOWED_MODES)], chunk=data[1])

    def run(self, data: bytes, *, origin_mode: int = 0, chunk: int = 0,
            end: str = "eof") -> FakeTransport:
        """Feed ``data`` to a new client connection in reads of ``chunk`` bytes (0: one read), then let time pass
        beyond every timeout, then end the connection (``end``: "eof", "lost" or "reset")."""
        self.inputs += 1
        self.loop.origin_mode = origin_mode
        self._loop_errors.clear()
        transport = FakeTransport()
        conn = ClientConnection(self.server)
        self.loop.run_until_complete(self._drive(conn, transport, data, chunk, end))
        self._check(transport, data)
        if self._log.tell() > 1 << 20:
            self._log.seek(0)
            self._log.truncate()
        return transport

    async def _drive(self, conn: ClientConnection, transport: FakeTransport, data: bytes, chunk: int,
                     end: str) -> None:
        size = chunk or max(1, len(data))
        conn.connection_made(transport)  # type: ignore[arg-type]
        offset = 0
        while offset < len(data) and not transport.closing:
            if transport.paused:
                await _spin(8)
                if transport.paused:
                    break  # a real transport delivers nothing while paused: the client is stuck
                continue
            piece = data[offset:offset + size]
            offset += len(piece)
            self._call(conn.data_received, data, piece)
            await _spin(6)
        await _spin(40)  # resolving, connecting and answering take a few loop iterations each
        if not transport.closing:
            # Time passes: header, read and idle timeouts fire (408, 504, close).
            self._call(conn.check_timeouts, data, time.monotonic() + 10 * self.config.idle_timeout)
            await _spin(4)
        if not transport.closing and end == "eof":
            if not self._call(conn.eof_received, data):
                transport.close()
            await _spin(4)
        self._call(conn.connection_lost, data, ConnectionResetError() if end == "reset" else None)
        await _spin(8)

    def _call(self, method: Callable[..., Any], data: bytes, *args: Any) -> Any:
        try:
            return method(*args)
        except Exception as exc:
            raise InvariantError(f"{method.__name__} raised {exc!r} on input {data[:300]!r}") from exc

    def _check(self, transport: FakeTransport, data: bytes) -> None:
        if self._loop_errors:
            raise InvariantError(f"the event loop saw an error: {self._loop_errors[0]} on input {data[:300]!r}")
        problem = check_response_stream(b"".join(transport.writes))
        if problem is not None:
            raise InvariantError(f"{problem}; the proxy wrote {transport.writes!r:.600} on input {data[:300]!r}")


_HEAD_END = b"\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"(?im)^content-length:[ \t]*([0-9]+)[ \t]*\r$")
_CHUNKED = re.compile(rb"(?im)^transfer-encoding:[ \t]*chunked[ \t]*\r$")
_CHUNK_SIZE = re.compile(rb"([0-9a-f]+)\r\n")


def check_response_stream(out: bytes) -> str | None:
    """What is wrong with ``out`` as what a proxy sends a client, or None when it is well-formed.

    A sequence of HTTP/1.1 responses, each a status line, a head ending in CRLF CRLF and a body framed by its
    head; the stream may stop mid-body (the proxy cut a connection) and ends at a tunnel or a read-until-close
    body. A response to HEAD has no body whatever its Content-Length says: a Content-Length body that would start
    with the next status line is taken to be such a response.
    """
    pos = 0
    while pos < len(out):
        if _STATUS_LINE.match(out, pos) is None:
            return f"no status line at offset {pos}: {out[pos:pos + 40]!r}"
        end = out.find(_HEAD_END, pos)
        if end < 0:
            return f"a response head at offset {pos} does not end"
        head = out[pos:end + 2]
        status = int(out[pos + 9:pos + 12])
        pos = end + 4
        if b"\r\n\r\n" in head or b"\n\r\n" in head[:-2] or b"\r\r" in head:
            return "an empty line or bare CR inside a response head"
        if status < 200 or status in (204, 304):
            continue
        if status == 200 and head.startswith(b"HTTP/1.1 200 Connection established\r\n"):
            return None  # a tunnel: what follows is the origin's bytes
        length = _CONTENT_LENGTH.search(head)
        if _CHUNKED.search(head):
            if length is not None:
                return "Content-Length and Transfer-Encoding in one response"
            while True:
                size = _CHUNK_SIZE.match(out, pos)
                if size is None:
                    if pos >= len(out) or (len(out) - pos < 20 and b"\r\n" not in out[pos:]):
                        return None  # cut mid-body
                    return f"bad chunk at offset {pos}: {out[pos:pos + 20]!r}"
                n = int(size.group(1), 16)
                pos = size.end()
                if n == 0:
                    if out.startswith(b"\r\n", pos):
                        pos += 2
                        break
                    return None if pos >= len(out) else f"no CRLF after the last chunk at {pos}"
                pos += n
                if pos + 2 > len(out):
                    return None  # cut mid-chunk
                if out[pos:pos + 2] != b"\r\n":
                    return f"chunk data not followed by CRLF at {pos}"
                pos += 2
        elif length is not None:
            n = int(length.group(1))
            if n and _STATUS_LINE.match(out, pos) is not None:
                continue  # a response to HEAD
            pos += n
        else:
            return None  # read-until-close body (or the head of a HEAD response as the last thing sent)
    return None


async def _spin(times: int) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


# == the credentials parsers ===================================================================================
def decode_field(raw: bytes) -> str:
    """Field bytes as the proxy decodes Proxy-Authorization: UTF-8, else latin-1 (exchange._proxy_authorization)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def check_credentials(raw: bytes) -> None:
    """Any field value is parsed or refused with AuthHeaderError, by every credentials parser; never anything else."""
    text = decode_field(raw)
    with contextlib.suppress(AuthHeaderError):
        decode_basic(text)
    try:
        creds = parse_credentials(text)
    except AuthHeaderError:
        return
    if creds.token68 is not None:
        with contextlib.suppress(AuthHeaderError):
            decode_basic(creds.token68)
    with contextlib.suppress(AuthHeaderError):
        DigestCredentials.from_credentials(creds)


# == seeds =====================================================================================================
def basic_field(user: str = "alice", password: str = USERS["alice"]) -> str:
    from authproxy.auth.basic import encode_basic

    return "Basic " + encode_basic(user, password)


def digest_field(method: str, uri: str, *, user: str = "alice", password: str = USERS["alice"],
                 algorithm: str = "SHA-256", qop: str = "auth", nc: int = 1, body: bytes = b"") -> str:
    """A Digest Proxy-Authorization the harness's server accepts (fixed nonce key and clock)."""
    from authproxy.auth.digest import compute_ha1, get_algorithm, request_digest
    from authproxy.auth.headers import build_credentials
    from authproxy.auth.nonces import NonceIssuer

    alg = get_algorithm(algorithm)
    assert alg is not None
    issuer = NonceIssuer(NONCE_KEY, REALM, Config().nonce_lifetime)
    nonce = issuer.issue(NOW, b"\x01" * 16)
    ha1 = compute_ha1(alg.base, user, REALM, password)
    nc_text = f"{nc:08x}"
    body_hash = alg.hexdigest(body) if qop == "auth-int" else None
    response = request_digest(alg, ha1=ha1, nonce=nonce, nc=nc_text, cnonce="0a4f113b", qop=qop, method=method,
                              uri=uri, body_hash=body_hash)
    creds = DigestCredentials(username=user, userhash=False, realm=REALM, nonce=nonce, uri=uri, response=response,
                              algorithm=alg, cnonce="0a4f113b", nc=nc_text, qop=qop, opaque=issuer.opaque)
    return build_credentials(creds.to_credentials())


def seed_requests() -> list[bytes]:
    """Requests that get past authentication (and some that do not), for corpora and examples."""
    target = "http://origin.test/path?q=1"
    basic = basic_field()
    seeds = [
        f"GET {target} HTTP/1.1\r\nHost: origin.test\r\nProxy-Authorization: {basic}\r\n\r\n",
        f"POST {target} HTTP/1.1\r\nHost: origin.test\r\nProxy-Authorization: {basic}\r\nContent-Length: 5\r\n\r\n"
        "hello",
        f"POST {target} HTTP/1.1\r\nHost: origin.test\r\nProxy-Authorization: {basic}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        f"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\nProxy-Authorization: {basic}\r\n\r\n"
        "\x16\x03\x01tunnel bytes",
        f"GET {target} HTTP/1.1\r\nHost: origin.test\r\n\r\n",
        f"GET {target} HTTP/1.1\r\nHost: origin.test\r\nProxy-Authorization: {basic}\r\n\r\n"
        f"HEAD {target} HTTP/1.1\r\nHost: origin.test\r\nProxy-Authorization: {basic}\r\n\r\n",
        f"OPTIONS {target} HTTP/1.1\r\nHost: origin.test\r\nMax-Forwards: 0\r\nProxy-Authorization: {basic}\r\n\r\n",
        f"GET {target} HTTP/1.0\r\nProxy-Authorization: {basic}\r\nConnection: keep-alive\r\n\r\n",
        f"GET {target} HTTP/1.1\r\nHost: origin.test\r\n"
        f"Proxy-Authorization: {digest_field('GET', target)}\r\n\r\n",
        f"PUT {target} HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 3\r\nExpect: 100-continue\r\n"
        f"Proxy-Authorization: {digest_field('PUT', target, qop='auth-int', body=b'abc')}\r\n\r\nabc",
        f"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n"
        f"Proxy-Authorization: {digest_field('CONNECT', 'origin.test:443', algorithm='MD5')}\r\n\r\n",
        f"GET http://no-such-origin.invalid/ HTTP/1.1\r\nHost: no-such-origin.invalid\r\n"
        f"Proxy-Authorization: {basic}\r\n\r\n",
        f"GET http://127.0.0.1:8080/ HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nProxy-Authorization: {basic}\r\n\r\n",
    ]
    return [s.encode("utf-8") for s in seeds]


def seed_credentials() -> list[bytes]:
    target = "http://origin.test/path?q=1"
    return [
        basic_field().encode(),
        basic_field("bob", "pa:ss:word").encode(),
        digest_field("GET", target).encode(),
        digest_field("GET", target, algorithm="SHA-512-256-sess").encode(),
        b"Digest username*=UTF-8''j%C3%B6s%C3%A9, realm=\"r\", nonce=\"n\", uri=\"/\", response=\"00\"",
        b'Digest username="a", realm="r", nonce="n", uri="/", response="' + b"0" * 32 + b'", userhash=true',
        b"Bearer abc.def.ghi",
    ]
