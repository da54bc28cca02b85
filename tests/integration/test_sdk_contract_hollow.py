"""The SDK's contract cases (tests/sdk_contract.py) against the real controller of a hollow fleet;
the same cases run against the SDK's test fake in tests/unit/client/test_client_contract.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sdk_contract import *  # noqa: F403 - the shared cases
from sdk_contract import Backend

from chital.client import RetryPolicy
from chital.devcluster.hollow import HollowFleet

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def fleet() -> Iterator[HollowFleet]:
    with HollowFleet(agents=1) as f:
        yield f


@pytest.fixture
def backend(fleet: HollowFleet) -> Iterator[Backend]:
    retries = RetryPolicy(max_attempts=5, initial_backoff=0.05, max_backoff=0.5)
    with fleet.client(timeout=30.0, retries=retries) as client:
        yield Backend("controller", client)
