"""Reading requests: the httptools callbacks of a client connection, and parsing its input in slices.

``RequestReader`` is a base of ``Connection``. llhttp parses; this checks what llhttp leaves to us (RFC 9112
section 3 and 6 via ``forward.check_request_head``; the head's size and field count; a chunked body's framing
and trailers, which are dropped, RFC 9110 section 6.5.1) and makes an ``Exchange`` per request head.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, NoReturn

import httptools

from authproxy.auth.errors import ProtocolError
from authproxy.engine import forward
from authproxy.engine.exchange import Exchange

if TYPE_CHECKING:
    from authproxy.engine.commands import ProxyState

#: A read larger than this is parsed in slices of this size, so that parsing can stop in between (one read can
#: hold thousands of pipelined requests). llhttp accepts its input split anywhere.
SLICE = 16384


class RequestReader:
    """The parsing half of a client connection."""

    # The parsing state (a Connection is one per client: no __dict__ each).
    __slots__ = (
        "active",
        "body_seen",
        "closing_after",
        "connect_head",
        "framing_gap",
        "head_bytes",
        "head_new",
        "head_started",
        "header_size",
        "headers",
        "in_head",
        "last_activity",
        "last_request",
        "parser",
        "pending",
        "pending_at",
        "ready",
        "receiving",
        "stopping",
        "trailer_count",
        "url",
    )

    # Set by Connection; declared here for the type checker.
    shared: ProxyState
    parser: httptools.HttpRequestParser
    closed: bool
    draining: bool
    paused: set[str]
    in_head: bool
    head_started: float
    head_bytes: int
    head_new: bool
    url: bytes
    headers: list[tuple[bytes, bytes]]
    header_size: int
    trailer_count: int
    active: Exchange | None
    receiving: Exchange | None
    ready: Exchange | None
    queue: collections.deque[Exchange]
    stopping: bool
    pending: bytes
    pending_at: int
    last_request: bool
    closing_after: bool
    connect_head: bool
    body_seen: bool
    framing_gap: int

    def _refuse_head(self, status: int, detail: str) -> None:
        raise NotImplementedError

    def _parse_slice(self) -> None:
        """Parse the next slice of held input. A request head found in it starts its exchange only once the
        whole slice is parsed, so a body that is malformed within it is refused before anything is forwarded."""
        data, at = self.pending, self.pending_at
        chunk: bytes | memoryview
        if at == 0 and len(data) <= SLICE:
            chunk, self.pending = data, b""
        else:
            end = at + SLICE
            chunk = memoryview(data)[at:end]
            if end >= len(data):
                self.pending, self.pending_at = b"", 0
            else:
                self.pending_at = end
        self.stopping = False
        self.head_new = False
        try:
            self.parser.feed_data(chunk)
        except httptools.HttpParserUpgrade as exc:
            # A CONNECT head ended at this offset: what follows is tunnel data if the CONNECT is accepted, the
            # next request if it is refused. Hold it until the CONNECT is decided (expect_tunnel, exchange_done).
            # (llhttp stops the same way after a request with Upgrade; this proxy upgrades nothing, so what
            # follows that one is simply the next request.)
            rest = bytes(chunk[exc.args[0]:])
            self.parser = httptools.HttpRequestParser(self)
            if rest:
                self.pending, self.pending_at = rest + self.pending[self.pending_at:], 0
            if self.connect_head:
                self.paused.add("upgrade")
        except httptools.HttpParserCallbackError:
            if not self.stopping:  # not our own stop: a bug in a callback, which must stay visible
                raise
        except httptools.HttpParserError as exc:
            if not self.last_request:  # else: bytes after the last request, which llhttp will not parse
                self._refuse_head(400, f"the request is not valid HTTP/1.1: {exc}")
        else:
            if self.in_head or self.receiving is not None:
                self._check_unfinished(len(chunk))
        ready, self.ready = self.ready, None
        if ready is not None and not self.closed:
            ready.begin()

    def _check_unfinished(self, fed: int) -> None:
        """Bound what httptools accumulates for a field not finished yet (it buffers a partial name or value).

        A head still open after this slice: if it began before the slice, all of the slice was head; if it
        began inside, count what is known of it (the body of the request before it is not head). A chunked
        body: bytes without a single body byte are chunk lines or its trailer section.
        """
        config = self.shared.config
        if self.in_head:
            self.head_bytes = self.header_size if self.head_new else self.head_bytes + fed
            if self.head_bytes > config.max_header_size:
                self._refuse_head(431, "the request head is larger than this proxy accepts")
            return
        receiving = self.receiving
        if receiving is not None and receiving.chunked:
            if receiving.forwarding and receiving.body_buffer:
                receiving.flush_body()  # this slice's chunks, as one
            self.framing_gap = 0 if self.body_seen else self.framing_gap + fed
            self.body_seen = False
            if self.framing_gap > config.max_header_size:
                self._refuse_head(431, "the request's chunk framing or trailer section is larger than this "
                                       "proxy accepts")

    # == httptools callbacks ==================================================================================
    def on_message_begin(self) -> None:
        self.in_head = True
        self.head_new = True
        self.head_started = self.shared.monotonic()
        self.head_bytes = 0
        self.url = b""
        self.headers = []
        self.header_size = 0
        self.trailer_count = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.header_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        size = self.header_size = self.header_size + len(name) + len(value) + 4
        headers = self.headers
        if self.in_head:
            # llhttp leaves trailing whitespace on values; RFC 9110 section 5.5 says it is not part of the value.
            headers.append((name, value.rstrip(b" \t")))
            count = len(headers)
        else:
            # httptools reports a chunked body's trailer fields here too. RFC 9110 section 6.5.1: a trailer is
            # not to be merged into the head nor used to authenticate or route, so it is dropped (the origin
            # gets "0 CRLF CRLF"). It still counts against the head's limits: a trailer section is bounded.
            self.trailer_count += 1
            count = len(headers) + self.trailer_count
        config = self.shared.config
        if size > config.max_header_size or count > config.max_header_count:
            self._over_head_limit(size > config.max_header_size)

    def _over_head_limit(self, too_large: bool) -> NoReturn:
        """431 for a head over max_header_size (checked first) or max_header_count, and stop parsing."""
        if too_large:
            self._refuse_head(431, "the request head is larger than this proxy accepts")
        else:
            self._refuse_head(431, f"the request has more than {self.shared.config.max_header_count} header fields")
        self.stopping = True
        raise _Stop

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        method = parser.get_method()
        version = parser.get_http_version()
        try:
            framing = forward.check_request_head(method, version, self.headers)
        except ProtocolError as exc:
            # Framing we cannot trust means we cannot find the next request either: answer and close.
            self._refuse_head(exc.status_hint, exc.message)
            self.stopping = True
            raise _Stop from None
        if (framing.content_length or framing.chunked) and method != b"CONNECT" and parser.should_upgrade():
            # llhttp ends a request asking for an upgrade at its head, its body unread (what follows would be the
            # new protocol's): forwarded, the origin would wait for a body that never comes, or take the next
            # request on a pooled connection for it (smuggling). This proxy upgrades nothing: refuse, and close.
            self._refuse_head(400, "a request asking to upgrade the protocol (Upgrade) cannot carry a body through "
                                   "this proxy")
            self.stopping = True
            raise _Stop
        if self.closed:  # an exchange closed the connection from a callback of this slice
            self.stopping = True
            raise _Stop
        keep_alive = parser.should_keep_alive() and not self.draining
        # self is always the Connection built on this class (typing.cast would be one more call per request).
        ex = Exchange(self, method, self.url, version, self.headers, keep_alive,  # type: ignore[arg-type]
                      framing.content_length, framing.chunked)
        # Connection: close, or HTTP/1.0 without keep-alive: the last request (RFC 9112 section 9.6); bytes after
        # a CONNECT head belong to its tunnel instead.
        self.connect_head = method == b"CONNECT"
        self.closing_after = not keep_alive and not self.connect_head
        if ex.body_complete:
            self.receiving = None
        else:
            self.receiving = ex
            self.last_activity = self.shared.monotonic()  # the body's time runs from its head
        self.framing_gap = 0
        if self.active is None:
            self.active = ex
            self.ready = ex  # begun once this slice is parsed
        else:
            self.queue.append(ex)  # parsing stops after this slice (_run)

    def on_body(self, body: bytes) -> None:
        # A body byte: read_timeout runs from here (chunk sizes, extensions and trailers do not restart it).
        self.last_activity = self.shared.monotonic()
        self.body_seen = True
        if self.receiving is not None:
            self.receiving.request_body(body)

    def on_message_complete(self) -> None:
        ex, self.receiving = self.receiving, None
        if ex is not None:
            ex.request_complete()
        if self.closing_after:
            # The last request on this connection: it is answered in full, then we close; what the client sent
            # after it is never parsed (Squid does the same). llhttp refuses any byte after it in this slice
            # (HPE_CLOSED_CONNECTION, ignored above): no exception is raised here for the usual close.
            self.last_request = True
            self.pending, self.pending_at = b"", 0


class _Stop(Exception):
    """Raised out of a parser callback to stop parsing a connection we are closing."""
