"""The controller's tables (SQLAlchemy 2 typed declarative models).

Only :mod:`chital.controller.store` touches these classes; everything else works on the plain
dataclasses in :mod:`chital.controller.records`. The schema is portable to SQLite and PostgreSQL:
no dialect-specific SQL, times are naive UTC ``DateTime`` values, JSON columns use the generic type.

Uniqueness rules that the database enforces (so that concurrent controllers cannot break them):

- ``hosts.address`` is unique.
- ``containers.request_id`` is unique for ever (a retried create finds the first container, even
  after it was deleted); NULL for a create that came without one (not idempotent; NULLs never
  collide).
- ``containers.live_name`` holds the name while the container is not DELETED and NULL afterwards,
  so a name is unique among non-deleted containers (NULLs never collide, on both databases) and is
  free again after a delete.
- ``processes (container_uid, request_id)`` is unique (``request_id`` NULL: an exec without one).
- ``tokens.id`` (the public part of a token string) is the primary key.

Changes of these tables are Alembic migrations in :mod:`chital.controller.migrations` (``versions/``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AuditRow",
    "Base",
    "ContainerRow",
    "EventRow",
    "HostRow",
    "ProcessRow",
    "RetentionRow",
    "RolloutEventRow",
    "RolloutRow",
    "TokenRow",
]

# Explicit constraint names, so that migrations can name what they alter on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT identity on PostgreSQL; INTEGER PRIMARY KEY (the rowid) on SQLite, which only
# autoincrements that exact type.
BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base carrying the shared metadata (what Alembic compares against)."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: dict[Any, Any] = {
        dict[str, str]: sa.JSON,
        list[str]: sa.JSON,
        datetime: sa.DateTime(),
    }


class HostRow(Base):
    """A machine running an agent. ``state`` is health; ``admin_state`` is the operator's wish."""

    __tablename__ = "hosts"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    address: Mapped[str] = mapped_column(sa.String(255), unique=True)
    labels: Mapped[dict[str, str]]
    # READY | NOT_READY | LOST
    state: Mapped[str] = mapped_column(sa.String(16))
    # ACTIVE | CORDONED | DRAINING
    admin_state: Mapped[str] = mapped_column(sa.String(16))
    # The drain in progress or last done (NULL: never drained): when it started, its deadline (every
    # container of the host is stopped by then, SIGKILL at the latest) and how many it stops.
    drain_started: Mapped[datetime | None]
    drain_deadline: Mapped[datetime | None]
    drain_containers: Mapped[int] = mapped_column(sa.Integer, default=0)
    max_containers: Mapped[int] = mapped_column(sa.Integer)
    message: Mapped[str] = mapped_column(sa.Text)
    agent_version: Mapped[str] = mapped_column(sa.String(128))
    kernel_release: Mapped[str] = mapped_column(sa.String(128))
    module_version: Mapped[str] = mapped_column(sa.String(128))
    abi_version: Mapped[str] = mapped_column(sa.String(32))
    device: Mapped[str] = mapped_column(sa.String(32))
    sandboxed: Mapped[bool] = mapped_column(sa.Boolean)
    # The agent's boot id and the last event sequence number applied from it.
    boot_id: Mapped[str] = mapped_column(sa.String(128))
    event_seq: Mapped[int] = mapped_column(sa.BigInteger)
    last_seen: Mapped[datetime | None]
    created: Mapped[datetime]
    updated: Mapped[datetime]

    __table_args__ = (sa.Index(None, "created", "id"),)


