"""Plain values returned by the SDK. Protobuf types never leave the client module."""

from __future__ import annotations

import datetime as _dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

_T = TypeVar("_T")


class ContainerState(enum.Enum):
    """Lifecycle state of a container. ``UNSPECIFIED`` stands for a value this SDK
    does not know (a newer server)."""

    UNSPECIFIED = "UNSPECIFIED"
    PENDING = "PENDING"
    CREATED = "CREATED"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"
    LOST = "LOST"
    DELETED = "DELETED"


class ProcessState(enum.Enum):
    """Lifecycle state of a process. ``UNSPECIFIED`` stands for a value this SDK does not know."""

    UNSPECIFIED = "UNSPECIFIED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    EXITED = "EXITED"
    LOST = "LOST"


class HostState(enum.Enum):
    """Health and administrative state of a host. ``UNSPECIFIED`` stands for an unknown value."""

    UNSPECIFIED = "UNSPECIFIED"
    READY = "READY"
    NOT_READY = "NOT_READY"
    LOST = "LOST"
    CORDONED = "CORDONED"
    DRAINING = "DRAINING"


class LogStream(enum.Enum):
    """The standard stream a chunk of process output was written to."""

    UNSPECIFIED = "UNSPECIFIED"
    STDOUT = "STDOUT"
    STDERR = "STDERR"


class EventType(enum.Enum):
    """Kind of a [`WatchEvent`][chital.client.WatchEvent]."""

    UNSPECIFIED = "UNSPECIFIED"
    CONTAINER_CHANGED = "CONTAINER_CHANGED"
    PROCESS_CHANGED = "PROCESS_CHANGED"


@dataclass(frozen=True)
class Limits:
    """Resource limits of a container. Zero means unlimited."""

    memory_max_bytes: int = 0
    """cgroup v2 ``memory.max`` in bytes."""
    pids_max: int = 0
    """cgroup v2 ``pids.max``."""
    cpu_max_millicores: int = 0
    """CPU quota in millicores (1000 = one core)."""


@dataclass(frozen=True)
class Sandbox:
    """How a container is isolated beyond its root and deny list. The default isolates most; each
    field relaxes it, and only an admin may set one (an operator's create is PermissionDenied)."""

    allow_syscalls: tuple[str, ...] = ()
    """System calls removed from the host's default deny list (for example ``"syslog"``)."""
    allow_raw_sockets: bool = False
    """Allow AF_PACKET and SOCK_RAW sockets (denied by default)."""
    capabilities: tuple[str, ...] = ()
    """Capabilities the processes keep (for example ``"CAP_NET_BIND_SERVICE"``); none by default."""
    host_network: bool = False
    """Share the host's network namespace: for trusted workloads only (members then reach every
    address the host reaches, agents included)."""


