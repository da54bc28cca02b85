"""cgroup v2 for containers: one group per container under a parent group the agent owns.

Layout: ``<cgroup2 mount>/<parent>/<container uid>`` (parent ``chital`` by default). The parent holds
no processes (cgroup v2's "no internal processes" rule): the agent itself stays where it was started,
and every container process is placed in its container's group by the launcher **before** it
enters the root and execs (``cgroup.procs`` is written by the process itself), so no instruction of the
user's program runs outside its limits.

Limits: ``memory.max`` (plus ``memory.swap.max = 0`` where swap accounting exists, so the limit is
the limit), ``pids.max``, ``cpu.max`` (millicores -> ``"<quota> <period>"`` with a 100 ms period).
Stats: ``memory.current``, ``memory.events`` (``oom_kill``), ``pids.current``, ``cpu.stat``.
Removal: ``cgroup.kill`` (Linux 5.14+; SIGKILL of each listed pid before that), wait until the group
is empty, ``rmdir``.

The manager takes its mount point as a parameter, so unit tests run it against a fake cgroupfs in a
temporary directory. Errors are ``chital.errdefs`` exceptions: no cgroup v2 is Unavailable; missing
controllers or a parent that cannot delegate them is FailedPrecondition.

Under systemd, give the agent's unit ``Delegate=yes`` and point ``--cgroup-parent`` at a group
outside the agent's own (the default top-level ``chital`` works on hosts where the agent runs as root).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from chital.errdefs import ChitalError, FailedPrecondition, InvalidArgument, Unavailable, from_errno

__all__ = [
    "CONTROLLERS",
    "CPU_PERIOD_US",
    "CgroupManager",
    "CgroupStats",
    "cpu_max_value",
    "find_cgroup2_mount",
    "open_cgroups",
]

log = logging.getLogger("chital.agent.cgroup")

#: Controllers every container group gets.
CONTROLLERS = ("cpu", "memory", "pids")
#: cpu.max period in microseconds (the kernel's default).
CPU_PERIOD_US = 100_000
_MIN_QUOTA_US = 1_000  # the kernel refuses quotas below 1 ms


@dataclass(frozen=True, slots=True)
class CgroupStats:
    memory_current_bytes: int
    oom_kills: int
    pids_current: int
    cpu_usage_usec: int


def find_cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> Path | None:
    """Mount point of the cgroup v2 hierarchy (``/sys/fs/cgroup`` preferred), or None."""
    found: list[Path] = []
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                left, sep, right = line.partition(" - ")
                if not sep or not right.split() or right.split()[0] != "cgroup2":
                    continue
                fields = left.split()
                if len(fields) >= 5:
                    point = fields[4].encode().decode("unicode_escape", errors="replace")
                    found.append(Path(point))
    except OSError:
        return None
    for p in found:
        if p == Path("/sys/fs/cgroup"):
            return p
    return found[0] if found else None


def cpu_max_value(millicores: int) -> str:
    """``cpu.max`` for a limit in millicores (0: unlimited)."""
    if millicores <= 0:
        return f"max {CPU_PERIOD_US}"
    quota = max(_MIN_QUOTA_US, millicores * CPU_PERIOD_US // 1000)
    return f"{quota} {CPU_PERIOD_US}"


def _read(path: Path) -> str:
    # Unbuffered binary: one open, one read, one close (this runs on every process start).
    try:
        with open(path, "rb", buffering=0) as f:
            return f.read().decode()
    except FileNotFoundError:
        return ""


def _read_int(path: Path) -> int:
    text = _read(path).strip()
    try:
        return int(text)
    except ValueError:
        return 0


def _keyed(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in _read(path).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _words(path: Path) -> set[str]:
    return {w.lstrip("+") for w in _read(path).split()}


class CgroupManager:
    """Container groups under ``<root>/<parent>``. Thread-safe (each call is a few file operations)."""

    def __init__(self, root: Path, parent: str = "chital") -> None:
        parent = parent.strip("/")
        if not parent or ".." in parent.split("/"):
            raise InvalidArgument(f"cgroup parent {parent!r} must be a relative path without '..'")
        self.root = Path(root)
        self.parent = self.root / parent

    def __repr__(self) -> str:
        return f"CgroupManager({str(self.parent)!r})"

    # -- setup -----------------------------------------------------------------------------------

    def setup(self) -> None:
        """Make the parent group and delegate the controllers to it. Idempotent."""
        if not (self.root / "cgroup.controllers").exists():
            raise Unavailable(f"no cgroup v2 hierarchy at {self.root} (cgroup.controllers missing)")
        available = _words(self.root / "cgroup.controllers")
        missing = [c for c in CONTROLLERS if c not in available]
        if missing:
            raise FailedPrecondition(
                f"cgroup v2 at {self.root} lacks controllers {', '.join(missing)} "
                "(hybrid cgroup v1 host? boot with systemd.unified_cgroup_hierarchy=1)"
            )
        try:
            self.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise from_errno(exc.errno or errno.EIO, f"cannot create cgroup {self.parent}") from exc
        # Each group from the root down to the parent passes the controllers on to its children.
        parts = self.parent.relative_to(self.root).parts
        for depth in range(len(parts) + 1):
            self._enable_controllers(self.root.joinpath(*parts[:depth]))

    def _enable_controllers(self, group: Path) -> None:
        control = group / "cgroup.subtree_control"
        if all(c in _words(control) for c in CONTROLLERS):
            return
        try:
            with open(control, "w") as f:
                f.write(" ".join(f"+{c}" for c in CONTROLLERS))
        except OSError as exc:
            hint = " (it holds processes: use a --cgroup-parent outside the agent's own group)"
            what = f"cannot enable {'+'.join(CONTROLLERS)} in {control}"
            raise from_errno(
                exc.errno or errno.EIO, what + (hint if exc.errno == errno.EBUSY else "")
            ) from exc
        if not all(c in _words(control) for c in CONTROLLERS):
            raise FailedPrecondition(f"{control} did not take {' '.join(CONTROLLERS)}")

    # -- groups ----------------------------------------------------------------------------------

    def path(self, uid: str) -> Path:
        if not uid or "/" in uid or uid in (".", ".."):
            raise InvalidArgument(f"bad cgroup name {uid!r}")
        return self.parent / uid

    def create(
        self, uid: str, *, memory_max_bytes: int = 0, pids_max: int = 0, cpu_max_millicores: int = 0
    ) -> Path:
        """The container's group with its limits (0: unlimited). Idempotent."""
        group = self.path(uid)
        try:
            group.mkdir(exist_ok=True)
        except OSError as exc:
            raise from_errno(exc.errno or errno.EIO, f"cannot create cgroup {group}") from exc
        self.set_limits(
            uid, memory_max_bytes=memory_max_bytes, pids_max=pids_max, cpu_max_millicores=cpu_max_millicores
        )
        return group

    def set_limits(
        self, uid: str, *, memory_max_bytes: int = 0, pids_max: int = 0, cpu_max_millicores: int = 0
    ) -> None:
        group = self.path(uid)
        self._write(group / "memory.max", str(memory_max_bytes) if memory_max_bytes > 0 else "max")
        if memory_max_bytes > 0 and (group / "memory.swap.max").exists():
            # Swapping past the limit would make a memory limit a slowness limit.
            self._write(group / "memory.swap.max", "0")
        self._write(group / "pids.max", str(pids_max) if pids_max > 0 else "max")
        self._write(group / "cpu.max", cpu_max_value(cpu_max_millicores))

    def _write(self, path: Path, value: str) -> None:
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as exc:
            raise from_errno(exc.errno or errno.EIO, f"cannot write {value!r} to {path}") from exc

    def exists(self, uid: str) -> bool:
        return self.path(uid).is_dir()

    def names(self) -> list[str]:
        """Container groups under the parent."""
        try:
            return sorted(p.name for p in self.parent.iterdir() if p.is_dir())
        except OSError:
            return []

    def pids(self, uid: str) -> list[int]:
        return [int(x) for x in _read(self.path(uid) / "cgroup.procs").split() if x.isdigit()]

    def oom_kills(self, uid: str) -> int:
        """``oom_kill`` of ``memory.events``: the kernel raises it before it sends the SIGKILL."""
        return _keyed(self.path(uid) / "memory.events").get("oom_kill", 0)

    def stats(self, uid: str) -> CgroupStats:
        group = self.path(uid)
        return CgroupStats(
            memory_current_bytes=_read_int(group / "memory.current"),
            oom_kills=_keyed(group / "memory.events").get("oom_kill", 0),
            pids_current=_read_int(group / "pids.current"),
            cpu_usage_usec=_keyed(group / "cpu.stat").get("usage_usec", 0),
        )

    def kill(self, uid: str) -> None:
        """SIGKILL everything in the group (``cgroup.kill`` where the kernel has it)."""
        group = self.path(uid)
        if not group.is_dir():
            return
        if (group / "cgroup.kill").exists():
            with contextlib.suppress(FileNotFoundError):
                self._write(group / "cgroup.kill", "1")
            return
        for pid in self.pids(uid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def remove(self, uid: str, *, timeout: float = 10.0) -> None:
        """Kill what is left in the group, wait for it to empty, remove it. Idempotent."""
        group = self.path(uid)
        if not group.is_dir():
            return
        self.kill(uid)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._remove_dir(group)
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise from_errno(exc.errno or errno.EIO, f"cannot remove cgroup {group}") from exc
            time.sleep(0.02)
            self.kill(uid)

    def _remove_dir(self, group: Path) -> None:
        """``rmdir`` (a cgroup directory goes with its interface files; tests override this)."""
        os.rmdir(group)


def open_cgroups(mode: str, *, root: Path | None = None, parent: str = "chital") -> CgroupManager | None:
    """The agent's manager: ``mode`` is ``off``, ``auto`` (use if usable, else log once and run
    without limits) or ``required`` (errdefs error when unusable)."""
    if mode not in ("off", "auto", "required"):
        raise InvalidArgument(f"cgroups mode {mode!r} is not off|auto|required")
    if mode == "off":
        return None
    mount = root if root is not None else find_cgroup2_mount()
    try:
        if mount is None:
            raise Unavailable("no cgroup v2 hierarchy is mounted (see /proc/self/mountinfo)")
        manager = CgroupManager(mount, parent)
        manager.setup()
    except (ChitalError, OSError) as exc:
        if mode == "required":
            if isinstance(exc, OSError):
                raise from_errno(exc.errno or errno.EIO, f"cgroups: {exc}") from exc
            raise
        log.warning("cgroups unavailable, containers run WITHOUT resource limits: %s", exc)
        return None
    log.info("cgroups: container groups under %s (%s)", manager.parent, "+".join(CONTROLLERS))
    return manager
