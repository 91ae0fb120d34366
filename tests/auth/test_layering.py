"""The auth core depends on nothing above it (issue 8 part 2): importing it loads no store, no proxy, no
client, no config, and none of the file machinery (fcntl, tempfile) the users files need.

Checked in a fresh interpreter, since this test process has long imported everything."""

from __future__ import annotations

import pkgutil

import pytest

import authproxy.auth

from helpers import loaded_by

FORBIDDEN = ("authproxy.users", "authproxy.proxy", "authproxy.client", "authproxy.config", "authproxy.state",
             "authproxy.observe", "fcntl", "tempfile")

AUTH_MODULES = sorted(f"authproxy.auth.{m.name}" for m in pkgutil.iter_modules(authproxy.auth.__path__))


def above(loaded: list[str]) -> list[str]:
    return [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]


def test_the_verifier_imports_nothing_above_the_core() -> None:
    loaded = loaded_by("authproxy.auth.verifier")
    assert "authproxy.auth.verifier" in loaded and "authproxy.auth.store" in loaded  # the probe works
    assert above(loaded) == []


@pytest.mark.parametrize("module", AUTH_MODULES)
def test_no_auth_module_imports_anything_above_the_core(module: str) -> None:
    assert above(loaded_by(module)) == []


def test_the_probe_sees_a_forbidden_import() -> None:
    # The same probe on a module that does load the file stores: a check that cannot fail would prove nothing.
    assert "authproxy.users" in above(loaded_by("authproxy.users")) and "fcntl" in loaded_by("authproxy.users")
