"""Configuration: read once, from a TOML file and then the command line, into one frozen dataclass.

Every option has a TOML key of the same name (``--connect-timeout`` is ``connect_timeout``); command-line flags
override the file. A bad value gives one ConfigError that names the key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from authproxy.auth.errors import ConfigError, UserStoreError
from authproxy.auth.headers import is_token
from authproxy.auth.verifier import AuthPolicy
from authproxy.proxy.policy import DestinationPolicy
from authproxy.users import open_user_store, usual_realm
from authproxy.users.location import parse_store_location

_LOG_FORMATS = ("squid", "json")


def parse_hostport(value: str, *, key: str = "listen") -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (meaning 127.0.0.1) into (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{key}: expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "127.0.0.1", int(port_text)


@dataclass(frozen=True)
class Config:
    """Every option of ``authproxy serve``. Field names are the TOML keys."""

    listen: str = "127.0.0.1:3128"
    users: str = "authproxy.users"
    realm: str = "authproxy"
    schemes: tuple[str, ...] = ("digest", "basic")
    digest_algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    qop: tuple[str, ...] = ("auth", "auth-int")
    userhash: bool = True
    nonce_lifetime: float = 300.0
    basic_cache_ttl: float = 60.0
    access_log: str = "-"  # a path, "-" for stdout, "" for none
    access_log_format: str = "squid"
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    header_timeout: float = 30.0
    idle_timeout: float = 120.0
    write_timeout: float = 60.0  # a client that reads nothing of what it is owed for this long is cut off
    tunnel_idle_timeout: float = 900.0  # a CONNECT tunnel silent both ways for this long is cut (Squid: 15 min)
    max_header_size: int = 65536
    max_header_count: int = 100
    max_body_size: int = 0  # request bodies; 0: no limit
    max_connections: int = 20000
    max_connections_per_client: int = 2048  # 0: no limit
    workers: int = 1  # processes sharing the port (SO_REUSEPORT); 0: one per CPU
    drain_grace: float = 10.0  # seconds SIGTERM waits for in-flight requests
    tls_cert: str = ""  # PEM files: with both set, clients speak TLS to the proxy
    tls_key: str = ""
    tls_handshake_timeout: float = 10.0  # seconds from accept for a TLS client to finish its handshake
    auth_int_max_body: int = 1 << 20
    connect_ports: tuple[int, ...] | None = (443,)  # None: any port
    allow_private: bool = False  # reach loopback, private, link-local... addresses (tests, one-machine set-ups)
    allow: tuple[str, ...] = ()  # CIDRs and host globs that may be reached even though private
    rules: tuple[dict[str, Any], ...] = ()  # per-user destination rules ([[rules]] tables)
    throttle_max_failures: int = 10  # failed sign-ins per window before a lockout; 0: no throttle
    throttle_window: float = 60.0
    throttle_lockout: float = 300.0
    throttle_max_user_lockout: float = 300.0  # the longest a user name is locked out from a new address
    throttle_max_entries: int = 100_000  # addresses, and user names, the throttle tracks (memory bound)
    via_pseudonym: str = "authproxy"
    pool_size: int = 256  # idle origin connections kept per host:port

    listen_address: tuple[str, int] = field(init=False, repr=False, compare=False)
    policy: DestinationPolicy = field(init=False, repr=False, compare=False)
    #: What the 407 offers and what is accepted back, validated here once (realm, schemes, algorithms, qop,
    #: userhash, nonce lifetime: the rules are AuthPolicy's, so the config and the verifier cannot disagree).
    auth_policy: AuthPolicy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "listen_address", parse_hostport(self.listen))
        object.__setattr__(self, "policy", DestinationPolicy.from_config(
            self.allow_private, list(self.allow), self.connect_ports, list(self.rules)))
        object.__setattr__(self, "auth_policy", AuthPolicy(
            realm=self.realm, schemes=self.schemes, digest_algorithms=self.digest_algorithms, qop=self.qop,
            userhash=self.userhash, nonce_lifetime=self.nonce_lifetime))
        parse_store_location(self.users)  # the kind of store goes by the value's form; a reserved form is refused
        if not is_token(self.via_pseudonym):
            # RFC 9110 section 7.6.3: received-by is a pseudonym, a token; a loop is found by comparing it.
            raise ConfigError(f"via_pseudonym: must be a token (letters, digits, -._~...): {self.via_pseudonym!r}")
        if self.access_log_format not in _LOG_FORMATS:
            raise ConfigError(f"access_log_format: expected one of {', '.join(_LOG_FORMATS)}")
        for key in ("connect_timeout", "read_timeout", "header_timeout", "idle_timeout", "write_timeout",
                    "tunnel_idle_timeout", "tls_handshake_timeout"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be positive")
        for key in ("max_header_size", "auth_int_max_body"):
            if getattr(self, key) < 1024:
                raise ConfigError(f"{key}: must be at least 1024")
        for key in ("max_header_count", "max_connections"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be at least 1")
        for key in ("max_body_size", "max_connections_per_client", "drain_grace", "workers"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must not be negative")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert: tls_cert and tls_key go together")
        _check_throttle(self)
        if self.basic_cache_ttl < 0 or self.pool_size < 0:
            raise ConfigError("basic_cache_ttl and pool_size must not be negative")


def _check_throttle(config: Config | SipConfig) -> None:
    """The sign-in throttle's keys, the same in both commands' options."""
    if config.throttle_max_failures < 0 or config.throttle_window <= 0 or config.throttle_lockout < 0 \
            or config.throttle_max_user_lockout < 0:
        raise ConfigError("throttle_*: max_failures and lockouts must not be negative, the window positive")
    if config.throttle_max_entries < 1:
        raise ConfigError("throttle_max_entries: must be at least 1")


def parse_connect_ports(value: Any, *, key: str = "connect_ports") -> tuple[int, ...] | None:
    """``"any"``, a list of ints, or a comma-separated string of ports."""
    if value == "any":
        return None
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if not all(p.isdigit() for p in parts):
            raise ConfigError(f"{key}: expected 'any' or a comma-separated list of ports, got {value!r}")
        return tuple(int(p) for p in parts)
    if isinstance(value, list) and all(isinstance(p, int) and not isinstance(p, bool) for p in value):
        return tuple(value)
    raise ConfigError(f"{key}: expected 'any' or a list of ports")


def _coerce(key: str, annotation: str, value: Any) -> Any:
    """Check one TOML value against the field's declared type; the error names the key."""
    if key == "connect_ports":
        return parse_connect_ports(value)
    if key == "rules":
        if not isinstance(value, list) or not all(isinstance(rule, dict) for rule in value):
            raise ConfigError("rules: expected a list of tables ([[rules]])")
        return tuple(value)
    if annotation == "str":
        ok = isinstance(value, str)
    elif annotation == "bool":
        ok = isinstance(value, bool)
    elif annotation == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif annotation == "tuple[str, ...]":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    else:  # pragma: no cover - a field type this function does not know
        raise AssertionError(annotation)
    if not ok:
        raise ConfigError(f"{key}: expected {annotation.replace('tuple[str, ...]', 'a list of strings')}, "
                          f"got {type(value).__name__}")
    return value


