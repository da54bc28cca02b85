"""Plain values the controller's core works on (never live ORM objects, never protobuf)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

__all__ = [
    "DEFAULT_GROUP_ID",
    "DEFAULT_USER_ID",
    "AdminState",
    "AgentEventRecord",
    "AgentInfoRecord",
    "Candidate",
    "ContainerRecord",
    "ContainerRecordState",
    "ContainerSpec",
    "DrainRecord",
    "EventRecord",
    "EventRecordType",
    "HostHealth",
    "HostRecord",
    "HostRecordState",
    "LimitsRecord",
    "ProcessRecord",
    "ProcessRecordState",
    "ProcessSpec",
    "SandboxRecord",
]


# A process started without a user or group runs as this unprivileged user and group (nobody,
# nogroup); agents apply the same default to calls that leave them unset.
DEFAULT_USER_ID = 65534
DEFAULT_GROUP_ID = 65534


class HostHealth(StrEnum):
    """What the controller's health checks found."""

    READY = "READY"
    NOT_READY = "NOT_READY"
    LOST = "LOST"


class AdminState(StrEnum):
    """What the operator asked for."""

    ACTIVE = "ACTIVE"
    CORDONED = "CORDONED"
    DRAINING = "DRAINING"


class HostRecordState(StrEnum):
    """The state shown to users: health first, then the administrative state."""

    READY = "READY"
    NOT_READY = "NOT_READY"
    LOST = "LOST"
    CORDONED = "CORDONED"
    DRAINING = "DRAINING"


class ContainerRecordState(StrEnum):
    """Lifecycle of a container."""

    PENDING = "PENDING"
    CREATED = "CREATED"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"
    LOST = "LOST"
    DELETED = "DELETED"


# Containers that occupy a place on their host (counted for placement and capacity).
PLACED_STATES = (
    ContainerRecordState.PENDING,
    ContainerRecordState.CREATED,
    ContainerRecordState.RUNNING,
    ContainerRecordState.STOPPING,
    ContainerRecordState.STOPPED,
)


class ProcessRecordState(StrEnum):
    """Lifecycle of a process."""

    STARTING = "STARTING"
    RUNNING = "RUNNING"
    EXITED = "EXITED"
    LOST = "LOST"


LIVE_PROCESS_STATES = (ProcessRecordState.STARTING, ProcessRecordState.RUNNING)


class EventRecordType(StrEnum):
    """What a Watch event is about."""

    CONTAINER = "CONTAINER"
    PROCESS = "PROCESS"


@dataclass(frozen=True)
class AgentInfoRecord:
    """What an agent reported about itself."""

    agent_version: str = ""
    kernel_release: str = ""
    module_version: str = ""
    abi_version: str = ""
    device: str = ""
    sandboxed: bool = False
    boot_id: str = ""
    last_event_seq: int = 0
    # Changes whenever the agent's containers or processes change (a reconciler syncs on change).
    state_hash: str = ""


@dataclass(frozen=True)
class DrainRecord:
    """A host's drain: started at ``started``, every container stopped by ``deadline`` (SIGKILL at
    the latest); ``containers`` is how many it set out to stop, ``remaining`` how many are not
    stopped yet (0: the drain is complete)."""

    started: datetime
    deadline: datetime
    containers: int
    remaining: int

    @property
    def complete(self) -> bool:
        """Every container of the host is stopped."""
        return self.remaining == 0


@dataclass(frozen=True)
class HostRecord:
    """A host as stored."""

    id: str
    address: str
    health: HostHealth
    admin_state: AdminState
    labels: dict[str, str]
    max_containers: int
    container_count: int
    agent: AgentInfoRecord
    message: str
    last_seen: datetime | None
    created: datetime
    event_seq: int = 0
    drain: DrainRecord | None = None

    @property
    def state(self) -> HostRecordState:
        """The state shown to users."""
        if self.health is not HostHealth.READY:
            return HostRecordState(self.health.value)
        if self.admin_state is not AdminState.ACTIVE:
            return HostRecordState(self.admin_state.value)
        return HostRecordState.READY

    @property
    def schedulable(self) -> bool:
        """Whether new containers may be placed here."""
        return self.health is HostHealth.READY and self.admin_state is AdminState.ACTIVE


@dataclass(frozen=True)
class LimitsRecord:
    """Resource limits; zero means unlimited."""

    memory_max_bytes: int = 0
    pids_max: int = 0
    cpu_max_millicores: int = 0


