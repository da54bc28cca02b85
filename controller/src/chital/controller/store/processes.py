"""Processes: exec, start and exit, and the events agents report about them (StreamEvents and
the exits a Sync found)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from chital.controller import lifecycle
from chital.controller.models import (
    ContainerRow,
    ProcessRow,
)
from chital.controller.records import (
    DEFAULT_GROUP_ID,
    DEFAULT_USER_ID,
    LIVE_PROCESS_STATES,
    AgentEventRecord,
    ContainerRecord,
    ContainerRecordState,
    ProcessRecord,
    ProcessRecordState,
    ProcessSpec,
)
from chital.controller.store._base import StoreBase, _Changes, retry_conflicts
from chital.controller.store.paging import Cursor
from chital.errdefs import (
    FailedPrecondition,
    NotFound,
)

__all__ = ["ProcessStore"]

# The agent events that change process records (and so their containers' states).
_PROCESS_KINDS = ("PROCESS_STARTED", "PROCESS_EXITED")


class ProcessStore(StoreBase):
    """The processes aggregate of :class:`~chital.controller.store.Store`."""

    if TYPE_CHECKING:  # provided by ContainerStore in the Store facade

        def get_container(self, ref: str) -> ContainerRecord: ...

    @retry_conflicts
    def create_process(
        self, uid: str, container_ref: str, request_id: str, spec: ProcessSpec, now: datetime
    ) -> tuple[ProcessRecord, ContainerRecord, bool]:
        """Record a STARTING process, or return the one ``request_id`` started before in that container.

        Returns ``(process, container, created)``. New processes need a CREATED or RUNNING container.
        """
        try:
            with self._write() as (session, changes):
                # The container's lock first (the new row's foreign key takes a share lock on it).
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

    @retry_conflicts
    def mark_process_running(
        self, uid: str, pid: int, start_time: datetime | None, now: datetime
    ) -> ProcessRecord:
        """The agent started the process: record its pid; STARTING -> RUNNING (an exit seen already wins)."""
        with self._write() as (session, changes):
            row = self._lock_processes_with_containers(session, [uid])[1].get(uid)
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

    @retry_conflicts
    def mark_process_lost(self, uid: str, message: str, now: datetime) -> ProcessRecord:
        """The process could not be started (or its fate is unknown)."""
        with self._write() as (session, changes):
            row = self._lock_processes_with_containers(session, [uid])[1].get(uid)
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

    @retry_conflicts
    def apply_synced_processes(
        self, host_id: str, observed: Sequence[AgentEventRecord], now: datetime
    ) -> int:
        """Starts and exits that a host's Sync shows, applied with the rules of its events (an exit
        is recorded once, with its code; a late one after LOST still wins). Returns how many
        records changed."""
        with self._write() as (session, changes):
            self._lock_for_events(session, observed)
            before = changes.events
            for event in observed:
                self._apply_one(session, changes, host_id, event, now)
            return changes.events - before

    @retry_conflicts
    def apply_agent_events(
        self, host_id: str, boot_id: str, events: Sequence[AgentEventRecord], now: datetime
    ) -> int:
        """Apply events from a host's agent in one transaction; skip those applied before.

        Returns the host's new last sequence number. Events of another boot of the agent (the
        monitor saw a restart meanwhile) are ignored.
        """
        with self._write() as (session, changes):
            host = self._find_host(session, host_id, lock=True)
            if host is None or host.id != host_id:
                raise NotFound(f"host {host_id!r} not found")
            if host.boot_id != boot_id:
                return host.event_seq
            self._lock_for_events(session, [e for e in events if e.seq > host.event_seq])
            for event in events:
                if event.seq <= host.event_seq:
                    continue
                host.event_seq = event.seq
                self._apply_one(session, changes, host_id, event, now)
            return host.event_seq

    def _lock_for_events(self, session: Session, events: Sequence[AgentEventRecord]) -> None:
        """Lock what ``events`` may change up front, in the lock order: the processes' containers,
        then the processes (:meth:`_apply_one` then finds them in the session)."""
        uids = [e.process_uid for e in events if e.kind in _PROCESS_KINDS and e.process_uid]
        if uids:
            self._lock_processes_with_containers(session, uids)

    def _apply_one(
        self, session: Session, changes: _Changes, host_id: str, event: AgentEventRecord, now: datetime
    ) -> None:
        if event.kind not in _PROCESS_KINDS or not event.process_uid:
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
