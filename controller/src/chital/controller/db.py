"""Engine factory and schema migrations.

SQLite (the default, ``<state dir>/controller.db``) runs in WAL mode with ``synchronous=NORMAL``.
SQLite ignores ``SELECT ... FOR UPDATE`` and a deferred transaction that later writes fails at once
with "database is locked", so every read-write transaction starts with ``BEGIN IMMEDIATE``:
writers queue on the lock (up to the busy timeout) instead of failing. Read-only sessions (an engine
with the ``chital_readonly`` execution option) start a plain deferred ``BEGIN`` and so run beside a
writer under WAL.

PostgreSQL needs nothing special here: the store locks host rows with ``FOR UPDATE`` where it counts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from chital.errdefs import FailedPrecondition

__all__ = [
    "MIGRATIONS_DIR",
    "READONLY_OPTION",
    "default_database_url",
    "find_migrations_dir",
    "make_engine",
    "upgrade",
]

READONLY_OPTION = "chital_readonly"
SQLITE_BUSY_TIMEOUT_SECONDS = 30.0


def default_database_url(state_dir: str | os.PathLike[str]) -> str:
    """The SQLite database in the state directory."""
    return f"sqlite:///{Path(state_dir).resolve() / 'controller.db'}"


def _is_sqlite(url: sa.URL) -> bool:
    return url.get_backend_name() == "sqlite"


def _ensure_sqlite_dir(url: sa.URL) -> None:
    """SQLite creates the file, not its directory (the state dir may not exist yet)."""
    if _is_sqlite(url) and url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)


def make_engine(database_url: str) -> Engine:
    """An engine for ``database_url`` with the locking recipe applied on SQLite."""
    url = sa.make_url(database_url)
    if not _is_sqlite(url):
        return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    _ensure_sqlite_dir(url)
    engine = sa.create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
        pool_size=10,
        max_overflow=40,
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy (not the sqlite3 module) decide where transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_SECONDS * 1000)}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        if connection.get_execution_options().get(READONLY_OPTION):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


#: The Alembic scripts ship inside the package (``chital.controller.migrations``), so an installed
#: wheel migrates its database without the source tree.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def find_migrations_dir() -> Path:
    """The Alembic directory: ``$CHITAL_MIGRATIONS_DIR`` when set, else the package's own."""
    configured = os.environ.get("CHITAL_MIGRATIONS_DIR")
    path = Path(configured) if configured else MIGRATIONS_DIR
    if not (path / "env.py").is_file():
        where = f"CHITAL_MIGRATIONS_DIR={configured}" if configured else str(path)
        raise FailedPrecondition(f"{where} has no env.py: the migrations are missing from this install")
    return path


def alembic_config(database_url: str) -> Any:
    """A programmatic Alembic configuration (no alembic.ini)."""
    from alembic.config import Config  # noqa: PLC0415 - only the migrate paths need alembic

    config = Config()
    config.set_main_option("script_location", str(find_migrations_dir()))
    # ConfigParser interpolates '%'; URLs with escaped passwords contain it.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


#: The advisory lock that serialises migrations on PostgreSQL (``b"chital-m"`` as an integer).
MIGRATE_LOCK_KEY = int.from_bytes(b"chital-m", "big") & 0x7FFF_FFFF_FFFF_FFFF


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply the migrations up to ``revision``.

    On PostgreSQL the migration holds a session advisory lock on a connection of its own, so that
    several controllers started together with ``--migrate`` (docs/ha.md) migrate one after the
    other: the later ones find the schema current and change nothing."""
    from alembic import command  # noqa: PLC0415 - only the migrate paths need alembic

    url = sa.make_url(database_url)
    _ensure_sqlite_dir(url)
    if _is_sqlite(url):
        command.upgrade(alembic_config(database_url), revision)
        return
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as lock:
            lock.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATE_LOCK_KEY})")
            lock.commit()
            command.upgrade(alembic_config(database_url), revision)
            # Closing the session (NullPool) releases the lock.
    finally:
        engine.dispose()
