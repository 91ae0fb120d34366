"""The access log of a real proxy gives back the user names and URLs clients sent, in both formats, whatever
they hold (a user called "-", "%", a bidi override, a line separator), one line per request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from authproxy.observe.accesslog import parse_squid

from helpers import OriginServer, basic_authorization, raw_exchange, start_proxy, status_of

NAMES = ["-", "100%", "\u202eevil", "a\u2028b", "j\u00f6s\u00e9 x", "%2D"]


@pytest.mark.parametrize("fmt", ["squid", "json"])
def test_logged_names_and_targets_read_back(session_tmp: Path, users_file: Path, origin: OriginServer,
                                            fmt: str) -> None:
    proxy = start_proxy(session_tmp, users_file, "--access-log-format", fmt)
    try:
        targets = []
        for i, name in enumerate(NAMES):
            target = f"http://127.0.0.1:{origin.port}/p%25{i}/-/%E2%80%AE"  # llhttp refuses raw non-ASCII
            targets.append(target)
            head = (f"GET {target} HTTP/1.1\r\nHost: x\r\n"
                    f"Proxy-Authorization: {basic_authorization(name, 'wrong')}\r\n\r\n")
            assert status_of(raw_exchange(proxy.port, head.encode("latin-1"))) == 407
        lines = proxy.access_log().splitlines()
        assert len(lines) == len(NAMES) and all(line.isascii() for line in lines)
        if fmt == "squid":
            got = [(f.user, f.target, f.outcome) for f in map(parse_squid, lines)]
        else:
            got = [(r["user"], r["target"], r["auth"]) for r in map(json.loads, lines)]
        assert got == [(name, target, "unknown-user") for name, target in zip(NAMES, targets, strict=True)]
    finally:
        proxy.stop()
