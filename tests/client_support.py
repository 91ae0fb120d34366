"""Test parts for the client library: our proxy in several configurations (started once each), relays, a
TLS front for https:// proxy URLs, scripted fake proxies for odd behaviour, and an origin that redirects."""
from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import requests

from authproxy.client import AsyncProxyTransport, ProxyAdapter, ProxyTransport

from helpers import Echo, Listener, OriginHandler, OriginServer, ProxyProcess, start_proxy

ALGORITHMS = ("MD5", "MD5-sess", "SHA-256", "SHA-256-sess", "SHA-512-256", "SHA-512-256-sess")


class Proxies:
    """``authproxy serve`` per configuration, started on first use and kept for the session."""

    def __init__(self, tmp: Path, users: Path) -> None:
        self.tmp = tmp
        self.users = users
        self.running: dict[tuple[str, ...], ProxyProcess] = {}

    def get(self, *args: str, toml: str = "") -> ProxyProcess:
        key = (*args, toml)
        if key not in self.running:
            extra = list(args)
            if toml:
                path = self.tmp / f"client-{len(self.running)}.toml"
                path.write_text(toml, encoding="utf-8")
                extra += ["--config", str(path)]
            self.running[key] = start_proxy(self.tmp, self.users, *extra)
        return self.running[key]

    def stop(self) -> None:
        # Terminate all first, then wait: each takes a moment to drain, and they can do it together.
        for proc in self.running.values():
            proc.proc.terminate()
        for proc in self.running.values():
            proc.stop()


# --- relays -------------------------------------------------------------------------------------------------


def pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy a -> b until a closes, then half-close b."""
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)


def relay(a: socket.socket, b: socket.socket) -> None:
    t = threading.Thread(target=pipe, args=(b, a), daemon=True)
    t.start()
    pipe(a, b)
    t.join(5)
    a.close()
    b.close()


@dataclass
class TLSFront:
    """TLS in front of a plain proxy: what an ``https://`` proxy URL talks to. ``ca`` trusts its cert."""

    listener: Listener
    ca: Path

    @property
    def port(self) -> int:
        return self.listener.port


# --- scripted fake proxies ----------------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    connection: int


@dataclass
class FakeProxy:
    """A proxy whose answers a test scripts: ``respond(seen) -> (response bytes, close, tunnel)``.

    ``tunnel`` True after a CONNECT: relay the connection to the requested host:port (the real TLS origin).
    """

    respond: Callable[[Seen], tuple[bytes, bool, bool]]
    seen: list[Seen] = field(default_factory=list)
    listener: Listener | None = None

    @property
    def port(self) -> int:
        assert self.listener is not None
        return self.listener.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeProxy:
        self.listener = Listener(self._handle)
        return self

    def _handle(self, conn: socket.socket) -> None:
        assert self.listener is not None
        number = self.listener.connections
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.decode("utf-8", "replace").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            length = int(headers.get("content-length", "0"))
            while len(buf) < length:
                buf += conn.recv(65536)
            buf = buf[length:]
            seen = Seen(method, target, headers, number)
            self.seen.append(seen)
            data, close, tunnel = self.respond(seen)
            conn.sendall(data)
            if tunnel:
                host, _, port = target.rpartition(":")
                relay(conn, socket.create_connection((host, int(port))))
                return
            if close:
                conn.shutdown(socket.SHUT_WR)
                return

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()


# --- an origin that redirects -------------------------------------------------------------------------------


class RedirectHandler(OriginHandler):
    def _handle(self) -> None:
        if self.path.startswith("/redirect?to="):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.server.seen.append({"method": self.command, "path": self.path,
                                     "headers": list(self.headers.items()), "body": body})
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super()._handle()

    do_GET = do_POST = _handle


class RedirectOrigin(OriginServer):
    def __init__(self) -> None:
        ThreadingHTTPServer.__init__(self, ("127.0.0.1", 0), RedirectHandler)
        self.seen = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()


def origin_headers(server: OriginServer, path: str | None = None) -> list[dict[str, str]]:
    """Every request head the origin saw (with ``path``, of the requests for that path only: the origins are
    shared by the session's tests, some of which send an Authorization of their own on purpose), lower-cased
    names."""
    return [{k.lower(): v for k, v in entry["headers"]} for entry in server.seen
            if path is None or str(entry["path"]).partition("?")[0] == path]


def echo(response_json: str) -> Echo:
    result: Echo = json.loads(response_json)
    return result




# --- one way to drive each client ------------------------------------------------------------------------


CLIENTS = ("httpx", "httpx-async", "requests")


@dataclass
class Reply:
    status: int
    text: str
    headers: dict[str, str]

    def json(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.text)
        return result


Call = tuple[str, str, bytes | None]  # method, url, body


def fetch(kind: str, proxy_url: str, calls: Sequence[Call], *, auth: tuple[str, str] | None = None,
          ca: Path | None = None, follow: bool = False, **options: Any) -> list[Reply]:
    """Run ``calls`` in order on one client of ``kind`` through ``proxy_url``."""
    verify: Any = str(ca) if ca else True
    if kind == "httpx":
        transport = ProxyTransport(proxy_url, auth, verify=verify, **options)
        with httpx.Client(transport=transport, timeout=10, follow_redirects=follow) as client:
            return [_httpx_reply(client.request(m, u, content=b)) for m, u, b in calls]
    if kind == "httpx-async":
        async def run() -> list[Reply]:
            transport = AsyncProxyTransport(proxy_url, auth, verify=verify, **options)
            async with httpx.AsyncClient(transport=transport, timeout=10, follow_redirects=follow) as client:
                return [_httpx_reply(await client.request(m, u, content=b)) for m, u, b in calls]
        return asyncio.run(run())
    assert kind == "requests"
    with requests.Session() as session:
        adapter = ProxyAdapter(proxy_url, auth, **options)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.verify = verify
        out = []
        for m, u, b in calls:
            # Per request: REQUESTS_CA_BUNDLE in the environment would override session.verify.
            r = session.request(m, u, data=b, timeout=10, allow_redirects=follow, verify=verify)
            out.append(Reply(r.status_code, r.text, dict(r.headers)))
        return out


def _httpx_reply(r: httpx.Response) -> Reply:
    return Reply(r.status_code, r.text, dict(r.headers))


def urls(origin: OriginServer, tls_origin: tuple[OriginServer, Path], path: str) -> tuple[str, str]:
    return f"http://127.0.0.1:{origin.port}{path}", f"https://localhost:{tls_origin[0].port}{path}"
