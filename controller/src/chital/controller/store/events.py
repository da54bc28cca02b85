"""The event log that Watch reads: its revisions, pages of events, and the compacted revision."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

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

# Built once with bound parameters: the event feed reads new events after every commit, and
# building and compiling a statement (or loading ORM rows) costs more than running it.
_EVENTS = cast(sa.Table, EventRow.__table__)
_RETENTION = cast(sa.Table, RetentionRow.__table__)
_COMPACT = sa.select(_RETENTION.c.revision).where(_RETENTION.c.task == "events")
_AFTER = (
    sa.select(_EVENTS.c.revision, _EVENTS.c.type, _EVENTS.c.time, _EVENTS.c.data)
    .where(_EVENTS.c.revision > sa.bindparam("after", type_=sa.BigInteger))
    .order_by(_EVENTS.c.revision)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)
_AFTER_OF = _AFTER.where(_EVENTS.c.container_uid == sa.bindparam("container_uid", type_=sa.String))


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
            params: dict[str, Any] = {"after": after_revision, "limit": limit}
            if container_uid:
                params["container_uid"] = container_uid
            rows = session.execute(_AFTER_OF if container_uid else _AFTER, params)
            return [self._event_record(*row) for row in rows]

    @staticmethod
    def _event_record(revision: int, type_: str, time: datetime, data: dict[str, Any]) -> EventRecord:
        if type_ == EventRecordType.CONTAINER.value:
            return EventRecord(revision, EventRecordType.CONTAINER, time, container=container_from_json(data))
        return EventRecord(revision, EventRecordType.PROCESS, time, process=process_from_json(data))

    @staticmethod
    def _compact_revision(session: Session) -> int:
        return int(session.scalar(_COMPACT) or 0)

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
