"""One access-log line per SIP transaction: who sent it, what it was, what the proxy did, the user and the auth
outcome (:class:`authproxy.auth.outcomes.Outcome`, the same words as the HTTP proxy's log).

A credential never reaches this module: the proxy passes a user *name* and an outcome. Every text field goes
through the HTTP log's escaping (:func:`authproxy.observe.accesslog.escape`), so a From, a Request-URI or a
Call-ID cannot forge or disguise a line, and :func:`parse_sip_line` reads a line back exactly.

The Squid-like line is::

    time client transport action/status method request-uri user next-hop call-id auth=outcome

``action`` is ``ANSWERED`` (the proxy answered itself: 407, 400, 483...), ``FORWARDED`` (sent to the next hop;
the status is ``-``, a stateless proxy does not wait for the answer) or ``DROPPED`` (nothing could be
answered: a malformed response from the next hop, an unanswerable request; the call-id field then holds the
reason).
"""

from __future__ import annotations

import json
from typing import NamedTuple

from authproxy.auth.outcomes import Outcome
from authproxy.observe.accesslog import NONE, escape, unescape

Address = tuple[str, int]

ANSWERED = "ANSWERED"
FORWARDED = "FORWARDED"
DROPPED = "DROPPED"


def format_address(address: Address | None) -> str | None:
    if address is None:
        return None
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class SipRecord(NamedTuple):
    """One transaction as the proxy decided it (a retransmission is the same transaction: no second line).
    Immutable; a named tuple since one is made per transaction (a slotted frozen dataclass of twelve fields
    costs seven times as much to build)."""

    started: float
    client: Address
    transport: str
    action: str
    status: int | None
    method: str | None
    uri: str | None
    user: str | None
    outcome: Outcome
    peer: Address | None = None
    call_id: str | None = None
    reason: str | None = None  # why a message was dropped (our own words, never the peer's bytes)


def format_sip_squid(record: SipRecord) -> str:
    status = NONE if record.status is None else f"{record.status:03d}"
    tail = record.reason if record.action == DROPPED else record.call_id
    return (f"{record.started:.3f} {format_address(record.client)} {record.transport} {record.action}/{status} "
            f"{escape(record.method)} {escape(record.uri)} {escape(record.user)} "
            f"{escape(format_address(record.peer))} {escape(tail)} auth={record.outcome}")


def format_sip_json(record: SipRecord) -> str:
    return json.dumps({
        "time": round(record.started, 3), "client": format_address(record.client), "transport": record.transport,
        "action": record.action, "status": record.status, "method": record.method, "uri": record.uri,
        "user": record.user, "peer": format_address(record.peer), "call_id": record.call_id,
        "reason": record.reason, "auth": record.outcome, "auth_failed": record.outcome.failed,
    }, ensure_ascii=True, separators=(",", ":"))


class SipLine(NamedTuple):
    """The fields of one Squid-like SIP line, unescaped."""

    client: str
    transport: str
    action: str
    status: int | None
    method: str | None
    uri: str | None
    user: str | None
    peer: str | None
    call_id_or_reason: str | None
    outcome: str


def parse_sip_line(line: str) -> SipLine:
    """Read back a line :func:`format_sip_squid` wrote."""
    _time, client, transport, action, method, uri, user, peer, tail, auth = line.split()
    what, _, status = action.partition("/")
    return SipLine(client, transport, what, None if status == NONE else int(status), unescape(method),
                   unescape(uri), unescape(user), unescape(peer), unescape(tail), auth.removeprefix("auth="))
