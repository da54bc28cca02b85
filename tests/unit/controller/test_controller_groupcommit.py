"""The group committer (chital.controller.groupcommit) and the create batches it writes
(Store.write_creates), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from sqlalchemy.exc import OperationalError

from chital.controller.db import make_engine
from chital.controller.groupcommit import GroupCommitter
from chital.controller.placement import choose_host
from chital.controller.records import (
    AgentInfoRecord,
    Candidate,
    ContainerRecord,
    ContainerRecordState,
    ContainerSpec,
    HostHealth,
)
from chital.controller.store import FinishCreate, PlaceIntent, Store
from chital.errdefs import (
    AlreadyExists,
    ChitalError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)

T0 = datetime(2026, 1, 1, 12, 0, 0)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Gate:
    """A write function whose first call blocks until released, so that the items submitted
    meanwhile queue up into the next batch."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_batch: BaseException | None = None
        self.lock = threading.Lock()

    def write(self, items: Sequence[str]) -> list[str | ChitalError]:
        with self.lock:
            first = not self.batches
            self.batches.append(list(items))
        if first:
            self.entered.set()
            self.release.wait(10)
        if self.fail_batch is not None and len(items) > 1:
            raise self.fail_batch
        out: list[str | ChitalError] = []
        for item in items:
            if item.startswith("bad"):
                out.append(InvalidArgument(f"{item} refused"))
            elif item.startswith("boom") and len(items) == 1:
                raise RuntimeError(f"{item} broke its transaction")
            else:
                out.append(item.upper())
        return out


def submit_all(committer: GroupCommitter[str, str], items: list[str]) -> dict[str, object]:
    """Submit each item from its own thread; the result or the exception of each."""
    results: dict[str, object] = {}

    def one(item: str) -> None:
        try:
            results[item] = committer.submit(item)
        except Exception as exc:
            results[item] = exc

    with ThreadPoolExecutor(len(items)) as pool:
        list(pool.map(one, items))
    return results


def queue_behind_first(
    gate: Gate, committer: GroupCommitter[str, str], items: list[str]
) -> dict[str, object]:
    """``first`` is written alone and held; ``items`` queue up meanwhile, then all are released."""
    results: dict[str, object] = {}
    first = threading.Thread(target=lambda: results.setdefault("first", committer.submit("first")))
    first.start()
    assert gate.entered.wait(10)
    waiting: dict[str, object] = {}
    t = threading.Thread(target=lambda: waiting.update(submit_all(committer, items)))
    t.start()
    # The items are queued once the committer's queue holds them all (it is blocked in write).
    for _ in range(1000):
        with committer._cond:
            if len(committer._queue) == len(items):
                break
        threading.Event().wait(0.01)
    gate.release.set()
    t.join(10)
    first.join(10)
    results.update(waiting)
    return results


def test_items_that_arrive_together_share_one_batch() -> None:
    gate = Gate()
    committer: GroupCommitter[str, str] = GroupCommitter(gate.write)
    try:
        results = queue_behind_first(gate, committer, [f"i{n}" for n in range(20)])
    finally:
        committer.close()
    assert results["first"] == "FIRST"
    assert all(results[f"i{n}"] == f"I{n}" for n in range(20))
    # The first batch held the committer; the 20 items that queued meanwhile went in one batch.
    assert gate.batches[0] == ["first"]
    assert sorted(gate.batches[1]) == sorted(f"i{n}" for n in range(20))
    assert len(gate.batches) == 2


def test_batches_are_cut_at_max_batch() -> None:
    gate = Gate()
    committer: GroupCommitter[str, str] = GroupCommitter(gate.write, max_batch=8)
    try:
        results = queue_behind_first(gate, committer, [f"i{n}" for n in range(20)])
    finally:
        committer.close()
    assert all(results[f"i{n}"] == f"I{n}" for n in range(20))
    assert [len(b) for b in gate.batches] == [1, 8, 8, 4]


def test_a_refused_item_does_not_fail_the_others() -> None:
    gate = Gate()
    committer: GroupCommitter[str, str] = GroupCommitter(gate.write)
    try:
        results = queue_behind_first(gate, committer, ["a", "bad1", "b"])
    finally:
        committer.close()
    assert results["a"] == "A" and results["b"] == "B"
    assert isinstance(results["bad1"], InvalidArgument)
    assert len(gate.batches) == 2  # refused inside the batch: no second try


