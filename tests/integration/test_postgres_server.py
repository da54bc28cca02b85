"""The throwaway PostgreSQL server of chital.devcluster.postgres (used by the ``database_url`` fixture)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from chital.devcluster.postgres import PostgresServer, find_pg_bin

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


def test_databases_are_separate_and_reachable_on_loopback(postgres_server: PostgresServer) -> None:
    first = postgres_server.create_database("sep_one")
    second = postgres_server.create_database("sep_two")
    assert first.startswith("postgresql+psycopg://") and "@127.0.0.1:" in first
    for url, table in ((first, "a"), (second, "b")):
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE TABLE {table} (x int)"))
        engine.dispose()
    engine = sa.create_engine(second)
    try:
        assert sa.inspect(engine).get_table_names() == ["b"]
        with engine.connect() as conn:
            assert conn.execute(sa.text("SHOW listen_addresses")).scalar() == "127.0.0.1"
    finally:
        engine.dispose()


def test_bad_database_names_are_refused(postgres_server: PostgresServer) -> None:
    with pytest.raises(ValueError, match="database name"):
        postgres_server.create_database("x; DROP DATABASE postgres")


def test_stop_ends_the_server_and_removes_its_directory() -> None:
    try:
        find_pg_bin()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    server = PostgresServer().start()
    base = server.base_dir
    assert base is not None
    assert server.is_running()
    pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    server.stop()
    assert not base.exists()
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        state = "gone"
    assert state in ("gone", "Z", "X")  # a zombie awaits a reaper that is not this process
