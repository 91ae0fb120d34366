"""Every state of a client connection has a timer (issue 9 item 3), checked with a fake clock.

ClientConnection.check_timeouts(now) (the engine's Connection.timer) takes the time as an argument: these tests
drive a real ClientConnection of a real ProxyServer over a recording transport, put it in each state with real
request bytes, and move ``now`` instead of waiting. tests/e2e/test_client_timers.py shows the same over sockets
with short configured timeouts. The last test checks that a closed connection is freed at once.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import pytest

from authproxy.config import Config
from authproxy.engine.states import TIMERS, Timer
from authproxy.proxy.connection import ClientConnection
from authproxy.proxy.server import build_server

from helpers import REALM

TIMEOUTS = {"header_timeout": 5.0, "read_timeout": 7.0, "idle_timeout": 11.0, "write_timeout": 13.0}


class Transport:
    """What ClientConnection asks of its transport, recorded."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = False
        self.aborted = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0  # everything written at once

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str) -> object:
        return ("192.0.2.9", 40000) if name == "peername" else None


@pytest.fixture
def conn(users_file: Path) -> tuple[ClientConnection, Transport]:
    server = build_server(Config(users=str(users_file), realm=REALM, access_log="",
                                 header_timeout=TIMEOUTS["header_timeout"], read_timeout=TIMEOUTS["read_timeout"],
                                 idle_timeout=TIMEOUTS["idle_timeout"], write_timeout=TIMEOUTS["write_timeout"]))
    connection = ClientConnection(server)
    transport = Transport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    return connection, transport


def state(connection: ClientConnection) -> str:
    """The engine's name for the state the connection is in (authproxy.engine.states.ConnState)."""
    return connection.engine.conn_state.value


def expires(connection: ClientConnection, transport: Transport, option: str) -> float:
    """Check that the connection's timer is ``option``: nothing just before it runs out, an ending just after.

    Returns the time (on the fake clock) it ended at.
    """
    start = time.monotonic()
    limit = TIMEOUTS[option]
    written = len(transport.written)
    connection.check_timeouts(start + limit - 1.0)
    assert not transport.closed and len(transport.written) == written, f"ended before {option}"
    connection.check_timeouts(start + limit + 1.5)
    assert transport.closed, f"still open after {option}"
    return start + limit + 1.5


def test_idle(conn: tuple[ClientConnection, Transport]) -> None:
    connection, transport = conn
    assert state(connection) == "idle"
    expires(connection, transport, "idle_timeout")
    assert transport.written == b""


def test_idle_after_an_answer(conn: tuple[ClientConnection, Transport]) -> None:
    connection, transport = conn
    connection.data_received(b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n")
    assert transport.written.startswith(b"HTTP/1.1 407 ")
    assert state(connection) == "idle"
    expires(connection, transport, "idle_timeout")


def test_head(conn: tuple[ClientConnection, Transport]) -> None:
    connection, transport = conn
    connection.data_received(b"GET http://a/ HTTP/1.1\r\nHost: a\r\nX-Slow: ")
    assert state(connection) == "head"
    expires(connection, transport, "header_timeout")
    assert transport.written.startswith(b"HTTP/1.1 408 ")


@pytest.mark.parametrize("body", [b"", b"x" * 500], ids=["no-body-byte", "half-the-body"])
def test_body_of_a_refused_request_that_never_arrives(conn: tuple[ClientConnection, Transport], body: bytes) -> None:
    """The issue's case: 407 with keep-alive, then silence. The idle timer used to skip this connection."""
    connection, transport = conn
    connection.data_received(b"POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + body)
    assert transport.written.startswith(b"HTTP/1.1 407 ") and b"Connection: keep-alive" in transport.written
    assert state(connection) == "draining"
    expires(connection, transport, "read_timeout")


def test_chunked_body_of_a_refused_request_that_stops(conn: tuple[ClientConnection, Transport]) -> None:
    connection, transport = conn
    connection.data_received(b"POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    assert transport.written.startswith(b"HTTP/1.1 407 ")
    assert state(connection) == "draining"
    expires(connection, transport, "read_timeout")


def test_a_trickled_refused_body_gets_read_timeout_in_all(conn: tuple[ClientConnection, Transport]) -> None:
    """Draining a refused body: bytes keep coming, but the timer runs from the refusal, not from each byte."""
    connection, transport = conn
    connection.data_received(b"POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n")
    refused = time.monotonic()
    connection.data_received(b"x" * 10)
    connection.check_timeouts(refused + TIMEOUTS["read_timeout"] - 1.0)
    assert not transport.closed
    connection.data_received(b"x" * 10)
    connection.check_timeouts(refused + TIMEOUTS["read_timeout"] + 1.5)
    assert transport.closed


def test_sending(conn: tuple[ClientConnection, Transport]) -> None:
    """A client that reads nothing of what it is owed: its write buffer says so (pause_writing)."""
    connection, transport = conn
    connection.data_received(b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n" * 3)
    connection.pause_writing()
    assert state(connection) == "sending" and not transport.reading
    expires(connection, transport, "write_timeout")
    assert transport.aborted


def test_sending_ends_when_the_client_reads(conn: tuple[ClientConnection, Transport]) -> None:
    connection, transport = conn
    connection.pause_writing()
    connection.resume_writing()
    assert state(connection) == "idle"
    expires(connection, transport, "idle_timeout")
    assert not transport.aborted


def test_every_state_but_closed_has_a_timer() -> None:
    timed = {state.value: timer.value for state, timer in TIMERS.items() if timer is not Timer.NONE}
    assert set(timed) == {"head", "body", "draining", "origin", "sending", "idle", "tunnel", "preparing"}
    assert set(timed.values()) == {*TIMEOUTS, "connect_timeout", "tunnel_idle_timeout"}


def test_a_closed_connection_is_freed_at_once(users_file: Path) -> None:
    """The driver, its engine and the engine's parser refer to each other; connection_lost parts them, so that a
    closed connection is freed by reference counting, not left (with its exchange, headers and parser) for the
    cyclic garbage collector: under a Connection: close load that is one such heap of objects per request."""
    server = build_server(Config(users=str(users_file), realm=REALM, access_log=""))
    gc.collect()
    gc.disable()
    try:
        connection = ClientConnection(server)
        transport = Transport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        connection.data_received(b"GET http://a/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert transport.written.startswith(b"HTTP/1.1 407 ") and transport.closed
        connection.connection_lost(None)
        del connection
        assert gc.collect() == 0
    finally:
        gc.enable()