@dataclass(frozen=True)
class Container:
    """A sandbox on one host, as the controller recorded it."""

    uid: str
    name: str
    state: ContainerState
    labels: Mapping[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    root: str = ""
    deny_syscalls: tuple[str, ...] = ()
    host_id: str = ""
    host_address: str = ""
    message: str = ""
    create_time: _dt.datetime | None = None
    update_time: _dt.datetime | None = None
    running_processes: int = 0
    sandbox: Sandbox = field(default_factory=Sandbox)
    effective_deny_syscalls: tuple[str, ...] = ()
    """What the host's module denies: its default list, plus ``deny_syscalls``, minus the
    sandbox's ``allow_syscalls`` (empty until the container exists on its host)."""
    stop_deadline_time: _dt.datetime | None = None
    """While STOPPING: when what still runs is killed (SIGKILL) at the latest."""
    restart_policy: str = "never"
    """What happens when its host loses it: "never", "on-failure" (at most ``max_restarts``
    times; 0: no limit) or "always": created again, empty, on another ready host."""
    max_restarts: int = 0
    restart_count: int = 0
    """How many times its restart policy placed it again."""


@dataclass(frozen=True)
class Process:
    """A program started in a container."""

    uid: str
    container_uid: str
    argv: tuple[str, ...]
    state: ProcessState
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str = ""
    user_id: int = 0
    group_id: int = 0
    pid: int = 0
    exit_code: int = 0
    """Exit code when exited by ``exit()``; -1 when killed by a signal."""
    signal: int = 0
    """Signal number when killed by a signal, else 0."""
    oom_killed: bool = False
    start_time: _dt.datetime | None = None
    exit_time: _dt.datetime | None = None
    message: str = ""

    @property
    def exited(self) -> bool:
        """True once the process has exited (it will not change any more)."""
        return self.state is ProcessState.EXITED

    @property
    def shell_exit_status(self) -> int:
        """The status a shell would report: the exit code, or 128 + signal when killed."""
        if self.signal:
            return 128 + self.signal
        return self.exit_code


@dataclass(frozen=True)
class AgentInfo:
    """What a host's agent reported about itself."""

    agent_version: str = ""
    kernel_release: str = ""
    module_version: str = ""
    abi_version: str = ""
    sandboxed: bool = False
    device: str = ""
    """``"linux"`` (the kernel module) or ``"fake"`` (a hollow agent)."""


@dataclass(frozen=True)
class Host:
    """One machine running an agent."""

    id: str
    address: str
    state: HostState
    labels: Mapping[str, str] = field(default_factory=dict)
    max_containers: int = 0
    """Most containers placed on the host (0: unlimited)."""
    container_count: int = 0
    agent: AgentInfo | None = None
    last_seen_time: _dt.datetime | None = None
    create_time: _dt.datetime | None = None
    message: str = ""
    drain: Drain | None = None
    """The drain in progress, or the last one (None: never drained)."""


@dataclass(frozen=True)
class Drain:
    """The progress of a host's drain: every container is stopped by ``deadline_time``."""

    start_time: _dt.datetime | None
    deadline_time: _dt.datetime | None
    containers: int
    """Containers the drain set out to stop."""
    remaining: int
    """Containers on the host not stopped yet."""
    complete: bool


@dataclass(frozen=True)
class SyscallCount:
    """The kernel's counter of one system call in one container."""

    name: str
    number: int
    calls: int
    denied: int


@dataclass(frozen=True)
class ContainerStats:
    """A container's syscall counters (from the kernel module) and cgroup usage, read live.

    ``sandboxed`` is False on hosts without the module (hollow agents): nothing is counted there.
    ``syscalls`` come most called first.
    """

    container_uid: str
    syscalls: tuple[SyscallCount, ...]
    syscalls_total: int
    denied_total: int
    members: int
    memory_current_bytes: int
    oom_kills: int
    pids_current: int
    cpu_usage_usec: int
    sandboxed: bool


@dataclass(frozen=True)
class DrainResult:
    """The outcome of [`Client.drain_host`][chital.client.Client.drain_host]."""

    host: Host
    stopped_containers: int


@dataclass(frozen=True)
class LogChunk:
    """One chunk of a process's captured output."""

    stream: LogStream
    data: bytes


@dataclass(frozen=True)
class WatchEvent:
    """One change seen by [`Client.watch`][chital.client.Client.watch]; ``container`` or ``process``
    is set per ``type``."""

    revision: int
    type: EventType
    container: Container | None = None
    process: Process | None = None
    time: _dt.datetime | None = None


@dataclass(frozen=True)
class Token:
    """An API token as the controller describes it; its secret is never part of it."""

    id: str
    """12 hex digits; the token string is ``chital_<id>_<secret>``."""
    name: str
    role: str
    """``admin``, ``operator`` or ``viewer``."""
    create_time: _dt.datetime | None = None
    expire_time: _dt.datetime | None = None
    """None: the token does not expire."""
    revoke_time: _dt.datetime | None = None
    """None: not revoked."""
    created_by: str = ""
    """The principal that created it (``token:<name>/<id>`` or ``cert:<name>``)."""
    last_used_time: _dt.datetime | None = None
    """Approximate (updated at most once a minute); None: never used."""

    @property
    def revoked(self) -> bool:
        """True once the token has been revoked."""
        return self.revoke_time is not None

    def expired(self, now: _dt.datetime | None = None) -> bool:
        """True when the token has an expiry and it has passed (at ``now``, default: now)."""
        if self.expire_time is None:
            return False
        return self.expire_time <= (now or _dt.datetime.now(_dt.UTC))


@dataclass(frozen=True)
class NewToken:
    """What [`Client.create_token`][chital.client.Client.create_token] returns: the token string,
    shown only this once, and its description. The string is left out of ``repr()`` so that it does
    not end up in logs."""

    bearer_token: str = field(repr=False)
    token: Token


@dataclass(frozen=True)
class AuditEntry:
    """One audited call: who, what, when, and the outcome."""

    id: int
    time: _dt.datetime | None
    principal: str
    """``token:<name>/<id>`` or ``cert:<common name>``."""
    role: str
    method: str
    """The full gRPC method, e.g. ``/chital.api.container.v1.ContainerService/CreateContainer``."""
    request_id: str = ""
    target: str = ""
    """The container, process, host or token the call named, when it names one."""
    code: str = "OK"
    """The outcome's gRPC status code name (``OK``, ``PERMISSION_DENIED``, ...)."""
    detail: str = ""
    """The status message of a failed call."""


@dataclass(frozen=True)
class Identity:
    """The caller as the controller sees it ([`Client.whoami`][chital.client.Client.whoami])."""

    name: str
    """The token's name or the certificate's common name."""
    role: str
    auth_method: str
    """``token`` or ``certificate``."""
    principal: str = ""
    """The principal as the audit log records it."""
    token_id: str = ""
    """The token's id (empty for a certificate)."""


@dataclass(frozen=True)
class ServerInfo:
    """The controller that answered ([`Client.server_info`][chital.client.Client.server_info])."""

    version: str
    """The controller's chital version, for example ``0.1.0``."""
    api_versions: tuple[str, ...] = ()
    """The API packages it serves, sorted (``chital.api.admin.v1``, ``chital.api.container.v1``, ...)."""
    database: str = ""
    """The kind of database it keeps its state in: ``sqlite`` or ``postgresql``."""
    leader: bool = False
    """Whether it is the leader now (it runs the health monitor, reconcilers and rollouts); every
    controller serves the whole API. False from a follower, or a controller older than this field."""


@dataclass(frozen=True)
class Page(Generic[_T]):
    """One page of a list call. Pass ``next_page_token`` back to get the next; empty means last."""

    items: Sequence[_T]
    next_page_token: str = ""


@dataclass(frozen=True)
class RetryPolicy:
    """How a client retries calls that failed with a transient error.

    The client turns it into the ``retryPolicy`` of its channel's gRPC service config, one per class
    of RPC (see ``chital.client._retry``): gRPC makes at most ``max_attempts`` attempts (the first
    included; gRPC caps it at 5; 1 disables retries) within the call's deadline, sleeping a random
    time between 0 and ``min(max_backoff, initial_backoff * multiplier ** (n - 1))`` before retry
    ``n`` (backoffs under 10 ms count as 10 ms). gRPC draws its own jitter: ``jitter`` applies to
    the pauses of a watch that resumes after a broken stream
    ([`backoff`][chital.client.RetryPolicy.backoff]), which also gives up after ``max_attempts``
    failed attempts in a row.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    def backoff(self, retry: int, rand: float) -> float:
        """Seconds to sleep before retry number ``retry`` (1-based), given ``rand`` in [0, 1)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return base * (1 - self.jitter * rand)


NO_RETRY = RetryPolicy(max_attempts=1)
"""A policy that never retries."""
