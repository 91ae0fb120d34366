"""The SIP proxy's own responses (RFC 3261 sections 8.2.6, 16.3 and 22.3): a 400 (or the parser's status hint)
to what does not parse, with the fields a response copies taken as they came (section 8.2.6.2); 407 with fresh
challenges; 482, 483, 420, 404, 416; 503 with Retry-After for the sign-in throttle and the per-address limit;
each with a ``Warning`` saying why (section 20.43), a To tag derived from the request, sent where section 18.2.2
and RFC 3581 say, and remembered so a retransmission gets it again. Over UDP, where a source address can be
forged, at most ``answer_rate`` of them go to one address (RFC 3261 sections 26.1.5 and 26.3.2.4: a 407 is
several times the request that asks for it); the rest are dropped, not remembered, and the first drop of a flood
logged. ``Answers`` is a base of
:class:`authproxy.sip.proxy.SipProxy` (``Transactions`` <- ``Routing`` <- ``Answers`` <- ``Forwarding`` <-
``SipProxy``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from authproxy.auth.outcomes import Outcome
from authproxy.auth.roles import PROXY
from authproxy.auth.verifier import Reject, Verifier
from authproxy.engine.buckets import Spend, TokenBuckets
from authproxy.engine.throttle import client_key, retry_after
from authproxy.sip.actions import Action, Send
from authproxy.sip.fields import CONTROL_RE, SipError, canonical_name
from authproxy.sip.log import ANSWERED, DROPPED, Address, SipRecord
from authproxy.sip.message import SipRequest, wire, with_first_value
from authproxy.sip.parse import Limits, parse_datagram
from authproxy.sip.routing import Routing
from authproxy.sip.transactions import TRANSACTION_LIFETIME, Transaction
from authproxy.sip.via import Via

_REASONS = {400: "Bad Request", 404: "Not Found", 413: "Request Entity Too Large", 416: "Unsupported URI Scheme",
            420: "Bad Extension", 482: "Loop Detected", 483: "Too Many Hops", 503: "Service Unavailable",
            505: "Version Not Supported", 513: "Message Too Large"}
_ANSWER_FIELDS = frozenset({"via", "from", "to", "call-id", "cseq"})


def answer_buckets(rate: float, burst: int) -> TokenBuckets | None:
    """The bound on the proxy's own answers over UDP to one address: ``rate`` a second, in bursts of up to
    ``burst``; none when ``rate`` is 0."""
    return TokenBuckets(rate, burst) if rate else None


class Answers(Routing):
    """The responses the proxy makes itself, rather than forwards."""

    # Set by SipProxy; declared here for the type checker.
    verifier: Verifier
    random: Callable[[int], bytes]
    name: str
    limits: Limits
    #: The proxy's own answers over UDP, per source address (its IPv6 /64); None: not bounded.
    answer_rate: TokenBuckets | None

    def malformed(self, data: bytes, error: SipError, source: Address, transport: str,
                  now: float) -> list[Action]:
        """Bytes that do not parse: a 400 (or the parser's status hint) when the fields a response copies can
        be found as they came, else dropped (section 16.3 step 1; never a response to a response or an ACK)."""
        head = data.split(b"\r\n\r\n", 1)[0].lstrip(b"\r\n").split(b"\r\n")
        start = head[0].split(b" ")
        answer = self._bad_request_bytes(head, error) if start[0] not in (b"SIP/2.0", b"ACK") else None
        if answer is None:
            return [SipRecord(now, source, transport, DROPPED, None, None, None, None, Outcome.BAD_REQUEST,
                              reason=f"malformed message: {error.message}")]
        method = start[0].decode("ascii", "replace")
        status = int(answer[8:11])
        over = self._over_answer_rate(source, transport, now, status, method, None, None)
        if over is not None:
            return over
        return [Send(answer, source, transport),
                SipRecord(now, source, transport, ANSWERED, status, method, None, None, Outcome.BAD_REQUEST,
                          reason=error.message)]

    def _bad_request_bytes(self, head: list[bytes], error: SipError) -> bytes | None:
        """The 400 to an unparsable request: the lines of Via, From, To, Call-ID and CSeq copied as they came
        (section 8.2.6.2), when each is there and is clean text; else None."""
        copied: list[bytes] = []
        for line in head[1:]:
            name = line.split(b":", 1)[0].strip(b" \t").decode("ascii", "replace")
            try:
                key = canonical_name(name).lower()
            except SipError:
                continue
            if key in _ANSWER_FIELDS:
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError:
                    return None
                if CONTROL_RE.search(text) is not None or b":" not in line:
                    return None
                copied.append(line)
        found = {canonical_name(line.split(b":", 1)[0].strip(b" \t").decode()).lower() for line in copied}
        if found != _ANSWER_FIELDS:
            return None
        status = error.status_hint if error.status_hint in _REASONS else 400
        warning = f"Warning: {self._warning(error.message)}".encode()
        answer = b"\r\n".join([f"SIP/2.0 {status} {_REASONS[status]}".encode(), *copied, warning,
                               b"Content-Length: 0", b"", b""])
        try:
            parse_datagram(answer, self.limits)
        except SipError:
            return None  # a copied field is itself what is malformed (a Via we could not route back by)
        return answer

    def _challenge(self, request: SipRequest, result: Reject, source: Address, transport: str, now: float,
                   record: tuple[tuple[str, ...], bytes] | None) -> list[Action]:
        # The verifier's own challenge values, one fresh nonce (as challenge.offers_for gives them, without
        # parsing them back into offers only to build them again): Digest only, which SipProxy checked.
        field = PROXY.challenge_field
        headers = [(field, value) for value in self.verifier.challenges(now, self.random(16), result.stale)]
        headers.append(("Warning", self._warning(result.outcome.client_text(PROXY))))
        wire_form = self._response_bytes(request, source, PROXY.status, PROXY.reason, headers)
        return self._sent(request, wire_form, source, transport, now, result.outcome, result.user, record)

    def _locked_out(self, request: SipRequest, source: Address, transport: str, now: float,
                    record: tuple[tuple[str, ...], bytes] | None, user: str | None, wait: float,
                    why: str) -> list[Action]:
        """The sign-in throttle's refusal: HTTP's 429 has no SIP equivalent (SIP's 429 is Provide Referrer
        Identity, RFC 3892), so 503 with Retry-After (section 21.5.4), as kamailio's ratelimit module answers: a
        client does not send to this server again for that long, and may fail over to another."""
        seconds = retry_after(wait)
        return self._answer(request, source, transport, now, 503, Outcome.THROTTLED, record,
                            f"{why}; try again in {seconds} s", [("Retry-After", seconds)], user=user)

    def _answer(self, request: SipRequest, source: Address, transport: str, now: float, status: int,
                outcome: Outcome, record: tuple[tuple[str, ...], bytes] | None, why: str,
                extra: Sequence[tuple[str, str]] = (), *, remember: bool = True,
                user: str | None = None) -> list[Action]:
        if request.method == "ACK":  # section 17: an ACK is never answered
            return [SipRecord(now, source, transport, DROPPED, None, request.method, request.uri, None, outcome,
                              call_id=request.call_id, reason=why)]
        headers = [*extra, ("Warning", self._warning(why))]
        wire_form = self._response_bytes(request, source, status, _REASONS[status], headers)
        return self._sent(request, wire_form, source, transport, now, outcome, user, record if remember else None)

    def _response_bytes(self, request: SipRequest, source: Address, status: int, reason: str,
                        headers: list[tuple[str, str]]) -> bytes:
        """This proxy's response to ``request`` on the wire, as :func:`authproxy.sip.message.response_to` makes
        it for the request with its top Via stamped (received, rport: section 18.2.1, RFC 3581): every Via,
        From, To with this proxy's tag (section 8.2.6.2), Call-ID and CSeq copied, then ``headers`` and
        Content-Length. Straight to bytes: the copied fields were checked when the request was parsed, the rest
        are this proxy's (a test holds the two ways to the same bytes)."""
        vias = request.get_all("Via")
        vias[0] = with_first_value(vias[0], str(request.vias[0].with_received(source[0], source[1])))
        to = request.get_all("To")[0]
        fields = [*[("Via", value) for value in vias], ("From", request.get_all("From")[0]),
                  ("To", to if request.to.tag is not None else f"{to};tag={self._to_tag(request)}"),
                  ("Call-ID", request.get_all("Call-ID")[0]), ("CSeq", request.get_all("CSeq")[0]), *headers,
                  ("Content-Length", "0")]
        return wire(f"SIP/2.0 {status} {reason}", fields)

    def _sent(self, request: SipRequest, wire: bytes, source: Address, transport: str, now: float,
              outcome: Outcome, user: str | None, record: tuple[tuple[str, ...], bytes] | None) -> list[Action]:
        status = int(wire[8:11])
        over = self._over_answer_rate(source, transport, now, status, request.method, request.uri, request.call_id)
        if over is not None:
            return over  # not remembered either: a retransmission, once the rate allows, is answered afresh
        if record is not None:
            self._remember(record, Transaction(record[1], source, transport, now + TRANSACTION_LIFETIME, wire,
                                                None))
        return [Send(wire, self._reply_to(request.vias[0], source, transport), transport),
                SipRecord(now, source, transport, ANSWERED, status, request.method, request.uri, user, outcome,
                          call_id=request.call_id)]

    def _over_answer_rate(self, source: Address, transport: str, now: float, status: int, method: str | None,
                          uri: str | None, call_id: str | None) -> list[Action] | None:
        """None when an answer of this proxy's may go to ``source`` now; else what to do instead: nothing, or, the
        first drop of a flood, one log line. Over UDP only: a stream's peer has shown its address."""
        buckets = self.answer_rate
        if buckets is None or transport != "udp":
            return None
        spend = buckets.take(client_key(source[0]), now)
        if spend is Spend.OK:
            return None
        if spend is Spend.STILL_OVER:
            return []
        return [SipRecord(now, source, transport, DROPPED, status, method, uri, None, Outcome.OVER_LIMIT,
                          call_id=call_id, reason=f"over {buckets.rate:g} answers a second (burst {buckets.burst}) "
                          "to this address: answers dropped until it slows")]

    def _warning(self, text: str) -> str:
        """A Warning value (section 20.43: 399, miscellaneous), the text kept a plain quoted-string."""
        return f'399 {self.name} "{text.replace(chr(92), "/").replace(chr(34), chr(39))}"'

    def _to_tag(self, request: SipRequest) -> str:
        # Derived, not random: a stateless server answers every copy of a request with the same To tag.
        return self._mac(f"{request.call_id}\0{request.from_.tag or ''}", 8)

    @staticmethod
    def _reply_to(top: Via, source: Address, transport: str) -> Address:
        """Where this proxy's own response goes (section 18.2.2, RFC 3581 section 4): over a stream, back on
        the connection; over UDP, to the source address, at the source port when rport was asked for, else
        at the sent-by port (5060 by default)."""
        if transport != "udp" or top.wants_rport:
            return source
        return (source[0], top.port or 5060)
