"""The store's lock order on PostgreSQL, and event revisions given out in commit order.

The store has no in-process writer lock on PostgreSQL: writers of one controller (and of several)
run in parallel and avoid deadlocks by locking rows in one order (hosts, containers, processes,
retention rows, then the events lock; see :mod:`chital.controller.store._base`). These tests run
the writers that meet on the same rows at once and count what happened: deadlocks the server broke
(every one would show in ``conflict_retries``), errors, and the final records. An event reader
must never skip an event that commits after one with a larger revision.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from chital.controller.db import make_engine
from chital.controller.events import ChangeNotifier
from chital.controller.feed import EventFeed
from chital.controller.models import ContainerRow, ProcessRow
from chital.controller.placement import choose_host
from chital.controller.records import (
    AdminState,
    AgentInfoRecord,
    Candidate,
    ContainerRecordState,
    ContainerSpec,
    HostHealth,
    ProcessRecordState,
    ProcessSpec,
)
from chital.controller.store import AgentEventRecord, Store
from chital.controller.store._base import EVENTS_LOCK_KEY
from chital.devcluster.postgres import PostgresServer

T0 = datetime(2026, 1, 1, 12, 0, 0)
HOSTS = ("h0", "h1", "h2", "h3")
ITERATIONS = 1000


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def until(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Wait for a condition other threads (or the database) make true; never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not reached within {timeout} s: {what}"
        time.sleep(0.005)


@pytest.fixture
def pg_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> str:
    name = "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:40]
    return postgres_server.create_database(f"lo_{name}_{time.monotonic_ns() % 10**9}")


@pytest.fixture
def store(pg_url: str) -> Iterator[Store]:
    engine = make_engine(pg_url)
    s = Store(engine)
    s.create_schema()
    for i, host in enumerate(HOSTS):
        s.register_host(host, f"127.0.0.1:{i + 1}", {}, 0, T0)
        s.record_health(
            host, HostHealth.READY, T0, info=AgentInfoRecord(device="fake", boot_id=f"b-{host}"), last_seen=T0
        )
    yield s
    engine.dispose()


@pytest.fixture
def probe(pg_url: str) -> Iterator[sa.Engine]:
    """A connection of the test's own, beside the store's pool: holds locks, reads pg_stat_activity."""
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


def lock_waiters(probe: sa.Engine, locktype: str = "") -> int:
    """Backends of this database waiting for a lock (of ``locktype``: 'advisory', 'tuple'...)."""
    query = (
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE NOT l.granted AND a.datname = current_database()"
    )
    params: dict[str, Any] = {}
    if locktype:
        query += " AND l.locktype = :locktype"
        params["locktype"] = locktype
    if locktype == "advisory":  # the events lock only
        query += " AND ((l.classid::bigint << 32) | l.objid::bigint) = :key"
        params["key"] = EVENTS_LOCK_KEY
    with probe.connect() as conn:
        return int(conn.execute(sa.text(query), params).scalar_one())


def running_container(store: Store, uid: str, host: str, processes: int, now: datetime) -> list[str]:
    """A RUNNING container on ``host`` with ``processes`` running processes; their uids."""
    store.create_container(uid, f"r-{uid}", ContainerSpec(name=uid, host=host), now, choose_host)
    store.finish_create(uid, True, "", now)
    uids = []
    for i in range(processes):
        puid = f"{uid}-p{i}"
        store.create_process(puid, uid, f"r-{puid}", ProcessSpec(argv=("sleep", "1")), now)
        store.mark_process_running(puid, 100 + i, now, now)
        uids.append(puid)
    return uids


def exited(seq: int, process_uid: str, code: int, now: datetime) -> AgentEventRecord:
    return AgentEventRecord(seq=seq, kind="PROCESS_EXITED", process_uid=process_uid, exit_code=code, time=now)


# -- the deadlock the in-process lock used to hide ------------------------------------------------


@pytest.mark.postgres
def test_ingest_and_a_stop_that_meet_on_one_process_do_not_deadlock(store: Store, probe: sa.Engine) -> None:
    """The old order: the ingestor locked the process, then the container (to move RUNNING to
    CREATED); a stop-like write (the container LOST with its processes) locked the container, then
    its processes. Lined up on one process (held by a third transaction, then released), the two
    waited for each other and the server aborted one. In the lock order, the ingestor takes the
    container first: the stop waits for it, and both finish."""
    (puid,) = running_container(store, "c1", "h0", 1, at(1))
    assert store.get_container("c1").state is ContainerRecordState.RUNNING
    errors: list[BaseException] = []

    def run(call: Callable[[], object]) -> threading.Thread:
        def target() -> None:
            try:
                call()
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        thread = threading.Thread(target=target)
        thread.start()
        return thread

    with probe.connect() as blocker:
        blocker.execute(sa.text("SELECT uid FROM processes WHERE uid = :u FOR UPDATE"), {"u": puid})
        ingest = run(lambda: store.apply_agent_events("h0", "b-h0", [exited(1, puid, 7, at(2))], at(2)))
        until(lambda: lock_waiters(probe) == 1, "the ingestor waits for the process")
        stop = run(
            lambda: store.transition_container(
                "c1", ContainerRecordState.LOST, now=at(3), message="gone", finish_processes="gone"
            )
        )
        until(lambda: lock_waiters(probe) == 2, "the stop waits too")
        blocker.rollback()
    ingest.join(60)
    stop.join(60)
    assert not ingest.is_alive() and not stop.is_alive()
    assert errors == []
    assert store.conflict_retries == 0  # no deadlock was broken (and retried)
    process = store.get_process(puid)
    assert process.state is ProcessRecordState.EXITED and process.exit_code == 7
    assert store.get_container("c1").state is ContainerRecordState.LOST


# -- the stress: ingest, stop, delete, drain, create, sync and retention at once --------------------


@dataclass
class _Round:
    container: str = ""
    host: str = ""
    processes: list[str] = field(default_factory=list)


@pytest.mark.postgres
def test_lock_order_stress_ingest_stop_delete_drain_create(store: Store) -> None:
    """1,000 iterations. In each, eight writers start together. On one RUNNING container with two
    running processes: the ingestor applies both exits, a stop and a delete are requested and
    finished, and its host is drained; every fifth iteration a host sync applies the same exits
    again. Beside them, a create places a new container (it locks every host row, and chooses a
    fifth host that is never drained), the janitor prunes (every fifth iteration) and compacts
    (every tenth), and the next iteration's container is made ready on the next host. Counts, no
    timing: no deadlock, no error, every container DELETED (or pruned) and every process EXITED
    with its own code, exactly once."""
    seq = Counter[str]()
    rounds: dict[int, _Round] = {}
    errors: list[tuple[str, int, BaseException]] = []
    outcomes = Counter[str]()
    outcomes_lock = threading.Lock()
    # The containers under test are copies of one made through the store (RUNNING, two running
    # processes): one insert each instead of six transactions.
    running_container(store, "template", HOSTS[0], 2, at(0))
    store.register_host("spare", "127.0.0.1:9", {}, 0, T0)
    store.record_health(
        "spare", HostHealth.READY, T0, info=AgentInfoRecord(device="fake", boot_id="b"), last_seen=T0
    )
    with Session(store.engine) as session:
        container_columns = {
            a.key: getattr(session.get(ContainerRow, "template"), a.key)
            for a in ContainerRow.__mapper__.column_attrs
        }
        process_columns = {
            a.key: getattr(session.get(ProcessRow, "template-p0"), a.key)
            for a in ProcessRow.__mapper__.column_attrs
        }
    store.request_stop("template", at(0), at(0), delete=True)
    store.finish_stop("template", at(0))

    def code(puid: str) -> int:
        return int(puid[1:5]) % 200 + int(puid[-1])

    def ready(k: int) -> None:
        uid, host, now = f"c{k:04d}", HOSTS[k % len(HOSTS)], at(k)
        processes = [f"{uid}-p0", f"{uid}-p1"]
        with Session(store.engine) as session, session.begin():
            names = {"name": uid, "live_name": uid, "request_id": f"r-{uid}"}
            session.add(
                ContainerRow(**{**container_columns, **names, "uid": uid, "host_id": host, "updated": now})
            )
            session.flush()
            session.add_all(
                ProcessRow(**{**process_columns, "uid": p, "container_uid": uid, "request_id": f"r-{p}"})
                for p in processes
            )
        rounds[k] = _Round(uid, host, processes)

    def ingest(k: int) -> None:
        r = rounds[k]
        events = []
        for puid in r.processes:
            seq[r.host] += 1
            events.append(exited(seq[r.host], puid, code(puid), at(k)))
        store.apply_agent_events(r.host, f"b-{r.host}", events, at(k))

    def stop(k: int) -> None:
        store.request_stop(rounds[k].container, at(k + 30), at(k))
        store.finish_stop(rounds[k].container, at(k))

    def delete(k: int) -> None:
        store.request_stop(rounds[k].container, at(k), at(k), delete=True)
        store.finish_stop(rounds[k].container, at(k))

    def drain(k: int) -> None:  # a host drained before: its drain goes on and takes the new container
        store.start_drain(rounds[k].host, at(k + 60), at(k + 30), at(k))

    def sync(k: int) -> None:
        if k % 5 == 0:
            r = rounds[k]
            store.apply_synced_processes(r.host, [exited(0, p, code(p), at(k)) for p in r.processes], at(k))

    def create(k: int) -> None:
        def choose(candidates: list[Candidate]) -> str:  # a host no drain stops them on
            assert {c.host_id for c in candidates} == {*HOSTS, "spare"}
            return choose_host([c for c in candidates if c.host_id == "spare"])

        store.create_container(f"n{k:04d}", f"r-n{k}", ContainerSpec(name=f"n{k:04d}"), at(k), choose)

    def janitor(k: int) -> None:
        if k % 5 == 0:
            store.prune_deleted(at(k - 3), 50)  # containers of iterations that ended
        if k % 10 == 0:
            store.compact_events(at(k - 20), 0, 500)
            store.record_retention_pass(["events", "deleted"], at(k))

    workers: dict[str, Callable[[int], None]] = {
        "ingest": ingest,
        "stop": stop,
        "delete": delete,
        "drain": drain,
        "sync": sync,
        "create": create,
        "janitor": janitor,
        "ready": lambda k: ready(k + 1),
    }
    barrier = threading.Barrier(len(workers))

    def worker(name: str, op: Callable[[int], None]) -> None:
        for k in range(ITERATIONS):
            barrier.wait()
            try:
                op(k)
                with outcomes_lock:
                    outcomes[name] += 1
            except BaseException as exc:
                errors.append((name, k, exc))
            barrier.wait()  # the next iteration starts when every write of this one ended

    ready(0)
    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=item, name=item[0]) for item in workers.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started

    with store.engine.connect() as conn:
        deadlocks = conn.execute(
            sa.text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        ).scalar_one()
    print(
        f"\nlock-order stress: {ITERATIONS} iterations x {len(workers)} writers in {elapsed:.1f} s; "
        f"operations {dict(outcomes)}; errors {len(errors)}; transactions retried after a conflict "
        f"{store.conflict_retries}; pg_stat_database.deadlocks {deadlocks}"
    )
    assert errors == []
    assert store.conflict_retries == 0
    assert outcomes == {name: ITERATIONS for name in workers}

    deleted = {c.uid for c in store.list_containers(10 * ITERATIONS, state=ContainerRecordState.DELETED)}
    kept = [rounds[k] for k in range(ITERATIONS) if rounds[k].container in deleted]
    pruned = store.retention_state()["deleted"][1]
    assert len(kept) + pruned == ITERATIONS + 1  # and the template
    assert kept, "the last iterations' containers are not pruned yet"
    for r in kept:
        for puid in r.processes:
            process = store.get_process(puid)
            assert (process.state, process.exit_code) == (ProcessRecordState.EXITED, code(puid)), puid
    assert store.get_container(rounds[ITERATIONS].container).state is ContainerRecordState.RUNNING
    created = [c for c in store.list_containers(10 * ITERATIONS) if c.uid.startswith("n")]
    assert len(created) == ITERATIONS
    for host in HOSTS:
        assert store.get_host(host).admin_state is AdminState.DRAINING
    # Exactly one EXITED event per process, and each container's events in its own revision order.
    events = store.list_events(store.compact_revision, 100 * ITERATIONS)
    exits = Counter(
        e.process.uid
        for e in events
        if e.process is not None and e.process.state is ProcessRecordState.EXITED
    )
    assert exits and all(n == 1 for n in exits.values())
    last: dict[str, int] = {}
    for e in events:
        if e.container is not None:
            assert e.container.revision > last.get(e.container.uid, 0)
            last[e.container.uid] = e.container.revision


# -- event revisions in commit order ------------------------------------------------------------------


@pytest.mark.postgres
def test_an_event_committed_late_with_a_smaller_revision_is_not_skipped(
    store: Store, probe: sa.Engine
) -> None:
    """Writer A appends an event and stops just before its commit; writer B then writes. Were
    revisions handed out at insert time only, B would commit a larger revision first, the feed
    would move past it, and A's smaller one would never be read. With the events lock, B waits
    for A's commit before it gets a revision."""
    running_container(store, "a", "h0", 0, at(1))
    running_container(store, "b", "h1", 0, at(1))
    notifier = ChangeNotifier()
    store.add_listener(notifier)
    feed = EventFeed(store, notifier, poll_interval=60.0)  # woken by this process's commits
    feed.start()
    floor = feed.head()
    in_commit = threading.Event()
    release = threading.Event()
    b_done = threading.Event()

    def hold_a(session: Any) -> None:
        if threading.current_thread().name == "writer-a":
            in_commit.set()
            release.wait(60)

    sa.event.listen(store._rw, "before_commit", hold_a)
    try:
        a = threading.Thread(
            target=lambda: store.request_stop("a", at(9), at(2)),
            name="writer-a",
        )
        b = threading.Thread(
            target=lambda: (
                store.request_stop("b", at(9), at(3)),
                b_done.set(),
            ),
            name="writer-b",
        )
        a.start()
        until(in_commit.is_set, "writer A holds its event uncommitted")
        b.start()
        until(
            lambda: b_done.is_set() or lock_waiters(probe, "advisory") == 1,
            "writer B committed, or waits for the events lock",
        )
        if b_done.is_set():  # revisions out of commit order: let the feed read past B's event
            newest = store.last_revision()
            until(lambda: feed.head() >= newest, "the feed read B's event")
        release.set()
        a.join(60)
        b.join(60)
        newest = store.last_revision()
        until(lambda: feed.head() >= newest, "the feed read every event")
        seen, _ = feed.read(floor, "", 100)
    finally:
        release.set()
        sa.event.remove(store._rw, "before_commit", hold_a)
        feed.stop()
    stored = store.list_events(floor, 100)
    assert [e.revision for e in seen] == [e.revision for e in stored]
    assert [e.container.uid for e in stored if e.container is not None] == ["a", "b"]


