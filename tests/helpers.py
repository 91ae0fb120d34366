"""Real parts for the tests: an origin server, a TLS origin, and the proxy itself run through its CLI."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NotRequired, TypedDict

import trustme

from authproxy.auth.flow import Allow, ConnectionAuth, Flow, NeedPasswordCheck, NeedUser, Reject
from authproxy.auth.nonces import NonceIssuer
from authproxy.auth.outcomes import Outcome
from authproxy.auth.policy import AuthPolicy
from authproxy.auth.roles import Role
from authproxy.users.native import add_user

USERS = {
    "alice": "wonderland",
    "bob": "pa:ss:word",  # a colon in the password: split on the first colon only (RFC 7617 section 2)
    "jösé": "pässwörd€ ok",  # non-ASCII user name and password, with a space
}
REALM = "authproxy-test"


class Received(TypedDict):
    """What OriginServer records of each request it handled (``OriginServer.seen``)."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    client_port: NotRequired[int]  # the redirecting origin of the client tests does not record it


class Echo(TypedDict):
    """The JSON body OriginHandler answers with: what it received (headers as [name, value] pairs)."""

    method: str
    path: str
    headers: list[list[str]]
    body: str


class OriginHandler(BaseHTTPRequestHandler):
    """An origin that tells the test what it received."""

    protocol_version = "HTTP/1.1"
    server: OriginServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _body(self) -> bytes | None:
        """The request body; None when the peer went away in the middle of a chunked one (a test that cuts a
        body short: nothing to answer, and no traceback from this thread)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                line = self.rfile.readline()
                if not line.strip():
                    return None
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._body()
        if body is None:
            self.close_connection = True
            return
        self.server.seen.append(
            {"method": self.command, "path": self.path, "headers": list(self.headers.items()), "body": body,
             "client_port": self.client_address[1]}
        )
        path = self.path.split("?")[0]
        if path == "/401":
            payload = b"origin says: who are you?\n"
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="origin-realm"')
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world\n"):
                self.wfile.write(b"%x\r\n%b\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        if path == "/until-close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"body ends when the connection closes\n")
            self.close_connection = True
            return
        if path.startswith("/bytes/"):
            count = int(path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("Content-Length", str(count))
            self.end_headers()
            block = b"x" * 65536
            while count > 0:
                self.wfile.write(block[: min(count, len(block))])
                count -= len(block)
            return
        echo: Echo = {
            "method": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body": body.decode("latin-1"),
        }
        payload = json.dumps(echo).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _handle


class OriginServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), OriginHandler)
        self.seen: list[Received] = []
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class Listener:
    """A TCP listener on 127.0.0.1 that runs ``handle(conn)`` in a thread per connection."""

    def __init__(self, handle: Callable[[socket.socket], None], tls: ssl.SSLContext | None = None, *,
                 backlog: int | None = None) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=backlog)
        self.port: int = self.sock.getsockname()[1]
        self.handle = handle
        self.tls = tls
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            self.handle(conn)
        except (OSError, ssl.SSLError):
            pass  # the peer went away: the test reads what it needs from its own side
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


class ScriptedOrigin:
    """A raw TCP origin on 127.0.0.1 that answers each request head it reads with ``answer(conn, path)``, which
    writes whatever bytes it likes (a hostile origin) and returns False to close the connection. It counts
    connections, so a test can tell whether the proxy reused one, and records how each one ended."""

    def __init__(self, answer: Callable[[socket.socket, str], bool]) -> None:
        self.answer = answer
        self.errors: list[BaseException] = []  # what a write to the proxy raised (the proxy cut the connection)
        self.done = threading.Event()  # set each time an answer ends
        self.listener = Listener(self._serve, backlog=64)
        self.port = self.listener.port

    @property
    def connections(self) -> int:
        return self.listener.connections

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode("latin-1")
                try:
                    if not self.answer(conn, path):
                        return
                finally:
                    self.done.set()
        except OSError as exc:
            self.errors.append(exc)

    def close(self) -> None:
        self.listener.close()


def make_tls(tmp: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context for 'localhost' and 127.0.0.1, and the CA file that trusts it."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    ca_path = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    return ctx, ca_path


def write_tls_files(tmp: Path) -> tuple[Path, Path, Path]:
    """A certificate for 127.0.0.1 and localhost, its key and the CA that trusts it, as PEM files for
    ``--tls-cert``, ``--tls-key`` and a client's CA bundle."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path, ca_path = tmp / "cert.pem", tmp / "key.pem", tmp / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    key_path.write_bytes(cert.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(ca_path))
    return cert_path, key_path, ca_path


