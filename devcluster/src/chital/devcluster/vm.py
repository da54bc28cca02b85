"""Boot a Debian kernel under QEMU (TCG) with the host root shared read-only, and drive it.

The guest is a busybox initramfs whose ``/init`` loads the virtio/9p drivers, mounts the host's ``/``
read-only over 9p at ``/newroot``, puts fresh proc/sys/dev/devpts/cgroup2 and tmpfs ``/tmp``, ``/run``,
``/var/tmp`` on top, optionally insmods ``chital.ko`` and brings up user networking, and then serves a
tiny **command channel**: a writable 9p share of a per-guest directory under ``<repo>/.state/vm/``,
mounted in the guest at the *same* path. The host drops ``q/<id>.cmd`` (a shell script); the guest runs
it chrooted into the host root with stdout+stderr to ``q/<id>.out`` and writes the exit status to
``q/<id>.rc``. Commands run in the background, so one guest can run a long-lived agent and still
answer ``run()`` calls. The serial console goes to ``console.log``; :meth:`GuestVM.check_splats`
scans it (and the guest's dmesg, saved at power-off) for kernel WARN/BUG/oops lines.

Why files over 9p and not a virtio-serial socket: no daemon is needed in the guest beyond busybox
sh, output is on the host disk as it is produced (streaming is ``tail``), and a crashed harness
leaves every command's output behind for debugging.
"""

from __future__ import annotations

import atexit
import contextlib
import gzip
import io
import lzma
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .kernel import Kernel, repo_root
from .splats import KernelSplatError, Splat, find_splats

__all__ = [
    "BASE_MODULES",
    "CommandHandle",
    "GuestError",
    "GuestVM",
    "build_module",
    "free_port",
    "running_guests",
    "stop_guest_dir",
]

#: Drivers the initramfs loads (with their dependencies): PCI transport, 9p, network, virtio-serial.
BASE_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "virtio_net")

GUEST_ADDR = "10.0.2.15"  # slirp's usual guest address
GUEST_GW = "10.0.2.2"


