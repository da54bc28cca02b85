"""The leader lease (chital.controller.leader) on a real PostgreSQL server.

Two electors on one database: exactly one leads; when the leader's session is killed by the server
the leader is told at once and the other one takes over; a leader that stops sending (frozen) loses
its session to ``idle_session_timeout`` and the other one takes over; a fenced leader releases the
lock. Waits are on conditions (the electors' own events), never on timing.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from chital.api.admin.v1 import admin_pb2
from chital.controller.leader import LeaderElector, leader_query
from chital.controller.server import ControllerConfig, ControllerServer
from chital.devcluster.postgres import PostgresServer
from chital.security.pki import PKI

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

WAIT = 30.0


@dataclass
class Seen:
    """What an elector told its owner."""

    elected: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    reasons: list[str] = field(default_factory=list)
    terms: int = 0

    def on_elected(self) -> None:
        self.terms += 1
        self.lost.clear()
        self.elected.set()

    def on_lost(self, reason: str) -> None:
        self.reasons.append(reason)
        self.elected.clear()
        self.lost.set()


_names = itertools.count(1)


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    """A fresh database for each test (the lease is per database)."""
    return postgres_server.create_database(f"leader_{next(_names)}")


@contextlib.contextmanager
def electors(url: str, n: int = 2, **kw: Any) -> Iterator[list[tuple[LeaderElector, Seen]]]:
    out: list[tuple[LeaderElector, Seen]] = []
    try:
        for i in range(n):
            seen = Seen()
            elector = LeaderElector(url, name=f"e{i}", on_elected=seen.on_elected, on_lost=seen.on_lost, **kw)
            out.append((elector, seen))
        for elector, _ in out:
            elector.start()
        yield out
    finally:
        for elector, _ in out:
            elector.stop()


def holder(url: str) -> list[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return [row[0] for row in conn.exec_driver_sql(leader_query())]
    finally:
        engine.dispose()


def terminate(url: str, pid: int) -> None:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})").scalar() is True
    finally:
        engine.dispose()


def wait_one_leader(pair: list[tuple[LeaderElector, Seen]]) -> tuple[int, LeaderElector, Seen]:
    done = threading.Event()

    def watch(seen: Seen) -> None:
        if seen.elected.wait(WAIT):
            done.set()

    threads = [threading.Thread(target=watch, args=(s,), daemon=True) for _, s in pair]
    for t in threads:
        t.start()
    assert done.wait(WAIT), "no elector became the leader"
    leaders = [i for i, (e, _) in enumerate(pair) if e.is_leader]
    assert len(leaders) == 1, f"leaders: {leaders}"
    i = leaders[0]
    return i, pair[i][0], pair[i][1]


def test_one_of_two_leads_and_the_lock_names_it(pg_url: str) -> None:
    with electors(pg_url) as pair:
        i, leader, _ = wait_one_leader(pair)
        other, other_seen = pair[1 - i]
        # The follower keeps trying and keeps failing while the leader holds the lease.
        assert not other.is_leader and not other_seen.elected.is_set()
        assert holder(pg_url) == [f"chital-controller e{i}"]
        assert leader.term == 1


def test_killed_session_moves_the_lease(pg_url: str) -> None:
    with electors(pg_url) as pair:
        i, leader, seen = wait_one_leader(pair)
        other, other_seen = pair[1 - i]
        terminate(pg_url, leader.backend_pid)
        assert seen.lost.wait(WAIT), "the leader was not told it lost the lease"
        assert "session failed" in seen.reasons[0]
        assert other_seen.elected.wait(WAIT), "the follower did not take over"
        assert other.is_leader
        assert holder(pg_url) == [f"chital-controller e{1 - i}"]
        # The old leader campaigns again, as a follower now.
        assert not leader.is_leader


def test_frozen_leader_loses_its_session_to_idle_session_timeout(pg_url: str) -> None:
    """A leader that sends nothing (frozen: simulated by stopping its elector thread in a wait)
    keeps the lock only until the server ends its idle session; the follower then leads."""
    with electors(pg_url, lease_timeout=1.5, check_interval=0.25) as pair:
        i, leader, seen = wait_one_leader(pair)
        other, other_seen = pair[1 - i]
        # Freeze: hold the elector's condition so neither its campaign nor its watchdog can run.
        with leader._cond:
            assert other_seen.elected.wait(WAIT), "idle_session_timeout did not free the lease"
            assert other.is_leader
        # Unfrozen: the old leader's watchdog or its next confirmation fences it.
        assert seen.lost.wait(WAIT)
        assert not leader.is_leader
        assert holder(pg_url) == [f"chital-controller e{1 - i}"]


def test_fenced_leader_releases_the_lock(pg_url: str) -> None:
    """The watchdog fences a leader whose confirmations stalled; its session is then closed, so the
    lock does not stay with a controller that no longer acts as the leader."""
    with electors(pg_url, n=1, lease_timeout=3.0, check_interval=0.25) as pair:
        leader, seen = pair[0]
        assert seen.elected.wait(WAIT)
        stall = threading.Event()
        real_confirm = leader._confirm

        def stalled() -> None:
            stall.wait(WAIT)
            real_confirm()

        leader._confirm = stalled  # type: ignore[method-assign]
        assert seen.lost.wait(WAIT), "the watchdog did not fence"
        assert "not confirmed" in seen.reasons[0]
        leader._confirm = real_confirm  # type: ignore[method-assign]
        stall.set()
        # The elector closed the fenced session and won a new term on a new one.
        assert seen.elected.wait(WAIT)
        assert leader.term == 2


def test_sqlite_is_refused() -> None:
    with pytest.raises(ValueError, match="PostgreSQL"):
        LeaderElector("sqlite:///x.db", name="x", on_elected=lambda: None, on_lost=lambda _r: None)


def test_two_controllers_migrating_at_once(pg_url: str) -> None:
    """Controllers started together with --migrate take turns (an advisory lock): both succeed."""
    from chital.controller import db  # noqa: PLC0415

    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            db.upgrade(pg_url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert errors == []
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    try:
        assert sa.inspect(engine).has_table("events")
    finally:
        engine.dispose()


def _controller(tmp_path: Path, url: str, name: str) -> ControllerServer:
    """A controller as deployed (TLS with its own bundle), not started."""
    bundle = PKI.init(tmp_path / f"pki-{name}").issue_controller()
    return ControllerServer(
        ControllerConfig(
            listen="127.0.0.1:0",
            tls_dir=str(bundle),
            state_dir=str(tmp_path / name),
            database_url=url,
            migrate=True,
            lease_timeout=2.0,
        )
    )


def _leader_gauge(server: ControllerServer) -> float | None:
    return server.metrics.registry.get_sample_value("chital_controller_leader")


def _says_it_leads(server: ControllerServer) -> bool:
    """GetServerInfo's answer: whether the controller leads."""
    context: Any = None  # GetServerInfo reads nothing of it
    return bool(server.admin.GetServerInfo(admin_pb2.GetServerInfoRequest(), context).leader)


