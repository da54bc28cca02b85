"""What a host's Sync is compared with, and the writes that follow it
(:mod:`chital.controller.hostsync`), and the reconciler's schedule: reads and writes that span
containers and processes."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from chital.controller import lifecycle
from chital.controller.models import (
    ContainerRow,
    ProcessRow,
)
from chital.controller.records import (
    LIVE_PROCESS_STATES,
    ContainerRecord,
    ContainerRecordState,
    ProcessRecord,
    ProcessRecordState,
    SyncedContainer,
)
from chital.controller.store._base import _CONTAINERS, _PROCESSES, StoreBase, _chunks, retry_conflicts

__all__ = ["SyncStore"]


class SyncStore(StoreBase):
    """Host sync and reconciler views of :class:`~chital.controller.store.Store`."""

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

    def sync_view(
        self, host_id: str, container_uids: Collection[str], process_uids: Collection[str]
    ) -> tuple[list[SyncedContainer], list[ProcessRecord]]:
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
            # Core rows of the columns the sync compares, not ORM instances or whole records: a
            # host's sync reads every container on it.
            containers, processes_table = _CONTAINERS.c, _PROCESSES.c
            columns = sa.select(
                containers.uid, containers.host_id, containers.state, containers.desired_state
            )
            rows: dict[str, sa.Row[Any, Any, Any, Any]] = {
                r.uid: r
                for r in session.execute(
                    columns.where(containers.host_id == host_id, containers.state.in_(on_host))
                )
            }
            for chunk in _chunks(sorted(set(container_uids) - set(rows))):
                rows.update((r.uid, r) for r in session.execute(columns.where(containers.uid.in_(chunk))))
            processes: dict[str, sa.Row[Any]] = {
                r.uid: r
                for r in session.execute(
                    sa.select(_PROCESSES)
                    .join(_CONTAINERS, containers.uid == processes_table.container_uid)
                    .where(containers.host_id == host_id, processes_table.state.in_(LIVE_PROCESS_STATES))
                )
            }
            for chunk in _chunks(sorted(set(process_uids) - set(processes))):
                processes.update(
                    (r.uid, r)
                    for r in session.execute(sa.select(_PROCESSES).where(processes_table.uid.in_(chunk)))
                )
            addresses = self._host_addresses(session, sorted({r.host_id or "" for r in rows.values()}))
            return (
                [
                    SyncedContainer(
                        r.uid,
                        r.host_id or "",
                        addresses.get(r.host_id or "", ""),
                        ContainerRecordState(r.state),
                        r.desired_state or "",
                    )
                    for r in rows.values()
                ],
                [self._process_record(r) for r in processes.values()],
            )

    @retry_conflicts
    def lose_unchanged_containers(
        self, uids: Sequence[str], unchanged_since: datetime, message: str, now: datetime
    ) -> list[ContainerRecord]:
        """Make LOST (with their live processes) the containers among ``uids`` that are CREATED or
        RUNNING and have not changed since ``unchanged_since``: the agent's Sync, taken after that
        time, no longer has them. A record changed meanwhile is left for the next Sync."""
        lost: list[ContainerRecord] = []
        with self._write() as (session, changes):
            rows = self._lock_containers(session, uids)
            self._lock_live_processes(session, rows)
            for uid in sorted(rows):
                row = rows[uid]
                if row.updated >= unchanged_since:
                    continue
                state = ContainerRecordState(row.state)
                if state not in lifecycle.ON_HOST:
                    continue
                lifecycle.check_container(row.name, state, ContainerRecordState.LOST)
                self._finish_processes(session, changes, row.uid, message, now)
                self._set_state(session, changes, row, ContainerRecordState.LOST, message=message, now=now)
                lost.append(self._container(session, row))
        return lost

    @retry_conflicts
    def lose_unchanged_processes(
        self, uids: Sequence[str], unchanged_since: datetime, message: str, now: datetime
    ) -> int:
        """Make LOST the RUNNING processes among ``uids`` unchanged since ``unchanged_since`` (their
        agent's Sync, taken after that, does not know them). Returns how many."""
        count = 0
        with self._write() as (session, changes):
            rows = self._lock_processes_with_containers(session, uids)[1]
            for uid in sorted(rows):
                row = rows[uid]
                if row.updated >= unchanged_since:
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
