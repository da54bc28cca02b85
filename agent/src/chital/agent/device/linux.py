"""``LinuxDevice``: the ``Device`` port over the real module (``/dev/chital``).

ioctls with ctypes buffers laid out by :mod:`chital.agent.device.abi`; events by ``read()`` of fixed-size
records, waited for with ``poll()``. errno becomes a ``chital.errdefs`` exception here and nowhere else
(mapping in :mod:`chital.agent.device.base`).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import select
import threading
import time
from collections.abc import Mapping

from chital.errdefs import ChitalError, FailedPrecondition, InvalidArgument, from_errno

from . import abi
from .base import (
    ContainerInfo,
    DeviceEvent,
    DeviceVersion,
    EventBatch,
    EventKind,
    KernelContainerSpec,
    KernelLimits,
)

__all__ = ["DEFAULT_PATH", "IncompatibleModule", "LinuxDevice", "errno_to_error"]

DEFAULT_PATH = "/dev/chital"


class IncompatibleModule(FailedPrecondition):
    """The loaded module speaks another ABI major version (or other struct sizes)."""


def errno_to_error(err: int, what: str) -> ChitalError:
    """The one errno -> errdefs translation of the agent (the table lives in ``chital.errdefs``)."""
    return from_errno(err, what)


def _policy(deny: frozenset[int], deny_raw_sockets: bool) -> abi.Policy:
    policy = abi.Policy(flags=abi.POLICY_DENY_RAW_SOCKETS if deny_raw_sockets else 0)
    for nr in deny:
        if not 0 <= nr < abi.NR_SYSCALLS:
            raise InvalidArgument(f"system call number {nr} outside 0..{abi.NR_SYSCALLS - 1}")
        policy.deny[nr // 64] |= 1 << (nr % 64)
    return policy


def _deny_set(policy: abi.Policy) -> frozenset[int]:
    return frozenset(
        word * 64 + bit
        for word in range(abi.POLICY_WORDS)
        for bit in range(64)
        if policy.deny[word] >> bit & 1
    )


def _cstr(buf: ctypes.Array[ctypes.c_uint8]) -> str:
    return bytes(buf).split(b"\0", 1)[0].decode(errors="replace")


def _u32(value: int, what: str) -> int:
    if not 0 <= value <= 0xFFFFFFFF:
        raise InvalidArgument(f"{what} {value} out of range")
    return value


class LinuxDevice:
    """The real module. Thread-safe: ioctls are atomic in the kernel; reads are serialised here."""

    def __init__(self, path: str = DEFAULT_PATH, *, check_version: bool = True) -> None:
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise errno_to_error(exc.errno or errno.EIO, f"open {path}") from exc
        self._path = path
        self._read_lock = threading.Lock()
        self._dropped_seen = 0
        if check_version:
            try:
                self._check_version()
            except BaseException:
                os.close(self._fd)
                raise

    def _ioctl(self, request: int, arg: ctypes.Structure, what: str) -> None:
        try:
            fcntl.ioctl(self._fd, request, arg, True)
        except OSError as exc:
            raise errno_to_error(exc.errno or errno.EIO, what) from exc

    def _raw_version(self) -> abi.Version:
        v = abi.Version()
        self._ioctl(abi.IOC_VERSION, v, "version")
        return v

    def _check_version(self) -> None:
        v = self._raw_version()
        if v.abi_major != abi.ABI_MAJOR or (
            v.sizeof_create,
            v.sizeof_info,
            v.sizeof_event,
            v.sizeof_stats_entry,
            v.nr_syscalls,
        ) != (
            ctypes.sizeof(abi.Create),
            ctypes.sizeof(abi.Info),
            ctypes.sizeof(abi.Event),
            ctypes.sizeof(abi.SyscallStat),
            abi.NR_SYSCALLS,
        ):
            raise IncompatibleModule(
                f"module ABI {v.abi_major}.{v.abi_minor}, agent speaks {abi.ABI_MAJOR}.{abi.ABI_MINOR}"
            )
        self._dropped_seen = v.events_dropped

    def version(self) -> DeviceVersion:
        v = self._raw_version()
        return DeviceVersion(
            abi_major=v.abi_major,
            abi_minor=v.abi_minor,
            module_version=_cstr(v.module_version),
            kernel_release=_cstr(v.kernel_release),
        )

    def events_dropped_total(self) -> int:
        """Events the module's queue dropped since it was loaded."""
        return int(self._raw_version().events_dropped)

    def create(self, spec: KernelContainerSpec) -> int:
        name = spec.name.encode()
        root = spec.root.encode()
        if not 0 < len(name) <= abi.NAME_MAX or b"\0" in name:
            raise InvalidArgument(f"container name must be 1..{abi.NAME_MAX} bytes")
        if not 0 < len(root) <= abi.ROOT_MAX or b"\0" in root:
            raise InvalidArgument(f"container root must be 1..{abi.ROOT_MAX} bytes")
        if spec.limits.max_members < 0:
            raise InvalidArgument("max_members must be >= 0")
        root_buf = ctypes.create_string_buffer(root, len(root))
        cr = abi.Create()
        ctypes.memmove(cr.name, name, len(name))
        cr.root_ptr = ctypes.addressof(root_buf)
        cr.root_len = len(root)
        cr.policy = _policy(spec.deny_syscalls, spec.deny_raw_sockets)
        cr.limits.max_members = _u32(spec.limits.max_members, "max_members")
        self._ioctl(abi.IOC_CREATE, cr, f"create {spec.name!r}")
        return int(cr.id)

    def destroy(self, container_id: int, *, kill_members: bool = False) -> None:
        d = abi.Destroy(id=_u32(container_id, "container id"), flags=abi.DESTROY_KILL if kill_members else 0)
        self._ioctl(abi.IOC_DESTROY, d, f"destroy {container_id}")

    def _proc(self, container_id: int, pid: int, flags: int) -> abi.Proc:
        if pid <= 0:
            raise InvalidArgument(f"pid {pid} must be positive")
        return abi.Proc(id=_u32(container_id, "container id"), pid=_u32(pid, "pid"), flags=flags)

    def add_proc(self, container_id: int, pid: int, *, descendants: bool = False) -> None:
        pr = self._proc(container_id, pid, abi.PROC_DESCENDANTS if descendants else 0)
        self._ioctl(abi.IOC_ADD_PROC, pr, f"add pid {pid} to {container_id}")

    def remove_proc(self, container_id: int, pid: int) -> None:
        pr = self._proc(container_id, pid, 0)
        self._ioctl(abi.IOC_REMOVE_PROC, pr, f"remove pid {pid} from {container_id}")

    def list(self) -> list[int]:
        capacity = 64
        while True:
            ids = (ctypes.c_uint32 * capacity)()
            lst = abi.List(ids_ptr=ctypes.addressof(ids), capacity=capacity)
            self._ioctl(abi.IOC_LIST, lst, "list")
            if lst.count <= capacity:
                return list(ids[: lst.count])
            capacity = lst.count + 16

    def info(self, container_id: int) -> ContainerInfo:
        members_cap = 64
        root = ctypes.create_string_buffer(abi.ROOT_MAX + 1)
        while True:
            members = (ctypes.c_uint32 * members_cap)()
            info = abi.Info(
                id=_u32(container_id, "container id"),
                root_ptr=ctypes.addressof(root),
                root_cap=len(root),
                members_ptr=ctypes.addressof(members),
                members_cap=members_cap,
            )
            self._ioctl(abi.IOC_INFO, info, f"info {container_id}")
            if info.member_count <= members_cap:
                break
            members_cap = info.member_count + 16
        return ContainerInfo(
            id=container_id,
            name=_cstr(info.name),
            root=root.value.decode(errors="replace"),
            members=tuple(sorted(members[: info.member_count])),
            syscalls_total=int(info.syscalls_total),
            denied_total=int(info.denied_total),
            deny_syscalls=_deny_set(info.policy),
            limits=KernelLimits(max_members=int(info.limits.max_members)),
            deny_raw_sockets=bool(info.policy.flags & abi.POLICY_DENY_RAW_SOCKETS),
        )

    def stats(self, container_id: int) -> Mapping[int, tuple[int, int]]:
        entries = (abi.SyscallStat * abi.NR_SYSCALLS)()
        st = abi.Stats(
            id=_u32(container_id, "container id"),
            stats_ptr=ctypes.addressof(entries),
            capacity=abi.NR_SYSCALLS,
        )
        self._ioctl(abi.IOC_STATS, st, f"stats {container_id}")
        return {
            nr: (int(e.calls), int(e.denied))
            for nr, e in enumerate(entries[: st.count])
            if e.calls or e.denied
        }

    def set_policy(
        self, container_id: int, deny_syscalls: frozenset[int], *, deny_raw_sockets: bool = False
    ) -> None:
        sp = abi.SetPolicy(
            id=_u32(container_id, "container id"), policy=_policy(deny_syscalls, deny_raw_sockets)
        )
        self._ioctl(abi.IOC_SET_POLICY, sp, f"set policy of {container_id}")

    def read_events(self, max_events: int = 256, timeout: float | None = 0.0) -> EventBatch:
        if max_events <= 0:
            raise InvalidArgument("max_events must be positive")
        size = ctypes.sizeof(abi.Event)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._read_lock:
            data = b""
            while True:
                try:
                    data = os.read(self._fd, size * max_events)
                    break
                except BlockingIOError:
                    pass
                except OSError as exc:
                    raise errno_to_error(exc.errno or errno.EIO, "read events") from exc
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                poller = select.poll()
                poller.register(self._fd, select.POLLIN)
                poller.poll(None if remaining is None else max(1, int(remaining * 1000)))
            events = []
            dropped_total = self._dropped_seen
            for off in range(0, len(data) - size + 1, size):
                raw = abi.Event.from_buffer_copy(data, off)
                dropped_total = max(dropped_total, int(raw.dropped))
                events.append(
                    DeviceEvent(
                        kind=EventKind(raw.kind),
                        container_id=int(raw.container_id),
                        seq=int(raw.seq),
                        pid=int(raw.pid),
                        ppid=int(raw.ppid),
                        status=int(raw.status),
                        syscall_nr=int(raw.syscall_nr) if raw.kind == abi.EVENT_DENIED else -1,
                        count=int(raw.count),
                    )
                )
            dropped = dropped_total - self._dropped_seen
            self._dropped_seen = dropped_total
        return EventBatch(events=events, dropped=dropped)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> LinuxDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