_FIELDS = {f.name: f for f in fields(Config) if f.init}


def load_config(path: str | Path | None, overrides: dict[str, Any], *, realm_from_users: bool = False) -> Config:
    """The TOML file at ``path`` (if any), then ``overrides`` (CLI flags, already typed), as a Config.

    ``realm_from_users`` (``authproxy serve``): when neither the file nor a flag sets ``realm``, serve the realm
    the users file's users are in, since an HA1 is bound to its realm and another realm would refuse every one
    of them. A store without realms (htpasswd, no users yet, no file yet) keeps the default.
    """
    values: dict[str, Any] = {}
    if path is not None:
        raw = _read_toml(path)
        values = _typed(raw, _FIELDS, path)
        if "sip" in raw:  # the same file serves `authproxy sip serve`: its [sip] table is checked here too
            load_sip_config(path, {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    if realm_from_users and "realm" not in values:
        realm = _users_realm(values.get("users", _FIELDS["users"].default))
        if realm is not None:
            values["realm"] = realm
    try:
        return Config(**values)
    except TypeError as exc:  # pragma: no cover - overrides come from our own CLI
        raise ConfigError(str(exc)) from None


def _read_toml(path: str | Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None


def _typed(table: dict[str, Any], known: dict[str, Any], path: str | Path, prefix: str = "") -> dict[str, Any]:
    """The options of one TOML table, each checked against its field's type; ``sip`` is the [sip] table."""
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key == "sip" and not prefix:
            if not isinstance(value, dict):
                raise ConfigError(f"sip: expected a table ([sip]) in {path}")
            continue
        if key not in known:
            raise ConfigError(f"{prefix}{key}: unknown option in {path}")
        values[key] = _coerce(prefix + key, str(known[key].type), value)
    return values


def _users_realm(path: object) -> str | None:
    if not isinstance(path, str) or not Path(path).exists():
        return None  # the first `serve` creates it, in the default realm
    try:
        return usual_realm(open_user_store(path, Config.realm))
    except UserStoreError:
        return None  # opening the store again reports it, with the realm this left unchanged


def replace(config: Config, **changes: Any) -> Config:
    """A copy of ``config`` with ``changes``, validated again."""
    return dataclasses.replace(config, **changes)


# --- authproxy sip serve -------------------------------------------------------------------------------------

SIP_TRANSPORTS = ("udp", "tcp", "tls")
#: The options `authproxy sip serve` takes from the top of the file when its [sip] table does not set them: the
#: users, the realm and the Digest settings are the HTTP proxy's unless SIP wants its own.
SIP_SHARED = ("users", "realm", "digest_algorithms", "nonce_lifetime", "access_log", "access_log_format",
              "tls_cert", "tls_key", "tls_handshake_timeout", "throttle_max_failures", "throttle_window",
              "throttle_lockout", "throttle_max_user_lockout", "throttle_max_entries")


def parse_sip_listen(value: str, *, key: str = "listen") -> tuple[str, str, int]:
    """``udp:HOST:PORT``, ``tcp:HOST:PORT`` or ``tls:HOST:PORT`` into (transport, host, port)."""
    transport, sep, rest = value.partition(":")
    if not sep or transport.lower() not in SIP_TRANSPORTS:
        raise ConfigError(f"{key}: expected udp:HOST:PORT, tcp:HOST:PORT or tls:HOST:PORT, got {value!r}")
    host, port = parse_hostport(rest, key=key)
    return transport.lower(), host, port


def parse_sip_alias(value: str, *, key: str = "aliases") -> tuple[str, int | None]:
    """``HOST``, ``HOST:PORT``, ``V6`` or ``[V6]:PORT`` into (host, port or None: any port)."""
    host, port = value, None
    head, sep, tail = value.rpartition(":")
    if sep and tail.isdigit() and (value.startswith("[") or ":" not in head):
        host, port = head, int(tail)
        if not 0 < port < 65536:
            raise ConfigError(f"{key}: port out of range in {value!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if _HOSTNAME_RE.fullmatch(host) is None:
        raise ConfigError(f"{key}: expected HOST or HOST:PORT, got {value!r}")
    return host, port


@dataclass(frozen=True)
class SipConfig:
    """Every option of ``authproxy sip serve``: the keys of the file's ``[sip]`` table (the ones in
    :data:`SIP_SHARED` default to the top of the file). Digest only: Basic is deprecated in SIP (RFC 3261
    section 22.1); qop ``auth`` by default, the one every SIP user agent answers (section 22.4)."""

    listen: tuple[str, ...] = ("udp:127.0.0.1:5060",)
    next_hop: str = ""
    users: str = "authproxy.users"
    realm: str = "authproxy"
    digest_algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    qop: tuple[str, ...] = ("auth",)
    nonce_lifetime: float = 300.0
    access_log: str = "-"
    access_log_format: str = "squid"
    tls_cert: str = ""
    tls_key: str = ""
    # CA certificates (PEM) that verify a TLS next hop's certificate, against its host name; default: the
    # system's. The proxy presents its own tls_cert to it (mutual TLS, as SIP trunks ask).
    next_hop_ca: str = ""
    via_host: str = ""  # the host in this proxy's Via; default: the host it listens on
    max_transactions: int = 20_000  # remembered transactions (retransmissions), 32 s each
    max_transactions_per_source: int = 2_000  # of those, per source address; past it: 503
    # The proxy's own answers (407, 503, 400...) over UDP to one address, a second and in a burst; past them,
    # dropped: a forged source address must not turn the proxy into an amplifier. 0: no bound.
    udp_answer_rate: float = 200.0
    udp_answer_burst: int = 400
    max_message_size: int = 65535
    max_connections: int = 1000  # TCP and TLS connections, both directions (per worker)
    workers: int = 1  # processes sharing the listeners (SO_REUSEPORT); 0: one per CPU
    idle_timeout: float = 120.0  # a TCP/TLS connection with nothing received or sent for this long is closed
    message_timeout: float = 20.0  # a message begun on a TCP/TLS connection must end within this
    tls_handshake_timeout: float = 10.0  # from accept, for a TLS client to finish its handshake
    # For a TCP or TLS connection this proxy opens (to its next hop, or back to a client) to be up, TLS
    # handshake done; past it, what was to go on it is answered 503 (RFC 3261 section 16.9).
    connect_timeout: float = 10.0
    throttle_max_failures: int = 10  # the HTTP proxy's sign-in throttle, the same keys (shared from the top)
    throttle_window: float = 60.0
    throttle_lockout: float = 300.0
    throttle_max_user_lockout: float = 300.0
    throttle_max_entries: int = 100_000
    # Section 16.6 step 4: stay on the path of the dialogs INVITE, SUBSCRIBE and REFER create (kamailio's default
    # configuration record-routes them too): their BYE, re-INVITE and NOTIFY then come through here.
    record_route: bool = True
    # RFC 3327: Path on a client's REGISTER, so the registrar's calls to it come through here (kamailio's
    # add_path); a registrar without Path support ignores it.
    path: bool = True
    trusted: tuple[str, ...] = ()  # IP addresses/networks not challenged, besides the next hop's address
    # More names of this proxy in a Route (section 16.4), as kamailio's alias=: HOST (at any port) or HOST:PORT,
    # such as the domain name user agents are given as their outbound proxy.
    aliases: tuple[str, ...] = ()

    listeners: tuple[tuple[str, str, int], ...] = field(init=False, repr=False, compare=False)
    auth_policy: AuthPolicy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.listen:
            raise ConfigError("listen: at least one udp:, tcp: or tls: address")
        listeners = tuple(parse_sip_listen(value) for value in self.listen)
        object.__setattr__(self, "listeners", listeners)
        if not self.next_hop:
            raise ConfigError("next_hop: required (--next-hop sip:HOST:PORT;transport=udp|tcp|tls)")
        from authproxy.sip.routing import NextHop  # here: `authproxy serve` does not load the SIP package

        hop = NextHop.parse(self.next_hop)
        if hop.transport not in {transport for transport, _, _ in listeners}:
            raise ConfigError(f"next_hop: transport={hop.transport} needs a {hop.transport}: listener, which "
                              "sends to the next hop and receives its responses")
        object.__setattr__(self, "auth_policy", AuthPolicy(
            realm=self.realm, schemes=("digest",), digest_algorithms=self.digest_algorithms, qop=self.qop,
            userhash=False, nonce_lifetime=self.nonce_lifetime))
        parse_store_location(self.users)
        if self.access_log_format not in _LOG_FORMATS:
            raise ConfigError(f"access_log_format: expected one of {', '.join(_LOG_FORMATS)}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert: tls_cert and tls_key go together")
        if any(transport == "tls" for transport, _, _ in listeners) and not self.tls_cert:
            raise ConfigError("listen: a tls: listener needs --tls-cert and --tls-key")
        wildcard = any(_unspecified(host) for _, host, _ in listeners)
        if wildcard and not self.via_host:
            raise ConfigError("via_host: required when listening on a wildcard address (the Via must name an "
                              "address the next hop can answer)")
        if self.via_host and _HOSTNAME_RE.fullmatch(self.via_host) is None:
            raise ConfigError(f"via_host: not a host name or address: {self.via_host!r}")
        for key in ("max_transactions", "max_transactions_per_source", "max_connections", "udp_answer_burst"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be at least 1")
        if not 0 <= self.udp_answer_rate < float("inf"):
            raise ConfigError("udp_answer_rate: must be a number of answers a second, 0 for no bound")
        if self.workers < 0:
            raise ConfigError("workers: must not be negative")
        for key in ("idle_timeout", "message_timeout", "tls_handshake_timeout", "connect_timeout"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key}: must be positive")
        _check_throttle(self)
        for alias in self.aliases:
            parse_sip_alias(alias)
        for net in self.trusted:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ConfigError(f"trusted: not an IP address or network: {net!r}") from None
        if not 1024 <= self.max_message_size <= 65535:
            raise ConfigError("max_message_size: must be 1024-65535 (a UDP datagram's bound)")


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


_HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?|[0-9A-Fa-f:.]+")
_SIP_FIELDS = {f.name: f for f in fields(SipConfig) if f.init}


def load_sip_config(path: str | Path | None, overrides: dict[str, Any]) -> SipConfig:
    """The options of ``authproxy sip serve``: the file's shared top-level options (:data:`SIP_SHARED`), its
    ``[sip]`` table over them, then ``overrides`` (CLI flags). Without ``realm`` anywhere, the realm of the
    users file's users, as ``authproxy serve`` does."""
    values: dict[str, Any] = {}
    if path is not None:
        raw = _read_toml(path)
        top = _typed(raw, _FIELDS, path)
        values = {key: top[key] for key in SIP_SHARED if key in top}
        values.update(_typed(raw.get("sip", {}), _SIP_FIELDS, path, prefix="sip."))
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "realm" not in values:
        realm = _users_realm(values.get("users", _SIP_FIELDS["users"].default))
        if realm is not None:
            values["realm"] = realm
    return SipConfig(**values)
