"""Fixtures for the client library tests; the parts live in client_support."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from client_support import FakeProxy, Proxies, RedirectOrigin, Seen, TLSFront, relay
from helpers import Listener, OriginServer, ProxyProcess


@pytest.fixture(scope="session")
def proxies(session_tmp: Path, users_file: Path) -> Iterator[Proxies]:
    p = Proxies(session_tmp, users_file)
    yield p
    p.stop()


@pytest.fixture(scope="session")
def ca_path(tls_origin: tuple[OriginServer, Path]) -> Path:
    return tls_origin[1]


@pytest.fixture(scope="session")
def tls_front(session_tmp: Path, proxy: ProxyProcess) -> Iterator[TLSFront]:
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    ca_file = session_tmp / "proxy-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    def handle(conn: socket.socket) -> None:
        relay(conn, socket.create_connection(("127.0.0.1", proxy.port)))

    listener = Listener(handle, ctx)
    yield TLSFront(listener, ca_file)
    listener.close()


@pytest.fixture
def fake_proxy() -> Iterator[Callable[[Callable[[Seen], tuple[bytes, bool, bool]]], FakeProxy]]:
    made: list[FakeProxy] = []

    def make(respond: Callable[[Seen], tuple[bytes, bool, bool]]) -> FakeProxy:
        fp = FakeProxy(respond).start()
        made.append(fp)
        return fp

    yield make
    for fp in made:
        fp.close()


@pytest.fixture(scope="session")
def redirect_origin() -> Iterator[RedirectOrigin]:
    server = RedirectOrigin()
    yield server
    server.stop()

