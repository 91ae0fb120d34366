"""Connection limits as ProxyServer.admit counts them: per client address, IPv6 by its /64 (issue 9 item 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from authproxy.config import Config
from authproxy.proxy.server import build_server

from helpers import REALM


class _Conn:
    """What admit and release look at: the client address (and identity, to tell connections apart)."""

    def __init__(self, client: str) -> None:
        self.client = client


def conn(client: str) -> Any:
    return _Conn(client)


def test_per_client_counts_ipv6_by_its_64_and_mapped_ipv4_as_ipv4(users_file: Path) -> None:
    server = build_server(Config(users=str(users_file), realm=REALM, access_log="", max_connections_per_client=2,
                                 max_connections=100))
    a, b = conn("2001:db8::1"), conn("2001:db8::ffff:2")
    assert server.admit(a) is None and server.admit(b) is None
    assert "per client" in (server.admit(conn("2001:db8::3")) or "")  # same /64
    assert server.admit(conn("2001:db8:0:1::1")) is None  # another /64
    v4, mapped = conn("192.0.2.7"), conn("::ffff:192.0.2.7")
    assert server.admit(v4) is None and server.admit(mapped) is None
    assert server.admit(conn("192.0.2.7")) is not None
    server.release(a)
    assert server.admit(conn("2001:db8::4")) is None  # a's place is free again
    server.release(mapped)
    server.release(v4)
    assert "192.0.2.7" not in server.per_client and len(server.connections) == 3


def test_total_limit(users_file: Path) -> None:
    server = build_server(Config(users=str(users_file), realm=REALM, access_log="", max_connections=2))
    assert server.admit(conn("192.0.2.1")) is None and server.admit(conn("192.0.2.2")) is None
    assert "limit of 2 connections" in (server.admit(conn("192.0.2.3")) or "")
