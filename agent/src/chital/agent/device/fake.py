"""``FakeDevice``: an in-memory model of the kernel module's contract (``kmod/include/uapi/linux/chital.h``).

Used by hollow agents, unit tests and the conformance suite. It sandboxes nothing: processes run on
the host. Its error semantics follow the module (errno -> errdefs as in :mod:`chital.agent.device.base`),
and where the module's behaviour is not known it is stricter, never more permissive:

- ``create``: name 1..63 bytes of ``[A-Za-z0-9_.-]`` else InvalidArgument; a duplicate name is
  AlreadyExists; root must be absolute, 1..4095 bytes, no NUL, else InvalidArgument; a missing root is
  NotFound (ENOENT), a root that is not a directory InvalidArgument (ENOTDIR); deny numbers outside
  0..511 and negative limits are InvalidArgument; past ``max_containers`` ResourceExhausted (ENOSPC).
- ``add_proc`` (checked in the module's order): pid outside 1..4194304 (``PID_MAX_LIMIT``)
  InvalidArgument; a pid that is not a live process (no such pid, exiting or zombie, a kernel thread,
  or a thread that is not its group's leader; but see ``_pid_exists`` for the agent's own unreaped
  children) NotFound (ESRCH); pid 1 PermissionDenied (EPERM); unknown container NotFound (ENOENT); a
  container being destroyed with ``kill_members`` FailedPrecondition (EBUSY); already a member of the
  same container: success (idempotent); a member of another container FailedPrecondition (EBUSY);
  over ``max_members`` (member *processes*) ResourceExhausted (ENOSPC).
- ``remove_proc``: pid outside 1..4194304 InvalidArgument; unknown container, or pid not a member of
  it: NotFound.
- ``destroy``: unknown container NotFound; members left and no ``kill_members``, or a kill already
  running: FailedPrecondition (EBUSY). With ``kill_members`` every member gets SIGKILL and, as in the
  module, stays a member until it is gone: each member process that has not reported its own exit
  meanwhile is reported by an EXIT event with the SIGKILL wait status, then EMPTY. While the kill runs
  (between marking the container and queueing those events) ADD_PROC and DESTROY of it fail with EBUSY
  and a member's fork is killed.
- ``info``/``stats``/``set_policy`` of an unknown container: NotFound. ``info().members`` is sorted.
- ``read_events``: at most :data:`READ_BATCH` records per call; ``fileno()`` polls readable exactly
  while records are queued; drops are reported with the records that follow them.
- After ``close()`` every call is Unavailable (ENODEV).
- Opening: the module's device has one owner; a FakeDevice made with ``node=NAME`` stands for the
  device node NAME, and a second one on the same node while the first is open fails with
  FailedPrecondition (EBUSY), until the first is closed. Without ``node`` every FakeDevice is a
  device of its own (a host of its own, as for hollow agents).

Test hooks stand in for the kernel's tracepoints: :meth:`notify_fork`, :meth:`notify_exit`,
:meth:`record_syscall` / :meth:`syscall_errno` (the latter model the containment rules of the module's
``sys_enter`` probe and of its task hooks (``security_ptrace_*``, ``security_task_*``); the file and
path hooks are not modelled: the fake knows no paths).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from chital.agent.syscalls import NUMBERS
from chital.errdefs import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)

from .base import (
    NAME_MAX,
    NR_SYSCALLS,
    PID_MAX,
    READ_BATCH,
    ROOT_MAX,
    ContainerInfo,
    DeviceEvent,
    DeviceVersion,
    EventBatch,
    EventKind,
    KernelContainerSpec,
    KernelLimits,
)

__all__ = ["ALWAYS_DENIED", "COMPAT_SYSCALL", "DEFAULT_QUEUE_LEN", "READ_BATCH", "FakeDevice"]

#: Capacity of the event queue, in records (the module's CHITAL_EVENT_QUEUE_LEN).
DEFAULT_QUEUE_LEN = 4096
#: Bit set in a DENIED record's ``syscall_nr`` for a compat (``int $0x80``) system call.
COMPAT_SYSCALL = 0x80000000
_NAME_RE = re.compile(rb"[A-Za-z0-9_.-]+")
_U32_MAX = 0xFFFFFFFF
_PF_EXITING = 0x00000004
_PF_KTHREAD = 0x00200000

#: System calls no member may make, whatever its policy (-EPERM, counted as denied, DENIED event);
#: the list of ``chital_containment_verdict()`` in kmod/intercept.c and of the uapi header.
ALWAYS_DENIED = frozenset(
    NUMBERS[name]
    for name in (
        "chroot",
        "pivot_root",
        "mount",
        "umount2",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "open_tree",
        "move_mount",
        "mount_setattr",
        "setns",
        "init_module",
        "finit_module",
        "delete_module",
        "kexec_load",
        "kexec_file_load",
        "reboot",
        "io_uring_setup",
        "open_by_handle_at",
        "bpf",
        "perf_event_open",
    )
)
#: unshare(flags) and clone(flags, ...) with any of these flags are denied like ``ALWAYS_DENIED``.
CLONE_NS_FLAGS = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
    | 0x00000080  # CLONE_NEWTIME
)
_NR_CLONE = NUMBERS["clone"]
_NR_UNSHARE = NUMBERS["unshare"]
_NR_CLONE3 = NUMBERS["clone3"]
_NR_PTRACE = NUMBERS["ptrace"]
_PTRACE_TRACEME = 0
#: ptrace-like calls whose target process (argument index) must be in the caller's container: ESRCH
#: (checked at ``sys_enter``), PTRACE_TRACEME under an outside parent EPERM (the module's ptrace hooks);
#: counted as denied, DENIED event.
_PTRACE_TARGET_ARG = {
    NUMBERS["ptrace"]: 1,
    NUMBERS["process_vm_readv"]: 0,
    NUMBERS["process_vm_writev"]: 0,
}
#: Signals: the target (argument index) must be in the caller's container, else ESRCH, as if it did not
#: exist (the module checks the pid at ``sys_enter``). Group and broadcast kills (pid <= 0) are refused
#: with EPERM: stricter than the module, whose ``security_task_kill`` hook refuses each outside task of
#: the group (EPERM) and lets the call reach the members.
_KILL_TARGET_ARG = {
    NUMBERS["kill"]: 0,
    NUMBERS["tkill"]: 0,
    NUMBERS["tgkill"]: 0,
    NUMBERS["rt_sigqueueinfo"]: 0,
    NUMBERS["rt_tgsigqueueinfo"]: 0,
}
#: Calls on another task (argument index; 0 there means the caller itself) that the module confines to
#: the caller's container (at ``sys_enter``, backed by its ``security_task_*`` hooks): ESRCH, counted as
#: denied, DENIED event.
_TASK_TARGET_ARG = {
    NUMBERS["sched_setaffinity"]: 0,
    NUMBERS["sched_getaffinity"]: 0,
    NUMBERS["sched_setscheduler"]: 0,
    NUMBERS["sched_getscheduler"]: 0,
    NUMBERS["sched_setparam"]: 0,
    NUMBERS["sched_getparam"]: 0,
    NUMBERS["sched_setattr"]: 0,
    NUMBERS["sched_getattr"]: 0,
    NUMBERS["sched_rr_get_interval"]: 0,
    NUMBERS["getsid"]: 0,
    NUMBERS["getpgid"]: 0,
    NUMBERS["migrate_pages"]: 0,
    NUMBERS["move_pages"]: 0,
    NUMBERS["pidfd_open"]: 0,
}
#: (which, who) calls: with ``which`` PRIO_PROCESS (0) / IOPRIO_WHO_PROCESS (1), ``who`` is a process.
_NR_SETPRIORITY = NUMBERS["setpriority"]
_NR_GETPRIORITY = NUMBERS["getpriority"]
_NR_IOPRIO_SET = NUMBERS["ioprio_set"]
_NR_IOPRIO_GET = NUMBERS["ioprio_get"]
_PRIO_PROCESS = 0
_IOPRIO_WHO_PROCESS = 1
_NR_PRLIMIT64 = NUMBERS["prlimit64"]
_NR_FCNTL = NUMBERS["fcntl"]
_F_SETOWN = 8
_NR_SOCKET = NUMBERS["socket"]
_NR_SOCKETPAIR = NUMBERS["socketpair"]
_AF_PACKET = 17
_SOCK_TYPE_MASK = 0xF
_RAW_SOCK_TYPES = (3, 10)  # SOCK_RAW, SOCK_PACKET
#: Reaches another process through a pidfd the fake cannot resolve: refused (stricter than the module).
_NR_PIDFD_SEND_SIGNAL = NUMBERS["pidfd_send_signal"]
#: Device nodes held open by a FakeDevice (``node=``): the module's device has one owner.
_OPEN_NODES: set[str] = set()
_OPEN_NODES_LOCK = threading.Lock()


def _pid_exists(pid: int) -> bool:
    """True if ADD_PROC would find ``pid``: a live thread-group leader, neither exiting (zombies are)
    nor a kernel thread.

    One exception, for hollow agents: an exiting or unreaped child of *this* process counts as live.
    It stands for a process the agent spawned and that exited before the agent's late ADD_PROC; with
    the module, the launcher's child joins before exec and the module never sees such a process.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read()
        fields = stat.rsplit(b")", 1)[1].split()
        state, ppid, flags = fields[0], int(fields[1]), int(fields[6])
    except (OSError, IndexError, ValueError):
        return False
    if flags & _PF_KTHREAD:
        return False
    own_child = ppid == os.getpid()
    if (state in (b"Z", b"X", b"x") or flags & _PF_EXITING) and not own_child:
        return False
    for line in status.splitlines():
        if line.startswith(b"Tgid:"):
            return int(line.split()[1]) == pid
    return False


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _check_pid(pid: int) -> None:
    if not 0 < pid <= PID_MAX:
        raise InvalidArgument(f"pid {pid} outside 1..{PID_MAX}")


