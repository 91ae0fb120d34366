"""Where requests go and with which credentials: the proxy URL, the environment, ``~/.netrc``, TLS settings.

- A proxy URL's userinfo is percent-decoded exactly once (RFC 3986 section 2.1 and 3.2.1), as UTF-8; a ``%``
  not followed by two hex digits is an error that says so, rather than a password silently changed.
- With ``trust_env`` the conventional variables choose the proxy per target scheme (``HTTPS_PROXY``,
  ``HTTP_PROXY``, ``ALL_PROXY``, lower-case too) and ``NO_PROXY`` lists hosts reached directly; ``~/.netrc``
  (or ``$NETRC``) supplies the proxy's credentials when neither ``auth`` nor the URL does (the proxy's host is
  the netrc ``machine``, as curl does it).
- TLS: ``verify`` is for the origins (inside the tunnel), ``proxy_verify`` for the proxy itself when the proxy
  URL is ``https://``; each is True (system/certifi roots), False, a CA file path, or an ``ssl.SSLContext``.
- :class:`ProxyOptions` holds all of it, once: the httpx transports and the requests adapter take it, and
  their constructor keywords are its fields (:func:`takes_keywords_of`).
"""

from __future__ import annotations

import functools
import inspect
import netrc
import os
import re
import ssl
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, fields
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

# Re-exported: its import path before it moved to client.errors.
from authproxy.client.errors import ProxyURLError as ProxyURLError

_DEFAULT_PORTS = {"http": 80, "https": 443}
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")

Verify = bool | str | ssl.SSLContext
Cert = str | tuple[str, str]

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class ProxyOptions:
    """How a client reaches targets through a proxy: the one place for the options of
    :class:`~authproxy.client.ProxyTransport`, :class:`~authproxy.client.AsyncProxyTransport` and
    :class:`~authproxy.client.ProxyAdapter`, validated once, here.

    ``proxy_url`` (None: from the environment, which needs ``trust_env``); ``auth`` ``(user, password)``,
    which wins over the URL's userinfo, which wins over ``~/.netrc`` (with ``trust_env``); ``verify``/``cert``
    for origins (the requests adapter takes these from requests instead); ``proxy_verify`` for an ``https://``
    proxy; ``trust_env`` for ``HTTP(S)_PROXY``, ``NO_PROXY`` and ``~/.netrc``; ``allow_basic_cleartext``,
    ``prefer_auth_int`` and ``userhash`` as :class:`authproxy.auth.responder.Responder` takes them;
    ``max_connections`` and ``keepalive_expiry`` for the connection pools.
    """

    proxy_url: str | None
    auth: tuple[str, str] | None = None
    _: KW_ONLY
    verify: Verify = True
    cert: Cert | None = None
    proxy_verify: Verify = True
    trust_env: bool = False
    allow_basic_cleartext: bool = True
    prefer_auth_int: bool = False
    userhash: bool = True
    max_connections: int | None = 100
    keepalive_expiry: float | None = 5.0

    def __post_init__(self) -> None:
        if self.proxy_url is None and not self.trust_env:
            raise ProxyURLError("give a proxy URL, or trust_env=True to take it from HTTP(S)_PROXY")
        if self.proxy_url is not None:
            parse_proxy_url(self.proxy_url)  # a bad URL fails here, when the client is made
        if self.auth is not None:
            if not (isinstance(self.auth, tuple | list) and len(self.auth) == 2
                    and all(isinstance(a, str) for a in self.auth)):
                raise TypeError("auth is a (user, password) tuple of two strings")
            object.__setattr__(self, "auth", tuple(self.auth))  # a list too, as before; hashable from here on
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1 (or None for no limit), not {self.max_connections}")
        if self.keepalive_expiry is not None and self.keepalive_expiry < 0:
            raise ValueError(f"keepalive_expiry must be 0 or more seconds (or None), not {self.keepalive_expiry}")

    def keywords(self) -> dict[str, Any]:
        """The options as the keywords that build them again (no copy of the values: SSL contexts stay)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __repr__(self) -> str:  # neither password (auth, the URL's userinfo) reaches a log or a traceback
        shown = dict(self.keywords())
        if self.auth is not None:
            shown["auth"] = (self.auth[0], "***")
        if self.proxy_url is not None:
            shown["proxy_url"] = _redact_url(self.proxy_url)
        return "ProxyOptions(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


def _redact_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, hostport = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{hostport}"


def takes_keywords_of(
    options: Callable[P, ProxyOptions],
) -> Callable[[Callable[[T, ProxyOptions], None]], Callable[Concatenate[T, P], None]]:
    """Make ``__init__(self, options)`` take the keywords of ``options`` (the :class:`ProxyOptions` class)
    instead, so a client's signature is written once, as the dataclass's fields, and still type-checked and
    shown by ``help()`` as if written out."""

    def decorate(init: Callable[[T, ProxyOptions], None]) -> Callable[Concatenate[T, P], None]:
        @functools.wraps(init)
        def __init__(self: T, /, *args: P.args, **kwargs: P.kwargs) -> None:
            init(self, options(*args, **kwargs))

        own = inspect.signature(init)
        self_param = next(iter(own.parameters.values()))
        __init__.__signature__ = inspect.signature(options).replace(  # type: ignore[attr-defined]
            parameters=[self_param, *inspect.signature(options).parameters.values()], return_annotation=None)
        return __init__

    return decorate


class ConfiguredByOptions:
    """A client built from :class:`ProxyOptions`: its ``options``, and ``from_options`` for a ready set."""

    options: ProxyOptions

    @classmethod
    def from_options(cls, options: ProxyOptions) -> Self:
        """The client for ``options``, equal to passing their fields as keywords."""
        return cls(**options.keywords())


@dataclass(frozen=True)
class ProxyEndpoint:
    """One proxy: where it listens, how we talk to it, and the credentials for it."""

    scheme: str  # "http" or "https": how we talk to the proxy itself
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        """The proxy URL without credentials, for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def __repr__(self) -> str:  # the password never reaches a log or a traceback
        return f"ProxyEndpoint({self.url!r}, username={self.username!r})"