def test_servers_one_leads_and_the_other_takes_over(tmp_path: Path, pg_url: str) -> None:
    """The wiring: the first controller leads (gauge 1, event streams and host syncs on), the second
    follows (gauge 0, both off, its stop kicks nothing) until the first stops and frees the lease."""
    first = _controller(tmp_path, pg_url, "a")
    first.start()
    second = _controller(tmp_path, pg_url, "b")
    try:
        second.start()
        assert first.is_leader and _leader_gauge(first) == 1.0
        assert first.ingestor.active and first.syncer.active
        assert not second.is_leader and _leader_gauge(second) == 0.0
        assert not second.ingestor.active and not second.syncer.active
        assert _says_it_leads(first) and not _says_it_leads(second)
        second.operations.kick("0" * 32)
        assert second.operations.pending() == 0  # a follower's driver takes nothing
        first.stop(grace=1.0)
        assert second.wait_leader(WAIT)
        assert second.is_leader and _leader_gauge(second) == 1.0
        assert _says_it_leads(second)
        assert second.ingestor.active and second.syncer.active
        assert not second.leadership_lost.is_set()
    finally:
        second.stop(grace=1.0)
        first.stop(grace=1.0)


def test_sqlite_controller_always_leads(tmp_path: Path) -> None:
    server = _controller(tmp_path, f"sqlite:///{tmp_path / 'c.db'}", "s")
    server.start()
    try:
        assert server.elector is None and server.is_leader and _leader_gauge(server) == 1.0
    finally:
        server.stop(grace=1.0)
