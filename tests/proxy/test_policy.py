"""authproxy.proxy.policy: address classes in every spelling, allow lists, CONNECT ports, per-user rules, DNS."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authproxy.auth.errors import ConfigError
from authproxy.engine.decision import Allowed, Decision, Refused
from authproxy.proxy.addresses import classify_address, embedded_ipv4, normalise_name, parse_inet_aton
from authproxy.proxy.policy import DestinationPolicy, OwnSockets, UserRule, resolve_and_check

ip = ipaddress.ip_address


# == classify_address ================================================================================================

@pytest.mark.parametrize(
    "address, reason",
    [
        # IPv4
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "this network (0.0.0.0/8)"),
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("10.0.0.5", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "shared address space (100.64/10)"),
        ("100.127.255.255", "shared address space (100.64/10)"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("192.0.0.8", "IETF protocol assignment"),
        ("192.0.2.1", "documentation"),
        ("198.51.100.7", "documentation"),
        ("203.0.113.9", "documentation"),
        ("198.18.0.1", "benchmarking"),
        ("198.19.255.255", "benchmarking"),
        ("192.88.99.1", "reserved"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "broadcast"),
        # IPv6
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fec0::1", "site-local"),
        ("fc00::1", "unique local"),
        ("fd12:3456::1", "unique local"),
        ("ff02::1", "multicast"),
        ("ff0e::1", "multicast"),
        ("100::1", "discard-only"),
        ("2001:db8::1", "documentation"),
        ("3fff::1", "documentation"),
        ("2001:2::1", "benchmarking"),
        ("2001:10::1", "IETF protocol assignment"),
        ("5f00::1", "segment routing (SRv6)"),
        ("4000::1", "reserved"),  # outside 2000::/3, the only global unicast allocation
        ("1234::1", "reserved"),
        # IPv4 inside IPv6
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:0.0.0.0", "unspecified"),
        ("::127.0.0.1", "loopback"),  # IPv4-compatible (deprecated)
        ("::10.0.0.1", "private"),
        ("::8.8.8.8", "reserved"),  # IPv4-compatible is refused even with a public address inside
        ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a00:1::", "private"),  # 6to4 of 10.0.0.1
        ("2002:a9fe:a9fe::1", "link-local"),  # 6to4 of 169.254.169.254
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
        ("64:ff9b::10.1.2.3", "private"),
        ("64:ff9b::169.254.169.254", "link-local"),
        ("64:ff9b:1::8.8.8.8", "local-use NAT64"),  # RFC 8215
        ("64:ff9b:1:7f00:1::", "local-use NAT64"),
        # Teredo: client 127.0.0.1 obfuscated (XOR 0xffffffff) in the last 32 bits
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "private"),  # client 10.0.0.1
    ],
)
def test_refused_addresses(address: str, reason: str) -> None:
    assert classify_address(ip(address)) == reason


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8", "1.1.1.1", "93.184.216.34", "100.63.255.255", "100.128.0.0", "172.15.255.255", "172.32.0.0",
        "192.167.255.255", "198.17.255.255", "198.20.0.0", "223.255.255.255", "11.0.0.1",
        "2606:4700:4700::1111", "2a00:1450:4001::200e", "2001:4860:4860::8888",
        "::ffff:8.8.8.8", "64:ff9b::8.8.8.8", "2002:808:808::1",
        "2001:0:4136:e378:8000:63bf:f7f7:f7f7",  # Teredo of a public client (8.8.8.8)
    ],
)
def test_public_addresses(address: str) -> None:
    assert classify_address(ip(address)) is None


def test_stdlib_mistakes_are_not_trusted() -> None:
    """ipaddress of 3.11.7 calls 64:ff9b:1::/48 global and 100.64/10 not private; the tables decide."""
    assert classify_address(ip("64:ff9b:1::1")) == "local-use NAT64"
    assert not ip("100.64.0.1").is_private
    assert classify_address(ip("100.64.0.1")) is not None


def test_embedded_ipv4_forms() -> None:
    assert embedded_ipv4(ipaddress.IPv6Address("::ffff:1.2.3.4")) == ("IPv4-mapped", ip("1.2.3.4"))
    assert embedded_ipv4(ipaddress.IPv6Address("64:ff9b::1.2.3.4")) == ("NAT64", ip("1.2.3.4"))
    assert embedded_ipv4(ipaddress.IPv6Address("2002:102:304::1")) == ("6to4", ip("1.2.3.4"))
    assert embedded_ipv4(ipaddress.IPv6Address("::1.2.3.4")) == ("IPv4-compatible", ip("1.2.3.4"))
    assert embedded_ipv4(ipaddress.IPv6Address("2001:0:4136:e378:8000:63bf:80ff:fffe")) == ("Teredo", ip("127.0.0.1"))
    assert embedded_ipv4(ipaddress.IPv6Address("::1")) is None
    assert embedded_ipv4(ipaddress.IPv6Address("2606:4700::1")) is None


# == numeric spellings and names =======================================================================================

@pytest.mark.parametrize(
    "text, expected",
    [
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("017700000001", "127.0.0.1"),
        ("10.0x1.0.01", "10.1.0.1"),
        ("169.254.43518", "169.254.169.254"),
        ("1.2.3.4", "1.2.3.4"),
        ("256.1.1.1", None),
        ("1.2.3.4.5", None),
        ("08.1.1.1", None),
        ("0x", None),
        ("", None),
        ("1..2", None),
        ("4294967296", None),
        ("1.16777216", None),
    ],
)
def test_parse_inet_aton(text: str, expected: str | None) -> None:
    assert parse_inet_aton(text) == (None if expected is None else ip(expected))


@given(st.lists(st.one_of(st.integers(0, 2**32), st.sampled_from(["0x", "0", ""])), min_size=1, max_size=5),
       st.sampled_from(["dec", "hex", "oct"]))
def test_parse_inet_aton_agrees_with_libc(values: list[int | str], base: str) -> None:
    """The same answer as the C library's inet_aton, which getaddrinfo uses before it asks DNS."""
    parts = []
    for v in values:
        if isinstance(v, str):
            parts.append(v)
        else:
            parts.append({"dec": str(v), "hex": hex(v), "oct": "0" + oct(v)[2:]}[base])
    text = ".".join(parts)
    try:
        libc: ipaddress.IPv4Address | None = ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        libc = None
    assert parse_inet_aton(text) == libc


