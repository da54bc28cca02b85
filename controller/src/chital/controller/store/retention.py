"""Retention's deletes (policy and schedule: :mod:`chital.controller.retention`): event
compaction, pruning DELETED containers and old audit entries, and the record of each pass."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from chital.controller.models import (
    AuditRow,
    ContainerRow,
    EventRow,
    ProcessRow,
    RetentionRow,
)
from chital.controller.records import (
    ContainerRecordState,
)
from chital.controller.store._base import StoreBase, retry_conflicts

__all__ = ["RetentionStore"]


class RetentionStore(StoreBase):
    """Retention writes of :class:`~chital.controller.store.Store`."""

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

    @retry_conflicts
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

    @retry_conflicts
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
            # The lock order: the containers, then their processes (a late exit event may be
            # applying to one of them); a container changed meanwhile is left alone.
            uids = [
                uid
                for uid, row in self._lock_containers(session, uids, delete=True).items()
                if row.state == deleted_state
            ]
            self._lock_processes(
                session,
                session.scalars(sa.select(ProcessRow.uid).where(ProcessRow.container_uid.in_(uids))),
                delete=True,
            )
            processes = self._delete(session, sa.delete(ProcessRow).where(ProcessRow.container_uid.in_(uids)))
            containers = self._delete(
                session,
                sa.delete(ContainerRow).where(
                    ContainerRow.uid.in_(uids), ContainerRow.state == deleted_state
                ),
            )
            self._retention_row(session, "deleted").removed += containers
            return int(containers), int(processes)

    @retry_conflicts
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

    @retry_conflicts
    def record_retention_pass(self, tasks: Sequence[str], now: datetime) -> None:
        """Note that a janitor pass over ``tasks`` finished at ``now`` (the next is due from it)."""
        with self._write() as (session, _):
            for task in sorted(tasks):  # rows in primary-key order
                self._retention_row(session, task).last_run = now
