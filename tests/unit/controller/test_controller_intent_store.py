"""The store's intent writes (stop, delete, drain) on SQLite and PostgreSQL: one transaction each,
deadlines that only move forward, a delete that stays wanted, a drain that counts what remains, and
request ids that are optional."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from chital.controller.db import make_engine
from chital.controller.placement import choose_host
from chital.controller.records import (
    AdminState,
    AgentInfoRecord,
    ContainerRecordState,
    ContainerSpec,
    HostHealth,
    ProcessSpec,
)
from chital.controller.store import Store
from chital.errdefs import FailedPrecondition

T0 = datetime(2026, 1, 1, 12, 0, 0)
C = ContainerRecordState


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def store(fresh_database_url: str) -> Iterator[Store]:
    engine = make_engine(fresh_database_url)
    s = Store(engine)
    s.create_schema()
    s.register_host("h1", "127.0.0.1:1", {}, 0, T0)
    s.record_health(
        "h1", HostHealth.READY, T0, info=AgentInfoRecord(device="fake", boot_id="b"), last_seen=T0
    )
    yield s
    engine.dispose()


def created(store: Store, uid: str) -> None:
    store.create_container(uid, f"r-{uid}", ContainerSpec(name=uid), at(1), choose_host)
    store.finish_create(uid, True, "", at(2))


def test_a_stop_records_its_deadline_which_only_moves_forward(store: Store) -> None:
    created(store, "c1")
    stopping = store.request_stop("c1", at(60), at(10))
    assert stopping.state is C.STOPPING and stopping.desired_state == "STOPPED"
    assert stopping.stop_deadline == at(60)
    assert store.request_stop("c1", at(100), at(11)).stop_deadline == at(60)  # not later
    assert store.request_stop("c1", at(12), at(12)).stop_deadline == at(12)  # earlier: yes
    # Durable: what a restarted controller resumes, soonest deadline first.
    created(store, "c2")
    store.request_stop("c2", at(5), at(3))
    assert [c.uid for c in store.stopping_containers(10)] == ["c2", "c1"]
    stopped = store.finish_stop("c1", at(13))
    assert stopped.state is C.STOPPED
    assert store.request_stop("c1", at(99), at(14)).state is C.STOPPED  # a stop of STOPPED returns it


def test_a_delete_stays_wanted_and_ends_deleted(store: Store) -> None:
    created(store, "c1")
    store.create_process("p1", "c1", "e", ProcessSpec(argv=("x",)), at(3))
    deleting = store.request_stop("c1", at(4), at(4), delete=True)
    assert deleting.state is C.STOPPING and deleting.desired_state == "DELETED"
    # A stop asked for afterwards does not undo the delete.
    assert store.request_stop("c1", at(50), at(5)).desired_state == "DELETED"
    done = store.finish_stop("c1", at(6))
    assert done.state is C.DELETED
    assert store.get_process("p1").state.value == "LOST"  # its live process, as the destroy left it
    # STOPPED, FAILED and LOST containers are deleted at once; a stop of FAILED/LOST is refused.
    created(store, "c2")
    store.request_stop("c2", at(7), at(7))
    store.finish_stop("c2", at(8))
    assert store.request_stop("c2", at(9), at(9), delete=True).state is C.DELETED
    store.create_container("c3", "r-c3", ContainerSpec(name="c3"), at(1), choose_host)
    store.finish_create("c3", False, "refused", at(2))
    with pytest.raises(FailedPrecondition):
        store.request_stop("c3", at(9), at(9))
    assert store.request_stop("c3", at(9), at(9), delete=True).state is C.DELETED


def test_a_delete_whose_host_was_lost_during_the_stop_ends_deleted(store: Store) -> None:
    created(store, "c1")
    store.request_stop("c1", at(60), at(3), delete=True)
    store.record_health("h1", HostHealth.LOST, at(4), message="gone")
    assert store.get_container("c1").state is C.LOST
    assert [c.uid for c in store.stopping_containers(10)] == ["c1"]  # the delete is still owed
    assert store.finish_stop("c1", at(5)).state is C.DELETED
    assert store.stopping_containers(10) == []


def test_a_drain_stops_every_container_of_the_host_in_one_write(store: Store) -> None:
    created(store, "c1")
    created(store, "c2")
    store.create_container("c3", "r-c3", ContainerSpec(name="c3"), at(1), choose_host)  # PENDING
    store.request_stop("c2", at(20), at(3))  # already stopping, with an earlier deadline
    host, containers = store.start_drain("h1", at(40), at(30), at(10))
    assert host.admin_state is AdminState.DRAINING
    assert host.drain is not None and host.drain.started == at(10) and host.drain.deadline == at(40)
    assert host.drain.containers == 3 and host.drain.remaining == 3 and not host.drain.complete
    deadlines = {c.uid: c.stop_deadline for c in containers}
    assert deadlines == {"c1": at(30), "c2": at(20), "c3": at(30)}
    assert {c.state for c in containers} == {C.STOPPING}
    # Asked again (a retried call) while in progress: the same drain, its deadline not later.
    again, _ = store.start_drain("h1", at(90), at(80), at(11))
    assert again.drain is not None and again.drain.started == at(10) and again.drain.deadline == at(40)
    assert again.drain.containers == 3
    assert {c.uid: c.stop_deadline for c in store.stopping_containers(10)} == deadlines
    for uid in ("c1", "c2"):
        store.finish_stop(uid, at(11))
    assert store.get_host("h1").drain.remaining == 1  # type: ignore[union-attr]
    store.finish_stop("c3", at(12))
    drain = store.all_hosts()[0].drain
    assert drain is not None and drain.complete and drain.containers == 3


def test_without_a_request_id_every_create_and_exec_is_new(store: Store) -> None:
    a, made_a = store.create_container("a", "", ContainerSpec(name="a"), at(1), choose_host)
    b, made_b = store.create_container("b", "", ContainerSpec(name="b"), at(1), choose_host)
    assert made_a and made_b and a.request_id == b.request_id == ""
    store.finish_create("a", True, "", at(2))
    p1, _, new1 = store.create_process("p1", "a", "", ProcessSpec(argv=("x",)), at(3))
    p2, _, new2 = store.create_process("p2", "a", "", ProcessSpec(argv=("x",)), at(3))
    assert new1 and new2 and p1.uid != p2.uid
    # With one: the first result again.
    q1, _, _ = store.create_process("q1", "a", "k", ProcessSpec(argv=("x",)), at(3))
    q2, _, again = store.create_process("q2", "a", "k", ProcessSpec(argv=("x",)), at(3))
    assert q2.uid == q1.uid and not again