def test_normalise_name() -> None:
    assert normalise_name("Example.COM.") == "example.com"
    assert normalise_name("bücher.example") == "xn--bcher-kva.example"
    assert normalise_name("_sip._tcp.example") == "_sip._tcp.example"
    for bad in ("", ".", "a..b", "a b", "a\x00b", "-a.example", "a-.example", "x" * 64 + ".example", "a/b",
                "a@b", "a:b", "a\r\nb", "\ufffd"):
        assert normalise_name(bad) is None, bad


# == resolve_and_check ===============================================================================================

def run(policy: DestinationPolicy, host: str, port: int = 80, *, user: str | None = "alice",
        is_connect: bool = False, table: Mapping[str, Sequence[str]] | None = None) -> Decision:
    return asyncio.run(resolve_and_check(policy, user, host, port, is_connect=is_connect,
                                         resolver=fake_resolver(table or {})))


class Calls(list[str]):
    pass


def fake_resolver(table: Mapping[str, Sequence[str]], calls: Calls | None = None) -> Any:
    """A getaddrinfo stand-in: ``table`` maps a name to its addresses; other names fail like NXDOMAIN."""

    async def getaddrinfo(host: str, port: int, *, type: int = 0, **_: Any) -> list[tuple[Any, ...]]:
        assert type == socket.SOCK_STREAM
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out: list[tuple[Any, ...]] = []
        for address in table[host]:
            if ":" in address:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
        return out

    return getaddrinfo


