"""Fixtures: the controller test harness (see controller_harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from controller_harness import Cluster, running_cluster


@pytest.fixture
def cluster(tmp_path: Path, fresh_database_url: str) -> Iterator[Cluster]:
    """A fresh cluster per test, once on SQLite and once on PostgreSQL."""
    with running_cluster(tmp_path, database_url=fresh_database_url) as c:
        yield c


@pytest.fixture
def metrics_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A fresh cluster that serves /metrics."""
    with running_cluster(tmp_path, metrics=True) as c:
        yield c


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for the tests of a module that change nothing (bad input)."""
    with running_cluster(tmp_path_factory.mktemp("shared")) as c:
        yield c
