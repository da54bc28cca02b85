"""Creates in batches: the transaction that the create path's group committer
(:mod:`chital.controller.groupcommit`) runs for every batch of create intents and create outcomes.

One call of :meth:`CreateStore.write_creates` is one transaction, whatever the mix of items:

- :class:`PlaceIntent`: place a new container and record it PENDING (or find the container its
  ``request_id`` made before);
- :class:`FinishCreate`: the agent's answer for a PENDING container: CREATED (with the deny list
  the host enforces) or FAILED with the agent's error.

Each item is checked before anything of it is written, so a refused item (a taken name, no host
with room) is answered with its error and writes nothing, and the others of the batch commit.
Rows are locked in the store's lock order: the hosts (by id) for placements, then the containers
(by uid) that finishes change; new container rows and the event rows come last.

The per-batch queries (existing request_ids and names, the hosts and their counts, the finished
rows, their addresses and running processes) are made once for the whole batch, not per item.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from chital.controller import lifecycle
from chital.controller.models import ContainerRow
from chital.controller.records import (
    Candidate,
    ContainerRecord,
    ContainerRecordState,
    ContainerSpec,
)
from chital.controller.store._base import _CONTAINERS, _HOSTS, StoreBase, _Changes, _chunks, _locking
from chital.errdefs import AlreadyExists, ChitalError, NotFound, Unavailable

__all__ = ["CreateOutcome", "CreateStore", "FinishCreate", "PlaceIntent"]

# The committer's statements are Core, built once: per batch, building a statement (coercing each
# value of a multi-row VALUES, generating its cache key) or loading ORM rows and flushing them cost
# more than the database's work.
_INSERT = sa.insert(_CONTAINERS)
_EARLIER = sa.select(_CONTAINERS.c.uid, _CONTAINERS.c.request_id, _CONTAINERS.c.live_name).where(
    sa.or_(
        _CONTAINERS.c.request_id.in_(sa.bindparam("request_ids", expanding=True)),
        _CONTAINERS.c.live_name.in_(sa.bindparam("names", expanding=True)),
    )
)
_PLACEMENT_HOSTS = _locking(
    sa.select(
        _HOSTS.c.id,
        _HOSTS.c.address,
        _HOSTS.c.state,
        _HOSTS.c.admin_state,
        _HOSTS.c.max_containers,
        _HOSTS.c.created,
    ).order_by(_HOSTS.c.id)
)
_PINNED_HOSTS = _PLACEMENT_HOSTS.where(
    sa.or_(
        _HOSTS.c.id.in_(sa.bindparam("refs", expanding=True)),
        _HOSTS.c.address.in_(sa.bindparam("refs", expanding=True)),
    )
)
_FINISHED = _locking(
    sa.select(_CONTAINERS)
    .where(_CONTAINERS.c.uid.in_(sa.bindparam("uids", expanding=True)))
    .order_by(_CONTAINERS.c.uid)
)
_FINISH = (
    sa.update(_CONTAINERS)
    .where(_CONTAINERS.c.uid == sa.bindparam("b_uid"))
    .values(
        state=sa.bindparam("b_state"),
        message=sa.bindparam("b_message"),
        updated=sa.bindparam("b_updated"),
        revision=sa.bindparam("b_revision"),
        effective_deny_syscalls=sa.bindparam("b_effective", type_=_CONTAINERS.c.effective_deny_syscalls.type),
    )
)


@dataclass(frozen=True)
class PlaceIntent:
    """Place a new container and record it PENDING. ``choose_host`` gets the candidate hosts (the
    pinned one, or all) and returns the chosen id or raises the refusal."""

    uid: str
    request_id: str
    spec: ContainerSpec
    now: datetime
    choose_host: Callable[[list[Candidate]], str] = field(compare=False)


@dataclass(frozen=True)
class FinishCreate:
    """The agent's answer for a PENDING container: CREATED (``ok``, with the deny list the host
    enforces) or FAILED with ``message``. A container no longer PENDING is left as it is."""

    uid: str
    ok: bool
    message: str
    now: datetime
    effective_deny_syscalls: tuple[str, ...] = ()
    #: The host the caller created it on (the record's host_id and address): spares a lookup.
    host_id: str = ""
    host_address: str = ""


#: How many times a batch is run in all when the database breaks a lock conflict by rolling it back.
CONFLICT_ATTEMPTS = 5
#: serialization_failure, deadlock_detected
_CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})


def _lock_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` (the store's Unavailable) comes from a transaction the database rolled back
    to break a lock conflict: running it again may succeed."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OperationalError):
            return getattr(cause.orig, "sqlstate", None) in _CONFLICT_SQLSTATES
        cause = cause.__cause__
    return False


@dataclass(frozen=True)
class _Host:
    """What placement reads of a host."""

    id: str
    address: str
    state: str
    admin_state: str
    max_containers: int
    created: datetime


#: A placement answers (container, created: False when its request_id made it before); a finish
#: answers the container as it is after the transaction.
CreateOutcome = tuple[ContainerRecord, bool] | ContainerRecord


class CreateStore(StoreBase):
    """The create batches of :class:`~chital.controller.store.Store`."""

    def write_creates(self, items: Sequence[PlaceIntent | FinishCreate]) -> list[CreateOutcome | ChitalError]:
        """Write ``items`` in one transaction; one outcome per item, in order (see the module
        docstring). A transaction that PostgreSQL rolled back to break a lock conflict (deadlock,
        serialization failure) is run again, up to :data:`CONFLICT_ATTEMPTS` times in all."""
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                return self._write_creates_once(items)
            except Unavailable as exc:
                if attempt == CONFLICT_ATTEMPTS or not _lock_conflict(exc):
                    raise
                time.sleep(0.005 * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _write_creates_once(
        self, items: Sequence[PlaceIntent | FinishCreate]
    ) -> list[CreateOutcome | ChitalError]:
        outcomes: list[CreateOutcome | ChitalError | None] = [None] * len(items)
        try:
            with self._write() as (session, changes):
                intents = [(i, it) for i, it in enumerate(items) if isinstance(it, PlaceIntent)]
                finishes = [(i, it) for i, it in enumerate(items) if isinstance(it, FinishCreate)]
                if intents:
                    self._place(session, changes, intents, outcomes)
                if finishes:
                    self._finish(session, changes, finishes, outcomes)
        except IntegrityError:
            # A concurrent writer (another controller) committed the same request_id or name
            # first. Alone, the placement answers as a retry would; in a batch, the group committer
            # writes the items again one at a time to find which one it was.
            if len(items) != 1 or not isinstance(items[0], PlaceIntent):
                raise
            intent = items[0]
            if intent.request_id:
                with self._read() as session:
                    row = self._rows_by_request(session, [intent.request_id]).get(intent.request_id)
                    if row is not None:
                        return [(self._container(session, row), False)]
            return [AlreadyExists(f"container name {intent.spec.name!r} is taken")]
        return [o if o is not None else NotFound("no outcome") for o in outcomes]

    # -- placements -------------------------------------------------------------------------------

    def _place(
        self,
        session: Session,
        changes: _Changes,
        intents: list[tuple[int, PlaceIntent]],
        outcomes: list[CreateOutcome | ChitalError | None],
    ) -> None:
        existing, taken = self._earlier(session, intents)
        hosts = self._lock_placement_hosts(session, intents)
        counts = self._count_placed(session, list(hosts))
        by_created = sorted(hosts.values(), key=lambda h: (h.created, h.id))
        made: dict[str, ContainerRecord] = {}  # request_id -> made in this batch
        new_rows: list[dict[str, object]] = []
        for index, it in intents:
            spec = it.spec
            if it.request_id and it.request_id in made:
                outcomes[index] = (made[it.request_id], False)
                continue
            if it.request_id and it.request_id in existing:
                row = session.get(ContainerRow, existing[it.request_id])
                if row is not None:
                    outcomes[index] = (self._container(session, row), False)
                    continue
            if spec.name in taken:
                outcomes[index] = AlreadyExists(f"container name {spec.name!r} is taken")
                continue
            if spec.host:
                pinned = [h for h in by_created if spec.host in (h.id, h.address)]
                if not pinned:
                    outcomes[index] = NotFound(f"host {spec.host!r} not found")
                    continue
                candidates_of = pinned
            else:
                candidates_of = by_created
            try:
                host_id = it.choose_host(self._candidates(candidates_of, counts))
            except ChitalError as exc:
                outcomes[index] = exc
                continue
            counts[host_id] = counts.get(host_id, 0) + 1
            taken.add(spec.name)
            record = ContainerRecord(
                uid=it.uid,
                name=spec.name,
                request_id=it.request_id,
                state=ContainerRecordState.PENDING,
                labels=dict(spec.labels),
                limits=spec.limits,
                root=spec.root,
                deny_syscalls=tuple(spec.deny_syscalls),
                requested_host=spec.host,
                host_id=host_id,
                host_address=hosts[host_id].address,
                message="",
                created=it.now,
                updated=it.now,
                revision=1,
                running_processes=0,
                sandbox=spec.sandbox,
                effective_deny_syscalls=(),
                desired_state=ContainerRecordState.RUNNING.value,
                stop_deadline=None,
                restart_policy=spec.restart_policy,
                max_restarts=spec.max_restarts,
                restart_count=0,
                restart_at=None,
            )
            new_rows.append(
                {
                    "uid": it.uid,
                    "name": spec.name,
                    "live_name": spec.name,
                    "request_id": it.request_id or None,
                    "desired_state": ContainerRecordState.RUNNING.value,
                    "stop_deadline": None,
                    "labels": dict(spec.labels),
                    "memory_max_bytes": spec.limits.memory_max_bytes,
                    "pids_max": spec.limits.pids_max,
                    "cpu_max_millicores": spec.limits.cpu_max_millicores,
                    "root": spec.root,
                    "deny_syscalls": list(spec.deny_syscalls),
                    "sandbox": spec.sandbox.to_json(),
                    "effective_deny_syscalls": [],
                    "requested_host": spec.host,
                    "restart_policy": spec.restart_policy,
                    "max_restarts": spec.max_restarts,
                    "restart_count": 0,
                    "restart_at": None,
                    "state": ContainerRecordState.PENDING.value,
                    "host_id": host_id,
                    "message": "",
                    "created": it.now,
                    "updated": it.now,
                    "revision": 1,
                }
            )
            if it.request_id:
                made[it.request_id] = record
            self._event(session, changes, record, it.now)
            outcomes[index] = (record, True)
        if new_rows:
            # An executemany of one compiled statement (SQLAlchemy sends it as few multi-row
            # statements where the driver allows).
            session.execute(_INSERT, new_rows)

    @staticmethod
    def _rows_by_request(session: Session, request_ids: list[str]) -> dict[str, ContainerRow]:
        found: dict[str, ContainerRow] = {}
        for chunk in _chunks(sorted(set(request_ids))):
            for row in session.scalars(sa.select(ContainerRow).where(ContainerRow.request_id.in_(chunk))):
                found[str(row.request_id)] = row
        return found

    @staticmethod
    def _earlier(session: Session, intents: list[tuple[int, PlaceIntent]]) -> tuple[dict[str, str], set[str]]:
        """What the database holds already, in one query per chunk: the uid of the container each
        of the intents' request_ids made, and which of their names a live container holds."""
        request_ids = sorted({it.request_id for _, it in intents if it.request_id})
        names = sorted({it.spec.name for _, it in intents})
        by_request: dict[str, str] = {}
        taken: set[str] = set()
        for start in range(0, max(len(request_ids), len(names)), 500):
            ids, live = request_ids[start : start + 500], names[start : start + 500]
            wanted = set(ids)
            for uid, request_id, live_name in session.execute(_EARLIER, {"request_ids": ids, "names": live}):
                if request_id in wanted:
                    by_request[str(request_id)] = str(uid)
                if live_name is not None:
                    taken.add(str(live_name))
        return by_request, taken

    @staticmethod
    def _lock_placement_hosts(session: Session, intents: list[tuple[int, PlaceIntent]]) -> dict[str, _Host]:
        """Lock the hosts the placements may choose among, in id order (the store's lock order):
        all of them, or only the pinned ones when every intent pins its host. The row locks (FOR NO
        KEY UPDATE, as every writer takes them) serialise placements on PostgreSQL; SQLite's BEGIN
        IMMEDIATE already does."""
        refs = {it.spec.host for _, it in intents}
        if "" in refs:
            rows = session.execute(_PLACEMENT_HOSTS)
        else:
            rows = session.execute(_PINNED_HOSTS, {"refs": sorted(refs)})
        return {str(h.id): _Host(*h) for h in rows}

    # -- finishes ---------------------------------------------------------------------------------

    def _finish(
        self,
        session: Session,
        changes: _Changes,
        finishes: list[tuple[int, FinishCreate]],
        outcomes: list[CreateOutcome | ChitalError | None],
    ) -> None:
        rows: dict[str, sa.Row[Any]] = {}
        for chunk in _chunks(sorted({it.uid for _, it in finishes})):
            rows.update((r.uid, r) for r in session.execute(_FINISHED, {"uids": chunk}))
        updates: dict[str, dict[str, Any]] = {}
        known: dict[str, str] = {}  # host id -> address, as the callers know them
        for _, it in finishes:
            if it.host_id and it.host_address:
                known[it.host_id] = it.host_address
            row = rows.get(it.uid)
            if row is None or it.uid in updates:
                continue
            target = ContainerRecordState.CREATED if it.ok else ContainerRecordState.FAILED
            if row.state == ContainerRecordState.PENDING.value and lifecycle.check_container(
                row.name, ContainerRecordState.PENDING, target
            ):
                updates[it.uid] = {
                    "b_uid": it.uid,
                    "b_state": target.value,
                    "b_message": it.message,
                    "b_updated": it.now,
                    "b_revision": row.revision + 1,
                    "b_effective": list(it.effective_deny_syscalls if it.ok else row.effective_deny_syscalls),
                }
        if updates:
            session.execute(_FINISH, list(updates.values()))
        unknown = [r.host_id or "" for r in rows.values() if (r.host_id or "") not in known]
        addresses = {**known, **self._host_addresses(session, unknown)}
        # A container that was PENDING runs no process (Exec needs CREATED or RUNNING): only the
        # others are counted.
        running = self._running_counts(session, [uid for uid in rows if uid not in updates])
        records: dict[str, ContainerRecord] = {}
        for uid, r in rows.items():
            record = self._container_record(r, addresses.get(r.host_id or "", ""), running.get(uid, 0))
            update = updates.get(uid)
            if update is not None:
                record = replace(
                    record,
                    state=ContainerRecordState(update["b_state"]),
                    message=update["b_message"],
                    updated=update["b_updated"],
                    revision=update["b_revision"],
                    effective_deny_syscalls=tuple(update["b_effective"]),
                )
                self._event(session, changes, record, update["b_updated"])
            records[uid] = record
        for index, it in finishes:
            found = records.get(it.uid)
            outcomes[index] = found if found is not None else NotFound(f"container {it.uid!r} not found")
