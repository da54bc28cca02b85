"""The Alembic migrations, on SQLite and on a real PostgreSQL server (``database_url`` fixture).

After ``upgrade head`` the database has exactly the schema of the models (Alembic's autogenerate
comparison finds nothing to do), and the store works on it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from chital.controller import db
from chital.controller.models import Base

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def migrated(database_url: str) -> Iterator[sa.Engine]:
    db.upgrade(database_url)
    engine = sa.create_engine(database_url)
    yield engine
    engine.dispose()


def _diff(engine: sa.Engine) -> list[object]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return list(compare_metadata(ctx, Base.metadata))


def test_upgrade_leaves_the_schema_of_the_models(migrated: sa.Engine) -> None:
    assert _diff(migrated) == []


def test_database_is_at_the_head_revision(migrated: sa.Engine, database_url: str) -> None:
    script = ScriptDirectory.from_config(db.alembic_config(database_url))
    with migrated.connect() as conn:
        current = MigrationContext.configure(conn).get_current_heads()
    assert set(current) == set(script.get_heads())
    assert len(script.get_heads()) == 1, "migrations have more than one head"


def test_upgrade_twice_is_a_no_op(migrated: sa.Engine, database_url: str) -> None:
    db.upgrade(database_url)
    assert _diff(migrated) == []


def test_every_table_is_created(migrated: sa.Engine) -> None:
    tables = set(sa.inspect(migrated).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables


def test_the_controller_engine_reads_and_writes(migrated: sa.Engine, database_url: str) -> None:
    """The controller's own engine (with its SQLite locking recipe) works on the migrated schema."""
    engine = db.make_engine(database_url)
    try:
        hosts = Base.metadata.tables["hosts"]
        with engine.begin() as conn:
            before = conn.execute(sa.select(sa.func.count()).select_from(hosts)).scalar_one()
        with engine.connect() as conn:
            conn.execute(sa.select(sa.literal(1)))
        assert before >= 0
    finally:
        engine.dispose()


def test_downgrade_to_each_revision_and_back(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every migration's downgrade undoes its upgrade: step down to the base and up again."""
    from alembic import command  # noqa: PLC0415

    # A database of its own: the module's database stays at head for the other tests.
    if database_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path_factory.mktemp('downgrade') / 'down.db'}"
    else:
        url = database_url
    config = db.alembic_config(url)
    script = ScriptDirectory.from_config(config)
    revisions = [r.revision for r in script.walk_revisions()]  # head first
    db.upgrade(url)
    engine = sa.create_engine(url)
    try:
        for target in [*revisions[1:], "base"]:
            command.downgrade(config, target)
            tables = set(sa.inspect(engine).get_table_names())
            if target == "0002":
                assert not {"tokens", "audit_log"} & tables
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
        db.upgrade(url)
        assert _diff(engine) == []
    finally:
        engine.dispose()