DEFAULT = DestinationPolicy()


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1", "2130706433", "0177.0.0.1", "0x7f000001", "0x7F000001", "127.1", "127.0.1", "0177.1",
        "017700000001", "0x7f.0.0.1", "127.0.0.1.", "::1", "[::1]", "::ffff:127.0.0.1", "::FFFF:7f00:1",
        "[::ffff:127.0.0.1]", "::127.0.0.1", "2002:7f00:1::1", "64:ff9b::127.0.0.1", "127.255.255.255",
    ],
)
def test_loopback_in_every_spelling(host: str) -> None:
    calls = Calls()
    decision = asyncio.run(resolve_and_check(DEFAULT, "alice", host, 80, is_connect=False,
                                             resolver=fake_resolver({}, calls)))
    assert isinstance(decision, Refused), decision
    assert (decision.status, decision.error) == (403, "destination_ip_prohibited")
    assert "loopback" in decision.detail
    assert calls == []  # numeric forms never reach DNS


@pytest.mark.parametrize(
    "host, words",
    [
        ("10.0.0.5", "the destination 10.0.0.5 is a private address; this proxy does not reach private addresses "
                     "(set allow_private or add it to allow)"),
        ("0x7f000001", "the destination 0x7f000001 means 127.0.0.1, which is a loopback address"),
        ("169.254.169.254", "link-local"),
        ("0.0.0.0", "the destination 0.0.0.0 is the unspecified address; that is never a valid destination"),
        ("0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "shared address space 100.64.0.0/10"),
        ("fd00::1", "a unique local address"),
        ("fe80::1%eth0", "link-local"),
        ("::ffff:10.0.0.1", "the IPv4-mapped form of 10.0.0.1, a private address"),
        ("2002:a00:1::1", "the 6to4 form of 10.0.0.1, a private address"),
        ("64:ff9b::a00:1", "the NAT64 form of 10.0.0.1"),
    ],
)
def test_refusal_details(host: str, words: str) -> None:
    decision = run(DEFAULT, host)
    assert isinstance(decision, Refused)
    assert (decision.status, decision.error) == (403, "destination_ip_prohibited")
    assert words in decision.detail


def test_names_that_resolve_to_internal_addresses() -> None:
    table = {"evil.test": ["10.0.0.1"], "meta.test": ["169.254.169.254"], "mapped.test": ["::ffff:127.0.0.1"],
             "mixed.test": ["93.184.216.34", "127.0.0.1"], "mixed6.test": ["2606:4700::1", "fd00::1"],
             "good.test": ["93.184.216.34", "2606:4700::1"]}
    for name, reason in [("evil.test", "private"), ("meta.test", "link-local"), ("mapped.test", "loopback"),
                         ("mixed.test", "loopback"), ("mixed6.test", "unique local")]:
        decision = run(DEFAULT, name, table=table)
        assert isinstance(decision, Refused), name
        assert decision.error == "destination_ip_prohibited"
        assert f"the destination {name} resolves to" in decision.detail and reason in decision.detail
    assert run(DEFAULT, "good.test", table=table) == Allowed("93.184.216.34", socket.AF_INET)
    assert run(DEFAULT, "GOOD.test.", table=table) == Allowed("93.184.216.34", socket.AF_INET)


def test_first_checked_address_is_the_one_to_connect_to() -> None:
    table = {"v6first.test": ["2606:4700::1", "93.184.216.34"]}
    assert run(DEFAULT, "v6first.test", table=table) == Allowed("2606:4700::1", socket.AF_INET6)


def test_resolution_happens_once() -> None:
    calls = Calls()
    asyncio.run(resolve_and_check(DEFAULT, "alice", "good.test", 80, is_connect=False,
                                  resolver=fake_resolver({"good.test": ["93.184.216.34"]}, calls)))
    assert calls == ["good.test"]


def test_idna_names_are_resolved_in_ascii_form() -> None:
    calls = Calls()
    decision = asyncio.run(resolve_and_check(DEFAULT, "alice", "Bücher.example", 80, is_connect=False,
                                             resolver=fake_resolver({"xn--bcher-kva.example": ["8.8.8.8"]},
                                                                    calls)))
    assert decision == Allowed("8.8.8.8", socket.AF_INET)
    assert calls == ["xn--bcher-kva.example"]


def test_dns_failures() -> None:
    decision = run(DEFAULT, "nxdomain.test")
    assert decision == Refused(502, "dns_error", "the name nxdomain.test could not be resolved")
    decision = run(DEFAULT, "empty.test", table={"empty.test": []})
    assert isinstance(decision, Refused) and (decision.status, decision.error) == (502, "dns_error")


def test_dns_timeout() -> None:
    async def slow(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        await asyncio.sleep(10)
        return []

    decision = asyncio.run(resolve_and_check(DEFAULT, None, "slow.test", 80, is_connect=False, resolver=slow,
                                             timeout=0.01))
    assert isinstance(decision, Refused) and (decision.status, decision.error) == (504, "dns_timeout")


@pytest.mark.parametrize("host", ["", " ", "a b", "a\x00b", "exa mple.com", "a\r\nb", "a..b", "x/y", "user@h",
                                  "256.1.1.1", "1.2.3.4.5", "08.0.0.1", "[]", "[::1", "::1]", "a:b:c", "\ufffd"])
def test_malformed_hosts_are_400(host: str) -> None:
    decision = run(DEFAULT, host)
    assert isinstance(decision, Refused) and (decision.status, decision.error) == (400, "http_request_error")
    assert decision.detail.startswith("the destination host is not a valid")  # never echoes what was sent


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_port_out_of_range(port: int) -> None:
    decision = run(DEFAULT, "8.8.8.8", port)
    assert isinstance(decision, Refused) and decision.status == 400


def test_public_literals_skip_dns() -> None:
    assert run(DEFAULT, "8.8.8.8") == Allowed("8.8.8.8", socket.AF_INET)
    assert run(DEFAULT, "[2606:4700::1111]") == Allowed("2606:4700::1111", socket.AF_INET6)
    assert run(DEFAULT, "134744072") == Allowed("8.8.8.8", socket.AF_INET)  # decimal spelling of 8.8.8.8


def test_real_resolver_localhost() -> None:
    """/etc/hosts maps localhost to 127.0.0.1 (and ::1): refused through the event loop's getaddrinfo."""
    decision = asyncio.run(resolve_and_check(DEFAULT, "alice", "localhost", 80, is_connect=False))
    assert isinstance(decision, Refused) and decision.error == "destination_ip_prohibited"
    assert "loopback" in decision.detail

    async def with_loop() -> Decision:
        loop = asyncio.get_running_loop()
        return await resolve_and_check(DestinationPolicy(allow_private=True), "alice", "localhost", 8080,
                                       is_connect=False, loop=loop)

    allowed = asyncio.run(with_loop())
    assert isinstance(allowed, Allowed) and ip(allowed.address).is_loopback
    assert allowed.family in (socket.AF_INET, socket.AF_INET6)


# == CONNECT ports ===================================================================================================

def test_connect_ports() -> None:
    decision = run(DEFAULT, "8.8.8.8", 22, is_connect=True)
    assert decision == Refused(403, "http_request_denied", "CONNECT to port 22 is not allowed (allowed: 443)")
    assert run(DEFAULT, "8.8.8.8", 443, is_connect=True) == Allowed("8.8.8.8", socket.AF_INET)
    assert run(DEFAULT, "8.8.8.8", 22) == Allowed("8.8.8.8", socket.AF_INET)  # plain http: any port
    anyport = DestinationPolicy(connect_ports=None)
    assert isinstance(run(anyport, "8.8.8.8", 22, is_connect=True), Allowed)
    two = DestinationPolicy(connect_ports=(443, 8443))
    refused = run(two, "8.8.8.8", 25, is_connect=True)
    assert isinstance(refused, Refused) and "(allowed: 443, 8443)" in refused.detail
    none = DestinationPolicy(connect_ports=())
    assert isinstance(run(none, "8.8.8.8", 443, is_connect=True), Refused)


def test_connect_port_is_checked_before_dns() -> None:
    calls = Calls()
    asyncio.run(resolve_and_check(DEFAULT, "alice", "good.test", 25, is_connect=True,
                                  resolver=fake_resolver({"good.test": ["8.8.8.8"]}, calls)))
    assert calls == []


def test_connect_to_internal_addresses_is_refused_too() -> None:
    decision = run(DEFAULT, "127.0.0.1", 443, is_connect=True)
    assert isinstance(decision, Refused) and decision.error == "destination_ip_prohibited"


# == allow_private and the allow list ================================================================================

def test_allow_private_lifts_everything_but_never_allowed() -> None:
    policy = DestinationPolicy(allow_private=True)
    for host in ("127.0.0.1", "10.0.0.1", "::1", "169.254.169.254", "fd00::1", "0x7f.1", "100.64.0.1"):
        assert isinstance(run(policy, host), Allowed), host
    for host in ("0.0.0.0", "0", "0.1.2.3", "::", "224.0.0.1", "ff02::1", "255.255.255.255", "::ffff:0.0.0.0"):
        decision = run(policy, host)
        assert isinstance(decision, Refused) and "never" in decision.detail, host


def test_allow_by_cidr() -> None:
    policy = DestinationPolicy(allow=("10.1.0.0/16", "fd00:1::/32", "192.168.1.10"))
    assert run(policy, "10.1.2.3") == Allowed("10.1.2.3", socket.AF_INET)
    assert isinstance(run(policy, "10.2.0.1"), Refused)
    assert isinstance(run(policy, "::ffff:10.1.2.3"), Allowed)  # the IPv4-mapped form of an allowed address
    assert isinstance(run(policy, "fd00:1::5"), Allowed)
    assert isinstance(run(policy, "192.168.1.10"), Allowed)
    assert isinstance(run(policy, "192.168.1.11"), Refused)
    table = {"db.internal": ["10.1.9.9"], "mixed.internal": ["10.1.9.9", "10.9.9.9"]}
    assert run(policy, "db.internal", table=table) == Allowed("10.1.9.9", socket.AF_INET)
    assert isinstance(run(policy, "mixed.internal", table=table), Refused)  # one address outside


def test_allow_by_glob() -> None:
    policy = DestinationPolicy(allow=("*.corp.example", "wiki.bücher.example", "intranet"))
    table = {"git.corp.example": ["10.0.0.7"], "a.b.corp.example": ["10.0.0.8"], "corp.example": ["10.0.0.9"],
             "evilcorp.example": ["10.0.0.10"], "wiki.xn--bcher-kva.example": ["10.0.0.11"],
             "intranet": ["192.168.0.1"], "corp.example.attacker.test": ["10.0.0.12"]}
    assert run(policy, "git.corp.example", table=table) == Allowed("10.0.0.7", socket.AF_INET)
    assert isinstance(run(policy, "GIT.Corp.Example.", table=table), Allowed)  # case and trailing dot
    assert isinstance(run(policy, "a.b.corp.example", table=table), Allowed)
    assert isinstance(run(policy, "corp.example", table=table), Refused)
    assert isinstance(run(policy, "evilcorp.example", table=table), Refused)
    assert isinstance(run(policy, "corp.example.attacker.test", table=table), Refused)
    assert isinstance(run(policy, "wiki.bücher.example", table=table), Allowed)  # IDNA on both sides
    assert isinstance(run(policy, "wiki.xn--bcher-kva.example", table=table), Allowed)
    assert isinstance(run(policy, "intranet", table=table), Allowed)
    # A glob never lifts the refusal for an address literal, in any spelling.
    assert isinstance(run(DestinationPolicy(allow=("*",)), "10.0.0.1"), Refused)
    # Nor for the never-allowed ranges.
    assert isinstance(run(policy, "zero.corp.example", table={"zero.corp.example": ["0.0.0.0"]}), Refused)


# == per-user rules ==================================================================================================

RULES = DestinationPolicy.from_config(
    allow_private=False,
    allow=["10.1.0.0/16"],
    connect_ports="any",
    rules=[
        {"users": ["mallory"], "hosts": ["*"], "action": "deny"},
        {"users": ["bob"], "hosts": ["*.intranet.example"], "action": "deny"},
        {"users": ["alice", "bob"], "hosts": ["*.example", "10.1.0.0/16"], "ports": [80, 443]},
        {"users": ["*"], "hosts": ["public.example"], "ports": [443]},
        {"users": ["ops"], "hosts": ["8.8.8.0/24"]},
    ],
)
TABLE = {"www.example": ["93.184.216.34"], "git.intranet.example": ["93.184.216.35"],
         "public.example": ["93.184.216.36"], "other.test": ["93.184.216.37"], "db.internal": ["10.1.0.5"],
         "dns.google": ["8.8.8.8"], "split.test": ["8.8.8.8", "9.9.9.9"]}


@pytest.mark.parametrize(
    "user, host, port, allowed",
    [
        ("alice", "www.example", 80, True),
        ("alice", "www.example", 443, True),
        ("alice", "www.example", 8080, False),  # port not in the rule
        ("alice", "other.test", 80, False),  # no rule matches the host
        ("alice", "git.intranet.example", 80, True),
        ("bob", "git.intranet.example", 80, False),  # the deny rule comes first
        ("bob", "www.example", 80, True),
        ("alice", "10.1.0.5", 80, True),  # CIDR rule, address literal
        ("alice", "db.internal", 80, True),  # CIDR rule, resolved name
        ("carol", "public.example", 443, True),  # "*" rule
        ("carol", "public.example", 80, False),
        ("carol", "www.example", 80, False),
        (None, "public.example", 443, True),  # only "*" rules name an anonymous user
        (None, "www.example", 80, False),
        ("mallory", "public.example", 443, False),  # denied everything, before the "*" rule
        ("ALICE", "www.example", 80, False),  # user names are exact
        ("ops", "dns.google", 53, True),
        ("ops", "8.8.8.8", 53, True),
        ("ops", "split.test", 53, False),  # 9.9.9.9 is outside the rule's CIDR
    ],
)
def test_rules(user: str | None, host: str, port: int, allowed: bool) -> None:
    decision = run(RULES, host, port, user=user, table=TABLE)
    assert isinstance(decision, Allowed) is allowed, decision
    if not allowed:
        assert isinstance(decision, Refused) and (decision.status, decision.error) == (403, "http_request_denied")


def test_rule_details() -> None:
    denied = run(RULES, "git.intranet.example", 80, user="bob", table=TABLE)
    assert denied == Refused(403, "http_request_denied",
                             "user 'bob' may not reach git.intranet.example:80 (rule rules[1] denies it)")
    unmatched = run(RULES, "other.test", 80, user="alice", table=TABLE)
    assert isinstance(unmatched, Refused)
    assert unmatched.detail == "user 'alice' may not reach other.test:80 (no rule of this proxy allows it)"


def test_rules_never_lift_the_address_refusal() -> None:
    policy = DestinationPolicy(rules=(UserRule(("alice",), ("10.0.0.0/8", "*.lan")),))
    assert isinstance(run(policy, "10.0.0.1"), Refused)
    decision = run(policy, "nas.lan", table={"nas.lan": ["10.0.0.2"]})
    assert isinstance(decision, Refused) and decision.error == "destination_ip_prohibited"


def test_rules_refuse_before_dns_when_they_can() -> None:
    calls = Calls()
    decision = asyncio.run(resolve_and_check(RULES, "carol", "www.example", 80, is_connect=False,
                                             resolver=fake_resolver(TABLE, calls)))
    assert isinstance(decision, Refused) and calls == []


def test_no_rules_means_everyone_everywhere() -> None:
    assert DEFAULT.rule_verdict("anyone", "x.test", None, 1) == (True, None)


# == configuration ===================================================================================================

def test_from_config_defaults() -> None:
    policy = DestinationPolicy.from_config()
    assert policy == DestinationPolicy()
    assert DestinationPolicy.from_config(True, ["10.0.0.0/8"], [443, 8443], []).connect_ports == (443, 8443)
    assert DestinationPolicy.from_config(connect_ports=None).connect_ports is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"allow_private": "yes"}, "allow_private: expected true or false"),
        ({"allow": "10.0.0.0/8"}, "allow: expected a list"),
        ({"allow": ["10.0.0.1/8"]}, "allow[0]: '10.0.0.1/8' is not a CIDR"),
        ({"allow": ["ok.example", "bad host"]}, "allow[1]: 'bad host' is not a host glob"),
        ({"allow": ["10.*"]}, "allow[0]: '10.*' looks like an address: write a CIDR"),
        ({"allow": ["300.1.1.1"]}, "allow[0]: '300.1.1.1' is not a CIDR"),
        ({"allow": [""]}, "allow[0]: expected a host glob or a CIDR"),
        ({"connect_ports": [0]}, "connect_ports: 0 is not a port"),
        ({"connect_ports": "443"}, "connect_ports: expected 'any' or a non-empty list of ports"),
        ({"connect_ports": [True]}, "connect_ports: expected"),
        ({"rules": {"users": ["a"]}}, "rules: expected a list of tables"),
        ({"rules": ["x"]}, "rules[0]: expected a table"),
        ({"rules": [{"users": ["a"], "hosts": ["*"]}, {"user": ["a"], "hosts": ["*"]}]},
         "rules[1]: unknown key 'user'"),
        ({"rules": [{"hosts": ["*"]}]}, "rules[0].users: expected a non-empty list of strings"),
        ({"rules": [{"users": [], "hosts": ["*"]}]}, "rules[0].users: expected a non-empty list"),
        ({"rules": [{"users": ["a"], "hosts": "*"}]}, "rules[0].hosts: expected a non-empty list"),
        ({"rules": [{"users": ["a"], "hosts": ["*"]}, {"users": ["a"], "hosts": ["*"]},
                    {"users": ["a"], "hosts": ["ok.example", "not a host"]}]}, "rules[2].hosts[1]: 'not a host'"),
        ({"rules": [{"users": ["a"], "hosts": ["10.0.0.0/33"]}]}, "rules[0].hosts[0]: '10.0.0.0/33' is not a CIDR"),
        ({"rules": [{"users": ["a"], "hosts": ["*"], "ports": [70000]}]}, "rules[0].ports: 70000 is not a port"),
        ({"rules": [{"users": ["a"], "hosts": ["*"], "ports": []}]}, "rules[0].ports: expected 'any' or a non"),
        ({"rules": [{"users": ["a"], "hosts": ["*"], "action": "block"}]}, "rules[0].action: expected 'allow'"),
    ],
)
def test_config_errors_name_the_key(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        DestinationPolicy.from_config(**kwargs)
    assert message in str(info.value)


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"rules\[0\]\.hosts"):
        DestinationPolicy(rules=(UserRule(("a",), ()),))
    with pytest.raises(ConfigError, match=r"allow\[0\]"):
        DestinationPolicy(allow=("a b",))