def test_a_failed_transaction_is_written_again_item_by_item() -> None:
    gate = Gate()
    gate.fail_batch = RuntimeError("constraint broken by one of the batch")
    committer: GroupCommitter[str, str] = GroupCommitter(gate.write)
    try:
        results = queue_behind_first(gate, committer, ["a", "boom", "b"])
    finally:
        committer.close()
    # Only the item that breaks a transaction of its own fails, with that transaction's error.
    assert results["a"] == "A" and results["b"] == "B"
    assert isinstance(results["boom"], RuntimeError) and "boom broke" in str(results["boom"])
    assert sorted(gate.batches[1]) == ["a", "b", "boom"]
    assert sorted(b[0] for b in gate.batches[2:]) == ["a", "b", "boom"]


def test_an_unavailable_database_wakes_every_waiter_with_the_error() -> None:
    gate = Gate()
    gate.fail_batch = Unavailable("database unavailable: disk I/O error")
    committer: GroupCommitter[str, str] = GroupCommitter(gate.write)
    try:
        results = queue_behind_first(gate, committer, ["a", "b", "c"])
    finally:
        committer.close()
    for item in "abc":
        assert isinstance(results[item], Unavailable), results[item]
        assert str(results[item]) == "database unavailable: disk I/O error"
        assert results[item].__cause__ is gate.fail_batch  # type: ignore[union-attr]
    assert len(gate.batches) == 2  # no retry one by one against a database that is away


def test_close_writes_what_is_queued_and_refuses_the_rest() -> None:
    committer: GroupCommitter[str, str] = GroupCommitter(lambda items: [i.upper() for i in items])
    assert committer.submit("x") == "X"
    committer.close()
    with pytest.raises(Unavailable):
        committer.submit("y")


# -- Store.write_creates --------------------------------------------------------------------------


@pytest.fixture
def store(fresh_database_url: str) -> Iterator[Store]:
    engine = make_engine(fresh_database_url)
    s = Store(engine)
    s.create_schema()
    yield s
    engine.dispose()


def ready_host(store: Store, host_id: str, address: str, max_containers: int = 0) -> None:
    store.register_host(host_id, address, {}, max_containers, T0)
    store.record_health(
        host_id, HostHealth.READY, T0, info=AgentInfoRecord(device="fake", boot_id="b1"), last_seen=T0
    )


def place(uid: str, name: str, request_id: str = "", host: str = "") -> PlaceIntent:
    return PlaceIntent(uid, request_id, ContainerSpec(name=name, host=host), at(1), choose_host)


def test_one_batch_places_records_and_refuses_items_each_on_its_own(store: Store) -> None:
    ready_host(store, "h1", "127.0.0.1:1", max_containers=2)
    ready_host(store, "h2", "127.0.0.1:2", max_containers=1)
    store.create_container("old", "r-old", ContainerSpec(name="taken"), at(0), choose_host)
    outcomes = store.write_creates(
        [
            place("c1", "n1", "r1"),
            place("c2", "taken", "r2"),  # the name is held by a live container
            place("c3", "n3", "r-old"),  # a retry of an earlier create
            place("c4", "n4", "r1"),  # a retry of c1, in the same batch
            place("c5", "n1", "r5"),  # the name c1 took in this batch
            place("c6", "n6"),
            place("c7", "n7"),  # no room left (3 slots, 1 old + c1 + c6)
            place("c8", "n8", host="nowhere"),
        ]
    )
    c1, created = outcomes[0]  # type: ignore[misc]
    assert (
        created
        and c1.state is ContainerRecordState.PENDING
        and c1.host_address in ("127.0.0.1:1", "127.0.0.1:2")
    )
    assert isinstance(outcomes[1], AlreadyExists)
    old, created = outcomes[2]  # type: ignore[misc]
    assert not created and old.uid == "old"
    again, created = outcomes[3]  # type: ignore[misc]
    assert not created and again.uid == "c1"
    assert isinstance(outcomes[4], AlreadyExists)
    assert outcomes[5][1] is True  # type: ignore[index]
    assert isinstance(outcomes[6], ResourceExhausted)
    assert isinstance(outcomes[7], NotFound)
    # What was answered as written is in the database, with one event each; nothing else is.
    assert store.get_container("c1") == c1
    assert store.get_container("c6").state is ContainerRecordState.PENDING
    for uid in ("c2", "c3", "c4", "c5", "c7", "c8"):
        with pytest.raises(NotFound):
            store.get_container(uid)
    events = [e.container.uid for e in store.list_events(0, 100) if e.container is not None]
    assert sorted(events) == ["c1", "c6", "old"]
    hosts = {h.id: h.container_count for h in store.all_hosts()}
    assert hosts == {"h1": 2, "h2": 1}


