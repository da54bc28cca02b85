"""The SQL store on SQLite (temp files)."""

from __future__ import annotations

import threading
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
    EventRecordType,
    HostHealth,
    ProcessRecordState,
    ProcessSpec,
)
from chital.controller.store import AgentEventRecord, Store
from chital.errdefs import AlreadyExists, FailedPrecondition, NotFound

T0 = datetime(2026, 1, 1, 12, 0, 0)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def store(fresh_database_url: str) -> Iterator[Store]:
    engine = make_engine(fresh_database_url)
    s = Store(engine)
    s.create_schema()
    yield s
    engine.dispose()


def ready_host(store: Store, host_id: str = "h1", address: str = "127.0.0.1:1") -> None:
    store.register_host(host_id, address, {}, 0, T0)
    store.record_health(
        host_id, HostHealth.READY, T0, info=AgentInfoRecord(device="fake", boot_id="b1"), last_seen=T0
    )


def new_container(store: Store, uid: str, name: str, request_id: str | None = None) -> tuple[object, bool]:
    return store.create_container(uid, request_id or f"r-{uid}", ContainerSpec(name=name), at(1), choose_host)


def test_register_host_is_idempotent_by_address(store: Store) -> None:
    first, created = store.register_host("h1", "10.0.0.1:7444", {"a": "1"}, 0, T0)
    assert created and first.health is HostHealth.NOT_READY
    second, created = store.register_host("h2", "10.0.0.1:7444", {"b": "2"}, 5, at(1))
    assert not created and second.id == "h1" and second.labels == {"b": "2"} and second.max_containers == 5
    assert store.get_host("10.0.0.1:7444").id == "h1"
    with pytest.raises(NotFound):
        store.get_host("nope")


def test_the_health_monitors_read_of_the_fleet_makes_a_record_again_only_for_changed_rows(
    store: Store,
) -> None:
    ready_host(store, "h1", "127.0.0.1:1")
    ready_host(store, "h2", "127.0.0.1:2")
    first = {h.id: h for h in store.hosts_for_health()}
    assert [h.admin_state for h in first.values()] == [AdminState.ACTIVE, AdminState.ACTIVE]
    store.set_admin_state("h2", AdminState.CORDONED, at(1))
    store.record_health("h1", HostHealth.NOT_READY, at(2), message="silent")
    store.register_host("h3", "127.0.0.1:3", {"zone": "b"}, 0, at(3))
    second = {h.id: h for h in store.hosts_for_health()}
    assert list(second) == ["h1", "h2", "h3"]
    assert second["h1"].health is HostHealth.NOT_READY and second["h1"].message == "silent"
    assert second["h2"].admin_state is AdminState.CORDONED
    assert second["h3"].labels == {"zone": "b"}
    third = {h.id: h for h in store.hosts_for_health()}
    assert all(third[i] is second[i] for i in second)  # nothing changed: the same records
    store.remove_host("h3", False, at(4))
    assert [h.id for h in store.hosts_for_health()] == ["h1", "h2"]


def test_create_is_idempotent_and_names_are_unique_among_live(store: Store) -> None:
    ready_host(store)
    _, created = new_container(store, "c1", "web", "r1")
    assert created
    again, created = new_container(store, "c2", "web", "r1")
    assert not created and again.uid == "c1"  # type: ignore[attr-defined]
    with pytest.raises(AlreadyExists):
        new_container(store, "c3", "web", "r3")
    store.finish_create("c1", True, "", at(2))
    store.transition_container("c1", ContainerRecordState.DELETED, now=at(3))
    fresh, created = new_container(store, "c4", "web", "r4")
    assert created and fresh.uid == "c4"  # type: ignore[attr-defined]
    assert store.get_container("web").uid == "c4"
    assert store.get_container("c1").state is ContainerRecordState.DELETED


