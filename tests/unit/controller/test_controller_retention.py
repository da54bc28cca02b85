"""Retention in the store and the janitor: event compaction (Watch's OUT_OF_RANGE) and pruning of
DELETED containers, on SQLite and PostgreSQL, with a fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from chital.controller.db import make_engine
from chital.controller.models import AuditRow, ContainerRow
from chital.controller.placement import choose_host
from chital.controller.records import (
    AgentInfoRecord,
    ContainerRecordState,
    ContainerSpec,
    HostHealth,
    ProcessSpec,
)
from chital.controller.retention import RetentionJanitor, RetentionPolicy
from chital.controller.store import Store
from chital.errdefs import COMPACT_REVISION_KEY, InvalidArgument, NotFound, OutOfRange

T0 = datetime(2026, 1, 1, 12, 0, 0)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store(fresh_database_url: str) -> Iterator[Store]:
    engine = make_engine(fresh_database_url)
    s = Store(engine)
    s.create_schema()
    s.register_host("h1", "127.0.0.1:1", {}, 0, T0)
    s.record_health(
        "h1", HostHealth.READY, T0, info=AgentInfoRecord(device="fake", boot_id="b1"), last_seen=T0
    )
    yield s
    engine.dispose()


def container(store: Store, uid: str, when: float) -> None:
    """A CREATED container: two events (PENDING, CREATED) at ``when``."""
    store.create_container(uid, f"r-{uid}", ContainerSpec(name=uid), at(when), choose_host)
    store.finish_create(uid, True, "", at(when))


def mark_deleted(store: Store, uid: str, when: float) -> None:
    # Test set-up only: the state as a delete leaves it, whatever path the lifecycle takes there.
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(ContainerRow)
            .where(ContainerRow.uid == uid)
            .values(state=ContainerRecordState.DELETED.value, live_name=None, updated=at(when))
        )


def revisions(store: Store, after: int = 0) -> list[int]:
    return [e.revision for e in store.list_events(after, 10_000)]


def test_compaction_by_age_remembers_the_compacted_revision(store: Store) -> None:
    container(store, "old1", 0)
    container(store, "old2", 10)
    container(store, "new1", 100)
    before = revisions(store)
    assert len(before) == 6
    removed, _ = store.compact_events(at(50), 0, 1000)
    assert removed == 4
    assert revisions(store, before[3]) == before[4:]
    # From below the compacted revision: gone, and said so with the revision.
    with pytest.raises(OutOfRange) as info:
        store.list_events(before[0], 100)
    assert info.value.compact_revision == before[3]
    assert info.value.metadata() == {COMPACT_REVISION_KEY: str(before[3])}
    assert isinstance(info.value, InvalidArgument)
    assert str(before[3]) in str(info.value)
    with pytest.raises(OutOfRange):
        store.list_events(before[3] - 1, 100)
    # At the compacted revision nothing is missing.
    assert revisions(store, before[3]) == before[4:]
    assert store.last_revision() == before[-1]
    assert store.retention_state()["events"][:2] == (before[3], 4)
    # Known without a query here, and read from the database by another store (a restart).
    assert store.compact_revision == before[3]
    assert Store(store.engine).compact_revision == before[3]
    # Idempotent: a second pass finds nothing more.
    assert store.compact_events(at(50), 0, 1000) == (0, False)


def test_compaction_keeps_the_newest_event_so_revisions_never_go_back(store: Store) -> None:
    container(store, "a", 0)
    newest = store.last_revision()
    store.compact_events(at(1000), 0, 1000)
    assert revisions(store, newest - 1) == [newest]
    # A live watch starts at the head, which is not compacted.
    assert store.list_events(store.last_revision(), 10) == []
    container(store, "b", 1001)
    assert revisions(store, newest) == [newest + 1, newest + 2]


def test_compaction_by_count_in_batches(store: Store) -> None:
    for i in range(5):
        container(store, f"c{i}", i)
    before = revisions(store)
    assert len(before) == 10
    total, calls = 0, 0
    while True:
        removed, more = store.compact_events(datetime.min, 3, 2)
        total += removed
        calls += 1
        if not more:
            break
    assert total == 7 and calls >= 4  # batches of two revisions
    assert revisions(store, before[6]) == before[7:]
    assert store.retention_state()["events"][0] == before[6]


def test_prune_only_deleted_containers_past_the_period(store: Store) -> None:
    for uid in ("gone", "recent", "live"):
        container(store, uid, 0)
        store.create_process(f"p-{uid}", uid, f"e-{uid}", ProcessSpec(argv=("true",)), at(1))
    mark_deleted(store, "gone", 10)
    mark_deleted(store, "recent", 100)
    # Even a very old container that is not DELETED stays.
    assert store.prune_deleted(at(50), 1000) == (1, 1)
    with pytest.raises(NotFound):
        store.get_container("gone")
    with pytest.raises(NotFound):
        store.get_process("p-gone")
    assert store.get_container("recent").state is ContainerRecordState.DELETED
    assert store.get_process("p-recent").uid == "p-recent"
    assert store.get_container("live").state is ContainerRecordState.CREATED
    assert store.prune_deleted(at(50), 1000) == (0, 0)
    assert store.prune_deleted(at(1000), 1000) == (1, 1)
    assert store.get_container("live").state is ContainerRecordState.CREATED
    assert store.retention_state()["deleted"][1] == 2
    # The request id of a pruned container is free: a create with it makes a new one.
    again, created = store.create_container(
        "gone2", "r-gone", ContainerSpec(name="gone"), at(1001), choose_host
    )
    assert created and again.uid == "gone2"


def test_prune_in_batches(store: Store) -> None:
    for i in range(5):
        container(store, f"d{i}", 0)
        mark_deleted(store, f"d{i}", 1)
    assert store.prune_deleted(at(10), 2) == (2, 0)
    janitor = RetentionJanitor(
        store, RetentionPolicy(event_retention=0, max_events=0, batch=2), Clock(at(4000))
    )
    result = janitor.run_once()
    assert (result.containers, result.events) == (3, 0)


def test_janitor_pass_compacts_and_prunes(store: Store) -> None:
    container(store, "a", 0)
    mark_deleted(store, "a", 0)
    container(store, "b", 3000)
    clock = Clock(at(3700))
    policy = RetentionPolicy(event_retention=3600, deleted_retention=3600, batch=1)
    result = RetentionJanitor(store, policy, clock).run_once()
    assert (result.events, result.containers, result.processes) == (2, 1, 0)
    assert result.compact_revision == store.retention_state()["events"][0] > 0


def test_janitor_schedule_comes_from_the_database_not_the_process_start(store: Store) -> None:
    clock = Clock(at(0))
    policy = RetentionPolicy(interval=60)
    janitor = RetentionJanitor(store, policy, clock)
    assert janitor.next_delay() == 0.0  # never ran: at once
    janitor.run_once()
    assert janitor.next_delay() == 60.0
    clock.now = at(45)
    # A restarted controller (a new janitor) waits for what is left of the interval, no more...
    assert RetentionJanitor(store, policy, clock).next_delay() == 15.0
    # ...and runs at once when the pass is overdue.
    clock.now = at(500)
    assert RetentionJanitor(store, policy, clock).next_delay() == 0.0


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="negative"):
        RetentionPolicy(event_retention=-1)
    with pytest.raises(ValueError, match="interval"):
        RetentionPolicy(interval=0)
    with pytest.raises(ValueError, match="batch"):
        RetentionPolicy(batch=0)


def test_audit_entries_are_pruned_after_their_period(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            sa.insert(AuditRow),
            [
                {
                    "at": at(t),
                    "principal": "token:t/1",
                    "role": "admin",
                    "method": "/m",
                    "request_id": "",
                    "target": "",
                    "code": "OK",
                    "detail": "",
                }
                for t in (0, 1, 2, 100)
            ],
        )
    assert store.prune_audit(at(50), 2) == 2
    assert store.prune_audit(at(50), 2) == 1
    assert store.prune_audit(at(50), 2) == 0
    policy = RetentionPolicy(audit_retention=10, event_retention=0, max_events=0, deleted_retention=0)
    assert RetentionJanitor(store, policy, Clock(at(111))).run_once().audit == 1
    assert store.retention_state()["audit"][1] == 4
