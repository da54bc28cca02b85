"""What every part of the store shares: the sessions, the lock order of every write and the retry of
a transaction that lost a lock conflict, the event rows written with every change, row-to-record
conversions and the lookups and state changes more than one aggregate makes. Only the store package
imports this module.

The lock order
--------------

This module owns the order in which a write transaction locks rows; every write of the store follows
it, so that writers on PostgreSQL (threads of one controller, or several controllers on one
database) never wait for each other in a cycle:

1. **hosts**, in primary-key (``id``) order;
2. **containers**, in primary-key (``uid``) order;
3. **processes**, in primary-key (``uid``) order;
4. **retention** rows (the janitor's bookkeeping);
5. **the events lock** (:data:`EVENTS_LOCK_KEY`), taken by :meth:`StoreBase._write` just before it
   appends the transaction's event rows, and held until the commit.

A transaction takes the row locks it needs up front with ``SELECT ... FOR NO KEY UPDATE`` (the
helpers ``_lock_*`` and ``_locking`` below), never one of a lower rank after one of a higher rank.
Rules that follow:

- A process row is only written under the lock of its container (its ``container_uid`` never
  changes, so it can be read without a lock first). This also makes the container's count of
  running processes exact while its lock is held.
- Row locks are ``FOR NO KEY UPDATE`` (what an UPDATE takes), not ``FOR UPDATE``: a foreign-key
  check takes a ``KEY SHARE`` lock on the referenced row (a container's host when the container is
  inserted, or updated twice in one transaction; a process's container when it is inserted), and
  that must never wait for another writer's host or container lock. Only a delete locks ``FOR
  UPDATE`` (a host removed; deleted containers pruned with their processes).
- Rows read before they are locked are read again when locked (``populate_existing``): under READ
  COMMITTED the lock returns the newest version.
- Rollouts, tokens and the audit log live in their own tables and transactions; none of them locks
  a host, container or process row.

SQLite has one writer at a time (``BEGIN IMMEDIATE``), and this process queues its writers on an
in-process lock as well: it hands the database over as soon as a commit ends, where SQLite's busy
handler would poll with growing sleeps. PostgreSQL has no such lock: writers run in parallel, in
this order. A deadlock or serialization failure reported by the server anyway (SQLSTATE 40P01,
40001) rolls the transaction back; :func:`retry_conflicts` runs it again, a bounded number of times.

Event revisions are given out in commit order: an event row gets its revision when it is inserted,
and the events lock makes the insert and the commit of one transaction a critical section. So when
a reader sees revision *n*, every revision below *n* has committed (or never will), and a reader of
"the events after revision *r*" never skips an event that commits later with a smaller revision.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ParamSpec, Protocol, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from chital.controller import lifecycle
from chital.controller.db import READONLY_OPTION
from chital.controller.models import (
    Base,
    ContainerRow,
    EventRow,
    HostRow,
    ProcessRow,
)
from chital.controller.records import (
    LIVE_PROCESS_STATES,
    PLACED_STATES,
    AdminState,
    AgentInfoRecord,
    Candidate,
    ContainerRecord,
    ContainerRecordState,
    DrainRecord,
    EventRecord,
    EventRecordType,
    HostHealth,
    HostRecord,
    LimitsRecord,
    ProcessRecord,
    ProcessRecordState,
    SandboxRecord,
    to_json,
)
from chital.errdefs import (
    ChitalError,
    NotFound,
    Unavailable,
)

__all__ = ["EVENTS_LOCK_KEY", "UNSTOPPED_STATES", "Listener", "Publisher", "StoreBase", "retry_conflicts"]

log = logging.getLogger("chital.controller.store")

#: The key of the PostgreSQL advisory lock (``pg_advisory_xact_lock``) that a transaction holds
#: from the insert of its event rows to its commit (``b"chitalev"`` as a big-endian integer; the
#: leader lease uses another key). Advisory locks are per database.
EVENTS_LOCK_KEY = int.from_bytes(b"chitalev", "big")

_EVENTS = cast(sa.Table, EventRow.__table__)
_CONTAINERS = cast(sa.Table, ContainerRow.__table__)
_PROCESSES = cast(sa.Table, ProcessRow.__table__)
_HOSTS = cast(sa.Table, HostRow.__table__)
# Statements that the create committer runs on every batch, built once: their IN lists are
# expanding parameters, so each is compiled once and only its parameters change.
_COUNT_PLACED = (
    sa.select(_CONTAINERS.c.host_id, sa.func.count())
    .where(
        _CONTAINERS.c.host_id.in_(sa.bindparam("host_ids", expanding=True)),
        _CONTAINERS.c.state.in_([s.value for s in PLACED_STATES]),
    )
    .group_by(_CONTAINERS.c.host_id)
)
_COUNT_RUNNING = (
    sa.select(_PROCESSES.c.container_uid, sa.func.count())
    .where(
        _PROCESSES.c.container_uid.in_(sa.bindparam("uids", expanding=True)),
        _PROCESSES.c.state == ProcessRecordState.RUNNING.value,
    )
    .group_by(_PROCESSES.c.container_uid)
)
_HOST_ADDRESSES = sa.select(_HOSTS.c.id, _HOSTS.c.address).where(
    _HOSTS.c.id.in_(sa.bindparam("ids", expanding=True))
)
#: The event rows of a transaction, with their revisions in the order of the rows.
_INSERT_EVENTS = sa.insert(_EVENTS).returning(_EVENTS.c.revision, sort_by_parameter_order=True)

#: SQLSTATEs after which the whole transaction is run again: serialization_failure,
#: deadlock_detected.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
#: How many times a transaction is run in all before its conflict is reported (Unavailable).
MAX_ATTEMPTS = 5

# A container in one of these states still needs a stop to be gone from its host (a drain waits for them).
UNSTOPPED_STATES = (
    ContainerRecordState.PENDING.value,
    ContainerRecordState.CREATED.value,
    ContainerRecordState.RUNNING.value,
    ContainerRecordState.STOPPING.value,
)


class _PlacementHost(Protocol):
    """What placement reads of a host: a :class:`HostRow`, or the columns of one."""

    @property
    def id(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def admin_state(self) -> str: ...
    @property
    def max_containers(self) -> int: ...
    @property
    def created(self) -> datetime: ...


@dataclass
class _Changes:
    events: int = 0
    process_uids: set[str] = field(default_factory=set)
    # The event rows of the transaction (column values), inserted at its end in one statement
    # (see StoreBase._write).
    rows: list[dict[str, Any]] = field(default_factory=list)
    # The changed record of each row, in the same order.
    records: list[ContainerRecord | ProcessRecord] = field(default_factory=list)
    # The transaction's events with the revisions the insert gave them (for the publishers).
    published: list[EventRecord] = field(default_factory=list)


class ConflictError(Unavailable):
    """The database rolled the transaction back to break a lock conflict (deadlock or
    serialization failure); running it again may succeed."""


_P = ParamSpec("_P")
_R = TypeVar("_R")


def retry_conflicts(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run a store method (one write transaction) again when the database rolled it back to break
    a lock conflict, up to :data:`MAX_ATTEMPTS` times in all, after a short pause that grows."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        store = args[0]
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return method(*args, **kwargs)
            except ConflictError as exc:
                if attempt >= MAX_ATTEMPTS:
                    raise
                assert isinstance(store, StoreBase)
                store.conflict_retries += 1
                log.warning(
                    "%s: %s; running the transaction again (attempt %d of %d)",
                    method.__name__,
                    exc,
                    attempt + 1,
                    MAX_ATTEMPTS,
                )
                time.sleep(0.005 * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    return wrapper


Listener = Callable[[set[str]], None]
#: Called after a commit with the events it appended, in revision order.
Publisher = Callable[[list[EventRecord]], None]


def _chunks(items: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    """``items`` in slices small enough for an IN list on every database."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


