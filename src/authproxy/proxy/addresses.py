"""Destination addresses and names as the destination policy (:mod:`authproxy.proxy.policy`) sees them.

Every non-public address range, IPv4 and IPv6, from an explicit table (RFC 6890 special-purpose registries) rather
than the ``ipaddress`` properties alone, whose answers changed between Python releases (CVE-2024-4032); IPv4
hidden inside IPv6 (mapped, compatible, 6to4, NAT64, Teredo); the numeric host spellings ``inet_aton`` accepts
(decimal, octal, hex, short forms), parsed here and never sent to DNS; host names normalised, and the glob
patterns of allow lists and per-user rules compiled. Pure functions over values: no IO.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from authproxy.auth.errors import ConfigError

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

# == address classification ===========================================================================================


def _nets(*pairs: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), reason) for net, reason in pairs)


#: IPv4 ranges refused by default, most specific first (RFC 6890 and the IANA IPv4 special-purpose registry).
_V4_REFUSED = _nets(
    ("0.0.0.0/32", "unspecified"),
    ("0.0.0.0/8", "this network (0.0.0.0/8)"),
    ("127.0.0.0/8", "loopback"),
    ("10.0.0.0/8", "private"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("100.64.0.0/10", "shared address space (100.64/10)"),
    ("169.254.0.0/16", "link-local"),
    ("192.0.0.0/24", "IETF protocol assignment"),
    ("192.0.2.0/24", "documentation"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("198.18.0.0/15", "benchmarking"),
    ("192.88.99.0/24", "reserved"),  # the deprecated 6to4 relay anycast prefix (RFC 7526)
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
)

#: IPv6 ranges refused by default. Embedded-IPv4 prefixes are handled before this table is consulted.
_V6_REFUSED = _nets(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("100::/64", "discard-only"),
    # Local-use NAT64 (RFC 8215): translates into the operator's own network; where the IPv4 address sits
    # depends on the prefix length chosen, so the whole /48 is refused rather than decoded.
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("2001:2::/48", "benchmarking"),
    ("2001::/23", "IETF protocol assignment"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing (SRv6)"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_TEREDO = ipaddress.IPv6Network("2001::/32")

#: Reasons that neither ``allow_private`` nor the allow list lift: never a valid unicast TCP destination.
NEVER_ALLOWED = frozenset({"unspecified", "this network (0.0.0.0/8)", "multicast", "broadcast"})


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address carries and how (``"IPv4-mapped"``, ``"6to4"`` ...), if it carries one."""
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped
    if ip in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    if ip.teredo is not None:
        return "Teredo", ip.teredo[1]  # (server, client): the client is where the traffic ends up
    if ip in _V4_COMPATIBLE and int(ip) > 1:  # :: and ::1 are the unspecified and loopback addresses
        return "IPv4-compatible", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _classify_v4(ip: ipaddress.IPv4Address) -> str | None:
    for net, reason in _V4_REFUSED:
        if ip in net:
            return reason
    # Belt and braces: anything the stdlib also considers non-public is refused even if the table missed it.
    if ip.is_private or ip.is_reserved or ip.is_multicast or ip.is_link_local or not ip.is_global:
        return "reserved"
    return None


def classify(ip: IPAddress) -> tuple[str, str | None] | None:
    """(reason, how the refused IPv4 was embedded or None), or None for a public address."""
    if isinstance(ip, ipaddress.IPv4Address):
        reason = _classify_v4(ip)
        return None if reason is None else (reason, None)
    if ip.scope_id:
        ip = ipaddress.IPv6Address(ip.compressed.split("%", 1)[0])
    embedded = embedded_ipv4(ip)
    if embedded is not None:
        how, inner = embedded
        inner_reason = _classify_v4(inner)
        if inner_reason is not None:
            return inner_reason, f"{how} form of {inner}"
        if how == "IPv4-compatible":
            return "reserved", f"{how} form of {inner}"  # deprecated by RFC 4291 section 2.5.5.1
        return None  # IPv4-mapped, NAT64, 6to4 or Teredo form of a public IPv4 address
    for net, reason in _V6_REFUSED:
        if ip in net:
            return reason, None
    if ip not in _V6_GLOBAL_UNICAST:
        return "reserved", None  # RFC 4291: only 2000::/3 is allocated for global unicast
    if ip.is_private or ip.is_reserved or ip.is_multicast or ip.is_link_local or ip.is_site_local:
        return "reserved", None
    return None


def classify_address(ip: IPAddress) -> str | None:
    """Why ``ip`` is refused by default ("loopback", "private", "link-local" ...), or None if it is public.

    An IPv6 address that embeds an IPv4 address (IPv4-mapped, IPv4-compatible, 6to4, NAT64, Teredo) is judged by
    the IPv4 address it carries: ``::ffff:127.0.0.1`` is "loopback".
    """
    found = classify(ip)
    return None if found is None else found[0]


