"""The engine's side of a connection to an origin: parse its responses and hand them to the exchange served.

The driver owns the socket (``authproxy.proxy.upstream``) and feeds this object what it reads; this object
parses with httptools and calls its current owner (an Exchange). Between exchanges the connection sits idle in
the driver's pool with no owner; if the origin speaks or closes while idle, it is dropped (RFC 9112 section 9.3:
an idle connection may be closed at any time by either side).

Memory an origin can make it hold is bounded: a head's bytes are counted as they arrive, in ``data_received``
for a head that spans reads (httptools gathers a field whole before it calls ``on_header``, so a field without
end is only seen there) and in ``on_status``/``on_header`` for one that arrives in a single read. Time is bounded
too: the read timeout restarts on every byte, so a head trickled one byte a second would hold the exchange
forever; a head must end within ``HeadLimits.timeout`` of its first byte (504). The timer (``OriginSink.
start_timer``) is armed only when a head spans reads. A body may trickle: the client sees every byte of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn, Protocol

import httptools

if TYPE_CHECKING:
    from authproxy.engine.commands import OriginSink


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """What an origin's response head may cost: the request head's limits, applied to responses.

    ``max_size`` bounds the whole head (status line and fields, and any interim 1xx heads before it), and so
    any one line of it: past it, the 502 says ``http_response_header_size`` when one line holds more than half
    the head, ``http_response_header_section_size`` otherwise (RFC 9209 section 2.3). ``max_fields`` bounds the
    number of fields; ``timeout`` the seconds from the head's first byte to its end. The same byte bound
    covers what a chunked body carries between two chunks of data (chunk extensions, the trailer section),
    which llhttp and httptools would otherwise take without end.
    """

    max_size: int = 65536
    max_fields: int = 100
    timeout: float = 30.0


class LimitsSource(Protocol):
    """Where an Origin reads its limits at the start of each response (the pool; a reload changes them)."""

    limits: HeadLimits


class ResponseOwner(Protocol):
    """What an Origin reports to (the exchange it serves)."""

    def upstream_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                      keep_alive: bool) -> None: ...

    def upstream_body(self, data: bytes) -> None: ...

    def upstream_complete(self) -> None: ...

    def upstream_flush(self) -> None: ...

    def upstream_lost(self) -> None: ...

    def upstream_error(self, message: str, *, status: int = 502, error: str = "http_protocol_error") -> None: ...

    def upstream_pause_writing(self) -> None: ...

    def upstream_resume_writing(self) -> None: ...


class Origin:
    """One connection to an origin, reused across requests while the origin keeps it open."""

    __slots__ = (
        "_body_bytes", "_head_bytes", "_head_only", "_head_size", "_headers", "_in_head", "_limits", "_line",
        "_max_fields", "_max_head", "_reason", "_stall", "_timer", "clock", "closed", "io", "key",
        "last_activity", "owner", "parser", "received_any",
    )

    def __init__(self, key: tuple[str, int], io: OriginSink, clock: Callable[[], float],
                 limits: LimitsSource) -> None:
        self.key = key
        self.io = io
        self.clock = clock
        self._limits = limits
        self.owner: ResponseOwner | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._head_only = False
        self.closed = False
        self.received_any = False
        self.last_activity = clock()
        self._in_head = False
        self._head_bytes = 0  # bytes received while a head was incomplete (may include a body's first bytes)
        self._head_size = 0  # bytes of the status lines and fields parsed so far
        self._line = 0  # length of the head's last, unfinished line (only tracked when a head spans reads)
        self._timer = False  # the head timer is armed
        self._body_bytes = 0
        self._stall = 0  # bytes since the last body byte: chunk framing, extensions, trailers
        self._max_head = limits.limits.max_size
        self._max_fields = limits.limits.max_fields

    @property
    def where(self) -> str:
        host, port = self.key
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    # == events from the driver ===============================================================================
    def data_received(self, data: bytes) -> None:
        self.last_activity = self.clock()
        self.received_any = True
        owner, parser = self.owner, self.parser
        if owner is None or parser is None:
            # An idle origin sent something unasked: the connection is no longer in a known state.
            self.close()
            return
        in_head = self._in_head
        if in_head:
            self._head_bytes += len(data)
        body_before = self._body_bytes
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # 101 Switching Protocols: upstream_head has already refused it (we never ask for an upgrade).
            self._fail("the origin switched protocols, which this proxy does not relay")
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Stop):
                self._fail(f"the origin {self.where} sent a response that could not be relayed ({exc})")
        except httptools.HttpParserError as exc:
            self._fail(f"the origin {self.where} sent a malformed response ({exc})")
        else:
            if in_head:
                if self._in_head:
                    self._head_continues(data)
            elif self._body_bytes == body_before and self.owner is not None:
                # Nothing of the body in this read: chunk sizes, extensions or trailers, which llhttp skips or
                # httptools gathers without a bound of their own.
                self._stall += len(data)
                if self._stall > self._max_head:
                    self._fail(f"the origin {self.where} sent more than {self._max_head} bytes of chunk "
                               "extensions or trailer fields", error="http_response_header_section_size")
            else:
                self._stall = 0
        owner.upstream_flush()

    def _head_continues(self, data: bytes) -> None:
        """A read ended inside a response head: bound the line in progress, the head, and its duration."""
        newline = data.rfind(b"\n")
        self._line = self._line + len(data) if newline < 0 else len(data) - newline - 1
        limit = self._max_head
        if self._head_bytes > limit:
            if self._line > limit // 2:
                # One line holds most of the head: name it. httptools hands the reason phrase over piece by
                # piece and a field only when whole, so a reason as long as the line means the status line.
                what = "its status line" if len(self._reason) + 32 >= self._line else "a header field"
                self._fail(f"the origin {self.where} sent a response head larger than {limit} bytes, most of it "
                           f"{what}", error="http_response_header_size")
            else:
                self._fail(f"the origin {self.where} sent a response head larger than {limit} bytes",
                           error="http_response_header_section_size")
        elif not self._timer:
            self._timer = True
            self.io.start_timer(self._limits.limits.timeout)

    def timer_fired(self) -> None:
        """Event: the head timer (``OriginSink.start_timer``) ran out."""
        self._timer = False
        if self._in_head and self.owner is not None:
            timeout = self._limits.limits.timeout
            self._fail(f"the origin {self.where} did not finish its response head within {timeout:g} s",
                       status=504, error="http_response_timeout")

    def connection_lost(self) -> None:
        self.closed = True
        self._stop_timer()
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.upstream_lost()

    def writing_paused(self) -> None:
        if self.owner is not None:
            self.owner.upstream_pause_writing()

    def writing_resumed(self) -> None:
        if self.owner is not None:
            self.owner.upstream_resume_writing()

    # == httptools callbacks ==================================================================================
    def on_message_begin(self) -> None:
        if self.owner is None:
            # A message after the one asked for ended, in the same read: nobody asked for it (we never
            # pipeline to origins). The connection was released to the pool as reusable: close it, or the next
            # request on it (anyone's) would meet this response, or a parser stopped in error (a 502).
            self.close()
            raise _Stop
        self._headers = []
        self._reason = b""

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            headers = self._headers
            headers.append((name, value.strip(b" \t")))
            if len(headers) > self._max_fields:  # checked per field: small fields cost more held than read
                self._refuse_head(f"with more than {self._max_fields} header fields",
                                  "http_response_header_section_size")
        # Otherwise a trailer field (httptools reports them with the same callback): never merged into the head
        # relayed already (RFC 9110 section 6.5.1), and not passed on, since the proxy re-chunks the body and
        # may do so for a client that did not ask for trailers (RFC 9110 section 6.5.2).

    def on_headers_complete(self) -> None:
        parser, owner = self.parser, self.owner
        assert parser is not None and owner is not None
        status = parser.get_status_code()
        if status < 200 or self._head_bytes > self._max_head:
            # The reads so far held more than a head may: measure the head itself (rare; a head that arrives
            # within the limit, body and all, is never measured). Interim heads always are: they add up.
            self._measure_head(status)
        if status >= 200:  # a 1xx is followed by another head, within the same limits (RFC 9110 section 15.2)
            self._in_head = False
            if self._timer:
                self._stop_timer()
        owner.upstream_head(status, self._reason, self._headers, parser.should_keep_alive())
        if self._head_only and status >= 200 and self.owner is not None:
            # A response to HEAD has no body whatever its Content-Length says (RFC 9110 section 9.3.2);
            # httptools cannot be told so, so the message ends here and the parser is dropped.
            owner = self.owner
            self.parser = None
            owner.upstream_complete()
            raise _HeadDone

    def _measure_head(self, status: int) -> None:
        """The head just parsed, with any interim heads before it, against the limit; refused past it."""
        limit = self._max_head
        reason, headers = self._reason, self._headers
        size = self._head_size + len(reason) + 15 + sum(len(n) + len(v) + 4 for n, v in headers) + 2
        if size > limit:
            name, value = max(headers, key=lambda f: len(f[0]) + len(f[1]), default=(b"", b""))
            if len(reason) > limit // 2:  # one line holds most of the head: name it
                self._refuse_head(f"with a status line of {len(reason)} bytes, past the head's limit of {limit}",
                                  "http_response_header_size")
            if len(name) + len(value) > limit // 2:
                self._refuse_head(f"with a header field ({name[:64].decode('latin-1')}) of {len(name) + len(value)} "
                                  f"bytes, past the head's limit of {limit}", "http_response_header_size")
            self._refuse_head(f"larger than {limit} bytes", "http_response_header_section_size")
        if status < 200:
            self._head_size = size

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self.owner is not None:
            self.owner.upstream_body(body)

    def on_message_complete(self) -> None:
        if self.owner is not None and self.parser is not None and self.parser.get_status_code() >= 200:
            self.owner.upstream_complete()

    def _refuse_head(self, what: str, error: str) -> NoReturn:
        self._fail(f"the origin {self.where} sent a response head {what}", error=error)
        raise _Stop

    # == commands from the exchange ===========================================================================
    def start(self, owner: ResponseOwner, head_only: bool) -> None:
        """Serve ``owner``: the next response on this connection is theirs."""
        self.owner = owner
        self._head_only = head_only
        self.received_any = False
        self._in_head = True
        self._head_bytes = self._head_size = self._line = self._stall = 0
        limits = self._limits.limits
        self._max_head, self._max_fields = limits.max_size, limits.max_fields
        if self.parser is None:  # llhttp resets itself after each complete message; reuse it
            self.parser = httptools.HttpResponseParser(self)
            # RFC 9112 section 6.3 rule 3: Transfer-Encoding overrides Content-Length. llhttp refuses the
            # pair unless told to take it; the exchange then drops the length and closes this connection after.
            self.parser.set_dangerous_leniencies(lenient_chunked_length=True)

    def http_version(self) -> str:
        """The HTTP version of the response being read ("1.1", "1.0")."""
        return self.parser.get_http_version() if self.parser is not None else "1.1"

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.io.write(data)

    def release(self, reusable: bool) -> None:
        """The exchange is done with this connection: back to the pool, or closed."""
        self.owner = None
        if reusable and not self.closed:
            self.io.release(True)
        else:
            self.close()

    def close(self) -> None:
        self.owner = None
        self._stop_timer()
        if not self.closed:
            self.closed = True
            self.io.close()

    def abort(self) -> None:
        self.owner = None
        self._stop_timer()
        self.closed = True
        self.io.abort()

    def pause_reading(self) -> None:
        if not self.closed:
            self.io.pause_reading()

    def resume_reading(self) -> None:
        if not self.closed:
            self.io.resume_reading()

    def _stop_timer(self) -> None:
        if self._timer:
            self._timer = False
            self.io.stop_timer()

    def _fail(self, message: str, *, status: int = 502, error: str = "http_protocol_error") -> None:
        """The origin broke the protocol or a limit: it is cut (never pooled) and the exchange told why."""
        owner, self.owner = self.owner, None
        self.abort()
        if owner is not None:
            owner.upstream_error(message, status=status, error=error)


class _Stop(Exception):
    """Raised out of a parser callback to stop parsing this connection's input."""


class _HeadDone(_Stop):
    """Raised out of the parser to stop reading a response to HEAD at the end of its head."""
