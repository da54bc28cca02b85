"""The agent's use cases, on plain dataclasses (no protobuf here).

:class:`AgentRuntime` owns the containers and processes this agent knows, the event log, and two
threads: the device event pump (EXIT/FORK/DENIED/EMPTY records -> agent events) and, through
:class:`~chital.agent.process.ProcessRunner`, the reaper. The kernel is the source of truth: at start
the runtime rebuilds its containers from ``device.list()``/``info()`` plus the small metadata files it
keeps under the state directory, drains the kernel's event queue (exits that happened while no agent
ran) and follows the members that still run (see :meth:`AgentRuntime._recover`).

Resource limits live in one cgroup v2 group per container (:mod:`chital.agent.cgroup`), joined by the
launcher before the program runs.

With the real module each container has a **namespace holder** (see :mod:`chital.agent.process`): pid 1
of the container's pid namespace, holding its mount, UTS, IPC and network namespaces and its pivoted
root. The kernel container is created with the root ``/proc/<holder>/root``: the module resolves that
path once, at CREATE, to the holder's root mount, which is the root every member sees (members enter
it through the holder; they can neither chroot, nor mount, nor setns), so the module's path checks
and the mount namespace agree on one root. The holder's pid and start time are kept in
``container.json``: a restarted agent finds it again, and a reused pid is never mistaken for it.

An exit by SIGKILL while the container's ``memory.events`` ``oom_kill`` count is above its value at
the process's start is reported as ``oom_killed`` (the kernel raises that count before it sends the
SIGKILL, so reading it when the exit is seen suffices; as with containerd's OOMKilled, a SIGKILL from
elsewhere after another member's OOM kill in the same container is reported as an OOM kill too).
"""

from __future__ import annotations

import collections
import contextlib
import enum
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import signal as _signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from chital.daemon.roots import DEFAULT_ALLOWED_ROOT
from chital.errdefs import (
    AlreadyExists,
    ChitalError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)

from . import __version__, dirs, logfiles, policy, syscalls
from .cgroup import CgroupManager
from .device.base import ROOT_MAX, Device, DeviceEvent, EventKind, KernelContainerSpec, KernelLimits
from .device.fake import FakeDevice
from .dirs import DirReaper
from .logwatch import LogWatch
from .metrics import AgentMetrics
from .policy import SandboxView
from .process import ExitStatus, HolderSpec, LaunchSpec, ProcessRunner, decode_wait_status
from .roots import RootPolicy

_UNKNOWN_EXIT = ExitStatus(exit_code=-1, signal=0, wait_status=None)

__all__ = [
    "AgentEvent",
    "AgentEventKind",
    "AgentInfoView",
    "AgentRuntime",
    "ContainerStatsView",
    "ContainerView",
    "LimitsView",
    "LogChunkView",
    "ProcessStatus",
    "ProcessView",
    "RuntimeConfig",
    "SandboxView",
    "SyncState",
    "SyscallCountView",
]

log = logging.getLogger("chital.agent.runtime")

# Container and process uids become kernel names and file names: keep them to the module's charset.
_UID_RE = re.compile(r"[A-Za-z0-9_.-]{1,63}")
_MAX_ARGV_BYTES = 256 * 1024
_MAX_ENV_BYTES = 256 * 1024
_MAX_GRACE_S = 3600.0
_POLL_S = 0.05
#: The user and group of processes that do not name one (proto: unset user_id/group_id).
DEFAULT_USER_ID = 65534
DEFAULT_GROUP_ID = 65534
_U32 = 0xFFFFFFFF
_I32_MAX = 0x7FFFFFFF
_COMPAT_BIT = 0x80000000


class ProcessStatus(enum.Enum):
    """A process as the agent sees it; the value is what process records store."""

    RUNNING = "RUNNING"
    EXITED = "EXITED"

    @classmethod
    def from_record(cls, raw: object) -> ProcessStatus | None:
        """The status a process record stores, or None if it stores none that is known. Agents
        before the names were unified wrote lowercase values ("running", "exited"); a restarted
        agent still reads the records they left."""
        if not isinstance(raw, str):
            return None
        try:
            return cls(raw.upper())
        except ValueError:
            return None


class AgentEventKind(enum.IntEnum):
    PROCESS_STARTED = 1
    PROCESS_EXITED = 2
    SYSCALL_DENIED = 3
    CONTAINER_EMPTY = 4
    EVENTS_DROPPED = 5


@dataclass(frozen=True, slots=True)
class LimitsView:
    memory_max_bytes: int = 0
    pids_max: int = 0
    cpu_max_millicores: int = 0


@dataclass(frozen=True, slots=True)
class ContainerView:
    uid: str
    name: str
    root: str
    limits: LimitsView
    deny_syscalls: tuple[str, ...]
    kernel_id: int
    member_pids: tuple[int, ...]
    sandbox: SandboxView = field(default_factory=SandboxView)
    effective_deny_syscalls: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProcessView:
    uid: str
    container_uid: str
    pid: int
    state: ProcessStatus
    exit_code: int
    signal: int
    oom_killed: bool
    start_time: float
    exit_time: float | None
    argv: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AgentEvent:
    seq: int
    kind: AgentEventKind
    time: float
    container_uid: str = ""
    process_uid: str = ""
    pid: int = 0
    exit_code: int = 0
    signal: int = 0
    oom_killed: bool = False
    syscall_number: int = 0
    count: int = 0
    compat_syscall: bool = False  # SYSCALL_DENIED: a 32-bit call (int $0x80); the number is i386's


@dataclass(frozen=True, slots=True)
class SyscallCountView:
    name: str
    number: int
    calls: int
    denied: int


@dataclass(frozen=True, slots=True)
class ContainerStatsView:
    syscalls: tuple[SyscallCountView, ...]
    syscalls_total: int
    denied_total: int
    members: int
    # From the container's cgroup (0 without cgroups).
    memory_current_bytes: int = 0
    oom_kills: int = 0
    pids_current: int = 0
    cpu_usage_usec: int = 0


@dataclass(frozen=True, slots=True)
class AgentInfoView:
    agent_version: str
    kernel_release: str
    module_version: str
    abi_major: int
    abi_minor: int
    device: str
    sandboxed: bool
    max_containers: int
    container_count: int
    state_hash: str
    boot_id: str
    last_event_seq: int
    limits_enforced: bool = False  # cgroup v2 limits are applied (False: limits are recorded only)


@dataclass(frozen=True, slots=True)
class SyncState:
    containers: tuple[ContainerView, ...]
    processes: tuple[ProcessView, ...]
    last_event_seq: int


@dataclass(frozen=True, slots=True)
class LogChunkView:
    stream: str  # "stdout" or "stderr"
    data: bytes


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    state_dir: Path
    device_kind: str = "fake"  # "fake" or "linux"
    device_path: str | None = None  # /dev/chital for the real device
    max_containers: int = 0  # 0: unlimited
    event_log_capacity: int = 100_000
    exited_process_limit: int = 10_000
    #: Size cap and rotation of each process's stdout and stderr files (see logfiles.py).
    log_limits: logfiles.LogLimits = field(default_factory=logfiles.LogLimits)
    launcher: str | None = None  # chital-launch; None: found as chital.agent.process.find_launcher does
    #: --allowed-root prefixes for client-chosen roots (empty: none is accepted; see roots.py)
    allowed_roots: tuple[str, ...] = (DEFAULT_ALLOWED_ROOT,)