def _decode_userinfo_part(part: str, what: str) -> str:
    if _BAD_ESCAPE.search(part):
        raise ProxyURLError(f"the proxy URL's {what} has a '%' that is not followed by two hex digits; "
                            "write a literal '%' as %25")
    try:
        return urllib.parse.unquote_to_bytes(part).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProxyURLError(f"the proxy URL's {what} is not UTF-8 once percent-decoded") from exc


def parse_proxy_url(url: str) -> ProxyEndpoint:
    """A proxy URL ``http[s]://[user[:password]@]host[:port][/]`` as a :class:`ProxyEndpoint`.

    A URL without a scheme is taken as ``http://`` (what the environment variables usually hold).
    """
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ProxyURLError(f"the proxy URL's scheme must be http or https, not {scheme!r}")
    userinfo, at, _hostport = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user_part, colon, pass_part = userinfo.partition(":")
        username = _decode_userinfo_part(user_part, "user name")
        password = _decode_userinfo_part(pass_part, "password") if colon else ""
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise ProxyURLError("the proxy URL's port is not a number from 1 to 65535") from exc
    host = parts.hostname
    if not host:
        raise ProxyURLError("the proxy URL has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProxyURLError("a proxy URL has no path, query or fragment")
    return ProxyEndpoint(scheme, host, port, username, password)


def no_proxy_matches(no_proxy: str, host: str, port: int) -> bool:
    """Whether ``NO_PROXY`` (comma-separated hosts, ``.domain`` suffixes, ``host:port``, ``*``) covers the
    target, as curl and requests read it."""
    host = host.lower().strip("[]")
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        name, colon, port_text = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if colon and port_text.isdigit():
            if int(port_text) != port:
                continue
            entry = name
        entry = entry.strip("[]")
        bare = entry.lstrip(".")
        if host == bare or host.endswith("." + bare):
            return True
    return False


def netrc_credentials(host: str) -> tuple[str, str] | None:
    """``(login, password)`` for ``host`` from ``$NETRC`` or ``~/.netrc``, or None."""
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    if not os.path.isfile(path):
        return None
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (netrc.NetrcParseError, OSError):
        return None
    if entry is None or not entry[0]:
        return None
    return entry[0], entry[2] or ""


class ProxySelector:
    """Which proxy (or none) a target goes through, and with which credentials, as ``options`` say.

    ``proxy_url`` given: every target goes through it (except ``NO_PROXY`` hosts when ``trust_env``). Not
    given: the environment decides (:class:`ProxyOptions` made sure ``trust_env`` is then true). ``auth`` wins
    over the URL's userinfo, which wins over netrc.
    """

    def __init__(self, options: ProxyOptions) -> None:
        self._explicit = None if options.proxy_url is None else parse_proxy_url(options.proxy_url)
        self._auth = options.auth
        self._trust_env = options.trust_env
        self._env = urllib.request.getproxies_environment() if options.trust_env else {}
        self._cache: dict[str, ProxyEndpoint] = {}

    def select(self, scheme: str, host: str, port: int) -> ProxyEndpoint | None:
        """The proxy for ``scheme://host:port``, or None to connect directly."""
        if self._trust_env and no_proxy_matches(self._env.get("no", ""), host, port):
            return None
        if self._explicit is not None:
            return self._complete(self._explicit)
        url = self._env.get(scheme) or self._env.get("all")
        if not url:
            return None
        endpoint = self._cache.get(url)
        if endpoint is None:
            endpoint = self._cache[url] = self._complete(parse_proxy_url(url))
        return endpoint

    def _complete(self, endpoint: ProxyEndpoint) -> ProxyEndpoint:
        if self._auth is not None:
            user, password = self._auth
            return ProxyEndpoint(endpoint.scheme, endpoint.host, endpoint.port, user, password)
        if endpoint.username is None and self._trust_env:
            found = netrc_credentials(endpoint.host)
            if found is not None:
                return ProxyEndpoint(endpoint.scheme, endpoint.host, endpoint.port, *found)
        return endpoint


def make_ssl_context(verify: Verify, cert: str | tuple[str, str] | None = None) -> ssl.SSLContext:
    """A client context: ``verify`` True (certifi roots when installed, else the system's), False (no
    verification: for tests only), a CA file or directory, or a ready context (returned as is)."""
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify is False:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif verify is True:
        try:
            import certifi

            ctx = ssl.create_default_context(cafile=certifi.where())
        except ImportError:  # pragma: no cover - certifi comes with httpx and requests
            ctx = ssl.create_default_context()
    elif os.path.isdir(verify):
        ctx = ssl.create_default_context(capath=verify)
    else:
        ctx = ssl.create_default_context(cafile=verify)
    # This client speaks HTTP/1.1 only; say so in ALPN so an origin does not pick h2.
    ctx.set_alpn_protocols(["http/1.1"])
    if cert is not None:
        if isinstance(cert, str):
            ctx.load_cert_chain(cert)
        else:
            ctx.load_cert_chain(*cert)
    return ctx
