from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import OriginServer, ProxyProcess, make_tls, make_users_file, start_proxy


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def users_file(session_tmp: Path) -> Path:
    return make_users_file(session_tmp / "authproxy.users")


@pytest.fixture(scope="session")
def origin() -> Iterator[OriginServer]:
    server = OriginServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_origin(session_tmp: Path) -> Iterator[tuple[OriginServer, Path]]:
    ctx, ca_path = make_tls(session_tmp)
    server = OriginServer(tls=ctx)
    yield server, ca_path
    server.stop()


@pytest.fixture(scope="session")
def proxy(session_tmp: Path, users_file: Path) -> Iterator[ProxyProcess]:
    """The proxy with its default auth settings (Digest SHA-256 and MD5, then Basic)."""
    proc = start_proxy(session_tmp, users_file)
    yield proc
    proc.stop()
