"""HostMonitor: its deadline rules with a hand-driven clock, and its heartbeat streams against an
in-process AgentService that serves only Heartbeat (and can be frozen, like a SIGSTOPped agent)."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from chital.api.agent.v1 import agent_pb2, agent_pb2_grpc
from chital.controller.agents import AgentPool
from chital.controller.db import make_engine
from chital.controller.events import EventIngestor
from chital.controller.health import HealthConfig, HostMonitor
from chital.controller.metrics import ControllerMetrics
from chital.controller.placement import choose_host
from chital.controller.records import AgentInfoRecord, ContainerRecordState, ContainerSpec, HostHealth
from chital.controller.store import Store

T0 = datetime(2026, 1, 1, 12, 0, 0)
CONFIG = HealthConfig(interval=0.5, not_ready_after=3, lost_after=60)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def at(self, seconds: float) -> None:
        self.now = T0 + timedelta(seconds=seconds)


def refused_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # closed again: connections are refused


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def counted(metrics: ControllerMetrics, result: str) -> float:
    return metrics.health_checks.labels(result)._value.get()  # type: ignore[no-any-return]


class Beats(agent_pb2_grpc.AgentServiceServicer):
    """Heartbeat only. ``frozen`` stops the beats without closing the stream (a stopped process)."""

    def __init__(self) -> None:
        self.boot_id = uuid.uuid4().hex
        self.frozen = threading.Event()
        self.streams = 0

    def Heartbeat(self, request: Any, context: Any) -> Iterator[Any]:
        self.streams += 1
        sequence = 0
        while context.is_active():
            if self.frozen.is_set():
                time.sleep(0.02)
                continue
            sequence += 1
            info = agent_pb2.GetInfoResponse(agent_version="t", device="fake", boot_id=self.boot_id)
            yield agent_pb2.HeartbeatResponse(sequence=sequence, info=info if sequence == 1 else None)
            time.sleep(request.interval_ms / 1000)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    engine = make_engine(f"sqlite:///{tmp_path / 'h.db'}")
    s = Store(engine)
    s.create_schema()
    yield s
    engine.dispose()


@pytest.fixture
def agent() -> Iterator[tuple[Beats, str]]:
    beats = Beats()  # type: ignore[abstract]  # serves Heartbeat only
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    agent_pb2_grpc.add_AgentServiceServicer_to_server(beats, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield beats, f"127.0.0.1:{port}"
    beats.frozen.clear()
    server.stop(0).wait(5)


def make_monitor(
    store: Store, clock: Callable[[], datetime], config: HealthConfig = CONFIG
) -> tuple[HostMonitor, ControllerMetrics, Callable[[], None]]:
    pool = AgentPool(timeout=1.0)
    metrics = ControllerMetrics()
    ingestor = EventIngestor(store, pool, clock)
    monitor = HostMonitor(store, pool, ingestor, clock, config=config, metrics=metrics)

    def close() -> None:
        monitor.stop()
        ingestor.stop()
        pool.close()

    return monitor, metrics, close


# -- deadlines, with a hand-driven clock --------------------------------------------------------


def wait_judged(monitor: HostMonitor, store: Store, host: str, health: HostHealth) -> None:
    """Check deadlines until ``host`` has ``health`` in the store. The monitor's own ticker thread
    checks too, with the same clock: whichever check finds the host first writes the verdict and
    the other skips a host being written, so the test waits for the write, not for its own call."""
    deadline = time.monotonic() + 30
    while store.get_host(host).health is not health and time.monotonic() < deadline:
        monitor.check_deadlines()
        time.sleep(0.05)
    assert store.get_host(host).health is health


def test_ready_host_goes_not_ready_then_lost(store: Store) -> None:
    clock = Clock()
    monitor, _, close = make_monitor(store, clock)
    try:
        store.register_host("h1", refused_address(), {}, 0, T0)
        store.record_health("h1", HostHealth.READY, T0, info=AgentInfoRecord(boot_id="b"), last_seen=T0)
        store.create_container("c1", "r1", ContainerSpec(name="a"), T0, choose_host)
        store.finish_create("c1", True, "", T0)
        monitor.start()
        monitor.refresh()

        clock.at(2.4)  # the next deadline check (a tick later) would still be in time
        monitor.check_deadlines()
        assert store.get_host("h1").health is HostHealth.READY
        clock.at(2.5)  # waiting for the next check would pass the 3 s budget
        wait_judged(monitor, store, "h1", HostHealth.NOT_READY)
        assert store.get_container("c1").state is ContainerRecordState.CREATED

        clock.at(59.0)
        wait_judged(monitor, store, "h1", HostHealth.NOT_READY)
        clock.at(60.0)
        wait_judged(monitor, store, "h1", HostHealth.LOST)
        lost = store.get_container("c1")
        assert lost.state is ContainerRecordState.LOST and "lost" in lost.message
    finally:
        close()


def test_a_lagging_event_loop_postpones_the_verdict(store: Store) -> None:
    """Beats may wait unread on a busy event loop: while the loop lags, nobody is judged silent
    before ``not_ready_after`` more; once it catches up, the verdict comes."""
    clock = Clock()
    monitor, _, close = make_monitor(store, clock)
    release = threading.Event()
    try:
        store.register_host("h1", refused_address(), {}, 0, T0)
        store.record_health("h1", HostHealth.READY, T0, info=AgentInfoRecord(boot_id="b"), last_seen=T0)
        monitor.start()
        monitor.refresh()

        async def busy() -> None:
            release.wait(30)  # blocks the loop, as a long burst of work would

        assert monitor._loop is not None
        monitor._loop.submit(busy())
        clock.at(2.5)
        monitor.check_deadlines()
        assert store.get_host("h1").health is HostHealth.READY
        release.set()
        wait_judged(monitor, store, "h1", HostHealth.NOT_READY)
    finally:
        release.set()
        close()


def test_a_host_just_watched_gets_the_time_to_answer(store: Store) -> None:
    """A controller that starts watching a READY host last seen long ago does not mark it
    NOT_READY before the host had ``not_ready_after`` to send its first beat."""
    clock = Clock()
    store.register_host("h1", refused_address(), {}, 0, T0)
    store.record_health("h1", HostHealth.READY, T0, info=AgentInfoRecord(boot_id="b"), last_seen=T0)
    clock.at(30)  # the controller was away for 30 s
    monitor, _, close = make_monitor(store, clock)
    try:
        monitor.start()
        monitor.refresh()
        monitor.check_deadlines()
        assert store.get_host("h1").health is HostHealth.READY
        clock.at(32.4)
        monitor.check_deadlines()
        assert store.get_host("h1").health is HostHealth.READY
        clock.at(32.5)
        wait_judged(monitor, store, "h1", HostHealth.NOT_READY)
    finally:
        close()


def test_a_host_the_pool_refuses_fails_alone(store: Store) -> None:
    """An insecure controller cannot dial a non-loopback agent: that host fails with the reason,
    and the others are watched as usual."""
    clock = Clock()
    monitor, metrics, close = make_monitor(store, clock)
    try:
        for host_id, address in (("remote", "192.0.2.10:7000"), ("local", refused_address())):
            store.register_host(host_id, address, {}, 0, T0)
            store.record_health(
                host_id, HostHealth.READY, T0, info=AgentInfoRecord(boot_id="b"), last_seen=T0
            )
        monitor.start()
        monitor.refresh()
        wait_for(lambda: counted(metrics, "failed") >= 2, "both streams to fail")
        clock.at(10)
        wait_judged(monitor, store, "remote", HostHealth.NOT_READY)
        wait_judged(monitor, store, "local", HostHealth.NOT_READY)
        remote, local = store.get_host("remote"), store.get_host("local")
        assert remote.health is HostHealth.NOT_READY and "--insecure" in remote.message
        assert local.health is HostHealth.NOT_READY and "unavailable" in local.message
    finally:
        close()


# -- heartbeat streams, in real time ------------------------------------------------------------


def test_beats_keep_a_host_ready_and_write_rarely(store: Store, agent: tuple[Beats, str]) -> None:
    """Beats ten times a second for a while: the host is READY and written once (then only every
    ``persist_every``), not once per beat."""
    _, address = agent
    store.register_host("h1", address, {}, 0, datetime.now())
    writes: list[HostHealth] = []
    record_health = store.record_health

    def counting(host_id: str, health: HostHealth, *a: Any, **kw: Any) -> Any:
        writes.append(health)
        return record_health(host_id, health, *a, **kw)

    store.record_health = counting  # type: ignore[method-assign]
    monitor, metrics, close = make_monitor(
        store, datetime.now, HealthConfig(interval=0.1, not_ready_after=3, persist_every=3600)
    )
    try:
        monitor.start()
        wait_for(lambda: counted(metrics, "ok") >= 30, "30 beats")
        assert store.get_host("h1").health is HostHealth.READY
        assert writes == [HostHealth.READY]
        assert monitor.open_streams() == 1 and "h1" in monitor.ages()
        # The periodic write: every host's last beat in one transaction, no health write.
        first_seen = store.get_host("h1").last_seen
        assert monitor.persist_last_seen() == 1
        last_seen = store.get_host("h1").last_seen
        assert first_seen is not None and last_seen is not None and last_seen > first_seen
        assert writes == [HostHealth.READY]
    finally:
        close()


def test_a_frozen_agent_goes_not_ready_and_comes_back(store: Store, agent: tuple[Beats, str]) -> None:
    """An agent that stops beating with its connection open (SIGSTOP) is NOT_READY; the monitor
    dials again, and the host is READY once the beats resume."""
    beats, address = agent
    store.register_host("h1", address, {}, 0, datetime.now())
    monitor, _, close = make_monitor(store, datetime.now, HealthConfig(interval=0.2, not_ready_after=1.0))
    try:
        monitor.start()
        wait_for(lambda: store.get_host("h1").health is HostHealth.READY, "READY")
        beats.frozen.set()
        wait_for(lambda: store.get_host("h1").health is HostHealth.NOT_READY, "NOT_READY")
        assert "no heartbeat" in store.get_host("h1").message
        wait_for(lambda: beats.streams >= 2, "the silent stream dialled again")
        beats.frozen.clear()
        wait_for(lambda: store.get_host("h1").health is HostHealth.READY, "READY again")
    finally:
        close()


def test_a_new_boot_id_restarts_the_event_stream_and_is_recorded(
    store: Store, agent: tuple[Beats, str]
) -> None:
    beats, address = agent
    store.register_host("h1", address, {}, 0, datetime.now())
    monitor, _, close = make_monitor(store, datetime.now, HealthConfig(interval=0.2, not_ready_after=1.0))
    restarted: list[str] = []
    monitor._ingestor.restart = restarted.append  # type: ignore[method-assign, assignment]
    try:
        monitor.start()
        first = beats.boot_id
        wait_for(lambda: store.get_host("h1").agent.boot_id == first, "the first boot id recorded")
        beats.boot_id = uuid.uuid4().hex  # the next stream (after the silence) carries it
        beats.frozen.set()
        wait_for(lambda: beats.streams >= 2, "the stream dialled again")
        beats.frozen.clear()
        wait_for(lambda: store.get_host("h1").agent.boot_id == beats.boot_id, "the new boot id recorded")
        assert restarted == ["h1"]
    finally:
        close()


def test_stop_forgets_and_start_watches_again(store: Store, agent: tuple[Beats, str]) -> None:
    """A controller that loses and regains leadership: stop() closes every stream and reports no
    age (a follower exports none), start() opens them again."""
    beats, address = agent
    store.register_host("h1", address, {}, 0, datetime.now())
    monitor, _, close = make_monitor(store, datetime.now, HealthConfig(interval=0.2, not_ready_after=1.0))
    try:
        monitor.start()
        wait_for(lambda: "h1" in monitor.ages(), "a beat")
        monitor.stop()
        assert monitor.ages() == {} and monitor.open_streams() == 0 and not monitor.running
        opened = beats.streams
        monitor.start()
        wait_for(lambda: "h1" in monitor.ages() and beats.streams > opened, "beats again")
    finally:
        close()