class ContainerRow(Base):
    """A sandbox placed on one host."""

    __tablename__ = "containers"

    uid: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(63))
    live_name: Mapped[str | None] = mapped_column(sa.String(63), unique=True)
    request_id: Mapped[str | None] = mapped_column(sa.String(128), unique=True)
    labels: Mapped[dict[str, str]]
    memory_max_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    pids_max: Mapped[int] = mapped_column(sa.BigInteger)
    cpu_max_millicores: Mapped[int] = mapped_column(sa.BigInteger)
    root: Mapped[str] = mapped_column(sa.Text)
    deny_syscalls: Mapped[list[str]]
    # records.SandboxRecord as JSON: relaxations of the default policy, capabilities, host network.
    sandbox: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    # The deny list the host's module enforces, as the agent reported it at create.
    effective_deny_syscalls: Mapped[list[str]]
    # The host the client asked for (id or address, empty: placed by the controller).
    requested_host: Mapped[str] = mapped_column(sa.String(255))
    state: Mapped[str] = mapped_column(sa.String(16))
    # What the client asked for: RUNNING | STOPPED | DELETED (NULL: implied by ``state``, rows
    # written before intent was stored). The driver moves ``state`` towards it.
    desired_state: Mapped[str | None] = mapped_column(sa.String(16))
    # A stop's deadline: members got SIGTERM; SIGKILL (the agent's destroy) at this time at the
    # latest. Persisted, so a restarted controller keeps it.
    stop_deadline: Mapped[datetime | None]
    # never | on-failure | always (lifecycle.RestartPolicy), the most restarts on-failure allows
    # (0: no limit), how often it was placed again, and when the next attempt is due (NULL: none).
    restart_policy: Mapped[str] = mapped_column(sa.String(16), default="never")
    max_restarts: Mapped[int] = mapped_column(sa.Integer, default=0)
    restart_count: Mapped[int] = mapped_column(sa.Integer, default=0)
    restart_at: Mapped[datetime | None]
    host_id: Mapped[str | None] = mapped_column(sa.String(64), sa.ForeignKey("hosts.id"))
    message: Mapped[str] = mapped_column(sa.Text)
    created: Mapped[datetime]
    updated: Mapped[datetime]
    # Incremented on every change of the row.
    revision: Mapped[int] = mapped_column(sa.BigInteger)

    # A listing of containers walks one of the three (created, uid) indexes (see
    # store/containers.py); (host_id, state) counts a host's containers for placement.
    __table_args__ = (
        sa.Index(None, "created", "uid"),
        sa.Index(None, "host_id", "created", "uid"),
        sa.Index(None, "state", "created", "uid"),
        sa.Index(None, "host_id", "state"),
    )


class ProcessRow(Base):
    """A program started in a container."""

    __tablename__ = "processes"

    uid: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    container_uid: Mapped[str] = mapped_column(sa.String(64), sa.ForeignKey("containers.uid"))
    request_id: Mapped[str | None] = mapped_column(sa.String(128))
    argv: Mapped[list[str]]
    env: Mapped[dict[str, str]]
    cwd: Mapped[str] = mapped_column(sa.Text)
    user_id: Mapped[int] = mapped_column(sa.BigInteger)
    group_id: Mapped[int] = mapped_column(sa.BigInteger)
    # STARTING | RUNNING | EXITED | LOST
    state: Mapped[str] = mapped_column(sa.String(16))
    pid: Mapped[int] = mapped_column(sa.Integer)
    exit_code: Mapped[int] = mapped_column(sa.Integer)
    signal: Mapped[int] = mapped_column(sa.Integer)
    oom_killed: Mapped[bool] = mapped_column(sa.Boolean)
    message: Mapped[str] = mapped_column(sa.Text)
    created: Mapped[datetime]
    start_time: Mapped[datetime | None]
    exit_time: Mapped[datetime | None]
    updated: Mapped[datetime]

    __table_args__ = (
        sa.UniqueConstraint("container_uid", "request_id"),
        sa.Index(None, "container_uid", "state"),
        sa.Index(None, "created", "uid"),
    )


class EventRow(Base):
    """One change of a container or a process, in commit order, for Watch."""

    __tablename__ = "events"

    revision: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    # CONTAINER | PROCESS
    type: Mapped[str] = mapped_column(sa.String(16))
    container_uid: Mapped[str] = mapped_column(sa.String(64))
    process_uid: Mapped[str] = mapped_column(sa.String(64))
    # A snapshot of the changed record (see records.to_json).
    data: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    time: Mapped[datetime]

    __table_args__ = (sa.Index(None, "container_uid", "revision"),)