def make_users_file(path: Path, realm: str = REALM) -> Path:
    for name, password in USERS.items():
        add_user(path, name, password, realm)
    return path


@dataclass
class ProxyProcess:
    """``authproxy serve`` run as a user would run it, on a free port."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    stderr_lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_log(self) -> str:
        time.sleep(1.2)  # the access log is flushed by the once-a-second housekeeping timer
        return self.log_path.read_text(encoding="utf-8")

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


def start_proxy(tmp: Path, users: Path, *args: str, allow_private: bool = True) -> ProxyProcess:
    """The proxy on a free port. Tests reach origins on 127.0.0.1, so they lift the private-address refusal
    (``allow_private``) and the CONNECT port list unless a test is about those defences."""
    log_path = tmp / f"access-{time.monotonic_ns()}.log"
    cmd = [sys.executable, "-m", "authproxy", "serve", "--listen", "127.0.0.1:0", "--users", str(users),
           "--realm", REALM, "--connect-ports", "any", "--access-log", str(log_path), *args]
    if allow_private:
        cmd.append("--allow-private")
    proc, match, lines = _started(cmd, r"listening on [^ ]+:(\d+)")
    return ProxyProcess(proc, int(match.group(1)), log_path, lines)


def _started(cmd: list[str], announced: str) -> tuple[subprocess.Popen[bytes], re.Match[str], list[str]]:
    """Run ``cmd`` and wait for the stderr line matching ``announced`` (the process says where it listens);
    stderr is kept in the returned lines, drained in the background after that."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode("utf-8", "replace")
        if not line:
            break
        lines.append(line)
        match = re.search(announced, line)
        if match:
            threading.Thread(target=_drain, args=(proc, lines), daemon=True).start()
            return proc, match, lines
    proc.kill()
    raise RuntimeError("authproxy did not start:\n" + "".join(lines) + proc.stderr.read().decode())


@dataclass
class SipProxyProcess:
    """``authproxy sip serve`` run as an operator would run it; ``ports`` by transport."""

    proc: subprocess.Popen[bytes]
    ports: dict[str, int]
    log_path: Path
    stderr_lines: list[str] = field(default_factory=list)

    def log_lines(self, until: Callable[[list[str]], bool], timeout: float = 10.0) -> list[str]:
        """The access log's lines once ``until`` holds for them (the log is flushed once a second)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_path.read_text(encoding="utf-8") if self.log_path.exists() else ""
            lines = text.splitlines()
            if until(lines) or time.monotonic() > deadline:
                return lines
            time.sleep(0.1)

    def stderr_until(self, until: Callable[[list[str]], bool], timeout: float = 10.0) -> list[str]:
        """Its stderr lines (drained as they come) once ``until`` holds for them, or after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not until(lines := [line.rstrip("\n") for line in self.stderr_lines]) and time.monotonic() < deadline:
            time.sleep(0.1)
        return lines

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


def start_sip_proxy(tmp: Path, users: Path, next_hop: str, *args: str,
                    listen: tuple[str, ...] = ("udp:127.0.0.1:0", "tcp:127.0.0.1:0"),
                    config_text: str | None = None) -> SipProxyProcess:
    """``authproxy sip serve`` on free ports, forwarding to ``next_hop``; ``config_text`` is a TOML file for
    ``--config``."""
    log_path = tmp / f"sip-access-{time.monotonic_ns()}.log"
    if config_text is not None:
        config = tmp / f"sip-{time.monotonic_ns()}.toml"
        config.write_text(config_text)
        args = ("--config", str(config), *args)
    cmd = [sys.executable, "-m", "authproxy", "sip", "serve", "--users", str(users), "--next-hop", next_hop,
           "--access-log", str(log_path), *(a for spec in listen for a in ("--listen", spec)), *args]
    proc, match, lines = _started(cmd, r"sip listening on (.*?);")
    ports = {t: int(p) for t, p in re.findall(r"(udp|tcp|tls):[^ ]*:(\d+)", match.group(1))}
    return SipProxyProcess(proc, ports, log_path, lines)


