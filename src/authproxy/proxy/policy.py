"""Destination policy: which hosts and ports a user may reach through the proxy (the SSRF defence).

A forward proxy that reaches whatever a client names is a door into the network it runs in: cloud metadata
(169.254.169.254), admin ports on loopback, the office LAN. This module decides, before any connection is opened,
whether a destination is allowed, and names the ONE address that was checked so the caller connects to exactly
that address (resolve once, connect to the checked address: no DNS-rebinding window between check and use).

What it defends against (spec-checklist, "Classes of attack": CONNECT or forwarding to internal addresses;
the address tables and spellings are :mod:`authproxy.proxy.addresses`):

- every non-public address range, IPv4 and IPv6, from an explicit table (RFC 6890 special-purpose registries)
  rather than the ``ipaddress`` properties alone, whose answers changed between Python releases (CVE-2024-4032:
  ``is_private``/``is_global`` were wrong for several ranges before 3.11.10 / 3.12.4);
- IPv4 hidden inside IPv6: IPv4-mapped (::ffff:127.0.0.1), IPv4-compatible (::127.0.0.1), 6to4 (2002::/16),
  NAT64 (64:ff9b::/96 and the local-use 64:ff9b:1::/48) and Teredo (2001::/32);
- numeric host spellings that ``inet_aton`` and so ``getaddrinfo`` accept: decimal (2130706433), octal
  (0177.0.0.1), hex (0x7f000001) and short forms (127.1). They are parsed here, never sent to DNS;
- names that resolve to an internal address, including names with several addresses of which one is internal
  (a favourite of rebinding attacks): if ANY address is refused, the destination is refused;
- 0.0.0.0 / "this network", multicast and broadcast, which are never a valid TCP destination (on Linux a
  connection to 0.0.0.0 reaches the proxy host's own services: the "0.0.0.0 day" class). ``allow_private`` and
  the allow list do not lift these;
- CONNECT to arbitrary ports (a proxy that tunnels to port 25 or 22 is an open relay): ``connect_ports``;
- the proxy's own listening sockets (``OwnSockets``): a CONNECT to itself would nest tunnels without end, each
  holding two connections, so it is refused as a loop (508) before anything is opened.

Per-user rules restrict further who may reach what; they never lift the address refusal (use ``allow`` for
that). Refusals carry an RFC 9209 error type and a sentence for a person, ready for ``refuse()``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from authproxy.auth.errors import ConfigError
from authproxy.engine.decision import Allowed, Decision, Refused
from authproxy.proxy.addresses import (
    NEVER_ALLOWED,
    HostPatterns,
    IPAddress,
    classify,
    compile_hosts,
    describe_reason,
    looks_numeric,
    normalise_name,
    parse_inet_aton,
)

#: ``loop.getaddrinfo`` or a fake with the same call shape, for tests: awaitable (family, type, proto,
#: canonname, sockaddr) tuples.
Resolver: TypeAlias = Callable[..., Awaitable[Sequence[tuple[Any, ...]]]]

# == configuration =====================================================================================================

RuleAction: TypeAlias = Literal["allow", "deny"]


@dataclass(frozen=True)
class UserRule:
    """Which users may (or, with ``action="deny"``, may not) reach which hosts and ports.

    ``users``: user names (exact, case-sensitive, as the user store has them) or ``"*"`` for every user.
    ``hosts``: globs matched against the requested name (``*.corp.example``; ``*`` matches across dots, so it
    also matches ``a.b.corp.example`` but not ``corp.example`` itself) or CIDRs matched against the address(es) the
    name resolved to (every one of them must be inside). ``ports``: None for any port.
    """

    users: tuple[str, ...]
    hosts: tuple[str, ...]
    ports: tuple[int, ...] | None = None
    action: RuleAction = "allow"

    def names(self, user: str | None) -> bool:
        return "*" in self.users or (user is not None and user in self.users)


@dataclass(frozen=True)
class _CompiledRule:
    rule: UserRule
    hosts: HostPatterns


def _check_ports(key: str, ports: object, *, allow_empty: bool = False) -> tuple[int, ...] | None:
    if ports is None or ports == "any":
        return None
    if isinstance(ports, list | tuple) and (ports or allow_empty) and all(
        isinstance(p, int) and not isinstance(p, bool) for p in ports
    ):
        for port in ports:
            if not 1 <= port <= 65535:
                raise ConfigError(f"{key}: {port} is not a port (1-65535)")
        return tuple(ports)
    raise ConfigError(f"{key}: expected 'any' or a non-empty list of ports, got {ports!r}")


@dataclass(frozen=True)
class DestinationPolicy:
    """Where the proxy may connect. The default refuses every non-public address and CONNECT to anything but 443.

    ``allow_private`` lifts the address refusal for every range but those in NEVER_ALLOWED. ``allow`` entries lift
    it for one destination: a CIDR (``10.1.0.0/16``) lifts it for addresses inside, a host glob
    (``*.corp.example``, case-insensitive, IDNA-normalised) for every address a matching name resolves to.
    ``connect_ports``: the ports CONNECT may reach (None: any). Plain http forwarding may reach any port.

    ``rules``: if there is at least one rule, a user reaches a destination only if a rule matches it. Rules are
    tried in order and the FIRST rule that names the user (or ``"*"``) and matches the host and port decides:
    ``allow`` lets the request through (subject to the address policy above, which rules never lift), ``deny``
    refuses it. No matching rule: refused. So put narrow ``deny`` rules before broad ``allow`` rules.
    """

    allow_private: bool = False
    allow: tuple[str, ...] = ()
    connect_ports: tuple[int, ...] | None = (443,)
    rules: tuple[UserRule, ...] = ()

    _allow: HostPatterns = field(init=False, repr=False, compare=False)
    _rules: tuple[_CompiledRule, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_allow", compile_hosts("allow", self.allow))
        _check_ports("connect_ports", self.connect_ports, allow_empty=True)
        compiled = []
        for index, rule in enumerate(self.rules):
            key = f"rules[{index}]"
            if not rule.users or not all(isinstance(u, str) and u for u in rule.users):
                raise ConfigError(f"{key}.users: expected a non-empty list of user names or '*'")
            if not rule.hosts:
                raise ConfigError(f"{key}.hosts: expected a non-empty list of host globs or CIDRs")
            if rule.action not in ("allow", "deny"):
                raise ConfigError(f"{key}.action: expected 'allow' or 'deny', got {rule.action!r}")
            _check_ports(f"{key}.ports", rule.ports)
            compiled.append(_CompiledRule(rule, compile_hosts(f"{key}.hosts", rule.hosts)))
        object.__setattr__(self, "_rules", tuple(compiled))

    @classmethod
    def from_config(cls, allow_private: object = False, allow: object = (), connect_ports: object = (443,),
                    rules: object = ()) -> DestinationPolicy:
        """Build from TOML-shaped values (lists, dicts); a bad value raises one ConfigError naming the key.

        A rule is a table: ``{users = ["alice"], hosts = ["*.corp.example", "10.1.0.0/16"], ports = [80, 443],
        action = "allow"}``; ``ports`` (default any) and ``action`` (default allow) may be left out.
        """
        if not isinstance(allow_private, bool):
            raise ConfigError(f"allow_private: expected true or false, got {allow_private!r}")
        if not isinstance(allow, list | tuple) or not all(isinstance(a, str) for a in allow):
            raise ConfigError("allow: expected a list of host globs and CIDRs")
        ports = _check_ports("connect_ports", connect_ports, allow_empty=True)
        if not isinstance(rules, list | tuple):
            raise ConfigError("rules: expected a list of tables ([[rules]])")
        parsed: list[UserRule] = []
        for index, raw in enumerate(rules):
            key = f"rules[{index}]"
            if not isinstance(raw, dict):
                raise ConfigError(f"{key}: expected a table with users, hosts and optionally ports and action")
            unknown = sorted(set(raw) - {"users", "hosts", "ports", "action"})
            if unknown:
                raise ConfigError(f"{key}: unknown key {unknown[0]!r} (expected users, hosts, ports, action)")
            for name in ("users", "hosts"):
                value = raw.get(name)
                if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                    raise ConfigError(f"{key}.{name}: expected a non-empty list of strings, got {value!r}")
            # Only the TOML shapes are checked here; the values are checked once, by __post_init__.
            parsed.append(UserRule(tuple(raw["users"]), tuple(raw["hosts"]),
                                   _check_ports(f"{key}.ports", raw.get("ports")), raw.get("action", "allow")))
        return cls(allow_private, tuple(allow), ports, tuple(parsed))

    # == decisions ====================================================================================================
    def address_refusal(self, name: str | None, ip: IPAddress) -> tuple[str, str | None] | None:
        """(reason, embedding) if ``ip`` (reached as ``name``, None for a literal) is refused, else None."""
        found = classify(ip)
        if found is None or found[0] in NEVER_ALLOWED:
            return found
        if self.allow_private or self._allow.match_name(name) or self._allow.match_address(ip):
            return None
        return found

    def rule_verdict(self, user: str | None, name: str | None, addresses: Sequence[IPAddress] | None,
                     port: int) -> tuple[bool, int | None] | None:
        """(allowed, index of the deciding rule) by the first matching rule; (False, None) if none matches;
        None if the answer depends on addresses not known yet. Always (True, None) when there are no rules."""
        if not self._rules:
            return True, None
        for index, compiled in enumerate(self._rules):
            rule = compiled.rule
            if not rule.names(user) or (rule.ports is not None and port not in rule.ports):
                continue
            if compiled.hosts.match_name(name):
                return rule.action == "allow", index
            if compiled.hosts.networks:
                if addresses is None:
                    return None
                if compiled.hosts.match_all(addresses):
                    return rule.action == "allow", index
        return False, None


# == the proxy itself =================================================================================================


def _unmapped(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is the IPv4 address it maps: a connection goes there."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class OwnSockets:
    """The addresses at which this proxy accepts connections, so that a request to one of them (a loop) is
    refused before it is opened.

    A socket bound to one address is that address and port. A socket bound to the wildcard (0.0.0.0, ::) is
    every local address of the machine at that port, of its family (and IPv4 too for an IPv6 socket without
    IPV6_V6ONLY); whether an address is local is asked of the kernel by binding a throw-away socket to it, which
    succeeds only for the machine's own addresses (all of 127.0.0.0/8 included). That costs a system call, and
    only for a destination whose port is a wildcard listener's.
    """

    def __init__(self, bound: Iterable[tuple[int, str, int, bool]] = ()) -> None:
        """``bound``: (family, address, port, also_ipv4) per listening socket, ``also_ipv4`` for a dual-stack
        IPv6 socket."""
        self._exact: set[tuple[IPAddress, int]] = set()
        self._wildcard: dict[int, set[int]] = {}  # port -> address versions (4, 6) a wildcard socket takes
        for family, address, port, also_ipv4 in bound:
            ip = _unmapped(ipaddress.ip_address(address.partition("%")[0]))
            if ip.is_unspecified:
                versions = self._wildcard.setdefault(port, set())
                versions.add(4 if family == socket.AF_INET else 6)
                if family == socket.AF_INET6 and also_ipv4:
                    versions.add(4)
            else:
                self._exact.add((ip, port))

    @classmethod
    def of(cls, sockets: Iterable[socket.socket]) -> OwnSockets:
        bound = []
        for sock in sockets:
            name = sock.getsockname()
            also_ipv4 = sock.family == socket.AF_INET6 and not sock.getsockopt(socket.IPPROTO_IPV6,
                                                                               socket.IPV6_V6ONLY)
            bound.append((sock.family, str(name[0]), int(name[1]), also_ipv4))
        return cls(bound)

    def __bool__(self) -> bool:
        return bool(self._exact or self._wildcard)

    def holds(self, ip: IPAddress, port: int) -> bool:
        """Whether a connection to ``ip``:``port`` would reach this proxy."""
        ip = _unmapped(ip)
        if (ip, port) in self._exact:
            return True
        if ip.is_unspecified:  # Linux connects 0.0.0.0 and :: to the local host
            return any(p == port for _, p in self._exact) or port in self._wildcard
        versions = self._wildcard.get(port)
        return versions is not None and ip.version in versions and _is_local(ip)


def _is_local(ip: IPAddress) -> bool:
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((str(ip), 0))
        except OSError:  # EADDRNOTAVAIL: not an address of this machine
            return False
    return True


def _loop_refusal(shown: str, ip: IPAddress, port: int) -> Refused:
    # RFC 5842 section 7.2 (508 Loop Detected); RFC 9209 section 2.3: proxy_loop_detected.
    where = shown if shown == str(ip) else f"{shown} ({ip})"
    return Refused(508, "proxy_loop_detected",
                   f"the destination {where}:{port} is this proxy itself; the request would loop back here")


# == the decision ======================================================================================================


# Allowed, Refused and Decision are the engine's (authproxy.engine.decision): the shape of the answer it acts on.


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _rules_refusal(user: str | None, shown: str, port: int, index: int | None) -> Refused:
    who = "an anonymous user" if user is None else f"user {user!r}"
    why = f"rule rules[{index}] denies it" if index is not None else "no rule of this proxy allows it"
    return Refused(403, "http_request_denied", f"{who} may not reach {shown}:{port} ({why})")


def _address_refused(name: str | None, spelling: str | None, ip: IPAddress, reason: str,
                     how: str | None) -> Refused:
    """``name``: the name that resolved to ``ip``; ``spelling``: a numeric spelling of ``ip`` (``127.1``)."""
    singular, plural = describe_reason(reason)
    what = f"the {how}, {singular}" if how else singular
    if name is not None:
        subject = f"the destination {name} resolves to {ip}, which is"
    elif spelling is not None:
        subject = f"the destination {spelling} means {ip}, which is"
    else:
        subject = f"the destination {ip} is"
    if plural is None:
        tail = "that is never a valid destination"
    else:
        tail = f"this proxy does not reach {plural} (set allow_private or add it to allow)"
    return Refused(403, "destination_ip_prohibited", f"{subject} {what}; {tail}")


async def resolve_and_check(policy: DestinationPolicy, user: str | None, host: str, port: int, *,
                            is_connect: bool, loop: asyncio.AbstractEventLoop | None = None,
                            resolver: Resolver | None = None, timeout: float | None = None,
                            own: OwnSockets | None = None) -> Decision:
    """Decide whether ``user`` may reach ``host:port``; if so, the one address to connect to.

    Order: syntax (400), CONNECT port (403), per-user rules that need no DNS (403), resolution (502 dns_error,
    504 dns_timeout), every resolved address against ``own``, the proxy's listening sockets (508
    proxy_loop_detected), and against the address policy (403 destination_ip_prohibited), rules that name CIDRs
    (403 http_request_denied). IP literals and numeric spellings (``2130706433``, ``0x7f.1``)
    skip DNS. ``resolver`` defaults to ``loop.getaddrinfo``; it is called as ``resolver(host, port,
    type=SOCK_STREAM)``. Never raises for any ``host``: every failure is a Refused.
    """
    if not isinstance(port, int) or not 0 < port < 65536:
        return Refused(400, "http_request_error", "the destination port is out of range")
    if is_connect and policy.connect_ports is not None and port not in policy.connect_ports:
        allowed = ", ".join(str(p) for p in policy.connect_ports)
        return Refused(403, "http_request_denied", f"CONNECT to port {port} is not allowed (allowed: {allowed})")

    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    literal = _literal(text) if text.isascii() else None
    name: str | None = None
    spelling: str | None = None  # how the host was written, when that was not the address itself
    if literal is None:
        name = normalise_name(text)
        if name is None:
            return Refused(400, "http_request_error", "the destination host is not a valid host name or address")
        if looks_numeric(name):
            literal = parse_inet_aton(name)
            if literal is None:
                return Refused(400, "http_request_error", "the destination host is not a valid IPv4 address")
            spelling, name = name, None  # an inet_aton spelling: judged as the address it means, never resolved
    shown = str(literal) if literal is not None else str(name)

    verdict = policy.rule_verdict(user, name, None if literal is None else [literal], port)
    if verdict is not None and not verdict[0]:
        return _rules_refusal(user, shown, port, verdict[1])

    if literal is not None:
        addresses: list[tuple[IPAddress, int]] = [
            (literal, socket.AF_INET if literal.version == 4 else socket.AF_INET6)
        ]
    else:
        assert name is not None
        resolved = await _resolve(name, port, loop, resolver, timeout)
        if isinstance(resolved, Refused):
            return resolved
        addresses = resolved

    if own:
        for ip, _ in addresses:
            if own.holds(ip, port):
                return _loop_refusal(shown, ip, port)
    for ip, _ in addresses:
        refusal = policy.address_refusal(name, ip)
        if refusal is not None:
            return _address_refused(name, spelling, ip, *refusal)

    if verdict is None:
        verdict = policy.rule_verdict(user, name, [ip for ip, _ in addresses], port)
        if verdict is None or not verdict[0]:
            return _rules_refusal(user, shown, port, None if verdict is None else verdict[1])
    ip, family = addresses[0]
    return Allowed(str(ip), family)


async def _resolve(name: str, port: int, loop: asyncio.AbstractEventLoop | None, resolver: Resolver | None,
                   timeout: float | None) -> list[tuple[IPAddress, int]] | Refused:
    """Every IPv4/IPv6 address ``name`` resolves to, in the resolver's order, de-duplicated."""
    resolve: Resolver = resolver if resolver is not None else (loop or asyncio.get_running_loop()).getaddrinfo
    try:
        infos = await asyncio.wait_for(resolve(name, port, type=socket.SOCK_STREAM), timeout)
    except TimeoutError:
        return Refused(504, "dns_timeout", f"the name {name} could not be resolved within {timeout:g} s")
    except (OSError, UnicodeError, ValueError):
        return Refused(502, "dns_error", f"the name {name} could not be resolved")
    seen: list[tuple[IPAddress, int]] = []
    for info in infos or ():
        try:
            family, sockaddr = info[0], info[4]
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(sockaddr[0])
        except (IndexError, TypeError, ValueError):
            continue
        if (ip, family) not in seen:
            seen.append((ip, family))
    if not seen:
        return Refused(502, "dns_error", f"the name {name} has no IPv4 or IPv6 address")
    return seen
