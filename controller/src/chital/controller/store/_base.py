"""What every part of the store shares: the sessions and the write lock, the event rows written with
every change, row-to-record conversions and the lookups and state changes more than one aggregate
makes. Only the store package imports this module."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

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
    ContainerRecord,
    ContainerRecordState,
    DrainRecord,
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

__all__ = ["UNSTOPPED_STATES", "Listener", "StoreBase"]

# A container in one of these states still needs a stop to be gone from its host (a drain waits for them).
UNSTOPPED_STATES = (
    ContainerRecordState.PENDING.value,
    ContainerRecordState.CREATED.value,
    ContainerRecordState.RUNNING.value,
    ContainerRecordState.STOPPING.value,
)


@dataclass
class _Changes:
    events: int = 0
    process_uids: set[str] = field(default_factory=set)


Listener = Callable[[set[str]], None]


def _chunks(items: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    """``items`` in slices small enough for an IN list on every database."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class StoreBase:
    """The plumbing and shared helpers of :class:`~chital.controller.store.Store`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._rw = sessionmaker(engine, expire_on_commit=False)
        self._ro = sessionmaker(engine.execution_options(**{READONLY_OPTION: True}), expire_on_commit=False)
        self._listeners: list[Listener] = []
        self._listeners_lock = threading.Lock()
        # One writer at a time, in-process. SQLite has one writer anyway: queueing on a lock here
        # hands the database over as soon as a commit ends, where SQLite's busy handler would poll
        # with growing sleeps. On PostgreSQL, the event ingestor (process row, then container row)
        # and Stop (container, then processes) deadlocked under load; serialising this process's
        # writers removes that class of bug. Several controllers on one database would need a
        # fixed lock order instead (not built: the controller is not replicated yet).
        self._write_lock = threading.Lock()
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
            raise Unavailable(f"database unavailable: {type(exc.orig).__name__}: {exc.orig}") from exc
        finally:
            if observe is not None:
                observe(operation, time.perf_counter() - start, ok)

    @contextmanager
    def _write(self) -> Iterator[tuple[Session, _Changes]]:
        changes = _Changes()
        with self._timed("write"), self._write_lock, self._rw() as session, session.begin():
            yield session, changes
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
            row = EventRow(
                type=EventRecordType.CONTAINER.value,
                container_uid=record.uid,
                process_uid="",
                data=to_json(record),
                time=now,
            )
        else:
            row = EventRow(
                type=EventRecordType.PROCESS.value,
                container_uid=record.container_uid,
                process_uid=record.uid,
                data=to_json(record),
                time=now,
            )
            changes.process_uids.add(record.uid)
        session.add(row)
        changes.events += 1

    @staticmethod
    def _count_placed(session: Session, host_ids: Sequence[str]) -> dict[str, int]:
        if not host_ids:
            return {}
        rows = session.execute(
            sa.select(ContainerRow.host_id, sa.func.count())
            .where(ContainerRow.host_id.in_(host_ids), ContainerRow.state.in_(PLACED_STATES))
            .group_by(ContainerRow.host_id)
        ).all()
        return {str(host_id): int(count) for host_id, count in rows}

    @staticmethod
    def _host_record(row: HostRow, container_count: int, unstopped: int = 0) -> HostRecord:
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
        rows = session.execute(
            sa.select(ProcessRow.container_uid, sa.func.count())
            .where(
                ProcessRow.container_uid.in_(container_uids),
                ProcessRow.state == ProcessRecordState.RUNNING.value,
            )
            .group_by(ProcessRow.container_uid)
        ).all()
        return {str(uid): int(count) for uid, count in rows}

    @staticmethod
    def _host_addresses(session: Session, host_ids: Sequence[str]) -> dict[str, str]:
        ids = [h for h in host_ids if h]
        if not ids:
            return {}
        rows = session.execute(sa.select(HostRow.id, HostRow.address).where(HostRow.id.in_(ids))).all()
        return {str(i): str(a) for i, a in rows}

    @staticmethod
    def _container_record(row: ContainerRow, host_address: str, running: int) -> ContainerRecord:
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

    def _containers(self, session: Session, rows: Sequence[ContainerRow]) -> list[ContainerRecord]:
        addresses = self._host_addresses(session, [r.host_id or "" for r in rows])
        running = self._running_counts(session, [r.uid for r in rows])
        return [
            self._container_record(r, addresses.get(r.host_id or "", ""), running.get(r.uid, 0)) for r in rows
        ]

    @staticmethod
    def _process_record(row: ProcessRow) -> ProcessRecord:
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

    @staticmethod
    def _find_host(session: Session, ref: str, *, lock: bool = False) -> HostRow | None:
        stmt = sa.select(HostRow).where(sa.or_(HostRow.id == ref, HostRow.address == ref))
        if lock:
            stmt = stmt.with_for_update()
        return session.scalars(stmt).first()

    def _host_row(self, session: Session, ref: str, *, lock: bool = False) -> HostRow:
        row = self._find_host(session, ref, lock=lock)
        if row is None:
            raise NotFound(f"host {ref!r} not found")
        return row

    def _find_container(self, session: Session, ref: str, *, lock: bool = False) -> ContainerRow | None:
        stmt = sa.select(ContainerRow).where(ContainerRow.uid == ref)
        if lock:
            stmt = stmt.with_for_update()
        row = session.scalars(stmt).first()
        if row is None:
            stmt = sa.select(ContainerRow).where(ContainerRow.live_name == ref)
            if lock:
                stmt = stmt.with_for_update()
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
        rows = session.scalars(
            sa.select(ProcessRow).where(
                ProcessRow.container_uid == container_uid, ProcessRow.state.in_(LIVE_PROCESS_STATES)
            )
        ).all()
        for p in rows:
            lifecycle.check_process(p.uid, ProcessRecordState(p.state), ProcessRecordState.LOST)
            p.state = ProcessRecordState.LOST.value
            p.message = message
            p.updated = now
            self._event(session, changes, self._process_record(p), now)

    def _refresh_running(
        self, session: Session, changes: _Changes, container_uid: str, now: datetime
    ) -> None:
        """CREATED <-> RUNNING as processes start and exit."""
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