def test_toml_shaped_rules() -> None:
    import tomllib

    data = tomllib.loads("""
        allow_private = false
        allow = ["*.corp.example", "10.1.0.0/16"]
        connect_ports = [443, 8443]
        [[rules]]
        users = ["alice"]
        hosts = ["*.corp.example"]
        ports = [443]
        [[rules]]
        users = ["*"]
        hosts = ["*"]
        action = "allow"
    """)
    policy = DestinationPolicy.from_config(data["allow_private"], data["allow"], data["connect_ports"],
                                           data["rules"])
    assert policy.rules[0] == UserRule(("alice",), ("*.corp.example",), (443,), "allow")
    assert policy.rules[1].ports is None


# == the invariant: any host gives a Decision ==========================================================================

HOSTLIKE = st.one_of(
    st.text(max_size=80),
    st.text(alphabet="0123456789abcdefxX.:[]%-_*", max_size=40),
    st.from_regex(r"[a-z0-9.-]{0,70}", fullmatch=True),
    st.ip_addresses().map(str),
    st.integers(0, 2**40).map(str),
)


@settings(max_examples=400, deadline=None)
@given(host=HOSTLIKE, port=st.integers(-5, 70000), connect=st.booleans(),
       user=st.one_of(st.none(), st.text(max_size=8)))