@contextlib.contextmanager
def chained_sip_proxies(tmp: Path, next_hop: str, inner_algorithms: str = "MD5",
                        outer_algorithms: str = "MD5") -> Iterator[tuple[SipProxyProcess, SipProxyProcess]]:
    """Two ``authproxy sip serve`` in a chain over UDP, each with users of a realm of its own ("outer-realm",
    "inner-realm"): a UA talks to the outer one, whose next hop is the inner one, whose next hop is ``next_hop``.
    Yields ``(outer, inner)``; both stopped after."""
    inner_users = make_users_file(tmp / "inner.users", "inner-realm")
    outer_users = make_users_file(tmp / "outer.users", "outer-realm")
    inner = start_sip_proxy(tmp, inner_users, next_hop, "--digest-algorithms", inner_algorithms,
                            listen=("udp:127.0.0.1:0",))
    try:
        outer = start_sip_proxy(tmp, outer_users, f"sip:127.0.0.1:{inner.ports['udp']}",
                                "--digest-algorithms", outer_algorithms, listen=("udp:127.0.0.1:0",))
        try:
            yield outer, inner
        finally:
            outer.stop()
    finally:
        inner.stop()


def _drain(proc: subprocess.Popen[bytes], lines: list[str]) -> None:
    assert proc.stderr is not None
    for raw in proc.stderr:
        lines.append(raw.decode("utf-8", "replace"))


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid`` (Linux), for memory claims measured on a real proxy."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@dataclass(frozen=True)
class Usage:
    """What a proxy process holds, read from /proc (Linux): for leak and bound claims."""

    fds: int
    client_sockets: int  # accepted connections still open (the listening socket excluded)
    origin_sockets: int  # connections to the test origin (idle pooled ones included)
    other_sockets: int
    rss: int

    def __str__(self) -> str:
        return (f"fds={self.fds} client_sockets={self.client_sockets} origin_sockets={self.origin_sockets} "
                f"other_sockets={self.other_sockets} rss={self.rss / 1048576:.1f}MiB")


def _tcp_endpoints(pid: int) -> dict[str, tuple[int, int, str]]:
    """inode -> (local port, remote port, state) for every TCP socket in the proxy's network namespace."""
    table: dict[str, tuple[int, int, str]] = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            table[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state)
    return table


def usage(proxy: ProxyProcess, origin_port: int) -> Usage:
    """The proxy's file descriptors, sockets told apart by their TCP endpoints (client side: the proxy's port as
    the local port; origin side: ``origin_port`` as the remote port), and its RSS."""
    pid = proxy.proc.pid
    endpoints = _tcp_endpoints(pid)
    fds = client = upstream = other = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed while we looked
        fds += 1
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match is None:
            continue
        local, remote, state = endpoints.get(match.group(1), (0, 0, ""))
        if local == proxy.port and state != "0A":  # 0A: LISTEN
            client += 1
        elif remote == origin_port:
            upstream += 1
        else:
            other += 1
    return Usage(fds, client, upstream, other, rss_bytes(pid))


