"""The per-host reconciler: an agent's Sync compared with the database (SQLite and PostgreSQL)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest

from chital.controller.agents import AgentProcessView, AgentSyncRecord
from chital.controller.db import make_engine
from chital.controller.events import EventIngestor
from chital.controller.hostsync import HostSyncer
from chital.controller.metrics import ControllerMetrics
from chital.controller.placement import choose_host
from chital.controller.records import (
    AgentInfoRecord,
    ContainerRecordState,
    ContainerSpec,
    HostHealth,
    ProcessRecordState,
    ProcessSpec,
)
from chital.controller.store import AgentEventRecord, Store

T0 = datetime(2026, 1, 1, 12, 0, 0)
C = ContainerRecordState
P = ProcessRecordState


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@dataclass
class FakeAgent:
    """What one agent's Sync returns, and the repairs asked of it."""

    containers: dict[str, tuple[int, ...]] = field(default_factory=dict)
    processes: dict[str, AgentProcessView] = field(default_factory=dict)
    destroyed: list[str] = field(default_factory=list)
    signalled: list[tuple[str, int]] = field(default_factory=list)
    syncs: int = 0

    def sync(self) -> AgentSyncRecord:
        self.syncs += 1
        return AgentSyncRecord(dict(self.containers), dict(self.processes), 0)

    def destroy_container(self, uid: str, grace: float) -> None:
        self.destroyed.append(uid)
        self.containers.pop(uid, None)

    def signal_process(self, uid: str, sig: int) -> None:
        self.signalled.append((uid, sig))


class FakePool:
    def __init__(self) -> None:
        self.agents: dict[str, FakeAgent] = {}

    def get(self, address: str) -> FakeAgent:
        return self.agents.setdefault(address, FakeAgent())


class Clock:
    def __init__(self) -> None:
        self.now = at(0)

    def __call__(self) -> datetime:
        return self.now


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
def pool() -> FakePool:
    return FakePool()


@pytest.fixture
def syncer(store: Store, pool: FakePool, clock: Clock) -> Iterator[HostSyncer]:
    s = HostSyncer(
        store,
        pool,  # type: ignore[arg-type]
        clock,
        metrics=ControllerMetrics(),
        min_interval=0.0,
        settle=0.0,
        max_share=1.0,
    )
    yield s
    s.stop()


def ready_host(store: Store, host_id: str, address: str) -> None:
    store.register_host(host_id, address, {}, 0, T0)
    store.record_health(
        host_id, HostHealth.READY, T0, info=AgentInfoRecord(device="fake", boot_id="b1"), last_seen=T0
    )


def running_container(store: Store, uid: str, host: str, *processes: str) -> None:
    """A container CREATED on ``host`` at t=1, with RUNNING ``processes`` started at t=2."""
    store.create_container(uid, f"r-{uid}", ContainerSpec(name=uid, host=host), at(1), choose_host)
    store.finish_create(uid, True, "", at(1))
    for p in processes:
        store.create_process(p, uid, f"e-{p}", ProcessSpec(argv=("sleep", "9")), at(2))
        store.mark_process_running(p, 100, at(2), at(2))


def view(uid: str, container: str, *, exited: bool = False, code: int = 0, sig: int = 0) -> AgentProcessView:
    return AgentProcessView(uid, container, 100, exited, code, sig, False, at(2), at(5) if exited else None)


def test_exits_the_event_stream_missed_are_recorded_with_their_codes(
    store: Store, pool: FakePool, syncer: HostSyncer, clock: Clock
) -> None:
    ready_host(store, "h1", "a:1")
    running_container(store, "c1", "h1", "p1", "p2", "p3")
    agent = pool.get("a:1")
    agent.containers = {"c1": (101,)}
    agent.processes = {
        "p1": view("p1", "c1", exited=True, code=7),
        "p2": view("p2", "c1", exited=True, sig=signal.SIGTERM),
        "p3": view("p3", "c1"),
    }
    clock.now = at(10)
    report = syncer.sync_host("h1", "a:1")
    assert report.exits_recorded == 2 and report.repairs == 2
    p1, p2, p3 = (store.get_process(p) for p in ("p1", "p2", "p3"))
    assert (p1.state, p1.exit_code) == (P.EXITED, 7)
    assert (p2.state, p2.signal) == (P.EXITED, signal.SIGTERM)
    assert p3.state is P.RUNNING
    assert store.get_container("c1").state is C.RUNNING
    # A second sync finds nothing more to do; a late event of the same exit changes nothing.
    assert syncer.sync_host("h1", "a:1").repairs == 0


