"""The event log that Watch reads: its revisions, pages of events, and the compacted revision."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from chital.controller.models import (
    EventRow,
    RetentionRow,
)
from chital.controller.records import (
    EventRecord,
    EventRecordType,
    container_from_json,
    process_from_json,
)
from chital.controller.store._base import StoreBase
from chital.errdefs import (
    OutOfRange,
)

__all__ = ["EventStore"]


class EventStore(StoreBase):
    """The events aggregate of :class:`~chital.controller.store.Store`."""

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
