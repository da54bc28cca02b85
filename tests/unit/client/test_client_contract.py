"""The SDK's contract cases (tests/sdk_contract.py) against the SDK's test fake. The same cases
run against the real controller of a hollow fleet in tests/integration/test_sdk_contract_hollow.py:
a case that passes here and fails there is a fake that drifted from the server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sdk_contract import *  # noqa: F403 - the shared cases
from sdk_contract import Backend

from chital.client import Client, RetryPolicy


@pytest.fixture
def backend(target: str) -> Iterator[Backend]:
    retries = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.002)
    with Client(target, insecure=True, timeout=10, retries=retries) as client:
        yield Backend("fake", client)
