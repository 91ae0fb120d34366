"""The access log's escaping: every user name and URL comes back exactly, and none can forge or disguise a line.

Squid format: percent-encoded fields (``%`` itself, controls, spaces, non-ASCII as UTF-8 bytes; ``-`` alone is
"none", so a user called ``-`` is written ``%2D``). JSON: every non-ASCII character as ``\\uXXXX`` (U+2028,
U+2029 and the bidi controls included). tests/proxy/test_fail2ban_filter.py checks the same hostile names against
the fail2ban filter.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from authproxy.auth.outcomes import Outcome
from authproxy.observe.accesslog import (
    AccessRecord,
    escape,
    format_json,
    format_squid,
    parse_squid,
    unescape,
)

# Any code point, lone surrogates included (a header decoded with surrogateescape holds them).
TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=40)
HOSTILE = ["-", "", "%", "%2D", "a%b", "\u202eevil", "x\u2028y", "x\u2029y", "\u2066rtl\u2069", "a b", "a\nb",
           "\r\n1.2.3.4 x", "\x00", "\x7f", "é", "\ud800", "\udcff", "\U0001f600", "\u0085", "%E2%80%AE"]


def record(user: str | None, target: str, *, client: str = "192.0.2.7", outcome: Outcome = Outcome.OK,
           status: int = 200) -> AccessRecord:
    return AccessRecord(started=1_700_000_000.5, duration=0.012, client=client, user=user, method="GET",
                        target=target, status=status, sent_bytes=321, outcome=outcome, peer="198.51.100.1:80")


@pytest.mark.parametrize("text", HOSTILE)
def test_escape_is_ascii_and_reversible(text: str) -> None:
    field = escape(text)
    assert field and field.isascii() and field.isprintable() and " " not in field
    assert field != "-"  # "-" alone is reserved for "no value"
    assert unescape(field) == text


def test_the_cases_of_the_issue() -> None:
    assert escape("-") == "%2D" and escape(None) == "-" and unescape("-") is None
    assert escape("100%") == "100%25"
    assert escape("\u202e") == "%E2%80%AE"  # was "%2E", which read back as "."
    line = format_json(record("\u202eadmin", "http://h/\u2028\u2029"))
    assert line.isascii() and "\\u202e" in line and "\\u2028" in line and "\\u2029" in line
    assert "\n" not in line and "\u2028" not in line


@settings(max_examples=500, deadline=None)
@given(user=st.one_of(st.none(), TEXT), target=TEXT)
@example(user="-", target="-").via("a user named '-' is not 'no user'")
@example(user="", target="").via("empty fields keep the field count")
@example(user="\u202e", target="http://h/%41").via("bidi control; a literal %41 is not 'A'")
def test_squid_line_round_trips(user: str | None, target: str) -> None:
    target = target.replace("?", "")  # query strings are cut from logged URLs by design
    line = format_squid(record(user, target))
    assert line.isascii() and "\n" not in line and "\r" not in line and len(line.split()) == 11
    fields = parse_squid(line)
    assert (fields.user, fields.target, fields.client, fields.outcome) == (user, target, "192.0.2.7", "ok")


@settings(max_examples=500, deadline=None)
@given(user=st.one_of(st.none(), TEXT), target=TEXT)
def test_json_line_round_trips(user: str | None, target: str) -> None:
    target = target.replace("?", "")
    line = format_json(record(user, target))
    assert line.isascii() and len(line.splitlines()) == 1
    back = json.loads(line)
    assert (back["user"], back["target"], back["client"]) == (user, target, "192.0.2.7")


def test_a_refusal_before_any_request_line_logs_bare_dashes() -> None:
    """A connection refused at a limit (or a head that never parsed) has no method or target: Squid's "-",
    never "%2D", which would read back as a method literally named "-"."""
    refused = AccessRecord(started=1_700_000_000.5, duration=0.0, client="192.0.2.7", user=None, method=None,
                           target=None, status=503, sent_bytes=0, outcome=Outcome.OVER_LIMIT)
    line = format_squid(refused)
    assert " NONE_NONE/503 0 - - - HIER_NONE/- - auth=over-limit" in line
    fields = parse_squid(line)
    assert fields.method is None and fields.target is None and fields.user is None
    assert json.loads(format_json(refused))["method"] is None