@pytest.fixture
def any_store(fresh_database_url: str) -> Iterator[Store]:
    engine = make_engine(fresh_database_url)
    s = Store(engine)
    s.create_schema()
    s.register_host("h0", "127.0.0.1:1", {}, 0, T0)
    s.record_health(
        "h0", HostHealth.READY, T0, info=AgentInfoRecord(device="fake", boot_id="b"), last_seen=T0
    )
    yield s
    engine.dispose()


def test_a_watcher_sees_every_event_of_many_writers_once_in_order(any_store: Store) -> None:
    """Eight threads write at once (creates, execs, starts, exits, stops: about 1,800 events)
    while a watcher follows the feed as Watch does: it sees every event exactly once, in revision
    order, and the same events as the table holds."""
    store = any_store
    notifier = ChangeNotifier()
    store.add_listener(notifier)
    feed = EventFeed(store, notifier, poll_interval=0.05)
    feed.start()
    floor = feed.head()
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        sub = feed.subscribe()
        after = floor
        try:
            while True:
                sub.event.clear()
                events, covered = feed.read(after, "", 500)
                seen.extend(e.revision for e in events)
                after = covered
                if not events:
                    if done.is_set() and after >= store.last_revision():
                        return
                    sub.event.wait(0.5)
        finally:
            feed.unsubscribe(sub)

    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(15):
                uid = f"w{n}-{i}"
                now = at(n * 100 + i)
                store.create_container(uid, f"r-{uid}", ContainerSpec(name=uid), now, choose_host)
                store.finish_create(uid, True, "", now)
                for j in range(2):
                    puid = f"{uid}-p{j}"
                    store.create_process(puid, uid, f"r-{puid}", ProcessSpec(argv=("true",)), now)
                    store.mark_process_running(puid, 10 + j, now, now)
                store.apply_synced_processes("h0", [exited(0, f"{uid}-p0", 0, now)], now)
                store.request_stop(uid, now, now, delete=True)
                store.finish_stop(uid, now)
        except BaseException as exc:
            errors.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    writers = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    watcher.join(120)
    feed.stop()
    assert not watcher.is_alive() and errors == []
    stored = [e.revision for e in store.list_events(floor, 100_000)]
    assert len(stored) > 8 * 15 * 10
    assert seen == stored  # every event, once, in order
    assert store.conflict_retries == 0