@dataclass(slots=True)
class _Container:
    id: int
    name: str
    root: str
    deny: frozenset[int]
    limits: KernelLimits
    deny_raw_sockets: bool
    members: list[int] = field(default_factory=list)  # member processes, in order of joining
    counters: dict[int, list[int]] = field(default_factory=dict)  # nr -> [calls, denied]
    syscalls_total: int = 0
    denied_total: int = 0
    killing: bool = False  # DESTROY with kill_members is running


def _check_deny(deny: Iterable[int]) -> frozenset[int]:
    out = frozenset(deny)
    for nr in out:
        if not 0 <= nr < NR_SYSCALLS:
            raise InvalidArgument(f"system call number {nr} outside 0..{NR_SYSCALLS - 1}")
    return out


class FakeDevice:
    """In-memory model of ``/dev/chital``. Thread-safe; ``fileno()`` polls readable with events queued."""

    def __init__(
        self,
        *,
        queue_len: int = DEFAULT_QUEUE_LEN,
        max_containers: int = 0,
        pid_exists: Callable[[int], bool] = _pid_exists,
        kill: Callable[[int, int], None] = _kill,
        node: str | None = None,
    ) -> None:
        if queue_len < 1:
            raise ValueError("queue_len must be at least 1")
        if node is not None:
            with _OPEN_NODES_LOCK:
                if node in _OPEN_NODES:
                    raise FailedPrecondition(f"fake device {node!r} is open already (EBUSY)")
                _OPEN_NODES.add(node)
        self._node = node
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue_len = queue_len
        self._max_containers = max_containers
        self._pid_exists = pid_exists
        self._kill = kill
        self._containers: dict[int, _Container] = {}
        self._member_of: dict[int, int] = {}  # pid -> container id
        self._next_id = 1
        self._seq = 0
        self._events: deque[DeviceEvent] = deque()
        self._dropped = 0  # since the previous read_events that returned records
        self._dropped_total = 0
        self._closed = False
        # An eventfd whose counter is non-zero exactly while records are queued (as the module polls).
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._signalled = False

    # -- internal helpers (lock held) ------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("fake device is closed")

    def _get(self, container_id: int) -> _Container:
        c = self._containers.get(container_id)
        if c is None:
            raise NotFound(f"container {container_id} does not exist")
        return c

    def _update_readable(self) -> None:
        if self._closed:
            return
        want = bool(self._events)
        if want and not self._signalled:
            os.eventfd_write(self._efd, 1)
            self._signalled = True
        elif not want and self._signalled:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._efd)
            self._signalled = False

    def _queue(self, kind: EventKind, container_id: int, **fields: int) -> None:
        if kind is EventKind.DENIED and self._events:
            last = self._events[-1]
            if (
                last.kind is EventKind.DENIED
                and last.container_id == container_id
                and last.pid == fields.get("pid")
                and last.syscall_nr == fields.get("syscall_nr")
            ):
                # The module coalesces consecutive identical denials into one record.
                self._events[-1] = dataclasses.replace(last, count=last.count + fields.get("count", 1))
                return
        self._seq += 1  # advances for dropped events too: readers see the gap
        if len(self._events) >= self._queue_len:
            self._dropped += 1
            self._dropped_total += 1
        else:
            self._events.append(DeviceEvent(kind=kind, container_id=container_id, seq=self._seq, **fields))
        self._update_readable()
        self._cond.notify_all()

    def _join(self, c: _Container, pid: int) -> None:
        c.members.append(pid)
        self._member_of[pid] = c.id

    def _leave(self, c: _Container, pid: int) -> None:
        c.members.remove(pid)
        del self._member_of[pid]

    # -- the Device port -------------------------------------------------------------------------

    def version(self) -> DeviceVersion:
        with self._lock:
            self._check_open()
        return DeviceVersion(
            abi_major=2, abi_minor=0, module_version="fake", kernel_release=os.uname().release
        )

    def create(self, spec: KernelContainerSpec) -> int:
        name_b = spec.name.encode("utf-8", "surrogateescape")
        if not 1 <= len(name_b) <= NAME_MAX or not _NAME_RE.fullmatch(name_b):
            raise InvalidArgument(f"container name must be 1..{NAME_MAX} bytes of [A-Za-z0-9_.-]")
        root_b = spec.root.encode("utf-8", "surrogateescape")
        if not 1 <= len(root_b) <= ROOT_MAX or b"\0" in root_b or not root_b.startswith(b"/"):
            raise InvalidArgument(f"container root must be an absolute path of 1..{ROOT_MAX} bytes")
        deny = _check_deny(spec.deny_syscalls)
        if not 0 <= spec.limits.max_members <= _U32_MAX:
            raise InvalidArgument("max_members out of range")
        # The module resolves the root once, at CREATE.
        if not os.path.exists(spec.root):
            raise NotFound(f"container root {spec.root!r} does not exist")
        if not os.path.isdir(spec.root):
            raise InvalidArgument(f"container root {spec.root!r} is not a directory")
        with self._lock:
            self._check_open()
            if any(c.name == spec.name for c in self._containers.values()):
                raise AlreadyExists(f"container name {spec.name!r} is taken")
            if self._max_containers and len(self._containers) >= self._max_containers:
                raise ResourceExhausted(f"at most {self._max_containers} containers")
            cid = self._next_id
            self._next_id += 1
            self._containers[cid] = _Container(
                cid, spec.name, spec.root, deny, spec.limits, bool(spec.deny_raw_sockets)
            )
            return cid

    def destroy(self, container_id: int, *, kill_members: bool = False) -> None:
        with self._lock:
            self._check_open()
            c = self._get(container_id)
            if c.killing:
                raise FailedPrecondition(f"container {container_id} is being destroyed")
            if c.members and not kill_members:
                raise FailedPrecondition(f"container {container_id} has {len(c.members)} members")
            if not c.members:
                del self._containers[container_id]
                return
            c.killing = True
            victims = list(c.members)
        # Outside the lock, as the module waits without chital_lock: members may exit (notify_exit)
        # or fork (the child is killed too) meanwhile, and ADD_PROC/DESTROY see EBUSY.
        for pid in victims:
            self._kill(pid, signal.SIGKILL)
        with self._lock:
            # SIGKILL cannot be caught: whoever has not reported its own exit dies of it.
            left = sorted(c.members)
            for pid in left:
                self._leave(c, pid)
                self._queue(EventKind.EXIT, container_id, pid=pid, status=int(signal.SIGKILL))
            if left:
                self._queue(EventKind.EMPTY, container_id)
            del self._containers[container_id]

    def add_proc(self, container_id: int, pid: int, *, descendants: bool = False) -> None:
        _check_pid(pid)
        pids = [pid]
        if descendants:
            pids += _descendants(pid)
        with self._lock:
            self._check_open()
            if not self._pid_exists(pid):
                raise NotFound(f"process {pid} does not exist")
            if pid == 1:
                raise PermissionDenied("init cannot be a member")
            c = self._get(container_id)
            if c.killing:
                raise FailedPrecondition(f"container {container_id} is being destroyed")
            for p in pids:
                owner = self._member_of.get(p)
                if owner == container_id:
                    continue
                if owner is not None:
                    if p == pid:
                        raise FailedPrecondition(f"process {p} is a member of container {owner}")
                    continue  # a descendant in another container stays there
                if p != pid and not self._pid_exists(p):
                    continue  # exited meanwhile
                if c.limits.max_members and len(c.members) >= c.limits.max_members:
                    raise ResourceExhausted(f"container {container_id} has max_members members")
                self._join(c, p)

    def remove_proc(self, container_id: int, pid: int) -> None:
        _check_pid(pid)
        with self._lock:
            self._check_open()
            c = self._get(container_id)
            if self._member_of.get(pid) != container_id:
                raise NotFound(f"process {pid} is not a member of container {container_id}")
            self._leave(c, pid)
            if not c.members:
                self._queue(EventKind.EMPTY, container_id)

    def list(self) -> list[int]:
        with self._lock:
            self._check_open()
            return sorted(self._containers)

    def info(self, container_id: int) -> ContainerInfo:
        with self._lock:
            self._check_open()
            c = self._get(container_id)
            return ContainerInfo(
                id=c.id,
                name=c.name,
                root=c.root,
                members=tuple(sorted(c.members)),
                syscalls_total=c.syscalls_total,
                denied_total=c.denied_total,
                deny_syscalls=c.deny,
                limits=c.limits,
                deny_raw_sockets=c.deny_raw_sockets,
            )

    def stats(self, container_id: int) -> Mapping[int, tuple[int, int]]:
        with self._lock:
            self._check_open()
            c = self._get(container_id)
            return {nr: (v[0], v[1]) for nr, v in sorted(c.counters.items()) if v[0] or v[1]}

    def set_policy(
        self, container_id: int, deny_syscalls: frozenset[int], *, deny_raw_sockets: bool = False
    ) -> None:
        deny = _check_deny(deny_syscalls)
        with self._lock:
            self._check_open()
            c = self._get(container_id)
            c.deny = deny
            c.deny_raw_sockets = bool(deny_raw_sockets)

    def read_events(self, max_events: int = 256, timeout: float | None = 0.0) -> EventBatch:
        if max_events < 1:
            raise InvalidArgument("max_events must be at least 1")
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        with self._cond:
            while not self._events:
                self._check_open()
                if deadline is None:
                    self._cond.wait()
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return EventBatch(events=(), dropped=0)
                    self._cond.wait(left)
            self._check_open()
            n = min(max_events, READ_BATCH, len(self._events))
            events = tuple(self._events.popleft() for _ in range(n))
            dropped, self._dropped = self._dropped, 0
            self._update_readable()
            return EventBatch(events=events, dropped=dropped)

    def fileno(self) -> int:
        return self._efd

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        os.close(self._efd)
        if self._node is not None:
            with _OPEN_NODES_LOCK:
                _OPEN_NODES.discard(self._node)

    # -- test hooks: what the kernel's tracepoints would report ----------------------------------

    @property
    def events_dropped_total(self) -> int:
        """Events dropped by the full queue since the device was made (VERSION's ``events_dropped``)."""
        with self._lock:
            return self._dropped_total

    def container_of(self, pid: int) -> int | None:
        """The container ``pid`` is a member of, or None."""
        with self._lock:
            return self._member_of.get(pid)

    def notify_fork(self, parent_pid: int, child_pid: int) -> bool:
        """Process ``parent_pid`` forked process ``child_pid``: a member's child joins its container.

        Returns True if the child joined and lives (a FORK event is queued). False if the parent is not
        a member (nothing happens), or if the module would kill the child: over ``max_members`` (it does
        not join), or while its container is being destroyed with ``kill_members`` (it joins, no FORK
        event, and its EXIT is reported). The fake sends that SIGKILL too.
        """
        with self._lock:
            cid = self._member_of.get(parent_pid)
            if cid is None or child_pid in self._member_of:
                return False
            c = self._containers[cid]
            killed = True
            if not (c.limits.max_members and len(c.members) >= c.limits.max_members):
                self._join(c, child_pid)
                if not c.killing:
                    killed = False
                    self._queue(EventKind.FORK, cid, pid=child_pid, ppid=parent_pid)
        if killed:
            self._kill(child_pid, signal.SIGKILL)
        return not killed

    def notify_exit(self, pid: int, wait_status: int) -> bool:
        """Process ``pid`` exited (its last thread): EXIT event, and EMPTY if it was the last member.

        One EXIT per process, as the module reports when the whole thread group is dead; a pid that is
        not a member (any more) reports nothing and returns False.
        """
        with self._lock:
            cid = self._member_of.get(pid)
            if cid is None:
                return False
            c = self._containers[cid]
            self._leave(c, pid)
            self._queue(EventKind.EXIT, cid, pid=pid, status=wait_status & _U32_MAX)
            if not c.members:
                self._queue(EventKind.EMPTY, cid)
            return True

    def record_syscall(self, pid: int, nr: int, *args: int, compat: bool = False) -> bool:
        """Member ``pid`` makes system call ``nr`` with ``args``: counted; True if the call would run.

        See :meth:`syscall_errno`; False for every errno it returns (also clone3's ENOSYS, which is
        counted as a call but not as a denial).
        """
        return self.syscall_errno(pid, nr, *args, compat=compat) == 0

    def syscall_errno(self, pid: int, nr: int, *args: int, compat: bool = False) -> int:
        """Member ``pid`` makes system call ``nr`` with ``args``; returns the errno it fails with, or 0.

        As the module's ``sys_enter`` probe: every call of a member counts in ``syscalls_total``.
        A compat call (``compat``, e.g. ``int $0x80``) and a number outside 0..511 fail with EPERM,
        count as denied in the totals only (no per-number counter) and queue DENIED with ``syscall_nr``
        as the module reports it (u32, compat ones ``| 0x80000000``). A number in range counts in its
        counter; :data:`ALWAYS_DENIED` (and unshare/clone with CLONE_NEW* flags in ``args[0]``) or a
        number in the policy fails with EPERM, counted as denied, DENIED queued; clone3 fails with
        ENOSYS, counted as a call only, no event. Then the checks of register arguments: prlimit64 and
        getpriority(PRIO_PROCESS) of a process outside the container ESRCH, fcntl F_SETOWN of one ESRCH
        (of any process group EPERM: stricter, the fake cannot tell who is in a group), socket/
        socketpair of AF_PACKET, SOCK_RAW or SOCK_PACKET with ``deny_raw_sockets`` EPERM. Then the hooks:
        PTRACE_TRACEME under a parent outside EPERM (group kills and pidfd_send_signal too);
        ptrace, process_vm_readv/writev, the kill family, setpriority,
        ioprio_set/get, the sched_* calls, getsid, getpgid, migrate_pages and move_pages ESRCH (as if
        it did not exist), except that a member's own exited, unreaped child (a zombie) counts as
        inside; pidfd_send_signal is refused (the fake cannot resolve a pidfd). Every one of these
        refusals is counted as denied and queues DENIED, like the policy's.
        Non-members are not counted and never denied (0).
        """
        with self._lock:
            cid = self._member_of.get(pid)
            if cid is None:
                return 0
            c = self._containers[cid]
            c.syscalls_total += 1
            if compat or not 0 <= nr < NR_SYSCALLS:
                reported = (nr & _U32_MAX) | COMPAT_SYSCALL if compat else nr & _U32_MAX
                c.denied_total += 1
                self._queue(EventKind.DENIED, cid, pid=pid, syscall_nr=reported, count=1)
                return errno.EPERM
            counter = c.counters.setdefault(nr, [0, 0])
            counter[0] += 1
            if nr == _NR_CLONE3:
                return errno.ENOSYS  # so that libc falls back to clone, whose flags can be checked
            flags = args[0] if args else 0
            if (
                nr in ALWAYS_DENIED
                or (nr in (_NR_CLONE, _NR_UNSHARE) and flags & CLONE_NS_FLAGS)
                or nr in c.deny
            ):
                err = errno.EPERM
            else:
                err = self._argument_errno(c, nr, args) or self._hook_errno(c, pid, nr, args)
            if err:
                counter[1] += 1
                c.denied_total += 1
                self._queue(EventKind.DENIED, cid, pid=pid, syscall_nr=nr, count=1)
            return err

    def _inside(self, c: _Container, target: int) -> bool:
        """A member of ``c``, or an exited, unreaped child of one (Linux lets a parent signal it)."""
        if self._member_of.get(target) == c.id:
            return True
        parent = _parent_of(target)
        return parent is not None and self._member_of.get(parent) == c.id and _is_zombie(target)

    def _argument_errno(self, c: _Container, nr: int, args: tuple[int, ...]) -> int:
        """The module's checks of register arguments at ``sys_enter``."""

        def arg(i: int) -> int:
            return args[i] if len(args) > i else 0

        if nr == _NR_PRLIMIT64 and arg(0) > 0 and not self._inside(c, arg(0)):
            return errno.ESRCH
        if nr == _NR_GETPRIORITY and arg(0) == _PRIO_PROCESS and arg(1) > 0 and not self._inside(c, arg(1)):
            return errno.ESRCH
        if nr == _NR_FCNTL and arg(1) == _F_SETOWN:
            if arg(2) > 0 and not self._inside(c, arg(2)):
                return errno.ESRCH
            if arg(2) < 0:
                return errno.EPERM
        raw = arg(0) == _AF_PACKET or arg(1) & _SOCK_TYPE_MASK in _RAW_SOCK_TYPES
        if nr in (_NR_SOCKET, _NR_SOCKETPAIR) and c.deny_raw_sockets and raw:
            return errno.EPERM
        return 0

    def _hook_errno(self, c: _Container, pid: int, nr: int, args: tuple[int, ...]) -> int:
        """The module's ptrace and task hooks: another process must be in the same container."""

        def arg(i: int) -> int | None:
            return args[i] if len(args) > i else None

        if nr == _NR_PIDFD_SEND_SIGNAL:
            return errno.EPERM
        if nr in _PTRACE_TARGET_ARG:
            return self._ptrace_errno(c, pid, nr, args)
        if nr in _KILL_TARGET_ARG:
            target = arg(_KILL_TARGET_ARG[nr]) or 0
            return 0 if target > 0 and self._inside(c, target) else errno.ESRCH if target > 0 else errno.EPERM
        if nr in (_NR_SETPRIORITY, _NR_IOPRIO_SET, _NR_IOPRIO_GET):
            process = _PRIO_PROCESS if nr == _NR_SETPRIORITY else _IOPRIO_WHO_PROCESS
            who = arg(1) or 0
            # Groups and users are refused: stricter than the module, which checks each task.
            inside = (arg(0) or 0) == process and (who == 0 or self._inside(c, who))
            return 0 if inside else errno.ESRCH
        if nr in _TASK_TARGET_ARG:
            target = arg(_TASK_TARGET_ARG[nr]) or 0
            return 0 if target == 0 or self._inside(c, target) else errno.ESRCH
        return 0

    def _ptrace_errno(self, c: _Container, pid: int, nr: int, args: tuple[int, ...]) -> int:
        if nr == _NR_PTRACE and (args[0] if args else 0) == _PTRACE_TRACEME:
            parent = _parent_of(pid)
            return 0 if parent is not None and self._member_of.get(parent) == c.id else errno.EPERM
        i = _PTRACE_TARGET_ARG[nr]
        target = args[i] if len(args) > i else 0
        return 0 if target > 0 and self._member_of.get(target) == c.id else errno.ESRCH


def _descendants(pid: int) -> list[int]:
    """Descendants of ``pid`` from /proc (best effort: processes may come and go meanwhile)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except (OSError, ValueError):
                continue
            for k in kids:
                if k not in out:
                    out.append(k)
                    todo.append(k)
    return out


def wait_readable(device: FakeDevice, timeout: float) -> bool:
    """Poll ``device.fileno()`` (a helper for tests of the pollable contract)."""
    r, _, _ = select.select([device.fileno()], [], [], timeout)
    return bool(r)
