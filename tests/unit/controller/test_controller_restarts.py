"""Restart policies: LOST containers placed again, with a persisted backoff (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from chital.controller.db import make_engine
from chital.controller.placement import choose_host
from chital.controller.records import (
    AgentInfoRecord,
    ContainerRecord,
    ContainerRecordState,
    ContainerSpec,
    HostHealth,
)
from chital.controller.restarts import Restarter
from chital.controller.store import Store

T0 = datetime(2026, 1, 1, 12, 0, 0)
C = ContainerRecordState


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Clock:
    def __init__(self) -> None:
        self.now = at(0)

    def __call__(self) -> datetime:
        return self.now


class FakeContainers:
    """Stands in for the create on the new host: records it CREATED."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.created: list[str] = []

    def resume_create(self, record: ContainerRecord) -> ContainerRecord:
        self.created.append(record.uid)
        return self.store.finish_create(record.uid, True, "", self.clock())


@pytest.fixture
def store(fresh_database_url: str) -> Iterator[Store]:
    engine = make_engine(fresh_database_url)
    s = Store(engine)
    s.create_schema()
    yield s
    engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def containers(store: Store, clock: Clock) -> FakeContainers:
    return FakeContainers(store, clock)


@pytest.fixture
def restarter(store: Store, containers: FakeContainers, clock: Clock) -> Restarter:
    return Restarter(store, containers, clock)  # type: ignore[arg-type]


def host(store: Store, host_id: str, health: HostHealth = HostHealth.READY) -> None:
    store.register_host(host_id, f"{host_id}:1", {}, 0, T0)
    store.record_health(host_id, health, T0, info=AgentInfoRecord(boot_id="b"), last_seen=T0)


def lose_h1_with(store: Store, *specs: ContainerSpec, h2: HostHealth = HostHealth.READY) -> None:
    """Containers created on h1 (the only host then) at t=1; h2 joins; h1 is LOST at t=10."""
    host(store, "h1")
    for spec in specs:
        store.create_container(spec.name, f"r-{spec.name}", spec, at(1), choose_host)
        store.finish_create(spec.name, True, "", at(1))
    host(store, "h2", h2)
    store.record_health("h1", HostHealth.LOST, at(10), message="gone")


def test_always_is_placed_again_after_the_backoff_from_the_persisted_time(
    store: Store, restarter: Restarter, containers: FakeContainers, clock: Clock
) -> None:
    lose_h1_with(store, ContainerSpec(name="c1", restart_policy="always"))
    clock.now = at(10.5)
    delay = restarter.run_once()
    scheduled = store.get_container("c1")
    assert scheduled.state is C.LOST and scheduled.restart_at == at(11)  # lost at 10, first delay 1 s
    assert 0 < delay <= 0.5 + 1e-6
    # A restarted controller finds the same time (it is persisted) and waits for it.
    again = Restarter(store, containers, clock)  # type: ignore[arg-type]
    again.run_once()
    assert store.get_container("c1").restart_at == at(11) and containers.created == []
    clock.now = at(11)
    again.run_once()
    moved = store.get_container("c1")
    assert (moved.state, moved.host_id, moved.restart_count, moved.restart_at) == (C.CREATED, "h2", 1, None)
    assert containers.created == ["c1"]


def test_on_failure_stops_at_its_maximum_and_never_and_pinned_stay_lost(
    store: Store, restarter: Restarter, clock: Clock
) -> None:
    lose_h1_with(
        store,
        ContainerSpec(name="once", restart_policy="on-failure", max_restarts=1),
        ContainerSpec(name="never"),
        ContainerSpec(name="pinned", host="h1", restart_policy="always"),
    )
    clock.now = at(20)
    restarter.run_once()  # schedules "once" (due at once: it was lost 10 s ago)
    restarter.run_once()
    first = store.get_container("once")
    assert (first.state, first.restart_count) == (C.CREATED, 1)
    # Lost again: its one restart is spent.
    store.transition_container("once", C.LOST, now=at(30), message="lost again")
    clock.now = at(100)
    restarter.run_once()
    restarter.run_once()
    assert store.get_container("once").state is C.LOST and store.get_container("once").restart_at is None
    for uid in ("never", "pinned"):
        c = store.get_container(uid)
        assert (c.state, c.restart_at, c.restart_count) == (C.LOST, None, 0)


def test_without_a_ready_host_the_attempt_backs_off(store: Store, restarter: Restarter, clock: Clock) -> None:
    lose_h1_with(store, ContainerSpec(name="c1", restart_policy="always"), h2=HostHealth.NOT_READY)
    clock.now = at(11)
    restarter.run_once()  # scheduled at 11: due now
    restarter.run_once()
    c = store.get_container("c1")
    assert (c.state, c.restart_count) == (C.LOST, 0)
    assert c.restart_at == at(13)  # the next delay (2 s) from the failed attempt
    store.record_health("h2", HostHealth.READY, at(12), info=AgentInfoRecord(boot_id="b"), last_seen=at(12))
    clock.now = at(13)
    restarter.run_once()
    assert store.get_container("c1").state is C.CREATED
