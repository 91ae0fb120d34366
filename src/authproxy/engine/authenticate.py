"""The authentication half of an exchange: run the verifier on the request, answer 407 or 429, or go on.

``Authentication`` is a base of ``Exchange`` (the class is split by concern over three modules, a chain of
bases: ``Relay`` <- ``Authentication`` <- ``Exchange``). Every request is verified on its own (RFC 9110 section
11.7.1: Proxy-Authorization applies to one request; RFC 7617, RFC 7616). A verifier that needs a slow password
check or the request body (qop=auth-int) suspends; the exchange asks its driver (``ClientSink.check_password``)
or waits for the body, and resumes with the answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from authproxy.auth.errors import AuthProxyError, ProtocolError
from authproxy.auth.outcomes import Outcome
from authproxy.auth.verifier import Allow, Reject
from authproxy.engine import forward
from authproxy.engine.authn import PendingBody, PendingPassword, Step
from authproxy.engine.relay import Relay
from authproxy.engine.throttle import client_key, retry_after

if TYPE_CHECKING:
    from authproxy.engine.connection import Connection

_OK = Outcome.OK  # read once: through the Enum class it costs a __getattr__ call (Python 3.11)


class Authentication(Relay):
    """Who sent the request, and whether they may: the exchange's authentication steps."""

    __slots__ = ("auth_info", "connect_dest", "dest", "outcome", "pending_body", "user")

    user: str | None
    outcome: Outcome
    auth_info: str | None
    pending_body: PendingBody | None
    dest: forward.Target | None
    connect_dest: tuple[str, int]
    # Set by Exchange; declared here for the type checker.
    conn: Connection
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    content_length: int | None
    body_buffer: list[bytes | bytearray]
    buffered: int

    @property
    def target_text(self) -> str:
        return self.target.decode("latin-1")

    # == start: authenticate ==================================================================================
    def begin(self) -> None:
        if self.done:  # refused while its head's slice was still being parsed (a malformed body, a limit)
            return
        shared = self.conn.shared
        limit = shared.config.max_body_size
        if limit and (self.content_length or 0) > limit:
            self.outcome = Outcome.BAD_REQUEST
            self.refuse(413, f"the request body is larger than this proxy accepts ({limit} bytes)",
                        error="http_request_denied", close=True)
            return
        throttle = shared.throttle
        if throttle is not None:
            wait = throttle.check(self.conn.client, None, shared.monotonic())
            if wait is not None:
                self._locked_out(wait, "too many failed sign-ins from your address")
                return
        try:
            if self.method == b"CONNECT":
                self.connect_dest = forward.parse_authority(self.target)
            else:
                self.dest = forward.parse_absolute_target(self.target)
            authorization = self._proxy_authorization()
            step = shared.auth.start(self.method.decode("ascii"), self.target_text, authorization,
                                     self.conn.connection_auth() if shared.auth.connection_bound else None)
        except AuthProxyError as exc:
            self.outcome = Outcome.BAD_REQUEST
            self.refuse(exc.status_hint, exc.message, error="http_request_error", close=True)
            return
        self.on_auth_step(step)

    def _proxy_authorization(self) -> str | None:
        values = [v for n, v in self.headers if len(n) == 19 and n.lower() == b"proxy-authorization"]
        if not values:
            return None
        if len(values) > 1:
            raise ProtocolError("more than one Proxy-Authorization field")
        try:
            return values[0].decode("utf-8")
        except UnicodeDecodeError:
            return values[0].decode("latin-1")

    def on_auth_step(self, step: Step) -> None:
        if self.done:
            return
        if isinstance(step, Allow | Reject) and self._throttled(step):
            return
        if isinstance(step, Allow):
            self.user, self.outcome, self.auth_info = step.user, _OK, step.auth_info
            self.route()
        elif isinstance(step, Reject):
            self.user, self.outcome = step.user, step.outcome
            self.challenge(step.stale, step.challenge)
        elif isinstance(step, PendingBody):
            self.pending_body = step
            conn = self.conn
            conn.prep_at = conn.shared.monotonic()  # the body's time to arrive, in all, from here
            step.key = client_key(conn.client)
            limit = conn.shared.config.auth_int_max_body
            if self.buffered > limit or (self.content_length or 0) > limit:
                self.outcome = Outcome.BAD_REQUEST
                self.refuse(413, f"a request authenticated with qop=auth-int may carry at most {limit} bytes",
                            error="http_request_denied", close=True)
            elif not self.hold_body(self.buffered):
                return
            elif self.body_complete:
                self._resume_body()
            else:
                conn.resume_reading("body")  # the whole body is needed (auth_int_max_body bounds it)
        elif isinstance(step, PendingPassword):
            self.conn.pause_reading("auth")
            self.conn.sink.check_password(self, step)

    def _throttled(self, step: Allow | Reject) -> bool:
        """Credential guessing (throttle per address and per user name). True if answered 429 here.

        A request with no credentials is the normal start of the 407 exchange and never counts.
        """
        shared = self.conn.shared
        throttle = shared.throttle
        if throttle is None or step.user is None:
            return False
        now = shared.monotonic()
        wait = throttle.check(self.conn.client, step.user, now)
        if wait is not None:
            # Locked: the answer must not depend on whether these credentials were right.
            self.user = step.user
            self._locked_out(wait, "too many failed sign-ins for this user name")
            return True
        if isinstance(step, Allow):
            throttle.record_success(self.conn.client, step.user, now)
        elif step.outcome.failed:
            throttle.record_failure(self.conn.client, step.user, now)
        return False

    def _locked_out(self, wait: float, why: str) -> None:
        self.outcome = Outcome.THROTTLED
        self.refuse(429, f"{why}; try again in {retry_after(wait)} s", error="http_request_denied",
                    extra=[("Retry-After", retry_after(wait))])

    def password_checked(self, pending: PendingPassword, ok: bool) -> None:
        """Event: the slow password check (``ClientSink.check_password``) has its answer."""
        self.conn.resume_reading("auth")
        if self.done or self.conn.closed:
            return
        try:
            self.on_auth_step(self.conn.shared.auth.resume_password(pending, ok))
        except AuthProxyError as exc:
            self._malformed(exc)

    def hold_body(self, size: int) -> bool:
        """Count ``size`` more body bytes held before authentication (engine.budget); past the proxy's room,
        answer 503 and close, and False."""
        pending = self.pending_body
        assert pending is not None
        if self.conn.shared.held_bodies.take(pending.key, size):
            pending.held += size
            return True
        self.refuse(503, "this proxy holds as many request bodies awaiting authentication (qop=auth-int) as it "
                    "can; retry shortly", close=True, extra=[("Retry-After", "1")])
        return False

    def release_body(self) -> None:
        """The held body is no longer counted (authenticated, refused, or its client gone)."""
        pending = self.pending_body
        if pending is not None and pending.held:
            self.conn.shared.held_bodies.give(pending.key, pending.held)
            pending.held = 0

    def _resume_body(self) -> None:
        self.release_body()
        pending, self.pending_body = self.pending_body, None
        assert pending is not None
        body = b"".join(self.body_buffer)
        try:
            self.on_auth_step(self.conn.shared.auth.resume_body(pending, body))
        except AuthProxyError as exc:
            self._malformed(exc)

    def _malformed(self, exc: AuthProxyError) -> None:
        self.outcome = Outcome.BAD_REQUEST
        self.refuse(exc.status_hint, exc.message, error="http_request_error", close=True)

    def challenge(self, stale: bool, leg: str | None = None) -> None:
        """407 with a fresh challenge (RFC 9110 section 15.5.8: at least one Proxy-Authenticate), or, mid-way
        through a connection-bound scheme's handshake (NTLM, Negotiate: RFC 4559 section 4), that scheme's next
        leg alone, on a connection kept open (the handshake lives on it)."""
        auth = self.conn.shared.auth
        detail = f"{self.outcome.client_text(auth.role)} (realm {auth.realm!r})"
        fields = auth.challenge_fields(stale) if leg is None else [(auth.role.challenge_field, leg)]
        self.refuse(407, detail, extra=fields)