@dataclass(frozen=True)
class SandboxRecord:
    """How a container is isolated beyond its root and deny list; the zero value isolates most.

    ``allow_syscalls`` relaxes the host's default deny list, ``allow_raw_sockets`` allows AF_PACKET
    and SOCK_RAW sockets, ``capabilities`` are kept by the processes (none by default),
    ``host_network`` shares the host's network namespace (trusted workloads only), and
    ``allow_host_root`` lets the root be outside the allowed roots, "/" included. Each of them is a
    relaxation only an admin may ask for (validation.check_sandbox_role).
    """

    allow_syscalls: tuple[str, ...] = ()
    allow_raw_sockets: bool = False
    capabilities: tuple[str, ...] = ()
    host_network: bool = False
    allow_host_root: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "allow_syscalls": list(self.allow_syscalls),
            "allow_raw_sockets": self.allow_raw_sockets,
            "capabilities": list(self.capabilities),
            "host_network": self.host_network,
            "allow_host_root": self.allow_host_root,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> SandboxRecord:
        data = data or {}
        return cls(
            allow_syscalls=tuple(data.get("allow_syscalls", ())),
            allow_raw_sockets=bool(data.get("allow_raw_sockets", False)),
            capabilities=tuple(data.get("capabilities", ())),
            host_network=bool(data.get("host_network", False)),
            allow_host_root=bool(data.get("allow_host_root", False)),
        )


@dataclass(frozen=True)
class ContainerSpec:
    """What a client asked for when creating a container."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    limits: LimitsRecord = LimitsRecord()
    root: str = ""
    deny_syscalls: tuple[str, ...] = ()
    host: str = ""
    sandbox: SandboxRecord = SandboxRecord()
    # What happens when its host loses it (lifecycle.RestartPolicy): "never", "on-failure" (at
    # most max_restarts times; 0: no limit) or "always": placed again on a ready host.
    restart_policy: str = "never"
    max_restarts: int = 0


@dataclass(frozen=True)
class SyncedContainer:
    """What a host's sync compares of a container with the agent's view: where it is placed and
    its states (the rest of the record is never read there, and decoding it for every container
    of a host cost most of a sync)."""

    uid: str
    host_id: str
    host_address: str
    state: ContainerRecordState
    desired_state: str


@dataclass(frozen=True)
class ContainerRecord:
    """A container as stored."""

    uid: str
    name: str
    request_id: str
    state: ContainerRecordState
    labels: dict[str, str]
    limits: LimitsRecord
    root: str
    deny_syscalls: tuple[str, ...]
    requested_host: str
    host_id: str
    host_address: str
    message: str
    created: datetime
    updated: datetime
    revision: int
    running_processes: int = 0
    sandbox: SandboxRecord = SandboxRecord()
    # What the host's module enforces (its default list, plus deny_syscalls, minus the sandbox's
    # relaxations); empty until the container exists on its host.
    effective_deny_syscalls: tuple[str, ...] = ()
    # What the client asked for last: RUNNING, STOPPED or DELETED ("": implied by ``state``).
    desired_state: str = ""
    # A stop's deadline (SIGKILL at the latest then); None unless a stop was asked for.
    stop_deadline: datetime | None = None
    # Its restart policy (see ContainerSpec), how often it was placed again, and when the next
    # attempt is due (persisted: a restarted controller keeps the backoff); None: none due.
    restart_policy: str = "never"
    max_restarts: int = 0
    restart_count: int = 0
    restart_at: datetime | None = None

    def matches(self, spec: ContainerSpec) -> bool:
        """Whether a retried create asks for the same container."""
        return (
            self.name == spec.name
            and self.labels == spec.labels
            and self.limits == spec.limits
            and self.root == spec.root
            and self.deny_syscalls == tuple(spec.deny_syscalls)
            and self.requested_host == spec.host
            and self.sandbox == spec.sandbox
            and self.restart_policy == spec.restart_policy
            and self.max_restarts == spec.max_restarts
        )


@dataclass(frozen=True)
class ProcessSpec:
    """What a client asked for when starting a process."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    # None: the unprivileged default (DEFAULT_USER_ID / DEFAULT_GROUP_ID), resolved at exec.
    user_id: int | None = None
    group_id: int | None = None


