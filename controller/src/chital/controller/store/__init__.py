"""The controller's state store: every read and write of the database goes through :class:`Store`.

Rules (after Nomad's state store):

- Callers pass ids and timestamps in; the store invents neither, so replays are deterministic.
- Callers get frozen dataclasses (:mod:`chital.controller.records`), never live ORM objects.
- Every change of a container or process appends an event row in the same transaction; listeners
  registered with :meth:`Store.add_listener` run after the commit (they wake waiters and watchers).
- No transaction is ever held open across a call to an agent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from chital.controller import lifecycle
from chital.controller.db import READONLY_OPTION
from chital.controller.models import (
    AuditRow,
    Base,
    ContainerRow,
    EventRow,
    HostRow,
    ProcessRow,
    RetentionRow,
)
from chital.controller.records import (
    DEFAULT_GROUP_ID,
    DEFAULT_USER_ID,
    LIVE_PROCESS_STATES,
    PLACED_STATES,
    AdminState,
    AgentEventRecord,
    AgentInfoRecord,
    Candidate,
    ContainerRecord,
    ContainerRecordState,
    ContainerSpec,
    DrainRecord,
    EventRecord,
    EventRecordType,
    HostHealth,
    HostRecord,
    HostRecordState,
    LimitsRecord,
    ProcessRecord,
    ProcessRecordState,
    ProcessSpec,
    SandboxRecord,
    container_from_json,
    process_from_json,
    to_json,
)
from chital.controller.store.paging import Cursor
from chital.errdefs import (
    AlreadyExists,
    ChitalError,
    FailedPrecondition,
    NotFound,
    OutOfRange,
    Unavailable,
)

__all__ = ["AgentEventRecord", "Candidate", "Cursor", "Store"]


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


class Store:
    """SQL-backed store of hosts, containers, processes and events."""

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

    # -- plumbing -------------------------------------------------------------------------------

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

    # -- conversions ----------------------------------------------------------------------------

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

    # -- hosts ----------------------------------------------------------------------------------

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

    def register_host(
        self, host_id: str, address: str, labels: dict[str, str], max_containers: int, now: datetime
    ) -> tuple[HostRecord, bool]:
        """Add a host, or update the labels and capacity of the host with that address."""
        try:
            with self._write() as (session, _):
                row = session.scalars(sa.select(HostRow).where(HostRow.address == address)).first()
                created = row is None
                if row is None:
                    row = HostRow(
                        id=host_id,
                        address=address,
                        labels=dict(labels),
                        state=HostHealth.NOT_READY.value,
                        admin_state=AdminState.ACTIVE.value,
                        max_containers=max_containers,
                        message="not checked yet",
                        agent_version="",
                        kernel_release="",
                        module_version="",
                        abi_version="",
                        device="",
                        sandboxed=False,
                        boot_id="",
                        event_seq=0,
                        last_seen=None,
                        created=now,
                        updated=now,
                    )
                    session.add(row)
                    session.flush()
                else:
                    row.labels = dict(labels)
                    row.max_containers = max_containers
                    row.updated = now
                return self._host(session, row), created
        except IntegrityError:
            # A concurrent registration of the same address won; it is the same host.
            return self.get_host(address), False

    def get_host(self, ref: str) -> HostRecord:
        """A host by id or address."""
        with self._read() as session:
            return self._host(session, self._host_row(session, ref))

    def list_hosts(
        self, limit: int, after: Cursor | None = None, state: HostRecordState | None = None
    ) -> list[HostRecord]:
        """Hosts oldest first, after ``after``; filtered by the shown state in Python (few hosts)."""
        out: list[HostRecord] = []
        with self._read() as session:
            cursor = after
            while len(out) < limit:
                stmt = sa.select(HostRow).order_by(HostRow.created, HostRow.id).limit(max(limit, 100))
                if cursor is not None:
                    stmt = stmt.where(
                        sa.or_(
                            HostRow.created > cursor[0],
                            sa.and_(HostRow.created == cursor[0], HostRow.id > cursor[1]),
                        )
                    )
                rows = list(session.scalars(stmt))
                if not rows:
                    break
                counts = self._count_placed(session, [r.id for r in rows])
                unstopped = self._count_unstopped(session, rows)
                for r in rows:
                    record = self._host_record(r, counts.get(r.id, 0), unstopped.get(r.id, 0))
                    if state is None or record.state is state:
                        out.append(record)
                        if len(out) >= limit:
                            break
                cursor = (rows[-1].created, rows[-1].id)
        return out

    def all_hosts(self) -> list[HostRecord]:
        """Every host (for the health monitor)."""
        with self._read() as session:
            rows = list(session.scalars(sa.select(HostRow).order_by(HostRow.created, HostRow.id)))
            counts = self._count_placed(session, [r.id for r in rows])
            unstopped = self._count_unstopped(session, rows)
            return [self._host_record(r, counts.get(r.id, 0), unstopped.get(r.id, 0)) for r in rows]

    def set_admin_state(self, ref: str, admin_state: AdminState, now: datetime) -> HostRecord:
        """Cordon, uncordon or drain a host."""
        with self._write() as (session, _):
            row = self._host_row(session, ref, lock=True)
            if lifecycle.check_admin(row.address, AdminState(row.admin_state), admin_state):
                row.admin_state = admin_state.value
                row.updated = now
            return self._host(session, row)

    def record_health(
        self,
        host_id: str,
        health: HostHealth,
        now: datetime,
        *,
        message: str = "",
        info: AgentInfoRecord | None = None,
        last_seen: datetime | None = None,
    ) -> tuple[HostRecord, HostHealth]:
        """Store what the health monitor decided. Returns the host and its previous health.

        ``info`` (from a successful check) updates the agent's details; a new boot id restarts the
        event sequence. Becoming LOST makes the host's placed containers LOST, and their live
        processes too.
        """
        with self._write() as (session, changes):
            row = self._host_row(session, host_id)
            previous = HostHealth(row.state)
            if info is not None:
                if row.boot_id != info.boot_id:
                    # The agent restarted: its event sequence numbers start again.
                    row.event_seq = 0
                    row.boot_id = info.boot_id
                row.agent_version = info.agent_version
                row.kernel_release = info.kernel_release
                row.module_version = info.module_version
                row.abi_version = info.abi_version
                row.device = info.device
                row.sandboxed = info.sandboxed
            if last_seen is not None:
                row.last_seen = last_seen
            row.message = message
            if lifecycle.check_health(row.address, previous, health):
                row.state = health.value
                row.updated = now
            if health is HostHealth.LOST and previous is not HostHealth.LOST:
                # Every container that is (or may be) on the host becomes LOST with it.
                self._lose_containers(session, changes, row.id, f"host {row.address} lost: {message}", now)
            return self._host(session, row), previous

    def _lose_containers(
        self, session: Session, changes: _Changes, host_id: str, message: str, now: datetime
    ) -> None:
        rows = session.scalars(
            sa.select(ContainerRow).where(
                ContainerRow.host_id == host_id,
                ContainerRow.state.in_([s.value for s in lifecycle.LOST_WITH_HOST]),
            )
        ).all()
        for row in rows:
            self._finish_processes(session, changes, row.uid, message, now)
            self._set_state(session, changes, row, ContainerRecordState.LOST, message=message, now=now)

    def remove_host(self, ref: str, force: bool, now: datetime) -> None:
        """Forget a host; with live containers only with ``force`` (they become LOST)."""
        with self._write() as (session, changes):
            row = self._host_row(session, ref, lock=True)
            placed = self._count_placed(session, [row.id]).get(row.id, 0)
            if placed and not force:
                raise FailedPrecondition(
                    f"host {row.address} still has {placed} containers; drain it or use force"
                )
            self._lose_containers(session, changes, row.id, f"host {row.address} removed", now)
            session.execute(
                sa.update(ContainerRow).where(ContainerRow.host_id == row.id).values(host_id=None)
            )
            session.delete(row)

    def host_event_cursor(self, host_id: str) -> tuple[str, int]:
        """The agent boot id and the last event sequence number applied from it."""
        with self._read() as session:
            row = self._host_row(session, host_id)
            return row.boot_id, row.event_seq

    # -- intent: stops, deletes and drains (carried out by chital.controller.operations) --------

    def request_stop(
        self, ref: str, deadline: datetime, now: datetime, *, delete: bool = False
    ) -> ContainerRecord:
        """Record a stop (``delete``: a delete) in one transaction; the operations driver does it.

        PENDING/CREATED/RUNNING/STOPPING become STOPPING with the stop deadline (the earlier of the
        stored one and ``deadline``) and the desired state STOPPED (DELETED for a delete; a delete
        asked for before stays wanted). STOPPED stays (a stop) or becomes DELETED (a delete), as do
        FAILED and LOST on a delete; a stop of those is FailedPrecondition. DELETED stays.
        """
        with self._write() as (session, changes):
            row = self._container_row(session, ref, lock=True)
            state = ContainerRecordState(row.state)
            if state is ContainerRecordState.DELETED:
                return self._container(session, row)
            if state in (
                ContainerRecordState.STOPPED,
                ContainerRecordState.FAILED,
                ContainerRecordState.LOST,
            ):
                if not delete:
                    if state is ContainerRecordState.STOPPED:
                        return self._container(session, row)
                    raise FailedPrecondition(f"container {row.name} is {state.value}; it cannot be stopped")
                lifecycle.check_container(row.name, state, ContainerRecordState.DELETED)
                row.desired_state = ContainerRecordState.DELETED.value
                self._finish_processes(session, changes, row.uid, "container deleted", now)
                self._set_state(session, changes, row, ContainerRecordState.DELETED, message="", now=now)
                return self._container(session, row)
            lifecycle.check_container(row.name, state, ContainerRecordState.STOPPING)  # STOPPING: no-op
            if delete or row.desired_state == ContainerRecordState.DELETED.value:
                row.desired_state = ContainerRecordState.DELETED.value
            else:
                row.desired_state = ContainerRecordState.STOPPED.value
            if row.stop_deadline is None or deadline < row.stop_deadline:
                row.stop_deadline = deadline
            self._set_state(session, changes, row, ContainerRecordState.STOPPING, message="", now=now)
            return self._container(session, row)

    def finish_stop(self, uid: str, now: datetime) -> ContainerRecord:
        """The container is gone from its host: STOPPING -> STOPPED, or DELETED if a delete was
        asked for; processes still live become LOST (a late exit event still records the real exit).
        A container whose host was lost meanwhile (LOST) is DELETED if a delete was asked for."""
        with self._write() as (session, changes):
            row = self._container_row(session, uid, lock=True)
            state = ContainerRecordState(row.state)
            wants_delete = row.desired_state == ContainerRecordState.DELETED.value
            if state is ContainerRecordState.STOPPING:
                target = ContainerRecordState.DELETED if wants_delete else ContainerRecordState.STOPPED
                message = (
                    "container deleted" if wants_delete else "container stopped before the exit was reported"
                )
                lifecycle.check_container(row.name, state, target)
                self._finish_processes(session, changes, row.uid, message, now)
                self._set_state(session, changes, row, target, message="", now=now)
            elif wants_delete and state in (ContainerRecordState.LOST, ContainerRecordState.STOPPED):
                lifecycle.check_container(row.name, state, ContainerRecordState.DELETED)
                self._finish_processes(session, changes, row.uid, "container deleted", now)
                self._set_state(
                    session, changes, row, ContainerRecordState.DELETED, message=row.message, now=now
                )
            return self._container(session, row)

    def stopping_containers(self, limit: int) -> list[ContainerRecord]:
        """STOPPING containers, and LOST/STOPPED ones whose delete is not finished (desired
        DELETED), soonest deadline first: the operations driver's work after a restart."""
        with self._read() as session:
            rows = session.scalars(
                sa.select(ContainerRow)
                .where(
                    sa.or_(
                        ContainerRow.state == ContainerRecordState.STOPPING.value,
                        sa.and_(
                            ContainerRow.desired_state == ContainerRecordState.DELETED.value,
                            ContainerRow.state.in_(
                                [ContainerRecordState.LOST.value, ContainerRecordState.STOPPED.value]
                            ),
                        ),
                    )
                )
                .order_by(ContainerRow.stop_deadline)
                .limit(limit)
            ).all()
            return self._containers(session, rows)

    def start_drain(
        self, ref: str, deadline: datetime, stop_deadline: datetime, now: datetime
    ) -> tuple[HostRecord, list[ContainerRecord]]:
        """Drain a host in one transaction: DRAINING (no placements), the drain's start and
        ``deadline`` recorded, and every PENDING/CREATED/RUNNING/STOPPING container on it STOPPING
        with a stop deadline of ``stop_deadline`` (or an earlier one it had). Returns the host and
        the containers the drain stops.

        A drain asked for again while one is in progress (a retry) continues it: its start and the
        containers it set out to stop stay, and its deadline can only come earlier."""
        with self._write() as (session, changes):
            host = self._host_row(session, ref, lock=True)
            in_progress = (
                host.admin_state == AdminState.DRAINING.value
                and host.drain_deadline is not None
                and self._count_unstopped(session, [host]).get(host.id, 0) > 0
            )
            host.admin_state = AdminState.DRAINING.value
            if in_progress and host.drain_deadline is not None:
                host.drain_deadline = min(host.drain_deadline, deadline)
            else:
                host.drain_started = now
                host.drain_deadline = deadline
            host.updated = now
            rows = session.scalars(
                sa.select(ContainerRow)
                .where(ContainerRow.host_id == host.id, ContainerRow.state.in_(UNSTOPPED_STATES))
                .order_by(ContainerRow.created, ContainerRow.uid)
                .with_for_update()
            ).all()
            for row in rows:
                lifecycle.check_container(
                    row.name, ContainerRecordState(row.state), ContainerRecordState.STOPPING
                )
                if row.desired_state != ContainerRecordState.DELETED.value:
                    row.desired_state = ContainerRecordState.STOPPED.value
                if row.stop_deadline is None or stop_deadline < row.stop_deadline:
                    row.stop_deadline = stop_deadline
                self._set_state(session, changes, row, ContainerRecordState.STOPPING, message="", now=now)
            if not in_progress:
                host.drain_containers = len(rows)
            session.flush()
            return self._host(session, host), self._containers(session, rows)

    # -- containers -----------------------------------------------------------------------------

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

    def find_container_by_request(self, request_id: str) -> ContainerRecord | None:
        """The container created by ``request_id``, if any."""
        with self._read() as session:
            row = session.scalars(
                sa.select(ContainerRow).where(ContainerRow.request_id == request_id)
            ).first()
            return None if row is None else self._container(session, row)

    def create_container(
        self,
        uid: str,
        request_id: str,
        spec: ContainerSpec,
        now: datetime,
        choose_host: Callable[[list[Candidate]], str],
    ) -> tuple[ContainerRecord, bool]:
        """Place and record a PENDING container, or return the one ``request_id`` created before.

        Returns ``(container, created)``. ``choose_host`` gets the candidate hosts (the pinned one,
        or all) and returns the chosen id or raises.
        """
        try:
            with self._write() as (session, changes):
                existing = (
                    session.scalars(
                        sa.select(ContainerRow).where(ContainerRow.request_id == request_id)
                    ).first()
                    if request_id
                    else None
                )
                if existing is not None:
                    return self._container(session, existing), False
                if session.scalars(
                    sa.select(ContainerRow.uid).where(ContainerRow.live_name == spec.name)
                ).first():
                    raise AlreadyExists(f"container name {spec.name!r} is taken")
                # FOR UPDATE serialises placements on PostgreSQL; SQLite's BEGIN IMMEDIATE already does.
                if spec.host:
                    hosts = [self._host_row(session, spec.host, lock=True)]
                else:
                    hosts = list(
                        session.scalars(
                            sa.select(HostRow).order_by(HostRow.created, HostRow.id).with_for_update()
                        )
                    )
                counts = self._count_placed(session, [h.id for h in hosts])
                candidates = [
                    Candidate(
                        host_id=h.id,
                        address=h.address,
                        schedulable=h.state == HostHealth.READY.value
                        and h.admin_state == AdminState.ACTIVE.value,
                        max_containers=h.max_containers,
                        container_count=counts.get(h.id, 0),
                        created=h.created,
                    )
                    for h in hosts
                ]
                host_id = choose_host(candidates)
                row = ContainerRow(
                    uid=uid,
                    name=spec.name,
                    live_name=spec.name,
                    request_id=request_id or None,
                    desired_state=ContainerRecordState.RUNNING.value,
                    stop_deadline=None,
                    labels=dict(spec.labels),
                    memory_max_bytes=spec.limits.memory_max_bytes,
                    pids_max=spec.limits.pids_max,
                    cpu_max_millicores=spec.limits.cpu_max_millicores,
                    root=spec.root,
                    deny_syscalls=list(spec.deny_syscalls),
                    sandbox=spec.sandbox.to_json(),
                    effective_deny_syscalls=[],
                    requested_host=spec.host,
                    restart_policy=spec.restart_policy,
                    max_restarts=spec.max_restarts,
                    restart_count=0,
                    restart_at=None,
                    state=ContainerRecordState.PENDING.value,
                    host_id=host_id,
                    message="",
                    created=now,
                    updated=now,
                    revision=1,
                )
                session.add(row)
                session.flush()
                record = self._container(session, row)
                self._event(session, changes, record, now)
                return record, True
        except IntegrityError:
            # A concurrent create with the same request_id or name committed first.
            again = self.find_container_by_request(request_id) if request_id else None
            if again is not None:
                return again, False
            raise AlreadyExists(f"container name {spec.name!r} is taken") from None

    def get_container(self, ref: str) -> ContainerRecord:
        """A container by uid (also DELETED ones) or by the name of a non-deleted one."""
        with self._read() as session:
            return self._container(session, self._container_row(session, ref))

    def list_containers(
        self,
        limit: int,
        after: Cursor | None = None,
        labels: dict[str, str] | None = None,
        state: ContainerRecordState | None = None,
        host_ref: str = "",
    ) -> list[ContainerRecord]:
        """Containers oldest first after ``after``. Without ``state``: all but DELETED."""
        out: list[ContainerRecord] = []
        with self._read() as session:
            base = sa.select(ContainerRow).order_by(ContainerRow.created, ContainerRow.uid)
            if state is None:
                base = base.where(ContainerRow.state != ContainerRecordState.DELETED.value)
            else:
                base = base.where(ContainerRow.state == state.value)
            if host_ref:
                host = self._host_row(session, host_ref)
                base = base.where(ContainerRow.host_id == host.id)
            cursor = after
            batch = max(limit * 2, 100) if labels else limit
            while len(out) < limit:
                stmt = base.limit(batch)
                if cursor is not None:
                    stmt = stmt.where(
                        sa.or_(
                            ContainerRow.created > cursor[0],
                            sa.and_(ContainerRow.created == cursor[0], ContainerRow.uid > cursor[1]),
                        )
                    )
                rows = list(session.scalars(stmt))
                if not rows:
                    break
                # Label selectors are matched here, not in SQL: JSON operators differ per database.
                matched = [
                    r for r in rows if not labels or all(r.labels.get(k) == v for k, v in labels.items())
                ]
                out.extend(self._containers(session, matched[: limit - len(out)]))
                if len(rows) < batch:
                    break
                cursor = (rows[-1].created, rows[-1].uid)
        return out

    def finish_create(
        self,
        uid: str,
        ok: bool,
        message: str,
        now: datetime,
        effective_deny_syscalls: Sequence[str] = (),
    ) -> ContainerRecord:
        """PENDING -> CREATED (``ok``, with the deny list the host enforces) or FAILED; other
        states are left alone."""
        with self._write() as (session, changes):
            row = self._container_row(session, uid, lock=True)
            target = ContainerRecordState.CREATED if ok else ContainerRecordState.FAILED
            if row.state == ContainerRecordState.PENDING.value and lifecycle.check_container(
                row.name, ContainerRecordState.PENDING, target
            ):
                if ok:
                    row.effective_deny_syscalls = list(effective_deny_syscalls)
                self._set_state(session, changes, row, target, message=message, now=now)
            return self._container(session, row)

    def transition_container(
        self,
        uid: str,
        to: ContainerRecordState,
        *,
        now: datetime,
        message: str = "",
        finish_processes: str | None = None,
    ) -> tuple[ContainerRecord, ContainerRecordState]:
        """Move a container to ``to`` if :mod:`~chital.controller.lifecycle` allows it from its
        current state (else FailedPrecondition).

        With ``finish_processes``, its STARTING/RUNNING processes become LOST with that message (an
        exit event that arrives later still records the real exit). Returns the container and its
        previous state. A container already in ``to`` is returned unchanged.
        """
        with self._write() as (session, changes):
            row = self._container_row(session, uid, lock=True)
            previous = ContainerRecordState(row.state)
            if not lifecycle.check_container(row.name, previous, to):
                return self._container(session, row), previous
            if finish_processes is not None:
                self._finish_processes(session, changes, row.uid, finish_processes, now)
            self._set_state(session, changes, row, to, message=message, now=now)
            return self._container(session, row), previous

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

    # -- processes ------------------------------------------------------------------------------

    def create_process(
        self, uid: str, container_ref: str, request_id: str, spec: ProcessSpec, now: datetime
    ) -> tuple[ProcessRecord, ContainerRecord, bool]:
        """Record a STARTING process, or return the one ``request_id`` started before in that container.

        Returns ``(process, container, created)``. New processes need a CREATED or RUNNING container.
        """
        try:
            with self._write() as (session, changes):
                container = self._container_row(session, container_ref, lock=True)
                existing = (
                    session.scalars(
                        sa.select(ProcessRow).where(
                            ProcessRow.container_uid == container.uid, ProcessRow.request_id == request_id
                        )
                    ).first()
                    if request_id
                    else None
                )
                if existing is not None:
                    return self._process_record(existing), self._container(session, container), False
                if container.state not in (
                    ContainerRecordState.CREATED.value,
                    ContainerRecordState.RUNNING.value,
                ):
                    raise FailedPrecondition(f"container {container.name} is {container.state}; cannot exec")
                row = ProcessRow(
                    uid=uid,
                    container_uid=container.uid,
                    request_id=request_id or None,
                    argv=list(spec.argv),
                    env=dict(spec.env),
                    cwd=spec.cwd,
                    user_id=DEFAULT_USER_ID if spec.user_id is None else spec.user_id,
                    group_id=DEFAULT_GROUP_ID if spec.group_id is None else spec.group_id,
                    state=ProcessRecordState.STARTING.value,
                    pid=0,
                    exit_code=0,
                    signal=0,
                    oom_killed=False,
                    message="",
                    created=now,
                    start_time=None,
                    exit_time=None,
                    updated=now,
                )
                session.add(row)
                session.flush()
                record = self._process_record(row)
                self._event(session, changes, record, now)
                return record, self._container(session, container), True
        except IntegrityError:
            container_record = self.get_container(container_ref)
            with self._read() as session:
                found = session.scalars(
                    sa.select(ProcessRow).where(
                        ProcessRow.container_uid == container_record.uid, ProcessRow.request_id == request_id
                    )
                ).first()
                if found is None:
                    raise
                return self._process_record(found), container_record, False

    def mark_process_running(
        self, uid: str, pid: int, start_time: datetime | None, now: datetime
    ) -> ProcessRecord:
        """The agent started the process: record its pid; STARTING -> RUNNING (an exit seen already wins)."""
        with self._write() as (session, changes):
            row = session.get(ProcessRow, uid, with_for_update=True)
            if row is None:
                raise NotFound(f"process {uid!r} not found")
            changed = False
            if pid and not row.pid:
                row.pid = pid
                changed = True
            if row.start_time is None:
                row.start_time = start_time or now
                changed = True
            if lifecycle.can_process(ProcessRecordState(row.state), ProcessRecordState.RUNNING):
                row.state = ProcessRecordState.RUNNING.value
                row.message = ""
                changed = True
            if changed:
                row.updated = now
                self._event(session, changes, self._process_record(row), now)
                self._refresh_running(session, changes, row.container_uid, now)
            return self._process_record(row)

    def mark_process_lost(self, uid: str, message: str, now: datetime) -> ProcessRecord:
        """The process could not be started (or its fate is unknown)."""
        with self._write() as (session, changes):
            row = session.get(ProcessRow, uid, with_for_update=True)
            if row is None:
                raise NotFound(f"process {uid!r} not found")
            if lifecycle.can_process(ProcessRecordState(row.state), ProcessRecordState.LOST):
                row.state = ProcessRecordState.LOST.value
                row.message = message
                row.updated = now
                self._event(session, changes, self._process_record(row), now)
                self._refresh_running(session, changes, row.container_uid, now)
            return self._process_record(row)

    def get_process(self, uid: str) -> ProcessRecord:
        """A process by uid."""
        with self._read() as session:
            row = session.get(ProcessRow, uid)
            if row is None:
                raise NotFound(f"process {uid!r} not found")
            return self._process_record(row)

    def list_processes(
        self, limit: int, after: Cursor | None = None, container_uid: str = ""
    ) -> list[ProcessRecord]:
        """Processes oldest first after ``after``, of one container or all."""
        with self._read() as session:
            stmt = sa.select(ProcessRow).order_by(ProcessRow.created, ProcessRow.uid).limit(limit)
            if container_uid:
                stmt = stmt.where(ProcessRow.container_uid == container_uid)
            if after is not None:
                stmt = stmt.where(
                    sa.or_(
                        ProcessRow.created > after[0],
                        sa.and_(ProcessRow.created == after[0], ProcessRow.uid > after[1]),
                    )
                )
            return [self._process_record(r) for r in session.scalars(stmt)]

    def live_processes(self, container_uid: str) -> list[ProcessRecord]:
        """STARTING and RUNNING processes of a container."""
        with self._read() as session:
            rows = session.scalars(
                sa.select(ProcessRow).where(
                    ProcessRow.container_uid == container_uid, ProcessRow.state.in_(LIVE_PROCESS_STATES)
                )
            )
            return [self._process_record(r) for r in rows]

    def stale_containers(
        self, states: Sequence[ContainerRecordState], updated_before: datetime, limit: int
    ) -> list[ContainerRecord]:
        """Containers in ``states`` unchanged since ``updated_before`` (work the reconciler resumes)."""
        with self._read() as session:
            rows = session.scalars(
                sa.select(ContainerRow)
                .where(
                    ContainerRow.state.in_([s.value for s in states]), ContainerRow.updated < updated_before
                )
                .order_by(ContainerRow.updated)
                .limit(limit)
            ).all()
            return self._containers(session, rows)

    def stale_processes(
        self, state: ProcessRecordState, updated_before: datetime, limit: int
    ) -> list[ProcessRecord]:
        """Processes in ``state`` unchanged since ``updated_before``."""
        with self._read() as session:
            rows = session.scalars(
                sa.select(ProcessRow)
                .where(ProcessRow.state == state.value, ProcessRow.updated < updated_before)
                .order_by(ProcessRow.updated)
                .limit(limit)
            ).all()
            return [self._process_record(r) for r in rows]

    def oldest_unfinished(
        self, container_states: Sequence[ContainerRecordState], process_state: ProcessRecordState
    ) -> datetime | None:
        """When the longest-unchanged container in ``container_states`` or process in
        ``process_state`` last changed (None if there is none): the reconciler schedules its next
        round from this persisted time, not from its own start."""
        with self._read() as session:
            containers = session.scalar(
                sa.select(sa.func.min(ContainerRow.updated)).where(
                    ContainerRow.state.in_([s.value for s in container_states])
                )
            )
            processes = session.scalar(
                sa.select(sa.func.min(ProcessRow.updated)).where(ProcessRow.state == process_state.value)
            )
            times = [t for t in (containers, processes) if t is not None]
            return min(times) if times else None

    # -- host sync (chital.controller.hostsync) ------------------------------------------------

    def sync_view(
        self, host_id: str, container_uids: Collection[str], process_uids: Collection[str]
    ) -> tuple[list[ContainerRecord], list[ProcessRecord]]:
        """What a host's Sync is compared with.

        Containers: those placed on ``host_id`` that are (or are being put) on it (PENDING,
        CREATED, RUNNING, STOPPING), and those named in ``container_uids`` whatever their host and
        state. Processes: the STARTING/RUNNING ones of the host's containers, and those named in
        ``process_uids``.
        """
        with self._read() as session:
            on_host = (
                ContainerRecordState.PENDING.value,
                ContainerRecordState.CREATED.value,
                ContainerRecordState.RUNNING.value,
                ContainerRecordState.STOPPING.value,
            )
            rows = {
                r.uid: r
                for r in session.scalars(
                    sa.select(ContainerRow).where(
                        ContainerRow.host_id == host_id, ContainerRow.state.in_(on_host)
                    )
                )
            }
            for chunk in _chunks(sorted(set(container_uids) - set(rows))):
                rows.update(
                    (r.uid, r)
                    for r in session.scalars(sa.select(ContainerRow).where(ContainerRow.uid.in_(chunk)))
                )
            processes = {
                r.uid: r
                for r in session.scalars(
                    sa.select(ProcessRow)
                    .join(ContainerRow, ContainerRow.uid == ProcessRow.container_uid)
                    .where(ContainerRow.host_id == host_id, ProcessRow.state.in_(LIVE_PROCESS_STATES))
                )
            }
            for chunk in _chunks(sorted(set(process_uids) - set(processes))):
                processes.update(
                    (r.uid, r)
                    for r in session.scalars(sa.select(ProcessRow).where(ProcessRow.uid.in_(chunk)))
                )
            return (
                self._containers(session, list(rows.values())),
                [self._process_record(r) for r in processes.values()],
            )

    def lose_unchanged_containers(
        self, uids: Sequence[str], unchanged_since: datetime, message: str, now: datetime
    ) -> list[ContainerRecord]:
        """Make LOST (with their live processes) the containers among ``uids`` that are CREATED or
        RUNNING and have not changed since ``unchanged_since``: the agent's Sync, taken after that
        time, no longer has them. A record changed meanwhile is left for the next Sync."""
        lost: list[ContainerRecord] = []
        with self._write() as (session, changes):
            for uid in uids:
                row = session.get(ContainerRow, uid, with_for_update=True)
                if row is None or row.updated >= unchanged_since:
                    continue
                state = ContainerRecordState(row.state)
                if state not in lifecycle.ON_HOST:
                    continue
                lifecycle.check_container(row.name, state, ContainerRecordState.LOST)
                self._finish_processes(session, changes, row.uid, message, now)
                self._set_state(session, changes, row, ContainerRecordState.LOST, message=message, now=now)
                lost.append(self._container(session, row))
        return lost

    def lose_unchanged_processes(
        self, uids: Sequence[str], unchanged_since: datetime, message: str, now: datetime
    ) -> int:
        """Make LOST the RUNNING processes among ``uids`` unchanged since ``unchanged_since`` (their
        agent's Sync, taken after that, does not know them). Returns how many."""
        count = 0
        with self._write() as (session, changes):
            for uid in uids:
                row = session.get(ProcessRow, uid, with_for_update=True)
                if row is None or row.updated >= unchanged_since:
                    continue
                if row.state != ProcessRecordState.RUNNING.value:
                    continue
                lifecycle.check_process(row.uid, ProcessRecordState.RUNNING, ProcessRecordState.LOST)
                row.state = ProcessRecordState.LOST.value
                row.message = message
                row.updated = now
                self._event(session, changes, self._process_record(row), now)
                self._refresh_running(session, changes, row.container_uid, now)
                count += 1
        return count

    # -- restarts (chital.controller.restarts) -------------------------------------------------

    def restart_work(self, limit: int) -> tuple[list[ContainerRecord], datetime | None]:
        """LOST containers, not pinned to a host, whose restart policy allows another attempt
        (``always``, or ``on-failure`` below its maximum): those with no attempt scheduled yet
        (up to ``limit``), and the time the earliest scheduled attempt is due."""
        with self._read() as session:
            spent = sa.and_(
                ContainerRow.restart_policy == "on-failure",
                ContainerRow.max_restarts > 0,
                ContainerRow.restart_count >= ContainerRow.max_restarts,
            )
            lost = (
                ContainerRow.state == ContainerRecordState.LOST.value,
                ContainerRow.restart_policy != "never",
                ContainerRow.requested_host == "",  # pinned by the client: never moved
                sa.not_(spent),
            )
            rows = session.scalars(
                sa.select(ContainerRow)
                .where(*lost, ContainerRow.restart_at.is_(None))
                .order_by(ContainerRow.updated)
                .limit(limit)
            ).all()
            due = session.scalar(sa.select(sa.func.min(ContainerRow.restart_at)).where(*lost))
            return self._containers(session, rows), due

    def due_restarts(self, now: datetime, limit: int) -> list[ContainerRecord]:
        """LOST containers whose scheduled restart attempt is due at ``now``, earliest first."""
        with self._read() as session:
            rows = session.scalars(
                sa.select(ContainerRow)
                .where(
                    ContainerRow.state == ContainerRecordState.LOST.value,
                    ContainerRow.restart_at.is_not(None),
                    ContainerRow.restart_at <= now,
                )
                .order_by(ContainerRow.restart_at)
                .limit(limit)
            ).all()
            return self._containers(session, rows)

    def schedule_restart(self, uid: str, at: datetime, now: datetime) -> ContainerRecord:
        """Persist when the next restart attempt of a LOST container is due."""
        with self._write() as (session, changes):
            row = self._container_row(session, uid, lock=True)
            if row.state == ContainerRecordState.LOST.value and row.restart_at != at:
                row.restart_at = at
                row.updated = now
                row.revision += 1
                session.flush()
                self._event(session, changes, self._container(session, row), now)
            return self._container(session, row)

    def place_again(
        self, uid: str, now: datetime, choose_host: Callable[[list[Candidate]], str]
    ) -> ContainerRecord:
        """LOST -> PENDING on the host ``choose_host`` picks among the others (restart policy):
        the restart count goes up and no attempt is scheduled any more. FailedPrecondition if the
        container is no longer LOST; the chooser's error (no ready host) leaves it LOST."""
        with self._write() as (session, changes):
            row = self._container_row(session, uid, lock=True)
            lifecycle.check_container(row.name, ContainerRecordState(row.state), ContainerRecordState.PENDING)
            hosts = list(
                session.scalars(
                    sa.select(HostRow)
                    .where(HostRow.id != (row.host_id or ""))
                    .order_by(HostRow.created, HostRow.id)
                    .with_for_update()
                )
            )
            counts = self._count_placed(session, [h.id for h in hosts])
            host_id = choose_host(
                [
                    Candidate(
                        host_id=h.id,
                        address=h.address,
                        schedulable=h.state == HostHealth.READY.value
                        and h.admin_state == AdminState.ACTIVE.value,
                        max_containers=h.max_containers,
                        container_count=counts.get(h.id, 0),
                        created=h.created,
                    )
                    for h in hosts
                ]
            )
            row.host_id = host_id
            row.restart_count += 1
            row.restart_at = None
            row.effective_deny_syscalls = []
            self._set_state(
                session,
                changes,
                row,
                ContainerRecordState.PENDING,
                message=f"placed again after it was lost (restart {row.restart_count})",
                now=now,
            )
            return self._container(session, row)

    def apply_synced_processes(
        self, host_id: str, observed: Sequence[AgentEventRecord], now: datetime
    ) -> int:
        """Starts and exits that a host's Sync shows, applied with the rules of its events (an exit
        is recorded once, with its code; a late one after LOST still wins). Returns how many
        records changed."""
        with self._write() as (session, changes):
            before = changes.events
            for event in observed:
                self._apply_one(session, changes, host_id, event, now)
            return changes.events - before

    # -- agent events ---------------------------------------------------------------------------

    def apply_agent_events(
        self, host_id: str, boot_id: str, events: Sequence[AgentEventRecord], now: datetime
    ) -> int:
        """Apply events from a host's agent in one transaction; skip those applied before.

        Returns the host's new last sequence number. Events of another boot of the agent (the
        monitor saw a restart meanwhile) are ignored.
        """
        with self._write() as (session, changes):
            host = session.get(HostRow, host_id, with_for_update=True)
            if host is None:
                raise NotFound(f"host {host_id!r} not found")
            if host.boot_id != boot_id:
                return host.event_seq
            for event in events:
                if event.seq <= host.event_seq:
                    continue
                host.event_seq = event.seq
                self._apply_one(session, changes, host_id, event, now)
            return host.event_seq

    def _apply_one(
        self, session: Session, changes: _Changes, host_id: str, event: AgentEventRecord, now: datetime
    ) -> None:
        if event.kind not in ("PROCESS_STARTED", "PROCESS_EXITED") or not event.process_uid:
            return
        row = session.get(ProcessRow, event.process_uid)
        if row is None:
            return  # not started through this controller
        container = session.get(ContainerRow, row.container_uid)
        if container is None or container.host_id != host_id:
            return
        if event.kind == "PROCESS_STARTED":
            if lifecycle.can_process(ProcessRecordState(row.state), ProcessRecordState.RUNNING):
                row.state = ProcessRecordState.RUNNING.value
                row.pid = row.pid or event.pid
                row.start_time = row.start_time or event.time or now
                row.message = ""
                row.updated = now
                self._event(session, changes, self._process_record(row), now)
        else:
            if not lifecycle.can_process(ProcessRecordState(row.state), ProcessRecordState.EXITED):
                return
            row.state = ProcessRecordState.EXITED.value
            row.pid = row.pid or event.pid
            row.exit_code = event.exit_code
            row.signal = event.signal
            row.oom_killed = event.oom_killed
            row.exit_time = event.time or now
            row.message = ""
            row.updated = now
            self._event(session, changes, self._process_record(row), now)
        self._refresh_running(session, changes, row.container_uid, now)

    def count_by_state(self) -> tuple[list[HostRecord], dict[str, int], dict[str, int]]:
        """Every host, containers by state and processes by state (for metrics)."""
        hosts = self.all_hosts()
        with self._read() as session:
            containers = session.execute(
                sa.select(ContainerRow.state, sa.func.count()).group_by(ContainerRow.state)
            ).all()
            processes = session.execute(
                sa.select(ProcessRow.state, sa.func.count()).group_by(ProcessRow.state)
            ).all()
        return (
            hosts,
            {str(state): int(count) for state, count in containers},
            {str(state): int(count) for state, count in processes},
        )

    # -- events ---------------------------------------------------------------------------------

    def last_revision(self) -> int:
        """The newest event revision (0: none; never below the compacted revision)."""
        with self._read() as session:
            newest = int(session.scalar(sa.select(sa.func.max(EventRow.revision))) or 0)
            return max(newest, self._compact_revision(session))

    def list_events(self, after_revision: int, limit: int, container_uid: str = "") -> list[EventRecord]:
        """Events with a revision above ``after_revision``, oldest first.

        OutOfRange when events above ``after_revision`` have been compacted (read in the same
        transaction as the events, so a batch never has a silent gap)."""
        with self._read() as session:
            compact = self._compact_revision(session)
            if after_revision < compact:
                raise OutOfRange(
                    f"revision {after_revision} has been compacted: events up to revision {compact} "
                    f"are gone, the oldest kept is above it; list again and watch from a newer revision",
                    compact_revision=compact,
                )
            stmt = (
                sa.select(EventRow)
                .where(EventRow.revision > after_revision)
                .order_by(EventRow.revision)
                .limit(limit)
            )
            if container_uid:
                stmt = stmt.where(EventRow.container_uid == container_uid)
            return [self._event_record(r) for r in session.scalars(stmt)]

    @staticmethod
    def _event_record(row: EventRow) -> EventRecord:
        data: dict[str, Any] = row.data
        if row.type == EventRecordType.CONTAINER.value:
            return EventRecord(
                row.revision, EventRecordType.CONTAINER, row.time, container=container_from_json(data)
            )
        return EventRecord(row.revision, EventRecordType.PROCESS, row.time, process=process_from_json(data))

    # -- retention (policy and schedule: chital.controller.retention) -------------------------

    @staticmethod
    def _compact_revision(session: Session) -> int:
        return int(session.scalar(sa.select(RetentionRow.revision).where(RetentionRow.task == "events")) or 0)

    @property
    def compact_revision(self) -> int:
        """The compacted event revision as this process knows it, without a query (read from the
        database once, then kept by :meth:`compact_events`): a reader that serves events from
        memory answers OUT_OF_RANGE below it, as :meth:`list_events` does."""
        if self._known_compact_revision is None:
            with self._read() as session:
                read = self._compact_revision(session)
            self._known_compact_revision = max(read, self._known_compact_revision or 0)
        return self._known_compact_revision

    @staticmethod
    def _delete(session: Session, statement: sa.Delete) -> int:
        """Run a DELETE; how many rows it removed."""
        result = session.execute(statement)
        return int(cast("sa.CursorResult[Any]", result).rowcount)

    @staticmethod
    def _retention_row(session: Session, task: str) -> RetentionRow:
        row = session.get(RetentionRow, task)
        if row is None:
            row = RetentionRow(task=task, revision=0, removed=0, last_run=None)
            session.add(row)
        return row

    def compact_events(self, before: datetime, max_events: int, batch: int) -> tuple[int, bool]:
        """Delete one batch (at most ``batch`` revisions, oldest first) of the events older than
        ``before``, or beyond the newest ``max_events`` (0: no count limit), and raise the compacted
        revision to the highest one deleted. The newest event is always kept (so revisions never
        go back, and a live watch knows where it is). Returns (events deleted, more may be due)."""
        with self._write() as (session, _):
            lo, newest = session.execute(
                sa.select(sa.func.min(EventRow.revision), sa.func.max(EventRow.revision))
            ).one()
            if newest is None:
                return 0, False
            lo, newest = int(lo), int(newest)
            hi = min(lo + batch - 1, newest - 1)
            if hi < lo:
                return 0, False
            cut = min(newest - max_events, hi) if max_events > 0 else 0
            by_age = session.scalar(
                sa.select(sa.func.max(EventRow.revision)).where(
                    EventRow.revision >= lo, EventRow.revision <= hi, EventRow.time < before
                )
            )
            cut = max(cut, int(by_age or 0))
            if cut < lo:
                return 0, False
            deleted = self._delete(session, sa.delete(EventRow).where(EventRow.revision <= cut))
            state = self._retention_row(session, "events")
            state.revision = max(state.revision, cut)
            state.removed += deleted
            compacted = state.revision
        self._known_compact_revision = max(self._known_compact_revision or 0, compacted)
        return int(deleted), cut == hi

    def prune_deleted(self, before: datetime, batch: int) -> tuple[int, int]:
        """Delete one batch (at most ``batch``) of the containers DELETED before ``before`` (by
        their last change) with their processes. Only DELETED rows are ever touched. Events about
        them stay until compaction. Returns (containers, processes) deleted."""
        deleted_state = ContainerRecordState.DELETED.value
        with self._write() as (session, _):
            uids = list(
                session.scalars(
                    sa.select(ContainerRow.uid)
                    .where(ContainerRow.state == deleted_state, ContainerRow.updated < before)
                    .limit(batch)
                )
            )
            if not uids:
                return 0, 0
            processes = self._delete(session, sa.delete(ProcessRow).where(ProcessRow.container_uid.in_(uids)))
            containers = self._delete(
                session,
                sa.delete(ContainerRow).where(
                    ContainerRow.uid.in_(uids), ContainerRow.state == deleted_state
                ),
            )
            self._retention_row(session, "deleted").removed += containers
            return int(containers), int(processes)

    def prune_audit(self, before: datetime, batch: int) -> int:
        """Delete one batch (at most ``batch``, oldest first) of the audit entries written before
        ``before``. Returns how many were deleted."""
        with self._write() as (session, _):
            ids = list(
                session.scalars(
                    sa.select(AuditRow.id).where(AuditRow.at < before).order_by(AuditRow.id).limit(batch)
                )
            )
            if not ids:
                return 0
            deleted = self._delete(session, sa.delete(AuditRow).where(AuditRow.id.in_(ids)))
            self._retention_row(session, "audit").removed += deleted
            return deleted

    def retention_state(self) -> dict[str, tuple[int, int, datetime | None]]:
        """Per janitor task: (revision, rows removed so far, last run)."""
        with self._read() as session:
            return {
                r.task: (r.revision, r.removed, r.last_run) for r in session.scalars(sa.select(RetentionRow))
            }

    def record_retention_pass(self, tasks: Sequence[str], now: datetime) -> None:
        """Note that a janitor pass over ``tasks`` finished at ``now`` (the next is due from it)."""
        with self._write() as (session, _):
            for task in tasks:
                self._retention_row(session, task).last_run = now