def test_finishes_and_placements_share_a_transaction(store: Store) -> None:
    ready_host(store, "h1", "127.0.0.1:1")
    for n in range(3):
        store.create_container(f"p{n}", f"r-p{n}", ContainerSpec(name=f"p{n}"), at(0), choose_host)
    store.request_stop("p2", at(0), at(0))  # a stop came before the agent's answer
    outcomes = store.write_creates(
        [
            FinishCreate("p0", True, "", at(2), ("ptrace",)),
            place("c1", "n1", "r1"),
            FinishCreate("p1", False, "agent 127.0.0.1:1: root is missing", at(2)),
            FinishCreate("p2", True, "", at(2)),
            FinishCreate("gone", True, "", at(2)),
        ]
    )
    p0, p1, p2 = outcomes[0], outcomes[2], outcomes[3]
    assert isinstance(p0, ContainerRecord) and p0.state is ContainerRecordState.CREATED
    assert p0.effective_deny_syscalls == ("ptrace",) and p0.revision == 2
    assert isinstance(p1, ContainerRecord) and p1.state is ContainerRecordState.FAILED
    assert p1.message == "agent 127.0.0.1:1: root is missing"
    assert isinstance(p2, ContainerRecord) and p2.state is ContainerRecordState.STOPPING  # left alone
    assert isinstance(outcomes[4], NotFound)
    assert outcomes[1][1] is True  # type: ignore[index]
    for record in (p0, p1, p2):
        assert store.get_container(record.uid) == record
    changed = [(e.container.uid, e.container.state) for e in store.list_events(0, 100) if e.container]
    assert ("p0", ContainerRecordState.CREATED) in changed and ("p1", ContainerRecordState.FAILED) in changed
    assert ("p2", ContainerRecordState.CREATED) not in changed


def test_many_concurrent_creates_through_the_committer(store: Store) -> None:
    ready_host(store, "h1", "127.0.0.1:1")
    ready_host(store, "h2", "127.0.0.1:2")
    sizes: list[int] = []
    committer = GroupCommitter(store.write_creates, observe=lambda n, _s: sizes.append(n))

    def create(n: int) -> str:
        outcome = committer.submit(place(f"c{n}", f"n{n}", f"r{n % 50}"))
        assert isinstance(outcome, tuple)
        return outcome[0].uid

    try:
        with ThreadPoolExecutor(16) as pool:
            uids = list(pool.map(create, range(200)))
    finally:
        committer.close()
    # 200 creates, 50 request_ids: each request_id made one container, and every retry got it.
    by_request: dict[int, set[str]] = {}
    for n, uid in enumerate(uids):
        by_request.setdefault(n % 50, set()).add(uid)
    assert all(len(u) == 1 for u in by_request.values())
    assert len(store.list_containers(500)) == 50
    assert sum(sizes) == 200


def test_choose_host_sees_the_placements_made_earlier_in_the_batch(store: Store) -> None:
    ready_host(store, "h1", "127.0.0.1:1")
    ready_host(store, "h2", "127.0.0.1:2")
    seen: list[list[int]] = []

    def choose(candidates: list[Candidate]) -> str:
        seen.append([c.container_count for c in candidates])
        return str(choose_host(candidates))

    store.write_creates(
        [PlaceIntent(f"c{n}", "", ContainerSpec(name=f"n{n}"), at(1), choose) for n in range(4)]
    )
    assert [sum(s) for s in seen] == [0, 1, 2, 3]
    assert {h.container_count for h in store.all_hosts()} == {2}


class _DriverError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


def _database_error(sqlstate: str) -> Unavailable:
    try:
        raise OperationalError("UPDATE containers ...", {}, _DriverError(sqlstate))
    except OperationalError as exc:
        try:
            raise Unavailable(f"database unavailable: {exc.orig}") from exc
        except Unavailable as wrapped:
            return wrapped


def test_a_batch_rolled_back_by_a_lock_conflict_runs_again(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    ready_host(store, "h1", "127.0.0.1:1")
    real = store._write_creates_once
    failures = [_database_error("40P01"), _database_error("40001")]
    calls: list[int] = []

    def flaky(items: Sequence[PlaceIntent | FinishCreate]) -> object:
        calls.append(len(items))
        if failures:
            raise failures.pop(0)
        return real(items)

    monkeypatch.setattr(store, "_write_creates_once", flaky)
    (outcome,) = store.write_creates([place("c1", "n1", "r1")])
    assert outcome[1] is True  # type: ignore[index]
    assert calls == [1, 1, 1]
    # Any other database error is not run again.
    failures.append(_database_error("08006"))
    with pytest.raises(Unavailable):
        store.write_creates([place("c2", "n2", "r2")])
    assert calls == [1, 1, 1, 1]