@dataclass(frozen=True)
class ProcessRecord:
    """A process as stored."""

    uid: str
    container_uid: str
    request_id: str
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    user_id: int
    group_id: int
    state: ProcessRecordState
    pid: int
    exit_code: int
    signal: int
    oom_killed: bool
    message: str
    created: datetime
    start_time: datetime | None
    exit_time: datetime | None

    @property
    def finished(self) -> bool:
        """Whether the process will not change any more."""
        return self.state in (ProcessRecordState.EXITED, ProcessRecordState.LOST)


@dataclass(frozen=True)
class SyscallCountRecord:
    """The kernel's counter of one system call in one container."""

    name: str
    number: int
    calls: int
    denied: int


@dataclass(frozen=True)
class ContainerStatsRecord:
    """A container's counters, read live from its host (nothing of it is stored)."""

    container_uid: str
    syscalls: tuple[SyscallCountRecord, ...]
    syscalls_total: int
    denied_total: int
    members: int
    memory_current_bytes: int
    oom_kills: int
    pids_current: int
    cpu_usage_usec: int
    sandboxed: bool


@dataclass(frozen=True)
class EventRecord:
    """One Watch event."""

    revision: int
    type: EventRecordType
    time: datetime
    container: ContainerRecord | None = None
    process: ProcessRecord | None = None


@dataclass(frozen=True)
class Candidate:
    """A host as placement sees it."""

    host_id: str
    address: str
    schedulable: bool
    max_containers: int
    container_count: int
    created: datetime


@dataclass(frozen=True)
class AgentEventRecord:
    """An event from an agent's StreamEvents, as plain values."""

    seq: int
    kind: str  # PROCESS_STARTED | PROCESS_EXITED | CONTAINER_EMPTY | SYSCALL_DENIED | ...
    container_uid: str = ""
    process_uid: str = ""
    pid: int = 0
    exit_code: int = 0
    signal: int = 0
    oom_killed: bool = False
    time: datetime | None = None
    # SYSCALL_DENIED: denied calls; EVENTS_DROPPED: events the kernel's queue lost.
    count: int = 0


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple):
        return list(value)
    return value


def to_json(record: ContainerRecord | ProcessRecord) -> dict[str, Any]:
    """A JSON-able snapshot of a record (for the events table)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if isinstance(value, LimitsRecord):
            out[f.name] = dataclasses.asdict(value)
        elif isinstance(value, SandboxRecord):
            out[f.name] = value.to_json()
        else:
            out[f.name] = _encode(value)
    return out


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def container_from_json(data: dict[str, Any]) -> ContainerRecord:
    """The inverse of :func:`to_json` for containers."""
    return ContainerRecord(
        uid=data["uid"],
        name=data["name"],
        request_id=data["request_id"],
        state=ContainerRecordState(data["state"]),
        labels=dict(data["labels"]),
        limits=LimitsRecord(**data["limits"]),
        root=data["root"],
        deny_syscalls=tuple(data["deny_syscalls"]),
        requested_host=data["requested_host"],
        host_id=data["host_id"],
        host_address=data["host_address"],
        message=data["message"],
        created=datetime.fromisoformat(data["created"]),
        updated=datetime.fromisoformat(data["updated"]),
        revision=data["revision"],
        running_processes=data["running_processes"],
        sandbox=SandboxRecord.from_json(data.get("sandbox")),
        effective_deny_syscalls=tuple(data.get("effective_deny_syscalls", ())),
        desired_state=data.get("desired_state", ""),
        stop_deadline=_time(data.get("stop_deadline")),
        restart_policy=data.get("restart_policy", "never"),
        max_restarts=data.get("max_restarts", 0),
        restart_count=data.get("restart_count", 0),
        restart_at=_time(data.get("restart_at")),
    )


def process_from_json(data: dict[str, Any]) -> ProcessRecord:
    """The inverse of :func:`to_json` for processes."""
    return ProcessRecord(
        uid=data["uid"],
        container_uid=data["container_uid"],
        request_id=data["request_id"],
        argv=tuple(data["argv"]),
        env=dict(data["env"]),
        cwd=data["cwd"],
        user_id=data["user_id"],
        group_id=data["group_id"],
        state=ProcessRecordState(data["state"]),
        pid=data["pid"],
        exit_code=data["exit_code"],
        signal=data["signal"],
        oom_killed=data["oom_killed"],
        message=data["message"],
        created=datetime.fromisoformat(data["created"]),
        start_time=_time(data["start_time"]),
        exit_time=_time(data["exit_time"]),
    )