def test_process_lifecycle_through_agent_events(store: Store) -> None:
    ready_host(store)
    new_container(store, "c1", "job")
    store.finish_create("c1", True, "", at(2))
    woken: list[set[str]] = []
    store.add_listener(woken.append)
    p, container, created = store.create_process("p1", "job", "e1", ProcessSpec(argv=("true",)), at(3))
    assert created and p.state is ProcessRecordState.STARTING and container.uid == "c1"
    same, _, created = store.create_process("p2", "c1", "e1", ProcessSpec(argv=("true",)), at(3))
    assert not created and same.uid == "p1"
    store.mark_process_running("p1", 4242, at(4), at(4))
    assert store.get_container("c1").state is ContainerRecordState.RUNNING
    exit_event = AgentEventRecord(
        seq=7, kind="PROCESS_EXITED", container_uid="c1", process_uid="p1", exit_code=3, time=at(5)
    )
    assert store.apply_agent_events("h1", "b1", [exit_event], at(5)) == 7
    done = store.get_process("p1")
    assert done.state is ProcessRecordState.EXITED and done.exit_code == 3 and done.pid == 4242
    assert store.get_container("c1").state is ContainerRecordState.CREATED
    assert any("p1" in uids for uids in woken)
    # Replays and events of another agent boot change nothing.
    assert store.apply_agent_events("h1", "b1", [exit_event], at(6)) == 7
    assert (
        store.apply_agent_events("h1", "other-boot", [AgentEventRecord(seq=9, kind="PROCESS_EXITED")], at(6))
        == 7
    )
    events = store.list_events(0, 100, "c1")
    assert [e.revision for e in events] == sorted(e.revision for e in events)
    assert events[-1].type is EventRecordType.CONTAINER and events[-1].container is not None
    assert events[-1].container.state is ContainerRecordState.CREATED
    assert store.last_revision() == events[-1].revision


def test_exec_needs_a_created_container(store: Store) -> None:
    ready_host(store)
    new_container(store, "c1", "pending")
    with pytest.raises(FailedPrecondition):
        store.create_process("p1", "c1", "e", ProcessSpec(argv=("x",)), at(2))
    with pytest.raises(NotFound):
        store.create_process("p1", "nope", "e", ProcessSpec(argv=("x",)), at(2))


def test_lost_host_loses_its_containers(store: Store) -> None:
    ready_host(store)
    new_container(store, "c1", "a")
    store.finish_create("c1", True, "", at(2))
    store.create_process("p1", "c1", "e", ProcessSpec(argv=("x",)), at(3))
    store.mark_process_running("p1", 10, None, at(3))
    host, previous = store.record_health("h1", HostHealth.LOST, at(100), message="gone")
    assert previous is HostHealth.READY and host.health is HostHealth.LOST
    assert store.get_container("c1").state is ContainerRecordState.LOST
    assert store.get_process("p1").state is ProcessRecordState.LOST
    assert host.container_count == 0


def test_a_lost_host_leaves_its_stopped_containers_stopped(store: Store) -> None:
    """A drain (or a stop) destroyed them on the host before it went away: an upgrade that keeps
    the drained host's agent down past lost_after must not turn them LOST (a stop of LOST is
    refused, and a restart policy would place them again)."""
    ready_host(store)
    new_container(store, "c1", "a")
    store.finish_create("c1", True, "", at(2))
    store.request_stop("c1", at(3), at(3))
    assert store.finish_stop("c1", at(4)).state is ContainerRecordState.STOPPED
    new_container(store, "c2", "b")
    store.finish_create("c2", True, "", at(5))
    store.record_health("h1", HostHealth.LOST, at(100), message="gone")
    assert store.get_container("c1").state is ContainerRecordState.STOPPED
    assert store.get_container("c2").state is ContainerRecordState.LOST
    assert store.request_stop("c1", at(101), at(101)).state is ContainerRecordState.STOPPED


def test_remove_host_needs_force_with_containers(store: Store) -> None:
    ready_host(store)
    new_container(store, "c1", "a")
    with pytest.raises(FailedPrecondition):
        store.remove_host("h1", False, at(2))
    store.remove_host("h1", True, at(2))
    c = store.get_container("c1")
    assert c.state is ContainerRecordState.LOST and c.host_id == ""


def test_keyset_pages_with_equal_timestamps(store: Store) -> None:
    ready_host(store)
    for i in range(7):
        store.create_container(f"c{i}", f"r{i}", ContainerSpec(name=f"n{i}"), T0, choose_host)
    seen: list[str] = []
    after = None
    while True:
        page = store.list_containers(3, after)
        if not page:
            break
        seen += [c.uid for c in page]
        after = (page[-1].created, page[-1].uid)
    assert seen == [f"c{i}" for i in range(7)]


def test_concurrent_writers_do_not_fail_with_database_locked(store: Store) -> None:
    ready_host(store)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(15):
                new_container(store, f"c{n}-{i}", f"n{n}-{i}")
                # Every worker also retries one shared request: exactly one container results.
                store.create_container(
                    f"s{n}-{i}", "shared", ContainerSpec(name="shared"), at(1), choose_host
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.list_containers(1000)) == 6 * 15 + 1