# -- the event log -------------------------------------------------------------------------------


class EventLog:
    """Agent events with a monotonic sequence number; the last ``capacity`` are kept in memory."""

    def __init__(self, capacity: int) -> None:
        self._cond = threading.Condition()
        self._events: collections.deque[AgentEvent] = collections.deque(maxlen=capacity)
        self._seq = 0
        self._closed = False

    @property
    def last_seq(self) -> int:
        with self._cond:
            return self._seq

    def append(self, kind: AgentEventKind, **fields: object) -> AgentEvent:
        with self._cond:
            self._seq += 1
            event = AgentEvent(seq=self._seq, kind=kind, time=time.time(), **fields)  # type: ignore[arg-type]
            self._events.append(event)
            self._cond.notify_all()
            return event

    def _after(self, seq: int, limit: int) -> list[AgentEvent]:
        if not self._events or seq >= self._seq:
            return []
        first = self._events[0].seq
        start = max(0, seq - first + 1)
        return list(itertools.islice(self._events, start, start + limit))

    def wait_after(self, seq: int, timeout: float, limit: int = 1024) -> list[AgentEvent]:
        """Events with a sequence number above ``seq``; waits up to ``timeout`` s for the first one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                events = self._after(seq, limit)
                if events or self._closed:
                    return events
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._cond.wait(left)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


# -- records (internal, mutable, guarded by AgentRuntime._lock) ---------------------------------


@dataclass(slots=True)
class _Container:
    uid: str
    name: str
    root: str
    owns_root: bool
    limits: LimitsView
    deny_syscalls: tuple[str, ...]
    kernel_id: int
    stopping: bool = False
    sandbox: SandboxView = field(default_factory=SandboxView)
    effective_deny: tuple[str, ...] = ()
    holder_pid: int | None = None  # the namespace holder (real device only)
    holder_start: int = 0  # its start time in clock ticks since boot (/proc/<pid>/stat field 22)

    @property
    def seccomp_deny(self) -> tuple[int, ...]:
        return _seccomp_deny(self.effective_deny, self.sandbox)


@dataclass(slots=True)
class _Process:
    uid: str
    container_uid: str
    pid: int
    argv: tuple[str, ...]
    start_time: float
    stdout_path: str
    stderr_path: str
    state: ProcessStatus = ProcessStatus.RUNNING
    exit_code: int = 0
    signal: int = 0
    exit_time: float | None = None
    started: bool = False  # started by this agent (a session leader), not adopted
    oom_killed: bool = False
    oom_base: int = 0  # the container's oom_kill count when the process started
    start_ticks: int = 0  # /proc/<pid>/stat start time: a reused pid is never taken for it
    exited: threading.Event = field(default_factory=threading.Event)

    def view(self) -> ProcessView:
        return ProcessView(
            uid=self.uid,
            container_uid=self.container_uid,
            pid=self.pid,
            state=self.state,
            exit_code=self.exit_code,
            signal=self.signal,
            oom_killed=self.oom_killed,
            start_time=self.start_time,
            exit_time=self.exit_time,
            argv=self.argv,
        )


def _check_uid(value: str, what: str) -> str:
    if not _UID_RE.fullmatch(value) or value in (".", ".."):
        raise InvalidArgument(f"{what} must be 1..63 characters of [A-Za-z0-9_.-] (got {value[:80]!r})")
    return value


def _check_abs_path(value: str, what: str) -> str:
    if "\0" in value or not value.startswith("/"):
        raise InvalidArgument(f"{what} must be an absolute path")
    if len(value.encode("utf-8", "surrogateescape")) > ROOT_MAX:
        raise InvalidArgument(f"{what} is longer than {ROOT_MAX} bytes")
    if ".." in value.split("/"):
        raise InvalidArgument(f"{what} must not contain '..'")
    return os.path.normpath(value)


@functools.lru_cache(maxsize=256)
def _seccomp_deny(effective: tuple[str, ...], sandbox: SandboxView) -> tuple[int, ...]:
    return policy.seccomp_deny(effective, sandbox)


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, int(value)))


def denied_syscall(raw: int) -> tuple[int, bool]:
    """A DENIED record's system call (u32 from the kernel) as ``(number, compat)``: bit 31 marks a
    32-bit call (``int $0x80``) and is moved into the flag, so the number fits its int32 field."""
    raw = _clamp(raw, 0, _U32)
    return raw & ~_COMPAT_BIT, bool(raw & _COMPAT_BIT)


def _device_spec(
    name: str, root: str, deny: frozenset[int], max_members: int, deny_raw: bool
) -> KernelContainerSpec:
    return KernelContainerSpec(
        name=name,
        root=root,
        deny_syscalls=deny,
        limits=KernelLimits(max_members=max_members),
        deny_raw_sockets=deny_raw,
    )


def _start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat); None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _children(pid: int) -> list[int]:
    """The children of ``pid`` (/proc/<pid>/task/<pid>/children); empty if it is gone."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


def _is_zombie(pid: int) -> bool:
    """Whether ``pid`` has ended and waits to be reaped (state Z in /proc/<pid>/stat)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2 :].startswith(b"Z")
    except (OSError, ValueError):
        return False


def _kill_holder(pid: int, start_time: int) -> None:
    """SIGKILL a namespace holder (and so its pid namespace), through a pidfd checked against the
    recorded start time: a reused pid is left alone."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        if _start_time(pid) == start_time:
            _signal.pidfd_send_signal(pidfd, _signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(pidfd)


def _write_json(path: str | Path, data: Mapping[str, object]) -> None:
    """Replace ``path`` atomically (plain os calls: this runs on every process start)."""
    target = str(path)
    tmp = target + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, json.dumps(data).encode())
    finally:
        os.close(fd)
    os.replace(tmp, target)