class RolloutRow(Base):
    """A run of a playbook over a fleet (see chital.controller.rollouts).

    ``hosts`` holds each inventory host's progress (a list of JSON objects, rewritten with every
    event); ``targets`` the machines it runs on (ansible_host, else the inventory name), which two
    PENDING/RUNNING rollouts may not share. The inventory text itself is not kept.
    """

    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(sa.String(128), unique=True)
    playbook: Mapped[str] = mapped_column(sa.String(255))
    # PENDING | RUNNING | SUCCEEDED | FAILED | CANCELLED | INTERRUPTED
    state: Mapped[str] = mapped_column(sa.String(16))
    batch_size: Mapped[int] = mapped_column(sa.Integer)
    extra_vars: Mapped[dict[str, str]]
    register_hosts: Mapped[bool] = mapped_column(sa.Boolean)
    hosts: Mapped[list[Any]] = mapped_column(sa.JSON)
    targets: Mapped[list[str]]
    message: Mapped[str] = mapped_column(sa.Text)
    return_code: Mapped[int] = mapped_column(sa.Integer)
    last_sequence: Mapped[int] = mapped_column(sa.BigInteger)
    dropped_events: Mapped[int] = mapped_column(sa.BigInteger)
    cancel_requested: Mapped[bool] = mapped_column(sa.Boolean)
    created_by: Mapped[str] = mapped_column(sa.String(255))
    created: Mapped[datetime]
    started: Mapped[datetime | None]
    ended: Mapped[datetime | None]
    updated: Mapped[datetime]

    __table_args__ = (sa.Index(None, "created", "id"), sa.Index(None, "state"))


class RolloutEventRow(Base):
    """One step of a rollout, for WatchRollout; at most a configured number per rollout."""

    __tablename__ = "rollout_events"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(sa.String(64), sa.ForeignKey("rollouts.id"))
    sequence: Mapped[int] = mapped_column(sa.BigInteger)
    # STATE | TASK_START | HOST_OK | HOST_FAILED | HOST_UNREACHABLE | HOST_SKIPPED | STATS | ...
    type: Mapped[str] = mapped_column(sa.String(32))
    host: Mapped[str] = mapped_column(sa.String(255))
    task: Mapped[str] = mapped_column(sa.Text)
    changed: Mapped[bool] = mapped_column(sa.Boolean)
    message: Mapped[str] = mapped_column(sa.Text)
    state: Mapped[str] = mapped_column(sa.String(16))
    # STATE and STATS events: the hosts' progress at that point.
    host_summary: Mapped[list[Any]] = mapped_column(sa.JSON)
    time: Mapped[datetime]

    __table_args__ = (sa.UniqueConstraint("rollout_id", "sequence"),)


class TokenRow(Base):
    """An API bearer token. Only the SHA-256 of its secret is stored (see chital.controller.tokens)."""

    __tablename__ = "tokens"

    # 12 hex digits: the public part of "chital_<id>_<secret>".
    id: Mapped[str] = mapped_column(sa.String(12), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(63))
    # admin | operator | viewer
    role: Mapped[str] = mapped_column(sa.String(16))
    # Hex SHA-256 of the secret part.
    secret_sha256: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # The principal that created it ("token:...", "cert:...", or "local:<user>" for the CLI).
    created_by: Mapped[str] = mapped_column(sa.String(255))
    # Updated at most once a minute per controller.
    last_used_at: Mapped[datetime | None]

    __table_args__ = (sa.Index(None, "created_at", "id"),)


class AuditRow(Base):
    """One audited call (every mutating RPC, allowed or denied), newest last."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    # "token:<name>/<id>" or "cert:<common name>".
    principal: Mapped[str] = mapped_column(sa.String(255))
    role: Mapped[str] = mapped_column(sa.String(16))
    # The full gRPC method name.
    method: Mapped[str] = mapped_column(sa.String(255))
    request_id: Mapped[str] = mapped_column(sa.String(128))
    target: Mapped[str] = mapped_column(sa.String(255))
    # gRPC status code name of the outcome.
    code: Mapped[str] = mapped_column(sa.String(32))
    detail: Mapped[str] = mapped_column(sa.Text)

    __table_args__ = (sa.Index(None, "principal", "id"), sa.Index(None, "at"))


class RetentionRow(Base):
    """What the retention janitor did last, one row per task (see chital.controller.retention).

    ``events``: ``revision`` is the compacted revision (every event at or below it is gone, so a
    Watch from below it is OUT_OF_RANGE). ``deleted``: pruning of DELETED containers (``revision``
    unused, 0). ``last_run`` schedules the next pass across restarts.
    """

    __tablename__ = "retention"

    task: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    revision: Mapped[int] = mapped_column(sa.BigInteger)
    # Rows removed by this task since the database was made.
    removed: Mapped[int] = mapped_column(sa.BigInteger)
    last_run: Mapped[datetime | None]