class GuestError(RuntimeError):
    """The guest did not boot, did not answer, or a command failed to start."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- module build


def build_launcher() -> Path:
    """Build the agent's launcher (``agent/launcher/chital-launch``) on the host: guests see the
    checkout read-only and cannot build it themselves. Quick when it is fresh."""
    src = repo_root() / "agent" / "launcher"
    proc = subprocess.run(["make", "-s", "-C", str(src)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise GuestError(f"cannot build the launcher:\n{proc.stdout}{proc.stderr}")
    return src / "chital-launch"


def build_module(
    kernel: Kernel,
    src: Path | None = None,
    out_dir: Path | None = None,
    make_args: Sequence[str] = (),
) -> Path:
    """Build ``chital.ko`` for ``kernel`` from a temporary copy of ``kmod/``; return the .ko path.

    The source tree stays clean (kbuild writes its objects next to the sources). The result is
    copied to ``out_dir`` (default ``<repo>/.state/vm/build/<release>/``).
    """
    src = src or repo_root() / "kmod"
    out_dir = out_dir or repo_root() / ".state" / "vm" / "build" / kernel.release
    out_dir.mkdir(parents=True, exist_ok=True)
    junk = shutil.ignore_patterns(
        "*.o", "*.ko", "*.mod", "*.mod.c", ".*.cmd", "Module.symvers", "modules.order", ".tmp*"
    )
    with tempfile.TemporaryDirectory(prefix="chital-kmod-") as tmp:
        work = Path(tmp) / "kmod"
        shutil.copytree(src, work, ignore=junk, symlinks=True)
        cmd = ["make", "-C", str(kernel.build_dir), f"M={work}", *make_args, "modules"]
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
        (out_dir / f"build.{os.getpid()}.log").write_text(proc.stdout + proc.stderr)
        (out_dir / f"build.{os.getpid()}.log").replace(out_dir / "build.log")
        if proc.returncode != 0:
            raise GuestError(
                f"module build failed ({' '.join(cmd)}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
            )
        kos = list(work.rglob("*.ko"))
        if not kos:
            raise GuestError(f"module build produced no .ko in {work}")
        for ko in kos:  # copy, then rename: a concurrent run never reads half a module
            tmp_ko = out_dir / f".{ko.name}.{os.getpid()}"
            shutil.copy2(ko, tmp_ko)
            tmp_ko.replace(out_dir / ko.name)
    return out_dir / "chital.ko" if (out_dir / "chital.ko").exists() else out_dir / kos[0].name


# --------------------------------------------------------------------------- initramfs


class _Cpio:
    """A minimal writer for the ``newc`` cpio format the kernel unpacks as initramfs."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 1
        self._dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        name_b = name.encode() + b"\0"
        fields = [
            self._ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data),
            0, 0, rdev[0], rdev[1], len(name_b), 0,
        ]  # fmt: skip
        self._ino += 1
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._buf.write(hdr + name_b)
        self._buf.write(b"\0" * (-(len(hdr) + len(name_b)) % 4))
        self._buf.write(data)
        self._buf.write(b"\0" * (-len(data) % 4))

    def mkdir(self, path: str) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in self._dirs:
                self._dirs.add(d)
                self._entry(d, stat.S_IFDIR | 0o755)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.mkdir(os.path.dirname(path.strip("/")))
        self._entry(path.strip("/"), stat.S_IFREG | mode, data)

    def symlink(self, path: str, target: str) -> None:
        self.mkdir(os.path.dirname(path.strip("/")))
        self._entry(path.strip("/"), stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self.mkdir(os.path.dirname(path.strip("/")))
        self._entry(path.strip("/"), stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        data = self._buf.getvalue()
        return data + b"\0" * (-len(data) % 512)


def _module_closure(kernel: Kernel, names: Iterable[str]) -> list[str]:
    """Paths (relative to modules_dir) of ``names`` and their dependencies, dependencies first."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (kernel.modules_dir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        base = os.path.basename(path).split(".ko")[0].replace("-", "_")
        by_name[base] = path
    builtin = set()
    builtin_file = kernel.modules_dir / "modules.builtin"
    if builtin_file.exists():
        for line in builtin_file.read_text().splitlines():
            builtin.add(os.path.basename(line).split(".ko")[0].replace("-", "_"))
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for d in deps.get(path, []):
            visit(d)
        order.append(path)

    for name in names:
        key = name.replace("-", "_")
        if key in by_name:
            visit(by_name[key])
        elif key not in builtin:
            raise GuestError(f"kernel {kernel.release} has no module {name}")
    return order


def _read_module(path: Path) -> bytes:
    """A module's bytes, decompressed (busybox insmod does not decompress)."""
    if path.suffix == ".xz":
        return lzma.decompress(path.read_bytes())
    if path.suffix == ".zst":
        return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes())
    return path.read_bytes()


_INIT = r"""#!/bin/busybox sh
# chital guest init (generated by chital.devcluster.vm; see that module's docstring)
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "chital-init: $*"; }
for m in @MODULES@; do insmod "/modules/$m" || say "insmod $m failed"; done
R=/newroot
X=@XCHG@
O9P=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o $O9P,ro,cache=loose host $R || { say "cannot mount host root"; poweroff -f; }
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 shm $R/dev/shm
# Paths the guest needs (the checkout, its venv) may lie under a directory that gets a fresh tmpfs
# (a checkout in /tmp): hold them by a bind mount first, then put them back on top of the tmpfs.
i=0
for k in @KEEP@; do
  mkdir -p "/keep/$i" && mount -o bind "$R$k" "/keep/$i"; i=$((i + 1))
done
for d in /tmp /var/tmp /run @TMPFS@; do mount -t tmpfs -o mode=1777 tmpfs "$R$d"; done
i=0
for k in @KEEP@; do
  if [ ! -d "$R$k" ]; then
    mkdir -p "$R$k" && mount -o bind "/keep/$i" "$R$k" || say "cannot keep $k visible"
  fi
  i=$((i + 1))
done
mkdir -p "$R$X" 2>/dev/null
mount -t 9p -o $O9P xchg "$R$X" || { say "cannot mount xchg"; poweroff -f; }
Q="$R$X/q"
mkdir -p "$Q"
hostname @HOSTNAME@
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
  ip addr add @GUEST_ADDR@/24 dev eth0 && ip link set eth0 up && ip route add default via @GUEST_GW@
fi
if [ -e /chital.ko ]; then
  insmod /chital.ko @KO_ARGS@; echo $? > "$R$X/insmod.rc"
fi
uname -r > "$R$X/ready"
say "ready"
while :; do
  for f in "$Q"/*.cmd; do
    [ -e "$f" ] || continue
    id=${f##*/}; id=${id%.cmd}
    mv "$f" "$Q/$id.run" || continue
    (
      chroot $R /bin/sh "$X/q/$id.run" > "$Q/$id.out" 2>&1 < /dev/null
      echo $? > "$Q/$id.rc.tmp"
      mv "$Q/$id.rc.tmp" "$Q/$id.rc"
    ) &
  done
  [ -e "$Q/poweroff" ] && break
  sleep 0.1
done
say "powering off"
dmesg > "$R$X/dmesg.txt"
sync
umount "$R$X"
poweroff -f
"""


# --------------------------------------------------------------------------- the guest


def running_guests(base: Path | None = None) -> list[tuple[Path, int]]:
    """Run directories (and QEMU pids) of guests still running, e.g. a detached dev cluster's."""
    base = base or repo_root() / ".state" / "vm"
    found = []
    for d in sorted(base.glob("*/q")):
        run_dir = d.parent
        if _qemu_alive(run_dir):
            found.append((run_dir, int((run_dir / "qemu.pid").read_text())))
    return found


def stop_guest_dir(run_dir: Path, timeout: float = 30.0) -> None:
    """Stop a guest started by another process (``die_with_parent=False``), by its run directory.

    Asks for a clean power-off through the command channel, then SIGTERM, then SIGKILL, always by
    the pid recorded in ``qemu.pid`` and only if that pid is still this guest's QEMU.
    """
    if not _qemu_alive(run_dir):
        return
    pid = int((run_dir / "qemu.pid").read_text())
    with contextlib.suppress(OSError):
        (run_dir / "q" / "poweroff").write_text("")
    for sig, wait in ((None, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if sig is not None and _qemu_alive(run_dir):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while _qemu_alive(run_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _qemu_alive(run_dir):
            break
    with contextlib.suppress(FileNotFoundError):
        (run_dir / "qemu.pid").unlink()


@dataclass
class CommandHandle:
    """A command started in the guest; its output accumulates in ``out_path``."""

    vm: GuestVM
    id: str
    out_path: Path
    rc_path: Path
    _offset: int = 0

    def poll(self) -> int | None:
        """The exit status, or None while it runs."""
        try:
            return int(self.rc_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def read_new(self) -> bytes:
        """Output produced since the previous call."""
        try:
            with self.out_path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return b""
        self._offset += len(data)
        return data

    def archive(self) -> None:
        """Move a finished command's files to ``q/done/``: the guest polls ``q/`` and a long-lived
        guest (a dev cluster host) would otherwise list ever more files on every poll."""
        if self.poll() is None:
            return
        done = self.out_path.parent / "done"
        done.mkdir(exist_ok=True)
        for p in (self.out_path, self.rc_path, self.out_path.with_suffix(".run")):
            with contextlib.suppress(FileNotFoundError):
                p.rename(done / p.name)
        self.out_path = done / self.out_path.name
        self.rc_path = done / self.rc_path.name

    def output(self) -> str:
        try:
            return self.out_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait(self, timeout: float | None = None, stream: IO[bytes] | None = None) -> int:
        """Wait for the exit status, copying output to ``stream`` as it appears."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rc = self.poll()
            if stream is not None:
                data = self.read_new()
                if data:
                    stream.write(data)
                    stream.flush()
            if rc is not None:
                if stream is not None:
                    data = self.read_new()
                    if data:
                        stream.write(data)
                        stream.flush()
                return rc
            if not self.vm.alive():
                raise GuestError(f"guest {self.vm.name} died while running command {self.id}")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"command {self.id} still running after {timeout} s")
            time.sleep(0.05)


#: Directories of finished guests kept for their logs (the newest ones).
KEEP_RUNS = 40


def _qemu_alive(run_dir: Path) -> bool:
    try:
        pid = int((run_dir / "qemu.pid").read_text())
    except (FileNotFoundError, ValueError):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"qemu" in cmdline and str(run_dir).encode() in cmdline


def _prune_old_runs(base: Path) -> None:
    """Delete the oldest finished guest directories beyond :data:`KEEP_RUNS` (running ones stay)."""
    if not base.is_dir():
        return
    finished = [d for d in base.iterdir() if (d / "q").is_dir() and not _qemu_alive(d)]
    finished.sort(key=lambda d: d.stat().st_mtime, reverse=True)
    for d in finished[KEEP_RUNS:]:
        shutil.rmtree(d, ignore_errors=True)


_running: set[GuestVM] = set()
_running_lock = threading.Lock()


def _stop_all_at_exit() -> None:
    for vm in list(_running):
        with contextlib.suppress(Exception):
            vm.stop(timeout=5)


atexit.register(_stop_all_at_exit)


@dataclass(eq=False)
class GuestVM:
    """One QEMU guest. Use as a context manager, or call :meth:`start` and :meth:`stop`.

    ``forward_ports`` maps guest TCP ports to host ports on 127.0.0.1 (0 = pick a free one; the
    chosen ports are in :attr:`host_ports` after :meth:`start`). ``module`` is a built ``chital.ko``
    to insmod at boot (``insmod_args`` go to insmod). ``die_with_parent`` makes QEMU exit when this
    process dies (keep it for tests; a detached dev cluster turns it off and tracks the pid file).
    """

    kernel: Kernel
    name: str = "guest"
    memory: int = 1024
    cpus: int = 1
    module: Path | None = None
    insmod_args: Sequence[str] = ()
    forward_ports: Mapping[int, int] = field(default_factory=dict)
    network: bool | None = None  # default: on when ports are forwarded
    extra_tmpfs: Sequence[str] = ()  # more guest paths (absolute, existing on the host) to put tmpfs on
    extra_modules: Sequence[str] = ()
    state_dir: Path | None = None
    boot_timeout: float = 120.0
    die_with_parent: bool = True
    cmdline_extra: str = ""
    #: ``-accel`` value. KVM hangs on these machines; single-threaded TCG is also the only mode in
    #: which ftrace text patching under load is reliable. ``$CHITAL_QEMU_ACCEL`` overrides.
    accel: str = field(default_factory=lambda: os.environ.get("CHITAL_QEMU_ACCEL", "tcg,thread=single"))

    host_ports: dict[int, int] = field(default_factory=dict, init=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    dir: Path = field(default=Path(), init=False)
    boot_seconds: float = field(default=0.0, init=False)
    _t0: float = field(default=0.0, init=False, repr=False)

    # ----------------------------------------------------------------- paths
    @property
    def console_path(self) -> Path:
        return self.dir / "console.log"

    @property
    def dmesg_path(self) -> Path:
        return self.dir / "dmesg.txt"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> GuestVM:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Build the initramfs, start QEMU and wait until the guest's command channel answers."""
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start QEMU and return at once (several guests then boot in parallel); see :meth:`wait_ready`.

        Call it from a thread that outlives the guest: with ``die_with_parent`` the kernel kills QEMU
        when the *thread* that started it exits (``PR_SET_PDEATHSIG`` semantics).
        """
        base = self.state_dir or repo_root() / ".state" / "vm"
        _prune_old_runs(base)
        self.dir = base / f"{self.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        (self.dir / "q").mkdir(parents=True)
        initrd = self.dir / "initrd.cpio"
        initrd.write_bytes(self._initramfs())
        cmd = self._qemu_command(initrd)
        (self.dir / "qemu.cmd").write_text(shlex.join(cmd) + "\n")
        self._t0 = time.monotonic()
        with (self.dir / "qemu.out").open("wb") as qemu_out:
            # No preexec_fn: Python code between fork and exec runs gRPC's fork handlers in a process
            # where gRPC is active, which aborted QEMU's child now and then. setpriv (util-linux)
            # sets the parent-death signal after the exec instead; process_group=0 is done by
            # _posixsubprocess in C. A ^C at the terminal then reaches the harness, which powers off.
            if self.die_with_parent:
                cmd = ["setpriv", "--pdeathsig", "KILL", "--", *cmd]
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=qemu_out,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        (self.dir / "qemu.pid").write_text(f"{self.proc.pid}\n")
        with _running_lock:
            _running.add(self)

    def wait_ready(self) -> None:
        """Wait until the guest booted (and insmod succeeded); stop it and raise on failure."""
        try:
            self._wait_ready(self._t0)
        except BaseException:
            self.stop(timeout=2, check=False)
            raise
        self.boot_seconds = time.monotonic() - self._t0

    def _wait_ready(self, t0: float) -> None:
        ready = self.dir / "ready"
        while not ready.exists():
            if self.proc is not None and self.proc.poll() is not None:
                qemu_out = (self.dir / "qemu.out").read_text()[-2000:]
                raise GuestError(
                    f"qemu exited ({self.proc.returncode}) before the guest was ready; "
                    f"console tail:\n{self.console_tail()}\nqemu: {qemu_out}"
                )
            if time.monotonic() - t0 > self.boot_timeout:
                raise GuestError(
                    f"guest {self.name} not ready after {self.boot_timeout} s; console tail:\n"
                    f"{self.console_tail()}"
                )
            time.sleep(0.05)
        if self.module is not None:
            rc = (self.dir / "insmod.rc").read_text().strip()
            if rc != "0":
                raise GuestError(f"insmod chital.ko failed (rc {rc}); console tail:\n{self.console_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0, check: bool = False) -> None:
        """Power the guest off (clean: dmesg is saved), killing QEMU if it does not exit in time.

        With ``check`` the console and dmesg are scanned afterwards and :class:`KernelSplatError` raised.
        """
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                (self.dir / "q" / "poweroff").write_text("")
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        with _running_lock:
            _running.discard(self)
        for leftover in ("qemu.pid", "initrd.cpio"):  # the logs stay for debugging; the initrd is rebuilt
            with contextlib.suppress(FileNotFoundError):
                (self.dir / leftover).unlink()
        if check:
            self.check_splats()

    # ----------------------------------------------------------------- commands
    def spawn(
        self,
        argv: Sequence[str] | str,
        env: Mapping[str, str] | None = None,
        cwd: str = "/",
    ) -> CommandHandle:
        """Start a command in the guest (chrooted into the host root) and return at once."""
        if not self.alive():
            raise GuestError(f"guest {self.name} is not running")
        cid = uuid.uuid4().hex[:12]
        q = self.dir / "q"
        lines = ["set -e"]
        for k, v in (env or {}).items():
            lines.append(f"export {k}={shlex.quote(v)}")
        lines.append(f"cd {shlex.quote(cwd)}")
        lines.append("set +e")
        body = argv if isinstance(argv, str) else shlex.join(argv)
        lines.append(f"exec {body}" if not isinstance(argv, str) else body)
        tmp = q / f"{cid}.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        tmp.rename(q / f"{cid}.cmd")
        return CommandHandle(self, cid, q / f"{cid}.out", q / f"{cid}.rc")

    def run(
        self,
        argv: Sequence[str] | str,
        env: Mapping[str, str] | None = None,
        cwd: str = "/",
        timeout: float | None = None,
        stream: IO[bytes] | None = None,
    ) -> tuple[int, str]:
        """Run a command in the guest to completion: ``(exit status, stdout+stderr)``."""
        h = self.spawn(argv, env=env, cwd=cwd)
        rc = h.wait(timeout=timeout, stream=stream)
        output = h.output()
        h.archive()
        return rc, output

    # ----------------------------------------------------------------- logs
    def console_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.console_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no console log)"

    def splats(self) -> list[tuple[str, Splat]]:
        found = []
        for p in (self.console_path, self.dmesg_path):
            if p.exists():
                found += [(str(p), s) for s in find_splats(p.read_text(errors="replace").splitlines())]
        return found

    def check_splats(self) -> None:
        """Raise :class:`KernelSplatError` if the console or the saved dmesg shows a kernel splat."""
        found = self.splats()
        if found:
            source = found[0][0]
            raise KernelSplatError([s for src, s in found if src == source], source)

    # ----------------------------------------------------------------- internals
    def _initramfs(self) -> bytes:
        busybox = shutil.which("busybox") or "/bin/busybox"
        out = subprocess.run(["file", "-L", busybox], check=False, capture_output=True, text=True).stdout
        if "dynamically linked" in out:
            raise GuestError(f"{busybox} is not static: install busybox-static")
        cpio = _Cpio()
        for d in ("bin", "sbin", "proc", "sys", "dev", "newroot", "modules", "tmp"):
            cpio.mkdir(d)
        cpio.chardev("dev/console", 5, 1)
        cpio.chardev("dev/null", 1, 3, 0o666)
        cpio.file("bin/busybox", Path(busybox).read_bytes(), 0o755)
        names = []
        for rel in _module_closure(self.kernel, [*BASE_MODULES, *self.extra_modules]):
            name = os.path.basename(rel).split(".ko")[0] + ".ko"
            cpio.file(f"modules/{name}", _read_module(self.kernel.modules_dir / rel))
            names.append(name)
        if self.module is not None:
            cpio.file("chital.ko", Path(self.module).read_bytes())
        mount_point = str(self.dir)
        init = (
            _INIT.replace("@MODULES@", " ".join(names))
            .replace("@XCHG@", shlex.quote(mount_point))
            .replace("@TMPFS@", " ".join(shlex.quote(p) for p in self.extra_tmpfs))
            .replace("@KEEP@", " ".join(shlex.quote(str(p)) for p in self._keep_visible()))
            .replace("@HOSTNAME@", shlex.quote(self.name))
            .replace("@GUEST_ADDR@", GUEST_ADDR)
            .replace("@GUEST_GW@", GUEST_GW)
            .replace("@KO_ARGS@", " ".join(shlex.quote(a) for a in self.insmod_args))
        )
        cpio.file("init", init.encode(), 0o755)
        return cpio.finish()

    def _keep_visible(self) -> list[Path]:
        """The checkout and the Python running it: the guest runs both from the shared host root."""
        paths = {repo_root().resolve(), Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
        return sorted(paths)

    def _qemu_command(self, initrd: Path) -> list[str]:
        append = f"console=ttyS0 loglevel=5 panic=-1 rdinit=/init {self.cmdline_extra}".strip()
        cmd = [
            "qemu-system-x86_64",
            "-accel", self.accel,
            "-m", str(self.memory),
            "-smp", str(self.cpus),
            "-nodefaults",
            "-display", "none",
            "-no-reboot",
            "-serial", f"file:{self.console_path}",
            "-kernel", str(self.kernel.image),
            "-initrd", str(initrd),
            "-append", append,
            "-pidfile", str(self.dir / "qemu.pidfile"),
            "-virtfs",
            "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={self.dir},mount_tag=xchg,security_model=none,multidevs=remap",
        ]  # fmt: skip
        net = self.network if self.network is not None else bool(self.forward_ports)
        if net:
            fwd = ""
            for guest_port, host_port in self.forward_ports.items():
                hp = host_port or free_port()
                self.host_ports[guest_port] = hp
                fwd += f",hostfwd=tcp:127.0.0.1:{hp}-:{guest_port}"
            cmd += ["-netdev", f"user,id=n0,restrict=on{fwd}", "-device", "virtio-net-pci,netdev=n0"]
        return cmd
