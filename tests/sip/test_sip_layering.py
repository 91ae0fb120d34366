"""The SIP proxy's logic is sans-IO: importing authproxy.sip.proxy (and what it needs: parse, challenge, verify,
the log record) loads no asyncio, no socket, no ssl, and nothing of the HTTP proxy or the config; only the driver
(authproxy.sip.serve, server, listeners, streams) does IO."""

from __future__ import annotations

import pytest

from helpers import loaded_by

IO = ("asyncio", "socket", "ssl", "selectors", "uvloop", "authproxy.proxy", "authproxy.config",
      "authproxy.sip.serve", "authproxy.sip.server", "authproxy.sip.listeners", "authproxy.sip.streams",
      "authproxy.sip.udp")


def io_modules(loaded: list[str]) -> list[str]:
    return [m for m in loaded if any(m == f or m.startswith(f + ".") for f in IO)]


@pytest.mark.parametrize("module", ["authproxy.sip.proxy", "authproxy.sip.log", "authproxy.sip.client"])
def test_the_proxy_logic_does_no_io(module: str) -> None:
    loaded = loaded_by(module)
    assert module in loaded and "authproxy.sip.verify" in loaded_by("authproxy.sip.proxy")
    assert io_modules(loaded) == []


def test_the_probe_sees_the_driver_io() -> None:
    # The same probe on the driver: a check that cannot fail would prove nothing.
    assert {"asyncio", "socket"} <= set(io_modules(loaded_by("authproxy.sip.udp")))
