"""Containers: create and placement, the intent writes (stop, delete), lifecycle transitions, and
the restart policy's schedule (carried out by :mod:`chital.controller.restarts`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from chital.controller import lifecycle
from chital.controller.models import (
    ContainerRow,
    HostRow,
)
from chital.controller.records import (
    Candidate,
    ContainerRecord,
    ContainerRecordState,
    ContainerSpec,
)
from chital.controller.store._base import _CONTAINERS, StoreBase, _locking, retry_conflicts
from chital.controller.store.paging import Cursor
from chital.controller.validation import LABEL_KEY_RE
from chital.errdefs import (
    AlreadyExists,
    FailedPrecondition,
)

__all__ = ["ContainerStore"]


class ContainerStore(StoreBase):
    """The containers aggregate of :class:`~chital.controller.store.Store`."""

    @retry_conflicts
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
                # The processes first: the container is then written by one UPDATE (a second
                # UPDATE of a row in one transaction re-checks its foreign key: a lock on the host).
                self._finish_processes(session, changes, row.uid, "container deleted", now)
                row.desired_state = ContainerRecordState.DELETED.value
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

    @retry_conflicts
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

    def find_container_by_request(self, request_id: str) -> ContainerRecord | None:
        """The container created by ``request_id``, if any."""
        with self._read() as session:
            row = session.scalars(
                sa.select(ContainerRow).where(ContainerRow.request_id == request_id)
            ).first()
            return None if row is None else self._container(session, row)

    @retry_conflicts
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
                # Hosts in primary-key order (the lock order); placement sorts candidates itself.
                if spec.host:
                    hosts = [self._host_row(session, spec.host, lock=True)]
                else:
                    hosts = list(session.scalars(_locking(sa.select(HostRow).order_by(HostRow.id))))
                counts = self._count_placed(session, [h.id for h in hosts])
                host_id = choose_host(self._candidates(hosts, counts))
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
        """Containers oldest first after ``after``. Without ``state``: all but DELETED.

        One query per page, in the database: the filters, the label selector (each term compares
        one JSON member, ``json_extract`` on SQLite, ``->>`` on PostgreSQL) and the position seek
        an index in (created, uid) order: ``(host_id, created, uid)`` with a host,
        ``(state, created, uid)`` with a state, else ``(created, uid)``. A selector that few rows
        match still reads the rows of its listing between two matches."""
        if labels and not all(LABEL_KEY_RE.fullmatch(key) for key in labels):
            return []  # no container can carry such a key: labels are validated at create
        with self._read() as session:
            c = _CONTAINERS.c
            stmt = sa.select(_CONTAINERS).order_by(c.created, c.uid).limit(limit)
            if state is None:
                stmt = stmt.where(c.state != ContainerRecordState.DELETED.value)
            else:
                stmt = stmt.where(c.state == state.value)
            if host_ref:
                host = self._host_row(session, host_ref)
                stmt = stmt.where(c.host_id == host.id)
            for key, value in (labels or {}).items():
                stmt = stmt.where(c.labels[key].as_string() == value)
            if after is not None:
                # created >= c first, so that every database seeks the index instead of reading
                # the listing from its start (an OR of the two cases alone defeats the seek).
                stmt = stmt.where(c.created >= after[0], sa.or_(c.created > after[0], c.uid > after[1]))
            return self._containers(session, list(session.execute(stmt)))

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

    @retry_conflicts
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

    @retry_conflicts
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

    @retry_conflicts
    def place_again(
        self, uid: str, now: datetime, choose_host: Callable[[list[Candidate]], str]
    ) -> ContainerRecord:
        """LOST -> PENDING on the host ``choose_host`` picks among the others (restart policy):
        the restart count goes up and no attempt is scheduled any more. FailedPrecondition if the
        container is no longer LOST; the chooser's error (no ready host) leaves it LOST."""
        with self._write() as (session, changes):
            # The lock order: every host (the new one is among them), then the container.
            locked = list(session.scalars(_locking(sa.select(HostRow).order_by(HostRow.id))))
            row = self._container_row(session, uid, lock=True)
            lifecycle.check_container(row.name, ContainerRecordState(row.state), ContainerRecordState.PENDING)
            hosts = [h for h in locked if h.id != (row.host_id or "")]
            counts = self._count_placed(session, [h.id for h in hosts])
            host_id = choose_host(self._candidates(hosts, counts))
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