def test_any_host_gives_a_decision(host: str, port: int, connect: bool, user: str | None) -> None:
    async def resolver(name: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        # Every name resolves, half of them somewhere internal.
        address = "10.0.0.1" if hash(name) % 2 else "93.184.216.34"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    for policy in (DEFAULT, RULES, DestinationPolicy(allow_private=True, connect_ports=None)):
        decision = asyncio.run(resolve_and_check(policy, user, host, port, is_connect=connect, resolver=resolver))
        assert isinstance(decision, Allowed | Refused)
        if isinstance(decision, Refused):
            assert decision.status in (400, 403, 502, 504)
            assert decision.detail.isprintable() and "\r" not in decision.detail
        else:
            assert classify_address(ip(decision.address)) is None or policy.allow_private


# == the proxy's own sockets: a loop =================================================================================

OPEN = DestinationPolicy(allow_private=True, connect_ports=None)


def own_run(own: OwnSockets, host: str, port: int, table: Mapping[str, Sequence[str]] | None = None) -> Decision:
    return asyncio.run(resolve_and_check(OPEN, "alice", host, port, is_connect=True,
                                         resolver=fake_resolver(table or {}), own=own))


def test_a_bound_address_is_a_loop_only_at_that_address_and_port() -> None:
    own = OwnSockets([(socket.AF_INET, "127.0.0.1", 3128, False)])
    for host in ("127.0.0.1", "[::ffff:127.0.0.1]", "2130706433", "127.1", "loop.test"):
        decision = own_run(own, host, 3128, {"loop.test": ["93.184.216.34", "127.0.0.1"]})
        assert isinstance(decision, Refused) and (decision.status, decision.error) == (508, "proxy_loop_detected")
        assert "is this proxy itself" in decision.detail and ":3128" in decision.detail, host
    assert own_run(own, "127.0.0.1", 3129) == Allowed("127.0.0.1", socket.AF_INET)
    assert own_run(own, "127.0.0.2", 3128) == Allowed("127.0.0.2", socket.AF_INET)  # not bound there
    assert own_run(OwnSockets(), "127.0.0.1", 3128) == Allowed("127.0.0.1", socket.AF_INET)


def test_a_wildcard_listener_is_every_local_address_of_its_family() -> None:
    v4 = OwnSockets([(socket.AF_INET, "0.0.0.0", 3128, False)])
    assert v4.holds(ip("127.0.0.1"), 3128) and v4.holds(ip("127.8.9.10"), 3128)  # all of 127/8 is local
    assert v4.holds(ip("::ffff:127.0.0.2"), 3128) and v4.holds(ip("0.0.0.0"), 3128)
    assert not v4.holds(ip("127.0.0.1"), 3129)
    assert not v4.holds(ip("192.0.2.1"), 3128)  # documentation range: not an address of this machine
    assert not v4.holds(ip("::1"), 3128)  # an IPv4-only socket is not reached over IPv6
    v6only = OwnSockets([(socket.AF_INET6, "::", 3128, False)])
    assert v6only.holds(ip("::1"), 3128) and not v6only.holds(ip("127.0.0.1"), 3128)
    assert not v6only.holds(ip("2001:db8::1"), 3128)
    dual = OwnSockets([(socket.AF_INET6, "::", 3128, True)])
    assert dual.holds(ip("::1"), 3128) and dual.holds(ip("127.0.0.1"), 3128)


def test_own_sockets_read_from_real_listening_sockets() -> None:
    with socket.create_server(("0.0.0.0", 0)) as wild, socket.create_server(("127.0.0.1", 0)) as one, \
            socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True) as dual:
        own = OwnSockets.of([wild, one, dual])
        wild_port, one_port, dual_port = (s.getsockname()[1] for s in (wild, one, dual))
        assert own.holds(ip("127.0.0.3"), wild_port) and not own.holds(ip("::1"), wild_port)
        assert own.holds(ip("127.0.0.1"), one_port) and not own.holds(ip("127.0.0.3"), one_port)
        assert own.holds(ip("::1"), dual_port) and own.holds(ip("127.0.0.1"), dual_port)
