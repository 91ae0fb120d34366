"""What goes in and out of a responder flow (:mod:`authproxy.auth.responder`): the request as authentication
sees it, the peer's answer, and the one step a flow asks for (send, with these credentials).

The values are the same for the HTTP client (a proxy's 407, an origin's 401) and for SIP (every hop's 407 and
the registrar's 401): the transport around them builds and reads the real messages.
"""

from __future__ import annotations

from dataclasses import dataclass

from authproxy.auth.roles import PROXY, Role


@dataclass(frozen=True)
class ProxyRequest:
    """One request to the peer (the proxy, or an origin in the origin role), as far as authentication cares.

    ``target`` is the request-target sent to the peer and also the Digest ``uri`` (RFC 7616 section 3.4):
    ``host:port`` for CONNECT (RFC 9110 section 9.3.6), the absolute URI for plain proxying (RFC 9112
    section 3.2.2), the origin-form path to an origin. ``body`` is the request body, or None when it is a
    stream that cannot be read twice (then it can neither be hashed for auth-int nor sent again after a
    challenge). ``secure`` tells whether the connection to the peer itself is TLS, which decides whether Basic
    would expose the password.
    """

    method: str
    target: str
    body: bytes | None = b""
    secure: bool = False


@dataclass(frozen=True)
class ProxyResponse:
    """The peer's answer: status, header fields (name, value) in order, and the body when it was read.

    The caller reads the body when :func:`wants_body` says so (a challenge, or a refused CONNECT), otherwise it
    leaves it on the wire for its own caller.
    """

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def get_all(self, name: str) -> list[str]:
        key = name.lower()
        return [value for fname, value in self.headers if fname.lower() == key]

    @property
    def body_text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass(frozen=True)
class Send:
    """Send the request (again) with this value in the role's credentials field (``Proxy-Authorization`` or
    ``Authorization``); None: without one."""

    authorization: str | None


def wants_body(method: str, status: int, role: Role = PROXY) -> bool:
    """Whether the caller should read the body before handing the response to the flow.

    A challenge's body (the role's status) must be read to reuse the connection and to explain a refusal; a
    refused CONNECT has no tunnel behind it, so its body is the proxy's explanation too.
    """
    return status == role.status or (method.upper() == "CONNECT" and not 200 <= status < 300)
