"""HostMonitor's state rules, with a hand-driven clock and an agent address that refuses connections."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from chital.controller.agents import AgentPool
from chital.controller.db import make_engine
from chital.controller.events import EventIngestor
from chital.controller.health import HealthConfig, HostMonitor
from chital.controller.placement import choose_host
from chital.controller.records import AgentInfoRecord, ContainerRecordState, ContainerSpec, HostHealth
from chital.controller.store import Store

T0 = datetime(2026, 1, 1, 12, 0, 0)


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


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Store, HostMonitor, Clock]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'h.db'}")
    store = Store(engine)
    store.create_schema()
    clock = Clock()
    pool = AgentPool(timeout=1.0)
    ingestor = EventIngestor(store, pool, clock)
    monitor = HostMonitor(
        store, pool, ingestor, clock, config=HealthConfig(interval=0.5, not_ready_after=3, lost_after=60)
    )
    yield store, monitor, clock
    ingestor.stop()
    pool.close()
    engine.dispose()


def test_ready_host_goes_not_ready_then_lost(setup: tuple[Store, HostMonitor, Clock]) -> None:
    store, monitor, clock = setup
    store.register_host("h1", refused_address(), {}, 0, T0)
    store.record_health("h1", HostHealth.READY, T0, info=AgentInfoRecord(boot_id="b"), last_seen=T0)
    store.create_container("c1", "r1", ContainerSpec(name="a"), T0, choose_host)
    store.finish_create("c1", True, "", T0)

    clock.at(2.0)  # 4 missed checks: the next one would still be in time
    assert monitor.check_one(store.get_host("h1")).health is HostHealth.READY
    clock.at(2.5)  # waiting for the next check would pass the 3 s budget
    host = monitor.check_one(store.get_host("h1"))
    assert host.health is HostHealth.NOT_READY
    assert "unavailable" in host.message
    assert store.get_container("c1").state is ContainerRecordState.CREATED

    clock.at(59.0)
    assert monitor.check_one(store.get_host("h1")).health is HostHealth.NOT_READY
    clock.at(60.5)
    assert monitor.check_one(store.get_host("h1")).health is HostHealth.LOST
    lost = store.get_container("c1")
    assert lost.state is ContainerRecordState.LOST and "lost" in lost.message


def test_never_seen_host_counts_from_registration(setup: tuple[Store, HostMonitor, Clock]) -> None:
    store, monitor, clock = setup
    store.register_host("h1", refused_address(), {}, 0, T0)
    clock.at(10)
    assert monitor.check_one(store.get_host("h1")).health is HostHealth.NOT_READY
    clock.at(61)
    assert monitor.check_one(store.get_host("h1")).health is HostHealth.LOST


def test_a_host_the_pool_refuses_fails_alone(setup: tuple[Store, HostMonitor, Clock]) -> None:
    """An insecure controller cannot dial a non-loopback agent: that host's check fails with the
    reason, and the round goes on to check the others."""
    store, monitor, clock = setup
    store.register_host("remote", "192.0.2.10:7000", {}, 0, T0)  # first: the round meets it first
    store.register_host("local", refused_address(), {}, 0, T0)
    clock.at(10)
    monitor.check_all()
    remote, local = store.get_host("remote"), store.get_host("local")
    assert remote.health is HostHealth.NOT_READY and "--insecure" in remote.message
    assert local.health is HostHealth.NOT_READY and "unavailable" in local.message
