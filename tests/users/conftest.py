"""Fixtures for the user store tests: the store type under test (one contract, three stores) and a clock."""

from __future__ import annotations

import pytest

from user_files import STORE_KINDS, FakeClock, StoreKind


@pytest.fixture(params=sorted(STORE_KINDS))
def kind(request: pytest.FixtureRequest) -> StoreKind:
    return STORE_KINDS[request.param]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
