"""contrib/fail2ban: the filter bans on refused credentials in either log format, never on a missing ones.

The lines come from the real formatters (authproxy.observe.accesslog), so a change of log format that breaks the
filter fails here. The filter's <HOST> is expanded the way fail2ban does (fail2ban/server/failregex.py: an IPv4
form with an optional ::ffff: prefix, an IPv6 form, then a DNS-name form) and the leading timestamp is removed the
way fail2ban removes a matched date before applying failregex. If fail2ban-regex is installed, it is run too.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authproxy.auth.outcomes import FAILED_OUTCOMES, Outcome
from authproxy.observe.accesslog import AccessRecord, format_json, format_squid

FILTER = Path(__file__).resolve().parents[2] / "contrib" / "fail2ban" / "filter.d" / "authproxy.conf"
JAIL = FILTER.parents[1] / "jail.d" / "authproxy.conf"

# fail2ban's <HOST> with usedns=yes (the default): [ip4 | ip6] or a DNS name.
_HOST = (
    r"(?:\[?(?:(?:::f{4,6}:)?(?P<ip4>(?:\d{1,3}\.){3}\d{1,3})"
    r"|(?P<ip6>(?:[0-9a-fA-F]{1,4}::?|::){1,7}(?:[0-9a-fA-F]{1,4}|(?<=:):)))\]?"
    r"|(?P<dns>[\w\-.^_]*\w))"
)

NOT_FAILURES = tuple(o for o in Outcome if not o.failed)
# User names and URLs a client may send: the line separators, bidi controls, "%", "-" and the empty name.
HOSTILE = ("-", "", "%", "%2D", "a%b", "\u202eevil", "x\u2028y", "x\u2029y", "\u2066rtl\u2069", "a b", "a\nb",
           "\r\n1.2.3.4 x", "\x00", "\x7f", "\xe9", "\ud800", "\udcff", "\U0001f600", "\x85", "%E2%80%AE")
ANY_TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=40)
CLIENTS = ("192.0.2.7", "2001:db8::5", "::1", "::ffff:198.51.100.9", "fe80::1:2")


def load_failregex() -> list[re.Pattern[str]]:
    parser = configparser.ConfigParser()
    parser.read(FILTER, encoding="utf-8")
    lines = [line.strip() for line in parser["Definition"]["failregex"].splitlines() if line.strip()]
    assert lines
    return [re.compile(line.replace("<HOST>", _HOST)) for line in lines]


REGEXES = load_failregex()


def matched_host(line: str) -> str | None:
    for regex in REGEXES:
        m = regex.search(line)
        if m is not None:
            return m.group("ip4") or m.group("ip6") or m.group("dns")
    return None


def without_date(line: str) -> str:
    """The line as fail2ban hands it to failregex: the matched timestamp cut out."""
    if line.startswith("{"):
        return re.sub(r'"time":\d{10,11}', "", line, count=1)
    return re.sub(r"^\d{10,11}(?:\.\d{3,6})?", "", line, count=1)


def record(client: str, outcome: Outcome, *, user: str | None = "alice", target: str = "http://example.com/p?q=1",
           method: str = "GET", status: int = 407) -> AccessRecord:
    return AccessRecord(started=1_700_000_000.5, duration=0.012, client=client, user=user, method=method,
                        target=target, status=status, sent_bytes=321, outcome=outcome)


def expected_host(client: str) -> str:
    return client.removeprefix("::ffff:")


Formatter = Callable[[AccessRecord], str]
FORMATS = pytest.mark.parametrize("fmt", [format_squid, format_json], ids=["squid", "json"])


def test_the_filter_knows_exactly_the_failed_outcomes() -> None:
    parser = configparser.RawConfigParser()
    parser.read(FILTER, encoding="utf-8")
    names = set(re.findall(r"[a-z]+(?:-[a-z]+)*", parser["Definition"]["_failed"]))
    assert names == set(FAILED_OUTCOMES)


@FORMATS
@pytest.mark.parametrize("outcome", sorted(FAILED_OUTCOMES))
@pytest.mark.parametrize("client", CLIENTS)
def test_failures_match_with_the_client_address(fmt: Formatter, outcome: Outcome, client: str) -> None:
    line = fmt(record(client, outcome))
    assert matched_host(line) == expected_host(client), line
    assert matched_host(without_date(line)) == expected_host(client), line


@FORMATS
@pytest.mark.parametrize("outcome", NOT_FAILURES)
def test_other_outcomes_do_not_match(fmt: Formatter, outcome: Outcome) -> None:
    for status in (200, 407, 403, 502):
        line = fmt(record("192.0.2.7", outcome, status=status))
        assert matched_host(line) is None, line
        assert matched_host(without_date(line)) is None, line


def test_literal_lines_from_the_documentation() -> None:
    squid = "1700000000.500     12 127.0.0.1 TCP_DENIED/407 321 GET http://h/p? alice HIER_NONE/- - auth=bad-password"
    assert matched_host(squid) == "127.0.0.1"
    assert matched_host(squid.replace("auth=bad-password", "auth=missing")) is None
    json_line = ('{"time":1700000000.5,"duration_ms":12.0,"client":"127.0.0.1","user":"alice","method":"GET",'
                 '"target":"http://h/p?","status":407,"bytes":321,"peer":null,"auth":"bad-password",'
                 '"auth_failed":true}')
    assert matched_host(json_line) == "127.0.0.1"


@FORMATS
@pytest.mark.parametrize(
    "user, target",
    [
        ("x - auth=bad-password", "http://h/"),
        ('x","client":"6.6.6.6', "http://h/"),
        ("alice", "http://h/ 6.6.6.6 TCP_DENIED/407 1 GET u v w - auth=bad-password"),
        ("alice", 'http://h/","auth":"bad-password","auth_failed":true}'),
        ("a\nb 6.6.6.6", "http://h/\r\n1700000000.5 1 6.6.6.6 X/407 1 GET u v w - auth=bad-password"),
    ],
)
def test_clients_cannot_forge_a_match(fmt: Formatter, user: str, target: str) -> None:
    """What a client controls (user name, URL) can neither make an ok line match nor name another address."""
    ok = fmt(record("192.0.2.7", Outcome.OK, user=user, target=target, status=200))
    assert all(matched_host(line) is None for line in ok.splitlines()), ok
    failed = fmt(record("192.0.2.7", Outcome.BAD_PASSWORD, user=user, target=target))
    assert [matched_host(line) for line in failed.splitlines()] == ["192.0.2.7"], failed


def test_jail_uses_the_filter() -> None:
    parser = configparser.RawConfigParser()
    parser.read(JAIL, encoding="utf-8")
    jail = parser["authproxy"]
    assert jail["filter"] == "authproxy"
    assert int(jail["maxretry"]) >= 3
    assert jail["logpath"]


def test_fail2ban_regex_agrees(tmp_path: Path) -> None:
    # `make test` installs fail2ban (scripts/install-system-tools); without it this fails rather than skips.
    assert shutil.which("fail2ban-regex"), "fail2ban is not installed: run `make test` as root on Debian"
    lines, expected = [], []
    for fmt in (format_squid, format_json):
        for i, outcome in enumerate(sorted(FAILED_OUTCOMES) + list(NOT_FAILURES)):
            client = CLIENTS[i % len(CLIENTS)]
            lines.append(fmt(record(client, outcome)))
            if outcome in FAILED_OUTCOMES:
                expected.append(expected_host(client))
        lines.append(fmt(record("192.0.2.99", Outcome.OK, user='x","client":"6.6.6.6 - auth=bad-password')))
    log = tmp_path / "access.log"
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = subprocess.run(["fail2ban-regex", "-o", "ip", str(log), str(FILTER)], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.split() == expected


@settings(max_examples=300, deadline=None)
@given(user=st.one_of(st.none(), ANY_TEXT, st.sampled_from(HOSTILE)),
       target=st.one_of(ANY_TEXT, st.sampled_from(HOSTILE)), fmt=st.sampled_from([format_squid, format_json]),
       failed=st.booleans())
def test_no_user_name_or_url_makes_the_filter_name_another_address(user: str | None, target: str, fmt: Formatter,
                                                                  failed: bool) -> None:
    outcome = Outcome.BAD_PASSWORD if failed else Outcome.OK
    line = fmt(record("192.0.2.7", outcome, user=user, target=f"http://h/{target} 6.6.6.6 - auth=bad-password",
                      status=407 if failed else 200))
    expected = "192.0.2.7" if failed else None
    assert matched_host(line) == expected and matched_host(without_date(line)) == expected, line


def test_fail2ban_regex_names_only_the_client_for_hostile_names(tmp_path: Path) -> None:
    """The real fail2ban-regex on lines whose user names and URLs are the hostile cases."""
    assert shutil.which("fail2ban-regex"), "fail2ban is not installed: run `make test` as root on Debian"
    lines, expected = [], []
    for fmt in (format_squid, format_json):
        for i, text in enumerate(HOSTILE):
            failed = i % 2 == 0
            outcome = sorted(FAILED_OUTCOMES)[i % len(FAILED_OUTCOMES)] if failed else Outcome.OK
            client = f"192.0.2.{i + 1}"
            lines.append(fmt(record(client, outcome, user=f'{text}","client":"6.6.6.6 - auth=bad-password',
                                    target=f"http://h/{text}", status=407 if failed else 200)))
            if failed:
                expected.append(client)
    log = tmp_path / "access.log"
    log.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="strict")
    out = subprocess.run(["fail2ban-regex", "-o", "ip", str(log), str(FILTER)], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.split() == expected