#: How a reason reads in a sentence: (singular, plural); plural None for reasons nothing lifts.
_PHRASES: dict[str, tuple[str, str | None]] = {
    "unspecified": ("the unspecified address", None),
    "this network (0.0.0.0/8)": ("in 0.0.0.0/8 (this network)", None),
    "broadcast": ("the broadcast address", None),
    "multicast": ("a multicast address", None),
    "shared address space (100.64/10)": ("in the shared address space 100.64.0.0/10 (carrier-grade NAT)",
                                         "shared (carrier-grade NAT) addresses"),
}


def describe_reason(reason: str) -> tuple[str, str | None]:
    """``"private"`` -> ``("a private address", "private addresses")``: noun phrases for a detail sentence."""
    if reason in _PHRASES:
        return _PHRASES[reason]
    article = "an" if reason[0] in "aeioI" else "a"  # "an IETF", "a unique local"
    return f"{article} {reason} address", f"{reason} addresses"


# == host names, numeric spellings and patterns ========================================================================

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")
_NUMERIC_PART = re.compile(r"(?:0[xX][0-9a-fA-F]*|[0-9]+)\Z")


def parse_inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address ``inet_aton(3)`` makes of ``text`` (``127.1``, ``0x7f000001``, ``0177.0.0.1``), or None.

    ``getaddrinfo`` accepts these spellings before it asks DNS; parsing them here means an alternative spelling of
    127.0.0.1 is judged as 127.0.0.1 whatever resolver is in use, and never reaches DNS.
    """
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        if not _NUMERIC_PART.match(part):
            return None
        if part[:2].lower() == "0x":
            if len(part) == 2:
                return None
            values.append(int(part[2:], 16))
        elif len(part) > 1 and part[0] == "0":
            if any(c in "89" for c in part):
                return None
            values.append(int(part, 8))
        else:
            values.append(int(part))
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = last
    for shift, value in zip(range(24, 0, -8), head, strict=False):
        number |= value << shift
    return ipaddress.IPv4Address(number)


def looks_numeric(name: str) -> bool:
    """A name whose last label is a number: no real top-level domain is, so it is an IPv4 spelling or nothing."""
    last = name.rsplit(".", 1)[-1]
    return bool(last) and _NUMERIC_PART.match(last) is not None


def normalise_name(host: str) -> str | None:
    """``host`` lower-cased, IDNA-encoded (``bücher.example`` -> ``xn--bcher-kva.example``), without a final dot;
    None if it is not a syntactically valid DNS name."""
    if not host or len(host) > 254:
        return None
    name = host[:-1] if host.endswith(".") else host
    try:
        name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        return None
    name = name.lower()
    if not name or len(name) > 253:
        return None
    if not all(_LABEL.match(label) for label in name.split(".")):
        return None
    return name


_GLOB_CHARS = re.compile(r"[a-z0-9_.*?-]+\Z")


@dataclass(frozen=True)
class HostPatterns:
    """Compiled host entries: globs matched against names, networks matched against addresses."""

    globs: tuple[re.Pattern[str], ...]
    networks: tuple[IPNetwork, ...]

    def match_name(self, name: str | None) -> bool:
        return name is not None and any(g.fullmatch(name) for g in self.globs)

    def match_address(self, ip: IPAddress) -> bool:
        if any(ip in net for net in self.networks):
            return True
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return any(ip.ipv4_mapped in net for net in self.networks)
        return False

    def match_all(self, addresses: Sequence[IPAddress]) -> bool:
        return bool(addresses) and all(self.match_address(a) for a in addresses)


def _compile_glob(key: str, pattern: str) -> re.Pattern[str]:
    labels = []
    for label in pattern.lower().removesuffix(".").split("."):
        if not label.isascii() and "*" not in label and "?" not in label:
            try:
                label = label.encode("idna").decode("ascii")
            except UnicodeError:
                raise ConfigError(f"{key}: {pattern!r} is not a valid host name or glob") from None
        labels.append(label)
    text = ".".join(labels)
    if not text or not _GLOB_CHARS.match(text) or ".." in text:
        raise ConfigError(f"{key}: {pattern!r} is not a host glob (letters, digits, '-', '.', '*' and '?') "
                          "or a CIDR (10.0.0.0/8)")
    if all(label.strip("*?").isdigit() or label in ("*", "?") for label in labels) and text not in ("*", "?"):
        raise ConfigError(f"{key}: {pattern!r} looks like an address: write a CIDR (for example 10.0.0.0/8); "
                          "globs match host names only")
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in text)
    return re.compile(regex)


def compile_hosts(key: str, entries: Iterable[object]) -> HostPatterns:
    globs: list[re.Pattern[str]] = []
    networks: list[IPNetwork] = []
    for index, entry in enumerate(entries):
        where = f"{key}[{index}]"
        if not isinstance(entry, str) or not entry.strip():
            raise ConfigError(f"{where}: expected a host glob or a CIDR, got {entry!r}")
        entry = entry.strip()
        if "/" in entry or ":" in entry or looks_numeric(entry.removesuffix(".")):
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=True))
            except ValueError as exc:
                raise ConfigError(f"{where}: {entry!r} is not a CIDR: {exc}") from None
        else:
            globs.append(_compile_glob(where, entry))
    return HostPatterns(tuple(globs), tuple(networks))
