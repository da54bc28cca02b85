"""``FakeDevice``: an in-memory model of the kernel module's contract (``kmod/include/uapi/linux/chital.h``).

Used by hollow agents, unit tests and the conformance suite. It sandboxes nothing: processes run on
the host. Its error semantics follow the module (errno -> errdefs as in :mod:`chital.agent.device.base`),
and where the module's behaviour is not known it is stricter, never more permissive:

- ``create``: name 1..63 bytes of ``[A-Za-z0-9_.-]`` else InvalidArgument; a duplicate name is
  AlreadyExists; root must be absolute, 1..4095 bytes, no NUL, else InvalidArgument; a missing root is
  NotFound (ENOENT), a root that is not a directory InvalidArgument (ENOTDIR); deny numbers outside
  0..511 and negative limits are InvalidArgument; past ``max_containers`` ResourceExhausted (ENOSPC).
- ``add_proc``: unknown container NotFound; pid <= 0 InvalidArgument; a pid that does not exist (or has
  exited) NotFound (ESRCH); already a member of the same container: success (idempotent, as the module);
  a member of another container: FailedPrecondition (EBUSY); over ``max_members`` ResourceExhausted.
- ``remove_proc``: unknown container, or pid not a member of it: NotFound.
- ``destroy``: unknown container NotFound; members left and no ``kill_members``: FailedPrecondition
  (EBUSY); with ``kill_members`` the members get SIGKILL and stop being members (no EXIT events for them,
  as the module detaches them first).
- ``info``/``stats``/``set_policy`` of an unknown container: NotFound.
- After ``close()`` every call is Unavailable (ENODEV).

Test hooks stand in for the kernel's tracepoints: :meth:`notify_fork`, :meth:`notify_exit`,
:meth:`record_syscall`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from chital.errdefs import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)

from .base import (
    NAME_MAX,
    NR_SYSCALLS,
    ROOT_MAX,
    ContainerInfo,
    ContainerLimits,
    ContainerSpec,
    DeviceEvent,
    DeviceVersion,
    EventBatch,
    EventKind,
)

__all__ = ["DEFAULT_QUEUE_LEN", "FakeDevice"]

#: Capacity of the event queue, in records (the module's queue is bounded too).
DEFAULT_QUEUE_LEN = 4096
_NAME_RE = re.compile(rb"[A-Za-z0-9_.-]+")
_U32_MAX = 0xFFFFFFFF


def _pid_exists(pid: int) -> bool:
    """True if ``pid`` names a live (or zombie, not yet reaped) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


@dataclass(slots=True)
class _Container:
    id: int
    name: str
    root: str
    deny: frozenset[int]
    limits: ContainerLimits
    members: list[int] = field(default_factory=list)  # in order of joining, like the module's list
    counters: dict[int, list[int]] = field(default_factory=dict)  # nr -> [calls, denied]
    syscalls_total: int = 0
    denied_total: int = 0


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
    ) -> None:
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
        self._dropped = 0  # since the previous read_events
        self._dropped_total = 0
        self._closed = False
        # An eventfd whose counter is non-zero exactly while there is something to read.
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
        want = bool(self._events) or self._dropped > 0
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
        self._seq += 1
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
            abi_major=1, abi_minor=0, module_version="fake", kernel_release=os.uname().release
        )

    def create(self, spec: ContainerSpec) -> int:
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
            self._containers[cid] = _Container(cid, spec.name, spec.root, deny, spec.limits)
            return cid

    def destroy(self, container_id: int, *, kill_members: bool = False) -> None:
        with self._lock:
            self._check_open()
            c = self._get(container_id)
            if c.members and not kill_members:
                raise FailedPrecondition(f"container {container_id} has {len(c.members)} members")
            victims = list(c.members)
            for pid in victims:
                self._leave(c, pid)
            del self._containers[container_id]
        for pid in victims:
            self._kill(pid, signal.SIGKILL)

    def add_proc(self, container_id: int, pid: int, *, descendants: bool = False) -> None:
        if not 0 < pid <= 0x7FFFFFFF:
            raise InvalidArgument(f"pid {pid} out of range")
        pids = [pid]
        if descendants:
            pids += _descendants(pid)
        with self._lock:
            self._check_open()
            c = self._get(container_id)
            if not self._pid_exists(pid):
                raise NotFound(f"process {pid} does not exist")
            for p in pids:
                owner = self._member_of.get(p)
                if owner == container_id:
                    continue
                if owner is not None:
                    if p == pid:
                        raise FailedPrecondition(f"process {p} is a member of container {owner}")
                    continue
                if c.limits.max_members and len(c.members) >= c.limits.max_members:
                    raise ResourceExhausted(f"container {container_id} has max_members members")
                self._join(c, p)

    def remove_proc(self, container_id: int, pid: int) -> None:
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
                members=tuple(c.members),
                syscalls_total=c.syscalls_total,
                denied_total=c.denied_total,
                deny_syscalls=c.deny,
                limits=c.limits,
            )

    def stats(self, container_id: int) -> Mapping[int, tuple[int, int]]:
        with self._lock:
            self._check_open()
            c = self._get(container_id)
            return {nr: (v[0], v[1]) for nr, v in sorted(c.counters.items()) if v[0] or v[1]}

    def set_policy(self, container_id: int, deny_syscalls: frozenset[int]) -> None:
        deny = _check_deny(deny_syscalls)
        with self._lock:
            self._check_open()
            self._get(container_id).deny = deny

    def read_events(self, max_events: int = 256, timeout: float | None = 0.0) -> EventBatch:
        if max_events < 1:
            raise InvalidArgument("max_events must be at least 1")
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        with self._cond:
            while not self._events and not self._dropped:
                self._check_open()
                if deadline is None:
                    self._cond.wait()
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return EventBatch(events=(), dropped=0)
                    self._cond.wait(left)
            self._check_open()
            n = min(max_events, len(self._events))
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
        """``parent_pid`` forked ``child_pid``: a member's child joins its container (FORK event).

        Returns False if the parent is not a member (nothing happens). Over ``max_members`` the module
        kills the child: the fake does the same.
        """
        with self._lock:
            cid = self._member_of.get(parent_pid)
            if cid is None or child_pid in self._member_of:
                return False
            c = self._containers[cid]
            if c.limits.max_members and len(c.members) >= c.limits.max_members:
                over = True
            else:
                over = False
                self._join(c, child_pid)
                self._queue(EventKind.FORK, cid, pid=child_pid, ppid=parent_pid)
        if over:
            self._kill(child_pid, signal.SIGKILL)
            return False
        return True

    def notify_exit(self, pid: int, wait_status: int) -> bool:
        """``pid`` exited with ``wait_status``: EXIT event, and EMPTY if it was the last member."""
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

    def record_syscall(self, pid: int, nr: int) -> bool:
        """Member ``pid`` makes system call ``nr``: counted; False (and a DENIED event) if denied."""
        with self._lock:
            cid = self._member_of.get(pid)
            if cid is None or not 0 <= nr < NR_SYSCALLS:
                return True
            c = self._containers[cid]
            counter = c.counters.setdefault(nr, [0, 0])
            counter[0] += 1
            c.syscalls_total += 1
            if nr not in c.deny:
                return True
            counter[1] += 1
            c.denied_total += 1
            self._queue(EventKind.DENIED, cid, pid=pid, syscall_nr=nr, count=1)
            return False


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
