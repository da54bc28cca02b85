"""Shared fixtures: the controller's database, on SQLite and on a real PostgreSQL server.

``database_url`` is parametrized over ``sqlite`` and ``postgresql``: a test (or module) that takes it
runs once per database. The PostgreSQL server is Debian's, started once per session by
:mod:`chital.devcluster.postgres` (a throwaway server on 127.0.0.1, a free port, a temp dir) and
stopped at the end; each test module gets a fresh, empty database on it. Tests on PostgreSQL carry
the ``postgres`` marker (``-m "not postgres"`` deselects them). On a machine without the server
binaries (Debian package ``postgresql``) they are skipped, unless CHITAL_REQUIRE_POSTGRES=1 (CI),
where that is an error.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator

import pytest

from chital.devcluster.postgres import PostgresServer, PostgresUnavailableError

_db_counter = itertools.count(1)

# Daemons started by the tests (and their children) never read a machine's /etc/chital/*.toml.
os.environ.setdefault("CHITAL_AGENT_CONFIG", "/dev/null")
os.environ.setdefault("CHITAL_CONTROLLER_CONFIG", "/dev/null")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the whole session."""
    try:
        server = PostgresServer().start()
    except PostgresUnavailableError as exc:
        if os.environ.get("CHITAL_REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(f"no PostgreSQL server here: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh, empty database for this test module: SQLite in a temp dir, or a new PostgreSQL database."""
    return _fresh_database(request, tmp_path_factory)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fresh_database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Like ``database_url``, but a fresh, empty database for every test."""
    return _fresh_database(request, tmp_path_factory)


def _fresh_database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    module = re.sub(r"[^a-z0-9_]", "_", request.module.__name__.rsplit(".", 1)[-1].lower())[:40]
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp(f"db-{module}") / "controller.db"
        return f"sqlite:///{path}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database(f"t{next(_db_counter)}_{module}")