class AgentRuntime:
    """Use cases of AgentService. Thread-safe. Errors are ``chital.errdefs`` exceptions."""

    def __init__(
        self,
        device: Device,
        config: RuntimeConfig,
        *,
        simulated: FakeDevice | None = None,
        metrics: AgentMetrics | None = None,
        cgroups: CgroupManager | None = None,
    ) -> None:
        """``simulated``: the FakeDevice behind ``device`` when it is wrapped (for example by
        ``InstrumentedDevice``); the runtime then tells it about exits, as the kernel would see them.
        ``cgroups``: the container groups (limits, OOM counts); None runs without resource limits."""
        self._device = device
        self._cgroups = cgroups
        self._config = config
        self._simulated = (
            simulated if simulated is not None else (device if isinstance(device, FakeDevice) else None)
        )
        self._fake = self._simulated is not None
        self.metrics = metrics
        self._state_dir = config.state_dir.resolve()
        (self._state_dir / "containers").mkdir(parents=True, exist_ok=True)
        # As a string: the start of a process joins paths under it, and pathlib costs there.
        self._containers_root = str(self._state_dir / "containers")
        self._roots = RootPolicy(config.allowed_roots, self._state_dir)
        self.boot_id = str(uuid.uuid4())
        self._version = device.version()
        self._lock = threading.RLock()
        self._containers: dict[str, _Container] = {}
        self._by_kernel_id: dict[int, str] = {}
        self._processes: dict[str, _Process] = {}
        self._running_by_pid: dict[int, list[str]] = {}  # one OS process may back several records
        self._exited_order: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._starting: dict[str, threading.Event] = {}
        self._persist_lock = threading.Lock()  # orders the writes of process records
        self._generation = 0
        self._events = EventLog(config.event_log_capacity)
        self._closed = threading.Event()
        self._launching: dict[int, ExitStatus | None] = {}  # pids between ADD_PROC and their record
        self._runner = ProcessRunner(self._on_reaped, launcher=config.launcher)
        # Destroyed containers whose directory waits for these exited processes to be forgotten.
        self._retired: dict[str, set[str]] = {}
        self._dirs = DirReaper(Path(self._containers_root), self._is_live_container)
        self._recover()
        self._remove_stale_dirs()
        self._pump = threading.Thread(target=self._pump_loop, name="chital-event-pump", daemon=True)
        self._pump.start()
        self._rotator = logfiles.LogRotator(self._log_paths_to_cap, config.log_limits)
        # One thread notices followed log files growing, for every `logs -f` (see logwatch.py).
        self._log_watch = LogWatch()

    @property
    def sandboxed(self) -> bool:
        return not self._fake and self._config.device_kind == "linux"

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Stop the threads; processes keep running (the kernel holds them)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._events.close()
        self._runner.close()
        self._rotator.close()
        self._log_watch.close()
        self._dirs.close()
        self._pump.join(timeout=5)

    # -- paths -----------------------------------------------------------------------------------

    def _container_dir(self, uid: str) -> Path:
        return self._state_dir / "containers" / uid

    # -- containers ------------------------------------------------------------------------------

    def create_container(
        self,
        uid: str,
        name: str = "",
        root: str = "",
        limits: LimitsView | None = None,
        deny_syscalls: Sequence[str] = (),
        *,
        sandbox: SandboxView | None = None,
    ) -> ContainerView:
        _check_uid(uid, "container uid")
        limits = limits or LimitsView()
        sandbox = policy.validate_sandbox(sandbox or SandboxView())
        with self._lock:
            self._check_open()
            existing = self._containers.get(uid)
            if existing is not None:
                if existing.stopping:
                    raise FailedPrecondition(f"container {uid} is being destroyed")
                return self._container_view(existing)
            name = _check_uid(name or uid, "container name")
            if any(c.name == name for c in self._containers.values()):
                raise AlreadyExists(f"container name {name!r} is taken")
            if min(limits.memory_max_bytes, limits.pids_max, limits.cpu_max_millicores) < 0:
                raise InvalidArgument("limits must not be negative")
            if limits.pids_max > 0xFFFFFFFF:
                raise InvalidArgument("pids_max out of range")
            deny_names = tuple(sorted(set(deny_syscalls)))
            syscalls.numbers_of(deny_names)  # InvalidArgument for an unknown name
            effective = policy.effective_deny(deny_names, sandbox)
            deny = syscalls.numbers_of(effective)
            if self._config.max_containers and len(self._containers) >= self._config.max_containers:
                raise ResourceExhausted(f"this host runs at most {self._config.max_containers} containers")
            cdir = self._container_dir(uid)
            if root:
                root = self._roots.check(
                    _check_abs_path(root, "root"), allow_host_root=sandbox.allow_host_root
                )
                owns_root = False
            else:
                root = str(cdir / "rootfs")
                owns_root = True
            cdir.mkdir(parents=True, exist_ok=True)
            (cdir / "logs").mkdir(exist_ok=True)
            (cdir / "processes").mkdir(exist_ok=True)
            if owns_root:
                Path(root).mkdir(exist_ok=True)
            kernel_id, holder_pid, holder_start = self._create_in_kernel(
                uid, name, root, limits=limits, deny=deny, sandbox=sandbox
            )
            rec = _Container(
                uid,
                name,
                root,
                owns_root,
                limits,
                deny_names,
                kernel_id,
                sandbox=sandbox,
                effective_deny=effective,
                holder_pid=holder_pid,
                holder_start=holder_start,
            )
            _write_json(
                cdir / "container.json",
                {
                    "uid": uid,
                    "name": name,
                    "root": root,
                    "owns_root": owns_root,
                    "limits": [limits.memory_max_bytes, limits.pids_max, limits.cpu_max_millicores],
                    "deny_syscalls": list(deny_names),
                    "sandbox": {
                        "allow_syscalls": list(sandbox.allow_syscalls),
                        "allow_raw_sockets": sandbox.allow_raw_sockets,
                        "capabilities": list(sandbox.capabilities),
                        "host_network": sandbox.host_network,
                        "allow_host_root": sandbox.allow_host_root,
                    },
                    "effective_deny_syscalls": list(effective),
                    "holder": {"pid": holder_pid, "start_time": holder_start} if holder_pid else None,
                },
            )
            self._containers[uid] = rec
            self._by_kernel_id[kernel_id] = uid
            self._generation += 1
            log.info("created container %s (kernel id %d, root %s)", uid, kernel_id, root)
            return self._container_view(rec)

    def _create_in_kernel(
        self,
        uid: str,
        name: str,
        root: str,
        *,
        limits: LimitsView,
        deny: frozenset[int],
        sandbox: SandboxView,
    ) -> tuple[int, int | None, int]:
        """cgroup, namespace holder (real device), kernel container: (kernel id, holder pid, start)."""
        self._create_cgroup(uid, limits)
        holder_pid, holder_start = None, 0
        module_root = root
        try:
            if self.sandboxed:
                holder_pid = self._runner.start_holder(
                    HolderSpec(root=root, hostname=name, network=not sandbox.host_network),
                    str(self._container_dir(uid) / "holder.log"),
                )
                holder_start = _start_time(holder_pid) or 0
                # The module resolves this once, at CREATE: the holder's pivoted root mount.
                module_root = f"/proc/{holder_pid}/root"
            spec = _device_spec(uid, module_root, deny, limits.pids_max, not sandbox.allow_raw_sockets)
            return self._device.create(spec), holder_pid, holder_start
        except ChitalError:
            if holder_pid is not None:
                _kill_holder(holder_pid, holder_start)
            self._remove_cgroup(uid)
            raise

    def destroy_container(self, uid: str, grace_period_seconds: float = 10.0) -> None:
        if not math.isfinite(grace_period_seconds) or not 0 <= grace_period_seconds <= _MAX_GRACE_S:
            raise InvalidArgument(f"grace_period_seconds must be within 0..{_MAX_GRACE_S:g}")
        _check_uid(uid, "container uid")
        with self._lock:
            self._check_open()
            rec = self._containers.get(uid)
            if rec is None:
                return
            rec.stopping = True
            kernel_id = rec.kernel_id
        members = self._members(kernel_id)
        if members:
            for pid in members:
                self._signal_quietly(pid, _signal.SIGTERM)
            self._signal_groups(uid, _signal.SIGTERM)
            deadline = time.monotonic() + grace_period_seconds
            while members and time.monotonic() < deadline and not self._closed.is_set():
                time.sleep(_POLL_S)
                members = self._members(kernel_id)
        self._signal_groups(uid, _signal.SIGKILL)
        with contextlib.suppress(NotFound):
            self._device.destroy(kernel_id, kill_members=True)
        self._remove_cgroup(uid)  # kills what is left (untracked children with the fake device)
        if rec.holder_pid is not None:
            _kill_holder(rec.holder_pid, rec.holder_start)  # and with it the whole pid namespace
        with self._lock:
            self._containers.pop(uid, None)
            self._by_kernel_id.pop(kernel_id, None)
            self._generation += 1
        cdir = self._container_dir(uid)
        (cdir / "container.json").unlink(missing_ok=True)
        if rec.owns_root:
            shutil.rmtree(rec.root, ignore_errors=True)
        self._retire_dir(uid)
        log.info("destroyed container %s (kernel id %d)", uid, kernel_id)

    # -- directories of destroyed containers (see dirs.py) ---------------------------------------

    def _log_paths_to_cap(self) -> list[str]:
        """The log files that may still grow: those of running processes, and of processes that
        exited in the last seconds (their last writes)."""
        recent = time.time() - 5.0
        with self._lock:
            procs = [
                p for p in self._processes.values() if not p.exited.is_set() or (p.exit_time or 0.0) >= recent
            ]
        return [path for p in procs for path in (p.stdout_path, p.stderr_path)]

    def _is_live_container(self, uid: str) -> bool:
        with self._lock:
            return uid in self._containers or uid in self._retired

    def _retire_dir(self, uid: str) -> None:
        """The container is destroyed: its directory goes once none of its exited processes is
        remembered any more (StreamLogs reads their logs until then)."""
        with self._lock:
            if uid in self._containers:
                return  # created again meanwhile
            remembered = {p.uid for p in self._processes.values() if p.container_uid == uid}
            if remembered:
                self._retired[uid] = remembered
                return
        self._dirs.remove(uid)

    def _forget_process(self, proc: _Process) -> None:
        """``proc`` left the memory of exited processes (called with the lock held)."""
        waiting = self._retired.get(proc.container_uid)
        if waiting is None:
            return
        waiting.discard(proc.uid)
        if not waiting:
            del self._retired[proc.container_uid]
            self._dirs.remove(proc.container_uid)

    def _remove_stale_dirs(self) -> None:
        """At start-up: directories of containers that neither the kernel nor recovery knows."""
        stale = dirs.stale_dirs(Path(self._containers_root), self._is_live_container, _start_time)
        for cdir in stale:
            self._dirs.remove_now(cdir.name)
        if stale:
            log.info("removed the directories of %d containers that are gone", len(stale))

    def _create_cgroup(self, uid: str, limits: LimitsView) -> None:
        if self._cgroups is not None:
            self._cgroups.create(
                uid,
                memory_max_bytes=limits.memory_max_bytes,
                pids_max=limits.pids_max,
                cpu_max_millicores=limits.cpu_max_millicores,
            )

    def _remove_cgroup(self, uid: str) -> None:
        if self._cgroups is not None:
            try:
                self._cgroups.remove(uid)
            except ChitalError:
                log.warning("cannot remove the cgroup of container %s", uid, exc_info=True)

    def _cgroup_path(self, uid: str) -> str | None:
        return str(self._cgroups.path(uid)) if self._cgroups is not None else None

    def _oom_kills(self, uid: str) -> int:
        if self._cgroups is None:
            return 0
        try:
            return self._cgroups.oom_kills(uid)
        except (OSError, ChitalError):
            return 0

    def _members(self, kernel_id: int) -> tuple[int, ...]:
        try:
            return self._device.info(kernel_id).members
        except NotFound:
            return ()

    def _signal_groups(self, container_uid: str, sig: int) -> None:
        """Fake device only: signal the process groups of our running processes.

        The fake does not see forks, so a shell's children are not members; each process we start
        leads its own session (and process group), which holds its descendants in practice. With the
        real module, forks are members and the kernel's member list is complete.
        """
        if not self._fake:
            return
        with self._lock:
            pids = [
                p.pid
                for p in self._processes.values()
                if p.container_uid == container_uid and p.state is ProcessStatus.RUNNING and p.started
            ]
        for pid in pids:
            with contextlib.suppress(OSError):
                os.killpg(pid, sig)

    def _signal_quietly(self, pid: int, sig: int) -> None:
        with contextlib.suppress(ChitalError):
            self._runner.send_signal(pid, sig)

    def _live_holder(self, rec: _Container) -> int:
        """The pid of the container's namespace holder; FailedPrecondition when it is gone."""
        pid = rec.holder_pid
        if pid is None or _start_time(pid) != rec.holder_start:
            raise FailedPrecondition(
                f"container {rec.uid} lost its namespace holder (its processes were killed with it); "
                "destroy and create it again"
            )
        return pid

    def _get_container(self, uid: str) -> _Container:
        rec = self._containers.get(uid)
        if rec is None:
            raise NotFound(f"container {uid[:80]!r} does not exist")
        return rec

    def _container_view(self, rec: _Container) -> ContainerView:
        return ContainerView(
            uid=rec.uid,
            name=rec.name,
            root=rec.root,
            limits=rec.limits,
            deny_syscalls=rec.deny_syscalls,
            kernel_id=rec.kernel_id,
            member_pids=self._members(rec.kernel_id),
            sandbox=rec.sandbox,
            effective_deny_syscalls=rec.effective_deny,
        )

    def get_container_stats(self, uid: str) -> ContainerStatsView:
        with self._lock:
            rec = self._get_container(uid)
        counters = self._device.stats(rec.kernel_id)
        info = self._device.info(rec.kernel_id)
        cg = None
        if self._cgroups is not None:
            with contextlib.suppress(OSError, ChitalError):
                cg = self._cgroups.stats(uid)
        return ContainerStatsView(
            syscalls=tuple(
                SyscallCountView(name=syscalls.name_of(nr), number=nr, calls=calls, denied=denied)
                for nr, (calls, denied) in sorted(counters.items())
            ),
            syscalls_total=info.syscalls_total,
            denied_total=info.denied_total,
            members=len(info.members),
            memory_current_bytes=cg.memory_current_bytes if cg else 0,
            oom_kills=cg.oom_kills if cg else 0,
            pids_current=cg.pids_current if cg else 0,
            cpu_usage_usec=cg.cpu_usage_usec if cg else 0,
        )

    # -- processes -------------------------------------------------------------------------------

    def start_process(
        self,
        container_uid: str,
        process_uid: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str = "",
        user_id: int | None = None,
        group_id: int | None = None,
    ) -> ProcessView:
        """Start ``argv`` in a container. ``user_id``/``group_id`` None: the unprivileged default
        (65534) in a sandbox; a hollow agent (fake device) then keeps its own credentials."""
        _check_uid(process_uid, "process uid")
        argv, env, cwd = self._check_process_args(argv, env or {}, cwd)
        for value in (user_id, group_id):
            if value is not None and not 0 <= value <= 0xFFFFFFFE:
                raise InvalidArgument("user_id/group_id out of range")
        while True:
            with self._lock:
                self._check_open()
                existing = self._processes.get(process_uid)
                if existing is not None:
                    if existing.container_uid != container_uid:
                        raise AlreadyExists(f"process {process_uid} exists in another container")
                    return existing.view()
                pending = self._starting.get(process_uid)
                if pending is None:
                    rec = self._get_container(container_uid)
                    if rec.stopping:
                        raise FailedPrecondition(f"container {container_uid} is being destroyed")
                    done = self._starting[process_uid] = threading.Event()
                    break
            pending.wait()
        try:
            view = self._start(rec, process_uid, argv, env=env, cwd=cwd, user_id=user_id, group_id=group_id)
        except ChitalError as exc:
            if self.metrics is not None:
                self.metrics.process_start_failures.labels(type(exc).__name__).inc()
            raise
        else:
            if self.metrics is not None:
                self.metrics.processes_started.inc()
            return view
        finally:
            with self._lock:
                self._starting.pop(process_uid, None)
            done.set()

    def _check_process_args(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: str
    ) -> tuple[tuple[str, ...], dict[str, str], str]:
        if not argv or not argv[0]:
            raise InvalidArgument("argv must name a program")
        if any("\0" in a for a in argv) or sum(len(a) + 1 for a in argv) > _MAX_ARGV_BYTES:
            raise InvalidArgument("argv has a NUL byte or is too long")
        size = 0
        for k, v in env.items():
            if not k or "=" in k or "\0" in k or "\0" in v:
                raise InvalidArgument(f"bad environment variable name or value: {k[:64]!r}")
            size += len(k) + len(v) + 2
        if size > _MAX_ENV_BYTES:
            raise InvalidArgument("environment is too large")
        cwd = _check_abs_path(cwd or "/", "cwd")
        return tuple(argv), dict(env), cwd

    def _start(
        self,
        rec: _Container,
        process_uid: str,
        argv: tuple[str, ...],
        *,
        env: dict[str, str],
        cwd: str,
        user_id: int | None,
        group_id: int | None,
    ) -> ProcessView:
        logs = os.path.join(self._containers_root, rec.uid, "logs")
        if not os.path.isdir(logs):  # made at create
            os.makedirs(logs, exist_ok=True)
        stdout_path = os.path.join(logs, f"{process_uid}.stdout")
        stderr_path = os.path.join(logs, f"{process_uid}.stderr")
        spec = self._launch_spec(
            rec,
            argv=argv,
            env=env,
            cwd=cwd,
            ids=(user_id, group_id),
            logs=(stdout_path, stderr_path),
            exit_path=self._exit_path(rec.uid, process_uid),
        )
        holder = spec.holder
        oom_base = self._oom_kills(rec.uid)  # before the start: an OOM kill right after it counts

        launched: list[int] = []

        def attach(pid: int) -> None:
            # The child waits for this: it becomes a member before any of the program runs. Its
            # EXIT may come before its record exists: _process_exited keeps it in _launching.
            with self._lock:
                self._launching[pid] = None
            launched.append(pid)
            try:
                self._device.add_proc(rec.kernel_id, pid)
            except BaseException:
                with self._lock:
                    self._launching.pop(pid, None)
                raise

        try:
            pid = self._runner.start(spec, attach=attach)
        except BaseException:
            with self._lock:
                for p in launched:
                    self._launching.pop(p, None)
            raise
        if self._fake:
            # With the module the launcher's child waits for ADD_PROC; plain mode has no such pause.
            try:
                self._device.add_proc(rec.kernel_id, pid)
            except ChitalError:
                self._signal_quietly(pid, _signal.SIGKILL)
                self._runner.watch(pid)
                raise
            if self._simulated is not None:
                # The module counts the execve of a member that joined before exec; the fake stands in
                # (hollow fleets then have syscall counts; a denied execve is counted, not enforced).
                self._simulated.record_syscall(pid, syscalls.NUMBERS["execve"])
        proc = _Process(
            uid=process_uid,
            container_uid=rec.uid,
            pid=pid,
            argv=argv,
            start_time=time.time(),
            stdout_path=stdout_path,
            stderr_path=stderr_path,
            started=True,
            oom_base=oom_base,
            start_ticks=_start_time(pid) or 0,
        )
        with self._lock:
            self._processes[process_uid] = proc
            self._running_by_pid.setdefault(pid, []).append(process_uid)
            self._generation += 1
            self._events.append(
                AgentEventKind.PROCESS_STARTED, container_uid=rec.uid, process_uid=process_uid, pid=pid
            )
            early_exit = self._launching.pop(pid, None)
        self._persist_process(proc)
        if holder is None:
            self._runner.watch(pid)  # our child: the reaper reports its exit
        elif early_exit is not None:
            self._process_exited(pid, early_exit, rec.uid)
        else:
            self._runner.hold(pid)  # for signals; the module's EXIT event reports the exit
        log.info("started process %s (pid %d) in %s: %s", process_uid, pid, rec.uid, argv[0])
        return proc.view()

    def _launch_spec(
        self,
        rec: _Container,
        *,
        argv: tuple[str, ...],
        env: dict[str, str],
        cwd: str,
        ids: tuple[int | None, int | None],
        logs: tuple[str, str],
        exit_path: str = "",
    ) -> LaunchSpec:
        """``exit_path``: plain mode only; the launcher stays as the program's shim and keeps its
        exit status there, for an agent that was not running when it ended (see
        :meth:`_recover_fake_kernel`)."""
        user_id, group_id = ids
        holder: int | None = None
        if self.sandboxed:
            holder = self._live_holder(rec)
            uid: int | None = DEFAULT_USER_ID if user_id is None else user_id
            gid: int | None = DEFAULT_GROUP_ID if group_id is None else group_id
        else:
            # Hollow agent: no sandbox; the agent's own credentials unless another user is asked.
            uid = None if user_id is None or user_id == os.getuid() else user_id
            gid = None if group_id is None or group_id == os.getgid() else group_id
        return LaunchSpec(
            argv=argv,
            env=env,
            cwd=cwd,
            root=rec.root,
            uid=uid,
            gid=gid,
            stdout_path=logs[0],
            stderr_path=logs[1],
            cgroup=self._cgroup_path(rec.uid),
            holder=holder,
            capabilities=rec.sandbox.capability_mask,
            seccomp_deny=rec.seccomp_deny,
            deny_raw_sockets=not rec.sandbox.allow_raw_sockets,
            exit_path=exit_path if holder is None else "",
        )

    def adopt_process(self, container_uid: str, process_uid: str, pid: int) -> ProcessView:
        _check_uid(process_uid, "process uid")
        if not 0 < pid <= 0x7FFFFFFF:
            raise InvalidArgument(f"pid {pid} out of range")
        if pid == os.getpid():
            raise InvalidArgument("the agent cannot adopt itself")
        with self._lock:
            self._check_open()
            existing = self._processes.get(process_uid)
            if existing is not None:
                if existing.container_uid == container_uid and existing.pid == pid:
                    return existing.view()
                raise AlreadyExists(f"process {process_uid} exists with another pid or container")
            rec = self._get_container(container_uid)
            if rec.stopping:
                raise FailedPrecondition(f"container {container_uid} is being destroyed")
            oom_base = self._oom_kills(rec.uid)
            self._device.add_proc(rec.kernel_id, pid)
            argv = _cmdline(pid)
            logs = self._container_dir(rec.uid) / "logs"
            proc = _Process(
                uid=process_uid,
                container_uid=rec.uid,
                pid=pid,
                argv=argv,
                start_time=time.time(),
                stdout_path=str(logs / f"{process_uid}.stdout"),
                stderr_path=str(logs / f"{process_uid}.stderr"),
                oom_base=oom_base,
            )
            self._processes[process_uid] = proc
            self._running_by_pid.setdefault(pid, []).append(process_uid)
            self._generation += 1
            self._events.append(
                AgentEventKind.PROCESS_STARTED, container_uid=rec.uid, process_uid=process_uid, pid=pid
            )
        self._persist_process(proc)
        self._follow(pid)
        return proc.view()

    def _follow(self, pid: int) -> None:
        """Follow a process that is not our child (adopted, or recovered after a restart)."""
        if self._fake:
            # No kernel to report its exit: watch it (status unknown, it is not our child).
            self._runner.watch(pid)
        else:
            # The kernel's EXIT event brings the exit with its status; the pidfd is for signals.
            self._runner.hold(pid)

    def remove_process(self, container_uid: str, pid: int) -> None:
        if not 0 < pid <= 0x7FFFFFFF:
            raise InvalidArgument(f"pid {pid} out of range")
        with self._lock:
            rec = self._get_container(container_uid)
        self._device.remove_proc(rec.kernel_id, pid)
        with self._lock:
            self._generation += 1

    def signal_process(self, process_uid: str, sig: int) -> None:
        if not 1 <= sig <= 64:
            raise InvalidArgument(f"signal {sig} outside 1..64")
        with self._lock:
            proc = self._processes.get(process_uid)
            if proc is None:
                raise NotFound(f"process {process_uid[:80]!r} does not exist")
            if proc.state is ProcessStatus.EXITED:
                raise FailedPrecondition(f"process {process_uid} has exited")
            pid = proc.pid
        program = _children(pid) if sig == _signal.SIGKILL and not self.sandboxed else []
        if program:
            # A plain-mode shim forwards every signal but SIGKILL, which would end the shim before
            # it records the exit: kill the program, and the shim reports how it ended.
            for child in program:
                self._signal_quietly(child, sig)
            return
        self._runner.send_signal(pid, sig)

    def get_process(self, process_uid: str) -> ProcessView:
        with self._lock:
            proc = self._processes.get(process_uid)
            if proc is None:
                raise NotFound(f"process {process_uid[:80]!r} does not exist")
            return proc.view()

    def wait_process(self, process_uid: str, timeout: float | None = None) -> ProcessView:
        with self._lock:
            proc = self._processes.get(process_uid)
            if proc is None:
                raise NotFound(f"process {process_uid[:80]!r} does not exist")
        proc.exited.wait(timeout)
        return self.get_process(process_uid)

    # -- exits -----------------------------------------------------------------------------------

    def _exit_path(self, container_uid: str, process_uid: str) -> str:
        return os.path.join(self._containers_root, container_uid, "processes", f"{process_uid}.exit")

    def _recorded_exit(self, pid: int) -> ExitStatus | None:
        """The wait status a plain-mode shim wrote for ``pid`` (a process that is no longer our
        child: started by an agent that died), or None."""
        with self._lock:
            procs = [self._processes[u] for u in self._running_by_pid.get(pid, []) if u in self._processes]
        for proc in procs:
            try:
                with open(self._exit_path(proc.container_uid, proc.uid), "rb") as f:
                    return decode_wait_status(int(f.read().strip()))
            except (OSError, ValueError):
                continue
        return None

    def _on_reaped(self, pid: int, status: ExitStatus) -> None:
        if status.wait_status is None:
            status = self._recorded_exit(pid) or status
        self._process_exited(pid, status)
        if self._simulated is not None:
            self._simulated.notify_exit(pid, status.wait_status or 0)

    def _process_exited(self, pid: int, status: ExitStatus, container_uid: str | None = None) -> None:
        """Record an exit once, whichever of the reaper and the kernel's EXIT event comes first.

        ``container_uid``: the container the kernel's EXIT record names; records of another container
        are left alone (a late record of a pid that the reaper already reported and that was reused)."""
        with self._lock:
            puids = self._running_by_pid.pop(pid, [])
            if not puids and pid in self._launching:
                self._launching[pid] = status  # recorded by _start once the record exists
                return
            procs = [self._processes[u] for u in puids if u in self._processes]
            if container_uid is not None:
                others = [p.uid for p in procs if p.container_uid != container_uid]
                if others:
                    self._running_by_pid[pid] = others
                procs = [p for p in procs if p.container_uid == container_uid]
            for proc in procs:
                self._record_exit(proc, status)
            still_running = pid in self._running_by_pid
        if not still_running:
            self._runner.release(pid)
        for proc in procs:
            proc.exited.set()
            self._persist_process(proc)

    def _record_exit(self, proc: _Process, status: ExitStatus) -> None:
        if proc.state is not ProcessStatus.EXITED:
            puid, pid = proc.uid, proc.pid
            proc.state = ProcessStatus.EXITED
            proc.exit_code = status.exit_code
            proc.signal = status.signal
            proc.exit_time = time.time()
            # The kernel raises memory.events' oom_kill before it sends the SIGKILL, so a count above
            # the one at start is there by the time the exit is seen (by waitpid or by the module).
            proc.oom_killed = status.signal == _signal.SIGKILL and (
                self._oom_kills(proc.container_uid) > proc.oom_base
            )
            self._generation += 1
            self._events.append(
                AgentEventKind.PROCESS_EXITED,
                container_uid=proc.container_uid,
                process_uid=proc.uid,
                pid=pid,
                exit_code=proc.exit_code,
                signal=proc.signal,
                oom_killed=proc.oom_killed,
            )
            if self.metrics is not None:
                self.metrics.record_exit(proc.exit_code, proc.signal, proc.oom_killed)
            self._exited_order[puid] = None
            while len(self._exited_order) > self._config.exited_process_limit:
                old, _ = self._exited_order.popitem(last=False)
                forgotten = self._processes.pop(old, None)
                if forgotten is not None:
                    self._forget_process(forgotten)

    def _persist_process(self, proc: _Process) -> None:
        """Small per-process record, so a restarted agent can name the kernel's members again.

        The start and the exit of a process persist from different threads (the kernel's EXIT event
        can come before StartProcess has written its record): the snapshot and the write happen
        under one lock, so the last write always holds the latest state."""
        directory = os.path.join(self._containers_root, proc.container_uid, "processes")
        path = os.path.join(directory, f"{proc.uid}.json")
        with self._persist_lock:
            try:
                self._write_process_record(path, proc)
            except FileNotFoundError:  # made at create; a missing one is recreated
                try:
                    os.makedirs(directory, exist_ok=True)
                    self._write_process_record(path, proc)
                except OSError:
                    log.warning("cannot write %s", path, exc_info=True)
            except OSError:
                log.warning("cannot write %s", path, exc_info=True)

    def _write_process_record(self, path: str, proc: _Process) -> None:
        _write_json(
            path,
            {
                "uid": proc.uid,
                "pid": proc.pid,
                "argv": list(proc.argv),
                "start_time": proc.start_time,
                "state": proc.state.value,
                "exit_code": proc.exit_code,
                "signal": proc.signal,
                "exit_time": proc.exit_time,
                "oom_killed": proc.oom_killed,
                "oom_base": proc.oom_base,
                "started": proc.started,
                "start_ticks": proc.start_ticks,
            },
        )

    # -- the device event pump -------------------------------------------------------------------

    def _pump_loop(self) -> None:
        while not self._closed.is_set():
            try:
                batch = self._device.read_events(max_events=256, timeout=0.25)
            except Unavailable:
                if self._closed.is_set():
                    return
                log.error("device unavailable; event pump retries in 1 s")
                self._closed.wait(1.0)
                continue
            except Exception:
                log.exception("reading device events failed")
                self._closed.wait(1.0)
                continue
            if batch.dropped:
                self._events.append(AgentEventKind.EVENTS_DROPPED, count=batch.dropped)
            for event in batch.events:
                self._handle_device_event_safely(event)

    def _handle_device_event_safely(self, event: DeviceEvent) -> None:
        """One event that cannot be handled is logged and counted; the pump carries on."""
        try:
            self._handle_device_event(event)
        except Exception:
            log.exception("cannot handle device event %s", event)
            if self.metrics is not None:
                self.metrics.event_conversion_failures.labels("device").inc()

    def _handle_device_event(self, event: DeviceEvent) -> None:
        with self._lock:
            cuid = self._by_kernel_id.get(event.container_id, "")
        if event.kind is EventKind.EXIT:
            # A container already forgotten (destroyed meanwhile) filters nothing.
            self._process_exited(event.pid, decode_wait_status(event.status), cuid or None)
        elif event.kind is EventKind.FORK:
            with self._lock:
                self._generation += 1
        elif event.kind is EventKind.DENIED:
            with self._lock:
                puid = next(iter(self._running_by_pid.get(event.pid, [])), "")
            nr, compat = denied_syscall(event.syscall_nr)
            self._events.append(
                AgentEventKind.SYSCALL_DENIED,
                container_uid=cuid,
                process_uid=puid,
                pid=_clamp(event.pid, 0, _I32_MAX),
                syscall_number=nr,
                compat_syscall=compat,
                count=_clamp(event.count, 0, 2**64 - 1),
            )
        elif event.kind is EventKind.EMPTY:
            with self._lock:
                self._generation += 1
            self._events.append(AgentEventKind.CONTAINER_EMPTY, container_uid=cuid)

    # -- events, logs, state ---------------------------------------------------------------------

    def wait_events(self, after_seq: int, timeout: float) -> list[AgentEvent]:
        return self._events.wait_after(after_seq, timeout)

    @property
    def last_event_seq(self) -> int:
        return self._events.last_seq

    def stream_logs(
        self, process_uid: str, follow: bool, tail_lines: int, is_active: Callable[[], bool]
    ) -> Iterator[LogChunkView]:
        if tail_lines < 0:
            raise InvalidArgument("tail_lines must not be negative")
        with self._lock:
            proc = self._processes.get(process_uid)
            if proc is None:
                raise NotFound(f"process {process_uid[:80]!r} does not exist")
        return _follow_logs(proc, follow, tail_lines, is_active, self._closed, watch=self._log_watch)

    def sync(self) -> SyncState:
        with self._lock:
            containers = tuple(self._container_view(c) for c in self._containers.values())
            processes = tuple(p.view() for p in self._processes.values())
            return SyncState(containers, processes, self._events.last_seq)

    def info(self) -> AgentInfoView:
        with self._lock:
            count = len(self._containers)
            digest = hashlib.sha256(f"{self.boot_id}:{self._generation}".encode()).hexdigest()[:32]
        return AgentInfoView(
            agent_version=__version__,
            kernel_release=self._version.kernel_release or os.uname().release,
            module_version=self._version.module_version,
            abi_major=self._version.abi_major,
            abi_minor=self._version.abi_minor,
            device="fake" if self._fake else self._config.device_kind,
            sandboxed=self.sandboxed,
            max_containers=self._config.max_containers,
            container_count=count,
            state_hash=digest,
            boot_id=self.boot_id,
            last_event_seq=self._events.last_seq,
            limits_enforced=self._cgroups is not None,
        )

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise Unavailable("the agent is shutting down")

    # -- recovery --------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Rebuild containers and processes from the kernel after a restart (``kill -9`` included).

        1. Containers from ``device.list()``/``info()`` plus their metadata files; their cgroups are
           made (idempotently) again.
        2. Processes from their records: one recorded as running stays running if it is still a member;
           otherwise its exit happened while no agent ran and is waiting in the kernel's queue.
        3. The kernel's queue is drained before anything else reads it: the EXIT records name the
           pids, which map to process uids through the records, with the real wait status.
        4. A process recorded as running, not a member, and with no EXIT record (the queue dropped
           it, or the previous agent read it and died before recording it) exits with an unknown
           status (exit code -1): reported once, never lost, never twice.
        5. Running processes are followed: with the module a pidfd is held for signals (exits come
           from the kernel with their status: they are no longer our children); with the fake device
           the pidfd reports the exit (status unknown).
        """
        unresolved: list[int] = []
        if self._simulated is not None:
            self._recover_fake_kernel()
        for kernel_id in self._device.list():
            try:
                info = self._device.info(kernel_id)
            except NotFound:
                continue
            uid = info.name
            cdir = self._container_dir(uid)
            meta: dict[str, object] = {}
            try:
                meta = json.loads((cdir / "container.json").read_text())
            except (OSError, ValueError):
                log.warning("container %s (kernel id %d) has no metadata", uid, kernel_id)
            raw_limits = meta.get("limits")
            lim = (
                [int(x) for x in raw_limits] if isinstance(raw_limits, list) and len(raw_limits) == 3 else []
            )
            limits = LimitsView(*lim) if lim else LimitsView(pids_max=info.limits.max_members)
            deny = meta.get("deny_syscalls")
            sandbox, effective, holder_pid, holder_start = _sandbox_from_meta(meta, info.deny_syscalls)
            if holder_pid is not None and _start_time(holder_pid) != holder_start:
                log.warning("container %s: its namespace holder (pid %d) is gone", uid, holder_pid)
            rec = _Container(
                uid=uid,
                name=str(meta.get("name") or uid),
                root=str(meta.get("root") or info.root),
                owns_root=bool(meta.get("owns_root", False)),
                limits=limits,
                deny_syscalls=tuple(str(d) for d in deny)
                if isinstance(deny, list)
                else tuple(sorted(syscalls.name_of(n) for n in info.deny_syscalls)),
                kernel_id=kernel_id,
                sandbox=sandbox,
                effective_deny=effective,
                holder_pid=holder_pid,
                holder_start=holder_start,
            )
            self._containers[uid] = rec
            self._by_kernel_id[kernel_id] = uid
            try:
                self._create_cgroup(uid, limits)
            except ChitalError:
                log.warning("cannot restore the cgroup of container %s", uid, exc_info=True)
            unresolved += self._recover_processes(rec, set(info.members))
            log.info("recovered container %s (kernel id %d, %d members)", uid, kernel_id, len(info.members))
        self._remove_orphan_cgroups()
        drained = self._drain_device_events()
        for pid in unresolved:
            recorded = self._recorded_exit(pid) if pid in self._running_by_pid else None
            if recorded is not None:
                self._process_exited(pid, recorded)  # ended while no agent ran; its shim kept it
            elif pid in self._running_by_pid:
                log.warning(
                    "pid %d exited while no agent ran and its exit record is gone: status unknown", pid
                )
                self._process_exited(pid, _UNKNOWN_EXIT)
        running = sorted(self._running_by_pid)
        for pid in running:
            self._follow(pid)
        if self._containers:
            log.info(
                "recovery: %d containers, %d running processes, %d queued kernel events",
                len(self._containers),
                len(running),
                drained,
            )

    def _recover_fake_kernel(self) -> None:
        """A hollow agent's device lives in memory and died with the previous agent; the kernel
        module would have kept its containers and members. Put them back from the state
        directory: each container with its metadata, and as members the processes recorded
        running whose pid still runs the same process (same start time). What the kernel would
        have queued meanwhile, the exits, the plain-mode shims kept in ``<process>.exit``."""
        for cdir in sorted(Path(self._containers_root).iterdir()):
            try:
                meta = json.loads((cdir / "container.json").read_text())
                uid, root = str(meta["uid"]), str(meta["root"])
                raw_limits = meta.get("limits") or [0, 0, 0]
                pids_max = int(raw_limits[1])
            except (OSError, ValueError, KeyError, TypeError, IndexError):
                continue
            sandbox, effective, _, _ = _sandbox_from_meta(meta, frozenset())
            try:
                deny = syscalls.numbers_of(effective)
                kernel_id = self._device.create(
                    _device_spec(uid, root, deny, pids_max, not sandbox.allow_raw_sockets)
                )
            except ChitalError:
                log.warning("cannot restore container %s into the fake device", uid, exc_info=True)
                continue
            for path in sorted((cdir / "processes").glob("*.json")):
                try:
                    data = json.loads(path.read_text())
                    pid, ticks = int(data["pid"]), int(data.get("start_ticks") or 0)
                except (OSError, ValueError, KeyError, TypeError):
                    continue
                if ProcessStatus.from_record(data.get("state")) is not ProcessStatus.RUNNING:
                    continue
                if not ticks or _start_time(pid) != ticks or _is_zombie(pid):
                    continue  # ended (its shim kept the status), or the pid is another process now
                with contextlib.suppress(ChitalError):
                    self._device.add_proc(kernel_id, pid)

    def _remove_orphan_cgroups(self) -> None:
        """Groups of containers the kernel no longer has: removed when empty, reported otherwise."""
        if self._cgroups is None:
            return
        for name in self._cgroups.names():
            if name in self._containers:
                continue
            try:
                pids = self._cgroups.pids(name)
            except (OSError, ChitalError):
                continue
            if pids:
                log.warning("cgroup %s has no container in the kernel but holds pids %s", name, pids[:10])
                continue
            try:
                self._cgroups.remove(name, timeout=1.0)
                log.info("removed the cgroup of container %s (gone from the kernel)", name)
            except ChitalError:
                log.warning("cannot remove orphan cgroup %s", name, exc_info=True)

    def _drain_device_events(self) -> int:
        """Handle every event the kernel queued so far (exits that happened while no agent ran)."""
        handled = 0
        while True:
            try:
                batch = self._device.read_events(max_events=256, timeout=0)
            except ChitalError:
                log.exception("cannot read the kernel's event queue during recovery")
                return handled
            if batch.dropped:
                self._events.append(AgentEventKind.EVENTS_DROPPED, count=batch.dropped)
            if not batch.events:
                return handled
            for event in batch.events:
                self._handle_device_event_safely(event)
                handled += 1

    def _recover_processes(self, rec: _Container, members: set[int]) -> list[int]:
        """Process records of a recovered container; returns pids recorded running but not members."""
        pdir = self._container_dir(rec.uid) / "processes"
        logs = self._container_dir(rec.uid) / "logs"
        unresolved = []
        for path in sorted(pdir.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                puid, pid = str(data["uid"]), int(data["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            proc = _Process(
                uid=puid,
                container_uid=rec.uid,
                pid=pid,
                argv=tuple(str(a) for a in data.get("argv", [])),
                start_time=float(data.get("start_time", 0.0)),
                stdout_path=str(logs / f"{puid}.stdout"),
                stderr_path=str(logs / f"{puid}.stderr"),
                started=bool(data.get("started", False)),
                oom_base=int(data.get("oom_base", 0)),
                start_ticks=int(data.get("start_ticks") or 0),
            )
            if ProcessStatus.from_record(data.get("state")) is ProcessStatus.RUNNING:
                # Still running, or its exit waits in the kernel's queue (drained next).
                self._running_by_pid.setdefault(pid, []).append(puid)
                if pid not in members:
                    unresolved.append(pid)
            else:
                proc.state = ProcessStatus.EXITED
                proc.exit_code = int(data.get("exit_code", -1))
                proc.signal = int(data.get("signal", 0))
                proc.oom_killed = bool(data.get("oom_killed", False))
                exit_time = data.get("exit_time")
                proc.exit_time = float(exit_time) if isinstance(exit_time, int | float) else time.time()
                proc.exited.set()
                self._exited_order[puid] = None
            self._processes[puid] = proc
        return unresolved


def _sandbox_from_meta(
    meta: Mapping[str, object], kernel_deny: frozenset[int]
) -> tuple[SandboxView, tuple[str, ...], int | None, int]:
    """The sandbox, effective deny list and holder (pid, start time) from a container.json."""
    raw = meta.get("sandbox")
    sandbox = SandboxView()
    if isinstance(raw, dict):
        sandbox = SandboxView(
            allow_syscalls=tuple(str(x) for x in raw.get("allow_syscalls", [])),
            allow_raw_sockets=bool(raw.get("allow_raw_sockets", False)),
            capabilities=tuple(str(x) for x in raw.get("capabilities", [])),
            host_network=bool(raw.get("host_network", False)),
            allow_host_root=bool(raw.get("allow_host_root", False)),
        )
    eff = meta.get("effective_deny_syscalls")
    effective = (
        tuple(str(x) for x in eff)
        if isinstance(eff, list)
        else tuple(sorted(syscalls.name_of(n) for n in kernel_deny))
    )
    holder = meta.get("holder")
    if isinstance(holder, dict) and isinstance(holder.get("pid"), int):
        return sandbox, effective, int(holder["pid"]), int(holder.get("start_time") or 0)
    return sandbox, effective, None, 0


def _cmdline(pid: int) -> tuple[str, ...]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(_MAX_ARGV_BYTES)
    except OSError:
        return ()
    return tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a)


_CHUNK = 32 * 1024


def _tail_offset(path: str, lines: int) -> int:
    """Offset where the last ``lines`` lines of ``path`` start."""
    try:
        floor = logfiles.tail_floor(path)  # below it, bytes a rotation released (a hole)
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            pos = end
            seen = 0
            while pos > floor:
                step = min(_CHUNK, pos - floor)
                pos -= step
                f.seek(pos)
                block = f.read(step)
                # A trailing newline ends the last line; it does not start a new one.
                if pos + step == end and block.endswith(b"\n"):
                    block = block[:-1]
                idx = len(block)
                while True:
                    idx = block.rfind(b"\n", 0, idx)
                    if idx < 0:
                        break
                    seen += 1
                    if seen == lines:
                        return pos + idx + 1
            return floor
    except OSError:
        return 0


def _follow_logs(
    proc: _Process,
    follow: bool,
    tail_lines: int,
    is_active: Callable[[], bool],
    closed: threading.Event,
    *,
    watch: LogWatch,
) -> Iterator[LogChunkView]:
    streams = [("stdout", proc.stdout_path), ("stderr", proc.stderr_path)]
    offsets = {name: (_tail_offset(path, tail_lines) if tail_lines > 0 else 0) for name, path in streams}
    # Following: the log watch wakes us when a file changes or the process exits; no polling here.
    follower = watch.follow((proc.stdout_path, proc.stderr_path), proc.exited.is_set) if follow else None
    try:
        while True:
            if follower is not None:
                follower.wake.clear()  # before reading: a change after the read wakes us again
            exited = proc.exited.is_set()  # observed before reading: data written before exit gets drained
            progressed = False
            for name, path in streams:
                try:
                    data, offsets[name] = logfiles.read_from(path, offsets[name], _CHUNK)
                except FileNotFoundError:
                    continue
                if data:
                    offsets[name] += len(data)
                    progressed = True
                    yield LogChunkView(stream=name, data=data)
            if progressed:
                continue
            if follower is None or exited or closed.is_set() or not is_active():
                return
            follower.wake.wait(watch.idle_wake)
    finally:
        if follower is not None:
            watch.unfollow(follower)
