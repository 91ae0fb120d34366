"""The names of the states a client connection and an exchange go through, and which timer runs in each.

h11 keeps its protocol rules as plain tables (``h11/_state.py``); so does this module. ``TIMERS`` says, for each
connection state, which configured timeout applies; ``Connection.timer`` (the housekeeping tick) looks the state
up here and nowhere else, so a state without a timer is a visible choice, not an omission. Every state has
one (README, "Limits and their defaults"); CLOSED's is the driver's: a close still waiting for its peer to read
what it is owed is cut after ``write_timeout`` of reading nothing (``authproxy.proxy.linger``).
"""

from __future__ import annotations

import enum


class ConnState(enum.Enum):
    """Where a client connection is (RFC 9112 section 9), the first of these that holds."""

    CLOSED = "closed"
    TUNNEL = "tunnel"  # a CONNECT tunnel relays bytes both ways (RFC 9110 section 9.3.6); being opened: PREPARING
    SENDING = "sending"  # the client does not read what it is owed (its write buffer is above the mark)
    BODY = "body"  # a request body is arriving and being read (forwarded, or held for authentication)
    DRAINING = "draining"  # the body of a request already answered (a refusal) is read and dropped
    ORIGIN = "origin"  # a request is with the origin: its answer is awaited or being relayed
    PREPARING = "preparing"  # a request is being authenticated, its destination resolved or connected
    HEAD = "head"  # a request head has begun and is not complete
    IDLE = "idle"  # between requests on a keep-alive connection


class ExchangeState(enum.Enum):
    """Where one request and its response are (named for logs, tests and readers; timers go by ConnState)."""

    AUTHENTICATING = "authenticating"  # the verifier runs, or waits for a password check or the body (auth-int)
    DECIDING = "deciding"  # the destination policy waits for a name to resolve
    CONNECTING = "connecting"  # a connection (or tunnel) to the origin is being opened
    WAITING = "waiting"  # the request is sent; no response head yet
    RESPONDING = "responding"  # the response head is sent; its body is being relayed
    DISCARDING = "discarding"  # answered by the proxy; the rest of the request body is read and dropped
    TUNNELLING = "tunnelling"  # CONNECT accepted: the connection's TUNNEL state takes over
    DONE = "done"


class Timer(enum.Enum):
    """A timeout, by the ``Config`` field holding its length."""

    IDLE = "idle_timeout"  # close, silently (RFC 9112 section 9.5)
    HEADER = "header_timeout"  # 408 Request Timeout, then close
    READ = "read_timeout"  # a request body: 408 if not yet answered, close; the origin: 504, or cut mid-response
    WRITE = "write_timeout"  # a client reading nothing of what it is owed: abort (what it is owed goes nowhere)
    CONNECT = "connect_timeout"  # a password check, a name to resolve, a connect: 503 or 504, then close
    TUNNEL = "tunnel_idle_timeout"  # a tunnel silent both ways: cut both ends (Squid: read_timeout, 15 min)
    NONE = ""  # no timer in this state


#: The timer of each connection state, and the moment it counts from (Connection._since).
TIMERS: dict[ConnState, Timer] = {
    ConnState.CLOSED: Timer.NONE,
    ConnState.TUNNEL: Timer.TUNNEL,  # from the last byte relayed either way (checked on the tick, not per read)
    ConnState.SENDING: Timer.WRITE,  # from when its write buffer went above the mark
    ConnState.BODY: Timer.READ,  # from the body's last byte
    ConnState.DRAINING: Timer.READ,  # from the refusal, in all: a body trickled a byte at a time cannot hold on
    ConnState.ORIGIN: Timer.READ,  # from the origin's last byte, or the request (or the end of its body)
    ConnState.PREPARING: Timer.CONNECT,  # each step (password check, resolving, connecting) from its own start
    ConnState.HEAD: Timer.HEADER,  # from the head's first byte
    ConnState.IDLE: Timer.IDLE,  # from the end of the last answer (or the accept)
}
