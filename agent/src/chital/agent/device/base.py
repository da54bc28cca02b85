"""The ``Device`` port: what the agent needs from ``/dev/chital``.

Two adapters implement it: ``LinuxDevice`` (ioctls on the real module) and ``FakeDevice`` (an
in-memory model of the module's contract, used by hollow agents and unit tests). The conformance
suite in ``tests/conformance`` runs the same cases against both; where they differ, the fake is
fixed to match the module. The fake may never be more permissive than the module.

Errors cross this port as ``chital.errdefs`` exceptions only: the real adapter maps errno to
errdefs at this one seam, with ``chital.errdefs.from_errno`` (``EINVAL``/``EFAULT``/``ENOTDIR``/
``ENAMETOOLONG`` -> InvalidArgument, ``ENOENT``/``ESRCH`` -> NotFound, ``EEXIST`` -> AlreadyExists,
``EBUSY`` -> FailedPrecondition, ``EPERM``/``EACCES`` -> PermissionDenied,
``ENOSPC``/``ENOMEM``/``EMFILE`` -> ResourceExhausted, ``ENODEV``/``ENXIO``/``EAGAIN`` ->
Unavailable, ``ENOTTY``/``EOPNOTSUPP`` -> Unimplemented, anything else -> Internal).

Opening: the device has one owner. Only a CAP_SYS_ADMIN process (initial user namespace) may open
it, a member never (both EPERM -> PermissionDenied), and while it is open every other open fails
with EBUSY (FailedPrecondition) until the owner closes it.

What the module answers: an unknown container id is ENOENT; a pid that does not exist (or is not a
member, for REMOVE_PROC) ESRCH; a missing root ENOENT, a root that is not a directory ENOTDIR; a
process that is a member of another container EBUSY; over ``max_members`` ENOSPC; a member using
the device EPERM; non-zero reserved fields or unknown flags (policy flags included) EINVAL; an
unknown command ENOTTY.
ADD_PROC checks, in this order: pid 0 or above ``PID_MAX`` EINVAL; no such process, one that is
exiting, a kernel thread or a thread id that is not a thread-group leader ESRCH; pid 1 (init) EPERM;
unknown container ENOENT; a container whose DESTROY with ``kill_members`` is running EBUSY (so is a
second DESTROY of it). ``max_members`` counts member processes, not threads.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

#: Maximum length of a container name in bytes (excluding the terminating NUL), as in the uapi header.
NAME_MAX = 63
#: Maximum length of a container root path in bytes (excluding the terminating NUL).
ROOT_MAX = 4095
#: Number of system call numbers the deny bitmap and the counters cover (x86_64 numbers).
NR_SYSCALLS = 512
#: Largest pid ADD_PROC and REMOVE_PROC accept (the kernel's PID_MAX_LIMIT on 64-bit); above: EINVAL.
PID_MAX = 4194304
#: Most event records one ``read()`` of the device returns (the module's CHITAL_READ_BATCH).
READ_BATCH = 64


@dataclass(frozen=True, slots=True)
class DeviceVersion:
    """Answer of the VERSION ioctl."""

    abi_major: int
    abi_minor: int
    module_version: str
    kernel_release: str


@dataclass(frozen=True, slots=True)
class KernelLimits:
    """Limits the module itself enforces (cgroup limits are the agent's business). 0 = unlimited."""

    max_members: int = 0


@dataclass(frozen=True, slots=True)
class KernelContainerSpec:
    """What CREATE takes. ``deny_raw_sockets``: socket()/socketpair() of AF_PACKET, or of type
    SOCK_RAW (or the obsolete SOCK_PACKET) in any family, fail with EPERM for members."""

    name: str
    root: str
    deny_syscalls: frozenset[int] = frozenset()
    limits: KernelLimits = field(default_factory=KernelLimits)
    deny_raw_sockets: bool = False


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """Answer of the INFO ioctl for one container.

    ``members``: the member processes (thread-group ids, never other thread ids), sorted ascending
    by both adapters (the module lists them in no useful order), so callers may rely on the order.
    """

    id: int
    name: str
    root: str
    members: tuple[int, ...]
    syscalls_total: int
    denied_total: int
    deny_syscalls: frozenset[int]
    limits: KernelLimits
    deny_raw_sockets: bool = False


class EventKind(enum.IntEnum):
    EXIT = 1  # a member process exited (once, when its last thread did); ``status`` is the wait status
    FORK = 2  # a member forked; ``pid`` is the child, ``ppid`` the parent
    DENIED = 3  # a member made a denied system call; ``syscall_nr`` and ``count`` (coalesced)
    EMPTY = 4  # the container has no members left


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    kind: EventKind
    container_id: int
    seq: int
    pid: int = 0
    ppid: int = 0
    status: int = 0
    syscall_nr: int = -1  # DENIED: as the module reports it, u32; compat calls carry | 0x80000000
    count: int = 0


@dataclass(frozen=True, slots=True)
class EventBatch:
    events: Sequence[DeviceEvent]
    dropped: int  # events dropped by the bounded queue since the previous read that returned records


@runtime_checkable
class Device(Protocol):
    """Port over the kernel module. All methods are thread-safe."""

    def version(self) -> DeviceVersion: ...

    def create(self, spec: KernelContainerSpec) -> int:
        """Create a container; returns its id (never reused while the module is loaded)."""
        ...

    def destroy(self, container_id: int, *, kill_members: bool = False) -> None:
        """Destroy a container. Without ``kill_members`` it must be empty (FailedPrecondition).

        With ``kill_members`` every member gets SIGKILL and the call returns once they are gone; they
        stay members until then, so an EXIT per member process (status: SIGKILL, unless it exited
        by itself first) and then EMPTY are queued. Meanwhile ADD_PROC and DESTROY of the container
        fail with FailedPrecondition (EBUSY).
        """
        ...

    def add_proc(self, container_id: int, pid: int, *, descendants: bool = False) -> None: ...

    def remove_proc(self, container_id: int, pid: int) -> None: ...

    def list(self) -> list[int]: ...

    def info(self, container_id: int) -> ContainerInfo: ...

    def stats(self, container_id: int) -> Mapping[int, tuple[int, int]]:
        """Per-syscall counters: ``{nr: (calls, denied)}`` for every nr with a non-zero count."""
        ...

    def set_policy(
        self, container_id: int, deny_syscalls: frozenset[int], *, deny_raw_sockets: bool = False
    ) -> None:
        """Replace the container's whole policy (the deny list and the flags)."""
        ...

    def read_events(self, max_events: int = 256, timeout: float | None = 0.0) -> EventBatch:
        """Read queued events; waits up to ``timeout`` seconds (None: forever) for the first one.

        Returns at most ``min(max_events, READ_BATCH)`` records (one ``read()`` of the module).
        Events the full queue dropped are counted in ``dropped`` of the next batch that has records.
        """
        ...

    def fileno(self) -> int:
        """A file descriptor that polls readable exactly while event records are queued."""
        ...

    def close(self) -> None: ...