def test_what_the_agent_lost_becomes_lost_unless_it_changed_after_the_sync(
    store: Store, pool: FakePool, syncer: HostSyncer, clock: Clock
) -> None:
    ready_host(store, "h1", "a:1")
    running_container(store, "gone", "h1", "p1")
    running_container(store, "kept", "h1", "p2", "p3")
    agent = pool.get("a:1")
    agent.containers = {"kept": (102,)}
    agent.processes = {"p2": view("p2", "kept")}  # p3 is unknown to the agent
    clock.now = at(10)
    report = syncer.sync_host("h1", "a:1")
    assert report.containers_lost == ["gone"] and report.processes_lost == 1
    gone = store.get_container("gone")
    assert gone.state is C.LOST and "no longer has this container" in gone.message
    assert store.get_process("p1").state is P.LOST
    assert store.get_process("p2").state is P.RUNNING
    assert store.get_process("p3").state is P.LOST
    # A container created after the Sync was asked for is not the agent's loss.
    store.create_container("new", "r-new", ContainerSpec(name="new", host="h1"), at(24), choose_host)
    store.finish_create("new", True, "", at(25))
    clock.now = at(20)  # the Sync was asked for before the create finished
    assert syncer.sync_host("h1", "a:1").containers_lost == []
    assert store.get_container("new").state is C.CREATED


def test_orphans_on_the_agent_are_destroyed_and_wanted_work_is_left_alone(
    store: Store, pool: FakePool, syncer: HostSyncer, clock: Clock
) -> None:
    ready_host(store, "h1", "a:1")
    ready_host(store, "h2", "b:1")
    running_container(store, "live", "h1")
    running_container(store, "deleted", "h1")
    store.transition_container("deleted", C.DELETED, now=at(3))
    running_container(store, "stopping", "h1")
    store.transition_container("stopping", C.STOPPING, now=at(3))
    running_container(store, "elsewhere", "h2")
    running_container(store, "lost", "h1")
    store.transition_container("lost", C.LOST, now=at(3))
    agent = pool.get("a:1")
    agent.containers = {uid: () for uid in ("live", "deleted", "stopping", "elsewhere", "lost", "unknown")}
    clock.now = at(10)
    report = syncer.sync_host("h1", "a:1")
    assert sorted(report.orphans_destroyed) == ["deleted", "elsewhere", "lost", "unknown"]
    assert sorted(agent.containers) == ["live", "stopping"]  # a stop in progress is the driver's
    assert store.get_container("elsewhere").state is C.CREATED  # its own host is not touched


def test_processes_the_controller_did_not_start_are_killed(
    store: Store, pool: FakePool, syncer: HostSyncer, clock: Clock
) -> None:
    ready_host(store, "h1", "a:1")
    running_container(store, "c1", "h1", "p1")
    agent = pool.get("a:1")
    agent.containers = {"c1": (100, 200)}
    agent.processes = {"p1": view("p1", "c1"), "stray": view("stray", "c1")}
    clock.now = at(10)
    report = syncer.sync_host("h1", "a:1")
    assert report.processes_killed == 1
    assert agent.signalled == [("stray", signal.SIGKILL)]
    assert store.get_process("p1").state is P.RUNNING


def test_a_late_start_after_lost_is_running_again(
    store: Store, pool: FakePool, syncer: HostSyncer, clock: Clock
) -> None:
    ready_host(store, "h1", "a:1")
    running_container(store, "c1", "h1")
    store.create_process("p1", "c1", "e", ProcessSpec(argv=("x",)), at(2))
    store.mark_process_lost("p1", "start was never confirmed", at(3))
    agent = pool.get("a:1")
    agent.containers = {"c1": (100,)}
    agent.processes = {"p1": view("p1", "c1")}
    clock.now = at(10)
    assert syncer.sync_host("h1", "a:1").starts_recorded == 1
    assert store.get_process("p1").state is P.RUNNING
    assert store.get_container("c1").state is C.RUNNING