_Select = TypeVar("_Select", bound="sa.Select[Any]")


def _locking(stmt: _Select, *, delete: bool = False) -> _Select:
    """``stmt`` as ``SELECT ... FOR NO KEY UPDATE`` (``delete``: ``FOR UPDATE``), with the rows'
    attributes refreshed from the locked version. SQLite ignores it: its writers are serialised."""
    return stmt.with_for_update(key_share=not delete).execution_options(populate_existing=True)


class StoreBase:
    """The plumbing and shared helpers of :class:`~chital.controller.store.Store`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._rw = sessionmaker(engine, expire_on_commit=False)
        self._ro = sessionmaker(engine.execution_options(**{READONLY_OPTION: True}), expire_on_commit=False)
        self._listeners: list[Listener] = []
        self._publishers: list[Publisher] = []
        self._listeners_lock = threading.Lock()
        self._postgres = engine.dialect.name == "postgresql"
        # HostStore.hosts_for_health: each host's last row and the record made of it.
        self._health_records: dict[str, tuple[tuple[Any, ...], HostRecord]] = {}
        # SQLite: one writer at a time, in-process too (see the module docstring). PostgreSQL:
        # none; writers follow the lock order instead.
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext() if self._postgres else threading.Lock()
        )
        #: Transactions run again after a lock conflict (see retry_conflicts); tests assert it.
        self.conflict_retries = 0
        # The compacted event revision, once read (see compact_revision).
        self._known_compact_revision: int | None = None
        # observe(operation, seconds, ok) after every transaction (metrics); None: not timed.
        self.observe: Callable[[str, float, bool], None] | None = None

    def create_schema(self) -> None:
        """Create the tables directly (tests; production uses the migrations)."""
        Base.metadata.create_all(self.engine)

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(process_uids)`` after every commit that appended events."""
        with self._listeners_lock:
            self._listeners.append(listener)

    def add_publisher(self, publisher: Publisher) -> None:
        """Call ``publisher(events)`` after every commit that appended events, with those events
        (revision order) as committed: what this process wrote, without reading it back. Called
        from the writer's thread, after the commit; commits of other threads or controllers may
        be published in another order, or not at all (another controller's)."""
        with self._listeners_lock:
            self._publishers.append(publisher)

    def remove_publisher(self, publisher: Publisher) -> None:
        """Stop calling ``publisher``."""
        with self._listeners_lock:
            if publisher in self._publishers:
                self._publishers.remove(publisher)

    @contextmanager
    def _timed(self, operation: str) -> Iterator[None]:
        """Time the transaction; a database that cannot be reached (or stays locked) is Unavailable."""
        observe = self.observe
        start = time.perf_counter()
        ok = False
        try:
            yield
            ok = True
        except ChitalError:
            ok = True  # a refused request is not a database failure
            raise
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
                raise ConflictError(f"lock conflict: {type(exc.orig).__name__}: {exc.orig}") from exc
            raise Unavailable(f"database unavailable: {type(exc.orig).__name__}: {exc.orig}") from exc
        finally:
            if observe is not None:
                observe(operation, time.perf_counter() - start, ok)

    @contextmanager
    def _write(self) -> Iterator[tuple[Session, _Changes]]:
        """One write transaction. Its methods lock rows in the lock order (module docstring) and
        carry :func:`retry_conflicts`; the event rows are appended last, under the events lock."""
        changes = _Changes()
        with self._timed("write"), self._write_lock:
            with self._rw() as session, session.begin():
                yield session, changes
                self._append_events(session, changes)
            # Published before the next writer of this process commits (SQLite's writers are
            # serialised by the lock; PostgreSQL's are not, and the publishers take that).
            if changes.published:
                with self._listeners_lock:
                    publishers = list(self._publishers)
                for publisher in publishers:
                    try:
                        publisher(changes.published)
                    except Exception:  # the commit stands: a publisher's failure is not the write's
                        log.exception("an event publisher failed")
        if changes.events:
            with self._listeners_lock:
                listeners = list(self._listeners)
            for listener in listeners:
                listener(changes.process_uids)

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._timed("read"), self._ro() as session, session.begin():
            yield session

    def _event(
        self,
        session: Session,
        changes: _Changes,
        record: ContainerRecord | ProcessRecord,
        now: datetime,
    ) -> None:
        if isinstance(record, ContainerRecord):
            row: dict[str, Any] = {
                "type": EventRecordType.CONTAINER.value,
                "container_uid": record.uid,
                "process_uid": "",
                "data": to_json(record),
                "time": now,
            }
        else:
            row = {
                "type": EventRecordType.PROCESS.value,
                "container_uid": record.container_uid,
                "process_uid": record.uid,
                "data": to_json(record),
                "time": now,
            }
            changes.process_uids.add(record.uid)
        changes.rows.append(row)
        changes.records.append(record)
        changes.events += 1

    def _append_events(self, session: Session, changes: _Changes) -> None:
        """Insert the transaction's event rows: the last thing it does before its commit. On
        PostgreSQL, under the events lock (held until the commit), so revisions are given out in
        commit order. SQLite commits one writer at a time anyway.

        One Core executemany, not an ORM object per row (the unit of work cost more than the
        insert itself), that returns the revisions it gave, in the order the rows were appended:
        the publishers get the events without reading them back."""
        if not changes.rows:
            return
        session.flush()  # the transaction's own row changes first: no row lock is taken below
        if self._postgres:
            session.execute(sa.select(sa.func.pg_advisory_xact_lock(EVENTS_LOCK_KEY)))
        revisions = session.execute(_INSERT_EVENTS, changes.rows).scalars().all()
        for revision, row, record in zip(revisions, changes.rows, changes.records, strict=True):
            if isinstance(record, ContainerRecord):
                event = EventRecord(revision, EventRecordType.CONTAINER, row["time"], container=record)
            else:
                event = EventRecord(revision, EventRecordType.PROCESS, row["time"], process=record)
            changes.published.append(event)
        changes.rows, changes.records = [], []

    @staticmethod
    def _count_placed(session: Session, host_ids: Sequence[str]) -> dict[str, int]:
        if not host_ids:
            return {}
        rows = session.execute(_COUNT_PLACED, {"host_ids": list(host_ids)}).all()
        return {str(host_id): int(count) for host_id, count in rows}

    @staticmethod
    def _candidates(hosts: Sequence[_PlacementHost], counts: dict[str, int]) -> list[Candidate]:
        """What placement chooses among: each host with its placed containers (``counts``, from
        :meth:`_count_placed`); schedulable when READY and not cordoned or draining."""
        return [
            Candidate(
                host_id=h.id,
                address=h.address,
                schedulable=h.state == HostHealth.READY.value and h.admin_state == AdminState.ACTIVE.value,
                max_containers=h.max_containers,
                container_count=counts.get(h.id, 0),
                created=h.created,
            )
            for h in hosts
        ]

    @staticmethod
    def _host_record(row: HostRow | sa.Row[Any], container_count: int, unstopped: int = 0) -> HostRecord:
        drain = None
        if row.drain_started is not None and row.drain_deadline is not None:
            drain = DrainRecord(row.drain_started, row.drain_deadline, row.drain_containers, unstopped)
        return HostRecord(
            drain=drain,
            id=row.id,
            address=row.address,
            health=HostHealth(row.state),
            admin_state=AdminState(row.admin_state),
            labels=dict(row.labels),
            max_containers=row.max_containers,
            container_count=container_count,
            agent=AgentInfoRecord(
                agent_version=row.agent_version,
                kernel_release=row.kernel_release,
                module_version=row.module_version,
                abi_version=row.abi_version,
                device=row.device,
                sandboxed=row.sandboxed,
                boot_id=row.boot_id,
            ),
            message=row.message,
            last_seen=row.last_seen,
            created=row.created,
            event_seq=row.event_seq,
        )

    def _host(self, session: Session, row: HostRow) -> HostRecord:
        unstopped = self._count_unstopped(session, [row]).get(row.id, 0)
        return self._host_record(row, self._count_placed(session, [row.id]).get(row.id, 0), unstopped)

    @staticmethod
    def _count_unstopped(session: Session, rows: Sequence[HostRow]) -> dict[str, int]:
        """Containers a drain still has to stop, for the drained hosts among ``rows``."""
        ids = [r.id for r in rows if r.drain_started is not None]
        if not ids:
            return {}
        found = session.execute(
            sa.select(ContainerRow.host_id, sa.func.count())
            .where(ContainerRow.host_id.in_(ids), ContainerRow.state.in_(UNSTOPPED_STATES))
            .group_by(ContainerRow.host_id)
        ).all()
        return {str(host_id): int(count) for host_id, count in found}

    @staticmethod
    def _running_counts(session: Session, container_uids: Sequence[str]) -> dict[str, int]:
        if not container_uids:
            return {}
        rows = session.execute(_COUNT_RUNNING, {"uids": list(container_uids)}).all()
        return {str(uid): int(count) for uid, count in rows}

    @staticmethod
    def _host_addresses(session: Session, host_ids: Sequence[str]) -> dict[str, str]:
        ids = [h for h in host_ids if h]
        if not ids:
            return {}
        rows = session.execute(_HOST_ADDRESSES, {"ids": ids}).all()
        return {str(i): str(a) for i, a in rows}

    @staticmethod
    def _container_record(
        row: ContainerRow | sa.Row[Any], host_address: str, running: int
    ) -> ContainerRecord:
        """The record of a container's ORM row, or of a Core row of its table's columns."""
        return ContainerRecord(
            uid=row.uid,
            name=row.name,
            request_id=row.request_id or "",
            state=ContainerRecordState(row.state),
            labels=dict(row.labels),
            limits=LimitsRecord(row.memory_max_bytes, row.pids_max, row.cpu_max_millicores),
            root=row.root,
            deny_syscalls=tuple(row.deny_syscalls),
            requested_host=row.requested_host,
            host_id=row.host_id or "",
            host_address=host_address,
            message=row.message,
            created=row.created,
            updated=row.updated,
            revision=row.revision,
            running_processes=running,
            sandbox=SandboxRecord.from_json(row.sandbox),
            effective_deny_syscalls=tuple(row.effective_deny_syscalls),
            desired_state=row.desired_state or "",
            stop_deadline=row.stop_deadline,
            restart_policy=row.restart_policy,
            max_restarts=row.max_restarts,
            restart_count=row.restart_count,
            restart_at=row.restart_at,
        )

    def _container(self, session: Session, row: ContainerRow) -> ContainerRecord:
        address = self._host_addresses(session, [row.host_id or ""]).get(row.host_id or "", "")
        running = self._running_counts(session, [row.uid]).get(row.uid, 0)
        return self._container_record(row, address, running)

    def _containers(
        self, session: Session, rows: Sequence[ContainerRow | sa.Row[Any]]
    ) -> list[ContainerRecord]:
        """The records of ORM rows or Core rows of the containers table (Core rows for reads of
        many: loading ORM instances costs several times the query)."""
        addresses = self._host_addresses(session, [r.host_id or "" for r in rows])
        running = self._running_counts(session, [r.uid for r in rows])
        return [
            self._container_record(r, addresses.get(r.host_id or "", ""), running.get(r.uid, 0)) for r in rows
        ]

    @staticmethod
    def _process_record(row: ProcessRow | sa.Row[Any]) -> ProcessRecord:
        return ProcessRecord(
            uid=row.uid,
            container_uid=row.container_uid,
            request_id=row.request_id or "",
            argv=tuple(row.argv),
            env=dict(row.env),
            cwd=row.cwd,
            user_id=row.user_id,
            group_id=row.group_id,
            state=ProcessRecordState(row.state),
            pid=row.pid,
            exit_code=row.exit_code,
            signal=row.signal,
            oom_killed=row.oom_killed,
            message=row.message,
            created=row.created,
            start_time=row.start_time,
            exit_time=row.exit_time,
        )

    # -- locks, in the lock order of the module docstring -------------------------------------------

    @staticmethod
    def _lock_containers(
        session: Session, uids: Iterable[str], *, delete: bool = False
    ) -> dict[str, ContainerRow]:
        """Lock the container rows ``uids`` (those that exist), in primary-key order (``delete``:
        to delete them)."""
        rows: dict[str, ContainerRow] = {}
        for chunk in _chunks(sorted(set(uids))):
            stmt = sa.select(ContainerRow).where(ContainerRow.uid.in_(chunk)).order_by(ContainerRow.uid)
            rows.update((r.uid, r) for r in session.scalars(_locking(stmt, delete=delete)))
        return rows

    @staticmethod
    def _lock_processes(
        session: Session, uids: Iterable[str], *, delete: bool = False
    ) -> dict[str, ProcessRow]:
        """Lock the process rows ``uids`` (those that exist), in primary-key order (``delete``: to
        delete them); the caller holds the locks of their containers."""
        rows: dict[str, ProcessRow] = {}
        for chunk in _chunks(sorted(set(uids))):
            stmt = sa.select(ProcessRow).where(ProcessRow.uid.in_(chunk)).order_by(ProcessRow.uid)
            rows.update((r.uid, r) for r in session.scalars(_locking(stmt, delete=delete)))
        return rows

    @staticmethod
    def _containers_of_processes(session: Session, uids: Iterable[str]) -> dict[str, str]:
        """The container uid of each process in ``uids`` that exists, read without a lock (a
        process never changes container): what to lock before the processes."""
        found: dict[str, str] = {}
        for chunk in _chunks(sorted(set(uids))):
            found.update(
                (str(p), str(c))
                for p, c in session.execute(
                    sa.select(ProcessRow.uid, ProcessRow.container_uid).where(ProcessRow.uid.in_(chunk))
                )
            )
        return found

    def _lock_processes_with_containers(
        self, session: Session, uids: Iterable[str]
    ) -> tuple[dict[str, ContainerRow], dict[str, ProcessRow]]:
        """Lock the containers of the processes ``uids``, then the processes: the processes
        (that exist) and their containers."""
        owners = self._containers_of_processes(session, uids)
        containers = self._lock_containers(session, owners.values())
        return containers, self._lock_processes(session, owners)

    @staticmethod
    def _lock_live_processes(session: Session, container_uids: Iterable[str]) -> list[ProcessRow]:
        """Lock the STARTING and RUNNING processes of containers whose locks the caller holds, in
        primary-key order."""
        rows: list[ProcessRow] = []
        for chunk in _chunks(sorted(set(container_uids))):
            stmt = (
                sa.select(ProcessRow)
                .where(ProcessRow.container_uid.in_(chunk), ProcessRow.state.in_(LIVE_PROCESS_STATES))
                .order_by(ProcessRow.uid)
            )
            rows.extend(session.scalars(_locking(stmt)))
        return rows

    @staticmethod
    def _find_host(session: Session, ref: str, *, lock: bool = False, delete: bool = False) -> HostRow | None:
        stmt = sa.select(HostRow).where(sa.or_(HostRow.id == ref, HostRow.address == ref))
        if lock or delete:
            stmt = _locking(stmt, delete=delete)
        return session.scalars(stmt).first()

    def _host_row(self, session: Session, ref: str, *, lock: bool = False, delete: bool = False) -> HostRow:
        row = self._find_host(session, ref, lock=lock, delete=delete)
        if row is None:
            raise NotFound(f"host {ref!r} not found")
        return row

    def _find_container(self, session: Session, ref: str, *, lock: bool = False) -> ContainerRow | None:
        stmt = sa.select(ContainerRow).where(ContainerRow.uid == ref)
        if lock:
            stmt = _locking(stmt)
        row = session.scalars(stmt).first()
        if row is None:
            stmt = sa.select(ContainerRow).where(ContainerRow.live_name == ref)
            if lock:
                stmt = _locking(stmt)
            row = session.scalars(stmt).first()
        return row

    def _container_row(self, session: Session, ref: str, *, lock: bool = False) -> ContainerRow:
        row = self._find_container(session, ref, lock=lock)
        if row is None:
            raise NotFound(f"container {ref!r} not found")
        return row

    def _set_state(
        self,
        session: Session,
        changes: _Changes,
        row: ContainerRow,
        state: ContainerRecordState,
        *,
        message: str,
        now: datetime,
    ) -> None:
        row.state = state.value
        row.message = message
        row.updated = now
        row.revision += 1
        if state is ContainerRecordState.DELETED:
            row.live_name = None
        session.flush()
        self._event(session, changes, self._container(session, row), now)

    def _finish_processes(
        self, session: Session, changes: _Changes, container_uid: str, message: str, now: datetime
    ) -> None:
        """Live processes of a container whose lock the caller holds become LOST."""
        for p in self._lock_live_processes(session, [container_uid]):
            lifecycle.check_process(p.uid, ProcessRecordState(p.state), ProcessRecordState.LOST)
            p.state = ProcessRecordState.LOST.value
            p.message = message
            p.updated = now
            self._event(session, changes, self._process_record(p), now)

    def _refresh_running(
        self, session: Session, changes: _Changes, container_uid: str, now: datetime
    ) -> None:
        """CREATED <-> RUNNING as processes start and exit. The caller holds the container's lock
        (so the count of its running processes cannot change meanwhile)."""
        row = session.get(ContainerRow, container_uid)
        if row is None:
            return
        state = ContainerRecordState(row.state)
        if lifecycle.state_for_running(state, 1) is state and lifecycle.state_for_running(state, 0) is state:
            return  # not CREATED or RUNNING: processes do not move it
        session.flush()
        running = self._running_counts(session, [container_uid]).get(container_uid, 0)
        target = lifecycle.state_for_running(state, running)
        if lifecycle.check_container(row.name, state, target):
            self._set_state(session, changes, row, target, message="", now=now)