def raw_exchange(port: int, data: bytes, *, timeout: float = 5.0, read_until_close: bool = False) -> bytes:
    """Send bytes to the proxy and read one response head and body (or everything, until close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_response(sock, read_until_close=read_until_close)


_LEFTOVER: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def read_response(sock: socket.socket, *, read_until_close: bool = False) -> bytes:
    """One response (head and Content-Length body) from ``sock``; bytes past it are kept for the next call."""
    buf = _LEFTOVER.pop(sock, b"")
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return buf
        buf += chunk
    if read_until_close:
        while chunk := sock.recv(65536):
            buf += chunk
        return buf
    head, _, rest = buf.partition(b"\r\n\r\n")
    match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    length = int(match.group(1)) if match else 0
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    _LEFTOVER[sock] = rest[length:]
    return head + b"\r\n\r\n" + rest[:length]



def challenges_of(response: bytes) -> list[str]:
    """The Proxy-Authenticate values of a raw response, in order."""
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    return [line.split(":", 1)[1].strip() for line in head.split("\r\n")[1:]
            if line.lower().startswith("proxy-authenticate:")]


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def header_of(response: bytes, name: str) -> str | None:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def digest_authorization(challenge_value: str, user: str, password: str, method: str, uri: str, *,
                         nc: int = 1, cnonce: str = "0a4f113b", qop: str = "auth", body: bytes = b"",
                         userhash: bool = False, nonce: str | None = None) -> str:
    """A Digest Proxy-Authorization answering ``challenge_value``, computed with the auth core."""
    from authproxy.auth.digest import (
        DigestChallenge,
        DigestCredentials,
        compute_ha1,
        compute_userhash,
        request_digest,
    )
    from authproxy.auth.headers import build_credentials, parse_challenges

    challenge = DigestChallenge.from_challenge(parse_challenges([challenge_value])[0])
    assert challenge is not None
    alg = challenge.alg
    use_nonce = nonce or challenge.nonce
    ha1 = compute_ha1(alg.base, user, challenge.realm, password)
    nc_text = f"{nc:08x}"
    body_hash = alg.hexdigest(body) if qop == "auth-int" else None
    response = request_digest(alg, ha1=ha1, nonce=use_nonce, nc=nc_text, cnonce=cnonce, qop=qop,
                              method=method, uri=uri, body_hash=body_hash)
    creds = DigestCredentials(
        username=compute_userhash(alg, user, challenge.realm) if userhash else user,
        userhash=userhash, realm=challenge.realm, nonce=use_nonce, uri=uri, response=response,
        algorithm=alg, cnonce=cnonce, nc=nc_text, qop=qop, opaque=challenge.opaque,
    )
    return build_credentials(creds.to_credentials())


def basic_authorization(user: str, password: str) -> str:
    from authproxy.auth.basic import encode_basic

    return "Basic " + encode_basic(user, password)


_PROBE = """
import importlib, json, sys
before = set(sys.modules)
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def loaded_by(module: str) -> list[str]:
    """The modules that ``import module`` loads in a fresh interpreter (with this checkout's src first): how
    the layering tests check what a layer depends on."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", _PROBE, module], capture_output=True, text=True, env=env,
                         check=True, timeout=60)
    loaded: list[str] = json.loads(out.stdout)
    return loaded


class Handshake:
    """A test scheme shaped like NTLM (tests/auth/test_schemes.py, tests/engine/test_playbooks.py): leg 1
    "Handshake hello" is answered with a server token; leg 2 "Handshake <token> <name> <password>" must echo the
    token this connection was given, and signs the connection in. The token lives on the connection, nowhere
    else."""

    name = "handshake"
    connection_bound = True

    def __init__(self, policy: AuthPolicy, issuer: NonceIssuer, role: Role) -> None:
        self.role = role
        self.realm = policy.realm
        self.issued = 0

    def challenges(self, now: float, rand: bytes, stale: bool) -> list[str]:
        return ["Handshake"]

    def verify(self, method: str, target: str, authorization: str, now: float,
               connection: ConnectionAuth | None) -> Flow:
        assert connection is not None  # the verifier never calls a connection-bound scheme without one
        words = authorization.split()
        if words[1:] == ["hello"]:
            self.issued += 1
            token = f"t{self.issued}"
            connection.handshakes[self.name] = token
            return Reject(Outcome.MISSING, None, False, "handshake leg 1", self.role, challenge=f"Handshake {token}")
        token = connection.handshakes.pop(self.name, None)
        if token is None or len(words) != 4 or words[1] != token:
            return Reject(Outcome.BAD_NONCE, None, False, "no such handshake on this connection", self.role)
        entry = yield NeedUser(words[2])
        ok = entry is not None and (yield NeedPasswordCheck(entry, words[3], self.realm))
        if entry is None or not ok:
            return Reject(Outcome.BAD_PASSWORD, words[2], False, "handshake refused", self.role)
        return Allow(entry.name, self.name, None, self.role)
