"""The audit log's batch writer: entries are committed together, flushed on demand and at close,
retried when the database fails, and appends push back when it cannot keep up."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from chital.controller import db
from chital.controller.tokens import AuditLog
from chital.errdefs import Unavailable


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    yield engine
    engine.dispose()


def entry(i: int) -> dict[str, str]:
    return {"principal": "token:t/0123456789ab", "role": "admin", "method": f"/m/{i}", "request_id": "",
            "target": "", "code": "OK"}  # fmt: skip


def rows(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM audit_log")).scalar_one())


def audit_inserts(engine: sa.Engine) -> list[int]:
    """Counts, per executed INSERT into audit_log, of the rows it carried (executemany)."""
    seen: list[int] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def count(conn: Any, cursor: Any, statement: str, params: Any, *rest: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO AUDIT_LOG"):
            seen.append(len(params) if rest[1] else 1)  # rest: context, executemany

    return seen


def test_entries_of_a_burst_share_one_commit(engine: sa.Engine) -> None:
    inserts = audit_inserts(engine)
    audit = AuditLog(engine, batch_interval=0.5)
    for i in range(50):
        audit.append(**entry(i))
    assert audit.flush()
    assert rows(engine) == 50
    assert sum(inserts) == 50 and len(inserts) < 5  # batched, not one statement per entry
    assert [r.method for r in audit.list(3).items] == ["/m/49", "/m/48", "/m/47"]  # order kept
    audit.close()


def test_list_and_close_write_what_waits(engine: sa.Engine) -> None:
    audit = AuditLog(engine, batch_interval=30.0)  # the timer alone would not write in this test
    audit.append(**entry(1))
    assert [r.method for r in audit.list().items] == ["/m/1"]  # a reader sees its own writes
    audit.append(**entry(2))
    audit.close()
    assert rows(engine) == 2
    with pytest.raises(Unavailable):
        audit.append(**entry(3))


def test_a_failed_write_is_retried(engine: sa.Engine) -> None:
    failures = [2]

    @sa.event.listens_for(engine, "before_cursor_execute")
    def fail(conn: Any, cursor: Any, statement: str, params: Any, *rest: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO AUDIT_LOG") and failures[0] > 0:
            failures[0] -= 1
            raise sa.exc.OperationalError(statement, params, Exception("database is locked"))

    audit = AuditLog(engine, batch_interval=0.01)
    audit.append(**entry(1))
    assert audit.flush(timeout=10)
    assert failures == [0] and rows(engine) == 1
    audit.close()


def test_appends_push_back_when_the_database_lags(engine: sa.Engine) -> None:
    gate = threading.Event()

    @sa.event.listens_for(engine, "before_cursor_execute")
    def stall(conn: Any, cursor: Any, statement: str, params: Any, *rest: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO AUDIT_LOG"):
            gate.wait(30)

    # Entries count as waiting until committed, the one the stalled writer holds included.
    audit = AuditLog(engine, batch_interval=0.0, max_batch=1, max_pending=3, append_timeout=0.3)
    audit.append(**entry(1))  # taken by the writer, which stalls in the database
    audit.append(**entry(2))
    audit.append(**entry(3))
    with pytest.raises(Unavailable, match="behind"):
        audit.append(**entry(4))
    gate.set()
    assert audit.flush()
    assert rows(engine) == 3
    audit.close()
