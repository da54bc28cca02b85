"""Hosts: registration, health, cordon and drain, removal (a lost host loses its containers), and the
fleet-wide counts for metrics."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from chital.controller import lifecycle
from chital.controller.models import (
    ContainerRow,
    HostRow,
    ProcessRow,
)
from chital.controller.records import (
    AdminState,
    AgentInfoRecord,
    ContainerRecord,
    ContainerRecordState,
    HostHealth,
    HostRecord,
    HostRecordState,
)
from chital.controller.store._base import (
    _HOSTS,
    UNSTOPPED_STATES,
    StoreBase,
    _Changes,
    _locking,
    retry_conflicts,
)
from chital.controller.store.paging import Cursor
from chital.errdefs import (
    FailedPrecondition,
)

__all__ = ["HostStore"]


class HostStore(StoreBase):
    """The hosts aggregate of :class:`~chital.controller.store.Store`."""

    @retry_conflicts
    def register_host(
        self, host_id: str, address: str, labels: dict[str, str], max_containers: int, now: datetime
    ) -> tuple[HostRecord, bool]:
        """Add a host, or update the labels and capacity of the host with that address."""
        try:
            with self._write() as (session, _):
                row = session.scalars(_locking(sa.select(HostRow).where(HostRow.address == address))).first()
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

    def record_last_seen(self, seen: dict[str, datetime]) -> None:
        """The time of each host's last heartbeat, for many hosts in one transaction: the health
        monitor's periodic write of a healthy fleet. Rows are updated in id order (the hosts' lock
        order); a host removed meanwhile is skipped."""
        if not seen:
            return
        table = cast(sa.Table, HostRow.__table__)
        statement = (
            sa.update(table)
            .where(table.c.id == sa.bindparam("b_id"))
            .values(last_seen=sa.bindparam("b_seen"))
        )
        with self._write() as (session, _):
            session.execute(
                statement, [{"b_id": host_id, "b_seen": seen[host_id]} for host_id in sorted(seen)]
            )

    def hosts_for_health(self) -> list[HostRecord]:
        """Every host, without its container counts (zero): the health monitor reads the fleet
        every second, and counting placed containers would scan the containers table each time."""
        with self._read() as session:
            # Core rows, and a host's record made again only when its row changed: at 1,000 hosts,
            # loading ORM instances and making every record at each read held the GIL longest.
            hosts = _HOSTS.c
            rows = list(session.execute(sa.select(_HOSTS).order_by(hosts.created, hosts.id)))
        previous = self._health_records
        records: dict[str, tuple[tuple[Any, ...], HostRecord]] = {}
        for row in rows:
            values = tuple(row)
            known = previous.get(row.id)
            record = known[1] if known is not None and known[0] == values else self._host_record(row, 0)
            records[row.id] = (values, record)
        self._health_records = records
        return [record for _, record in records.values()]

    @retry_conflicts
    def set_admin_state(self, ref: str, admin_state: AdminState, now: datetime) -> HostRecord:
        """Cordon, uncordon or drain a host."""
        with self._write() as (session, _):
            row = self._host_row(session, ref, lock=True)
            if lifecycle.check_admin(row.address, AdminState(row.admin_state), admin_state):
                row.admin_state = admin_state.value
                row.updated = now
            return self._host(session, row)

    @retry_conflicts
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
            row = self._host_row(session, host_id, lock=True)
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
        """The host's placed containers become LOST, with their live processes. The caller holds
        the host's lock: no container joins or leaves it meanwhile."""
        rows = session.scalars(
            _locking(
                sa.select(ContainerRow)
                .where(
                    ContainerRow.host_id == host_id,
                    ContainerRow.state.in_([s.value for s in lifecycle.LOST_WITH_HOST]),
                )
                .order_by(ContainerRow.uid)
            )
        ).all()
        self._lock_live_processes(session, [r.uid for r in rows])
        for row in rows:
            self._finish_processes(session, changes, row.uid, message, now)
            self._set_state(session, changes, row, ContainerRecordState.LOST, message=message, now=now)

    @retry_conflicts
    def remove_host(self, ref: str, force: bool, now: datetime) -> None:
        """Forget a host; with live containers only with ``force`` (they become LOST)."""
        with self._write() as (session, changes):
            row = self._host_row(session, ref, delete=True)
            placed = self._count_placed(session, [row.id]).get(row.id, 0)
            if placed and not force:
                raise FailedPrecondition(
                    f"host {row.address} still has {placed} containers; drain it or use force"
                )
            self._lose_containers(session, changes, row.id, f"host {row.address} removed", now)
            # Every container that still names the host (stopped, deleted...), locked in order.
            session.scalars(
                _locking(
                    sa.select(ContainerRow).where(ContainerRow.host_id == row.id).order_by(ContainerRow.uid)
                )
            ).all()
            session.execute(
                sa.update(ContainerRow).where(ContainerRow.host_id == row.id).values(host_id=None)
            )
            session.delete(row)

    def host_event_cursor(self, host_id: str) -> tuple[str, int]:
        """The agent boot id and the last event sequence number applied from it."""
        with self._read() as session:
            row = self._host_row(session, host_id)
            return row.boot_id, row.event_seq

    @retry_conflicts
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
            locked = session.scalars(
                _locking(
                    sa.select(ContainerRow)
                    .where(ContainerRow.host_id == host.id, ContainerRow.state.in_(UNSTOPPED_STATES))
                    .order_by(ContainerRow.uid)
                )
            ).all()
            rows = sorted(locked, key=lambda r: (r.created, r.uid))  # oldest first, as listed
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