def test_syncs_run_on_reconnection_and_when_the_state_hash_changes(
    store: Store, pool: FakePool, syncer: HostSyncer
) -> None:
    ready_host(store, "h1", "a:1")
    host = store.get_host("h1")
    agent = pool.get("a:1")
    info = AgentInfoRecord(boot_id="b1", state_hash="s1")
    syncer.observe(host, info)  # the first check after the controller started
    assert syncer.wait_idle(10) and agent.syncs == 1
    syncer.observe(host, info)  # nothing changed
    assert syncer.wait_idle(10) and agent.syncs == 1
    syncer.observe(host, AgentInfoRecord(boot_id="b1", state_hash="s2"))
    assert syncer.wait_idle(10) and agent.syncs == 2
    restarted = AgentInfoRecord(boot_id="b2", state_hash="s2")
    syncer.observe(host, restarted)  # a new boot of the agent: a reconnection
    assert syncer.wait_idle(10) and agent.syncs == 3
    not_ready = store.record_health("h1", HostHealth.NOT_READY, at(1))[0]
    syncer.observe(not_ready, restarted)  # back from NOT_READY: synced even with the same hash
    assert syncer.wait_idle(10) and agent.syncs == 4
    syncer.request("h1", "a:1")  # EVENTS_DROPPED
    assert syncer.wait_idle(10) and agent.syncs == 5


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_state_hash_changes_causes_a_bounded_number_of_syncs(
    store: Store, pool: FakePool, clock: Clock
) -> None:
    """A create changes the agent's state hash: 500 changes over 5 s (a burst of creates) are
    synced a few times, not 500; the last hash is synced once the burst ends; a reconnection and
    EVENTS_DROPPED are not delayed."""
    mono = Monotonic()
    syncer = HostSyncer(
        store,
        pool,  # type: ignore[arg-type]
        clock,
        metrics=ControllerMetrics(),
        min_interval=2.0,
        settle=0.5,
        monotonic=mono,
    )
    try:
        ready_host(store, "h1", "a:1")
        host = store.get_host("h1")
        agent = pool.get("a:1")
        syncer.observe(host, AgentInfoRecord(boot_id="b1", state_hash="s0"))
        assert syncer.wait_idle(10) and agent.syncs == 1
        for i in range(1, 501):
            mono.now += 0.01
            syncer.observe(host, AgentInfoRecord(boot_id="b1", state_hash=f"s{i}"))
            assert syncer.wait_idle(10)
        # One sync per min_interval at most: 5 s of changes after the first sync.
        assert 1 < agent.syncs <= 1 + 3
        during = agent.syncs
        mono.now += 2.5  # the burst is over: its last hash is synced at the next check
        last = AgentInfoRecord(boot_id="b1", state_hash="s500")
        syncer.observe(host, last)
        assert syncer.wait_idle(10) and agent.syncs == during + 1
        syncer.observe(host, last)  # nothing changed since
        assert syncer.wait_idle(10) and agent.syncs == during + 1
        syncer.observe(host, AgentInfoRecord(boot_id="b1", state_hash="s501"))  # too soon: waits
        assert syncer.wait_idle(10) and agent.syncs == during + 1
        syncer.observe(host, AgentInfoRecord(boot_id="b2", state_hash="s501"))  # a new boot: now
        assert syncer.wait_idle(10) and agent.syncs == during + 2
        syncer.request("h1", "a:1")  # EVENTS_DROPPED: now
        assert syncer.wait_idle(10) and agent.syncs == during + 3
    finally:
        syncer.stop()


def test_the_event_stream_acts_on_dropped_denied_and_empty_events(store: Store, pool: FakePool) -> None:
    """EVENTS_DROPPED syncs the host at once; SYSCALL_DENIED is counted; CONTAINER_EMPTY reaches
    the hooks (a stop waiting for its members)."""
    metrics = ControllerMetrics()
    ingestor = EventIngestor(store, pool, lambda: T0, metrics=metrics)  # type: ignore[arg-type]
    requested: list[tuple[str, str]] = []
    emptied: list[tuple[str, str]] = []

    class Syncer:
        def request(self, host_id: str, address: str) -> None:
            requested.append((host_id, address))

    ingestor.syncer = Syncer()  # type: ignore[assignment]
    ingestor.on_empty.append(lambda host_id, uid: emptied.append((host_id, uid)))
    ingestor._react("h1", "a:1", AgentEventRecord(seq=1, kind="EVENTS_DROPPED", count=12))
    ingestor._react("h1", "a:1", AgentEventRecord(seq=2, kind="SYSCALL_DENIED", count=3))
    ingestor._react("h1", "a:1", AgentEventRecord(seq=3, kind="CONTAINER_EMPTY", container_uid="c1"))
    assert requested == [("h1", "a:1")]
    assert emptied == [("h1", "c1")]
    assert metrics.registry.get_sample_value("chital_controller_denied_syscalls_total") == 3
