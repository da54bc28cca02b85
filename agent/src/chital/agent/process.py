"""The process runner: starts programs through the launcher and reaps the ones that are our children.

Never ``fork()`` without ``exec`` here (gRPC threads run in this process): every process is started
by ``chital-launch`` (``agent/launcher/chital-launch.c``, a small static C program started fresh each
time), with ``os.posix_spawn`` (vfork+exec: no Python between the two). The spec goes to the
launcher's stdin as NUL-terminated ``key=value`` records (never argv: the environment may hold
secrets, and argv is world-readable in ``/proc/<pid>/cmdline``); reports come back on a status
pipe, one line each (``pid N``, ``ready``, ``err <stage> <errno> <message>``). Three modes:

- **holder** (:meth:`ProcessRunner.start_holder`, real device only): one per container. New mount, pid,
  UTS, IPC and (unless ``host_network``) network namespaces, a fresh /proc and a minimal /dev, the
  hostname, ``lo`` up, ``pivot_root`` with the old root detached; then pid 1 of the container drops
  every privilege and reaps orphans until the agent kills it (its death kills the whole pid
  namespace). Not a module member.
- **exec** (:meth:`ProcessRunner.start` with ``LaunchSpec.holder``): joins the cgroup and the holder's
  namespaces and root, forks the child into the pid namespace (clone3 into the cgroup), and reports
  its pid. While ``attach(pid)`` runs (the agent: ADD_PROC through its own device handle, since the
  control device has a single owner) the child drops the capability bounding set,
  ambient/inheritable, groups/gid/uid, sets ``no_new_privs``, rlimits, closes inherited fds, resets
  every signal disposition and the mask and installs the seccomp filter; then it waits on the "go"
  pipe and, on "g", execs: the program's first instruction runs as a member, fully dropped. The
  launcher exits at once; the program's parent is the holder, which reaps it; its exit with
  the real status comes from the module's EXIT event; signals go through a pidfd of its pid.
- **plain** (no ``holder``): hollow agents with the fake device, on a host, no isolation: cgroup, cwd
  (a host path inside the root dir), uid/gid when asked, fds and signals reset, exec in place. The
  launcher *becomes* the program, our child, reaped here by a thread waiting on pidfds (epoll).
  With ``LaunchSpec.exit_path`` (what the runtime always asks for) it stays instead as the
  program's parent, a shim like containerd's: the pid the agent tracks is the shim's, which
  forwards every signal but SIGKILL to the program, writes the program's wait status to
  ``exit_path`` when it ends, then ends the same way; the program dies with it (PDEATHSIG). An exit
  while no agent runs is so kept on disk, as the kernel module's queue keeps it on a real host.

Where the launcher is: ``--launcher`` of ``chital-agent serve``, else ``$CHITAL_LAUNCHER``, else the
checkout's ``agent/launcher/chital-launch`` (built there by ``make launcher`` or scripts/bootstrap.sh;
rebuilt on first use when its source is newer and a compiler is at hand), else ``chital-launch`` on
PATH or ``/usr/libexec/chital/chital-launch``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import selectors
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from chital.errdefs import (
    ChitalError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
    from_errno,
)

__all__ = ["ExitStatus", "HolderSpec", "LaunchSpec", "ProcessRunner", "decode_wait_status", "find_launcher"]

log = logging.getLogger("chital.agent.process")

#: How long the launcher may take to report (it is a static C program: milliseconds, even under TCG).
_EXEC_DEADLINE_S = 30.0
_CHECKOUT_DIR = Path(__file__).resolve().parents[3] / "launcher"
_INSTALLED = "/usr/libexec/chital/chital-launch"


def find_launcher(explicit: str | None = None) -> str:
    """The launcher binary (see the module docstring for the search order); Unavailable if none."""
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise Unavailable(f"launcher {explicit} is not an executable file")
        return explicit
    env = os.environ.get("CHITAL_LAUNCHER")
    if env:
        return find_launcher(env)
    source = _CHECKOUT_DIR / "chital-launch.c"
    binary = _CHECKOUT_DIR / "chital-launch"
    if source.exists():
        stale = not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime
        if stale and shutil.which("make") and os.access(_CHECKOUT_DIR, os.W_OK):
            proc = subprocess.run(
                ["make", "-s", "-C", str(_CHECKOUT_DIR)], capture_output=True, text=True, check=False
            )
            if proc.returncode != 0:
                log.warning("cannot build the launcher: %s", proc.stderr.strip()[-500:])
        if binary.exists():
            return str(binary)
    found = shutil.which("chital-launch") or (_INSTALLED if os.access(_INSTALLED, os.X_OK) else None)
    if found is None:
        raise Unavailable("chital-launch is not built: run `make launcher` (or scripts/bootstrap.sh)")
    return found


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: str  # absolute, inside the container root
    root: str  # host path of the container root
    uid: int | None  # None: unchanged (plain mode only)
    gid: int | None
    stdout_path: str
    stderr_path: str
    cgroup: str | None = None  # the container's cgroup v2 group; None: no limits
    holder: int | None = None  # the container's holder pid: a sandboxed launch (exec mode)
    capabilities: int = 0  # bit mask of the capabilities the program keeps
    seccomp_deny: Sequence[int] = ()  # system call numbers the seccomp filter answers with EPERM
    deny_raw_sockets: bool = True
    # Plain mode: the launcher stays as a shim and writes the wait status here (see
    # chital-launch.c), so an exit while no agent runs is not lost. "": exec in place.
    exit_path: str = ""


@dataclass(frozen=True, slots=True)
class HolderSpec:
    root: str
    hostname: str
    network: bool  # an own network namespace (False: the host's, for host_network)


@dataclass(frozen=True, slots=True)
class ExitStatus:
    exit_code: int  # -1 when killed by a signal or unknown
    signal: int  # 0 unless killed by a signal
    wait_status: int | None  # None when unknown (a process that is not our child)


def decode_wait_status(status: int) -> ExitStatus:
    if os.WIFSIGNALED(status):
        return ExitStatus(exit_code=-1, signal=os.WTERMSIG(status), wait_status=status)
    if os.WIFEXITED(status):
        return ExitStatus(exit_code=os.WEXITSTATUS(status), signal=0, wait_status=status)
    return ExitStatus(exit_code=-1, signal=0, wait_status=status)


def encode_spec(fields: Sequence[tuple[str, str]]) -> bytes:
    """The launcher's spec: ``key=value`` records, each NUL-terminated (values never hold a NUL)."""
    out = bytearray()
    for key, value in fields:
        raw = value.encode("utf-8", "surrogateescape")
        if b"\0" in raw:
            raise InvalidArgument(f"{key} holds a NUL byte")
        out += key.encode() + b"=" + raw + b"\0"
    return bytes(out)


OnExit = Callable[[int, ExitStatus], None]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Child:
    """A launcher we spawned (our child until reaped): kill and wait by pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int | None:
        """Its exit status as Popen reports it (None if still running after ``timeout``)."""
        end = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while self.returncode is None:
            try:
                pid, raw = os.waitpid(self.pid, 0 if end is None else os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1
                break
            if pid:
                self.returncode = os.waitstatus_to_exitcode(raw)
                break
            if end is not None and time.monotonic() >= end:
                return None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return self.returncode


class _StatusPipe:
    """The read end of the launcher's status pipe: lines with a deadline, then EOF."""

    def __init__(self, fd: int, deadline_s: float = _EXEC_DEADLINE_S) -> None:
        self._fd = fd
        self._buf = b""
        self._eof = False
        self._end = time.monotonic() + deadline_s

    def line(self) -> bytes | None:
        """The next line without its newline; None at EOF."""
        while b"\n" not in self._buf and not self._eof:
            left = self._end - time.monotonic()
            if left <= 0 or not select.select([self._fd], [], [], left)[0]:
                raise DeadlineExceeded("the launcher did not report in time")
            data = os.read(self._fd, 4096)
            if data:
                self._buf += data
            else:
                self._eof = True
        if b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            return line
        if self._buf:
            line, self._buf = self._buf, b""
            return line
        return None

    def close(self) -> None:
        os.close(self._fd)


class ProcessRunner:
    """Starts holders and processes via the launcher; reports the exits of its children once
    through ``on_exit(pid, status)`` (plain mode, and pids given to :meth:`watch`)."""

    def __init__(self, on_exit: OnExit, *, launcher: str | None = None) -> None:
        self._on_exit = on_exit
        self._launcher = launcher or find_launcher()
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._pidfds: dict[int, int] = {}  # pid -> pidfd
        self._children: dict[int, _Child] = {}
        self._held: dict[int, int] = {}  # pid -> pidfd held for signals only (exits come from the kernel)
        self._devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopping = False
        self._thread = threading.Thread(target=self._reap_loop, name="chital-reaper", daemon=True)
        self._thread.start()

    @property
    def launcher(self) -> str:
        return self._launcher

    def _spawn(
        self, spec: bytes, stdout: int | None, stderr: int | None, *, go: bool
    ) -> tuple[_Child, _StatusPipe, int | None]:
        """Spawn the launcher: spec on its stdin, the status pipe on fd 3, the go pipe on fd 4;
        stdout/stderr None: /dev/null until the launcher opens the spec's log files."""
        stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        go_r = go_w = None
        if go:
            go_r, go_w = os.pipe2(os.O_CLOEXEC)
        null = self._devnull
        # Sources above the targets (0..4), so that no dup2 overwrites a source still to be copied.
        sources = [stdin_r, null if stdout is None else stdout, null if stderr is None else stderr, status_w]
        sources += [go_r] if go_r is not None else []
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in sources]
        args = [self._launcher, "--status-fd", "3"] + (["--go-fd", "4"] if go else [])
        try:
            pid = os.posix_spawn(
                self._launcher,
                args,
                {},
                file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(high)],
                setsid=True,  # our signals (Ctrl-C, agent stop) never reach it
            )
        except OSError as exc:
            for fd in (status_r, stdin_w, go_w):
                if fd is not None:
                    os.close(fd)
            # The launcher is the agent's own program: a missing or broken one is the agent's
            # fault (Internal), whatever the errno says; running out of resources is not.
            err = from_errno(exc.errno or errno.EIO, f"cannot start the launcher {self._launcher}")
            if not isinstance(err, (ResourceExhausted, Unavailable)):
                err = Internal(err.message)
            raise err from exc
        finally:
            for fd in [*high, stdin_r, status_w] + ([go_r] if go_r is not None else []):
                os.close(fd)
        try:
            _write_all(stdin_w, spec)
        except BrokenPipeError:
            pass  # it failed early; its report says why
        finally:
            os.close(stdin_w)
        return _Child(pid), _StatusPipe(status_r), go_w

    def start_holder(self, spec: HolderSpec, log_path: str) -> int:
        """Start a container's namespace holder; returns its pid once its namespaces are ready."""
        fields = [
            ("mode", "holder"),
            ("root", spec.root),
            ("hostname", spec.hostname),
            ("netns", "1" if spec.network else "0"),
        ]
        with open(log_path, "ab") as out:
            proc, status, _ = self._spawn(encode_spec(fields), out.fileno(), out.fileno(), go=False)
        pid = 0
        ready = False
        try:
            while (line := status.line()) is not None:
                if line.startswith(b"pid "):
                    pid = int(line[4:])
                elif line == b"ready":
                    ready = True
                elif line.startswith(b"err "):
                    raise _start_error(line, "the namespace holder")
        except DeadlineExceeded:
            proc.kill()
            if pid:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            raise
        finally:
            status.close()
            proc.wait()
        if not (pid and ready):
            raise from_errno(errno.EIO, f"the namespace holder did not start (launcher rc {proc.returncode})")
        return pid

    def start(self, spec: LaunchSpec, attach: Callable[[int], None] | None = None) -> int:
        """Start a program; returns its pid once it has exec'd. Errors of the launcher are mapped to
        errdefs. With ``spec.holder``, ``attach(pid)`` runs while the child waits, before any of the
        program runs (exceptions abort the start); the program is then not our child."""
        fields: list[tuple[str, str]] = []
        if spec.holder is not None:
            fields += [
                ("mode", "exec"),
                ("holder", str(spec.holder)),
                ("cwd", spec.cwd),
                ("uid", str(65534 if spec.uid is None else spec.uid)),
                ("gid", str(65534 if spec.gid is None else spec.gid)),
                ("caps", str(spec.capabilities)),
                ("raw", "1" if spec.deny_raw_sockets else "0"),
            ]
            fields += [("deny", str(nr)) for nr in spec.seccomp_deny]
        else:
            fields += [
                ("mode", "plain"),
                ("cwd", os.path.join(spec.root, spec.cwd.lstrip("/"))),
                ("uid", "none" if spec.uid is None else str(spec.uid)),
                ("gid", "none" if spec.gid is None else str(spec.gid)),
            ]
            if spec.exit_path:
                fields.append(("exitfile", spec.exit_path))
        if spec.cgroup:
            fields.append(("cgroup", spec.cgroup))
        fields += [("arg", a) for a in spec.argv]
        fields += [("env", f"{k}={v}") for k, v in spec.env.items()]
        # The launcher opens the log files itself (before it enters the container): two fewer opens here.
        fields += [("stdout", spec.stdout_path), ("stderr", spec.stderr_path)]
        payload = encode_spec(fields)
        proc, status, go_w = self._spawn(payload, None, None, go=spec.holder is not None)
        if spec.holder is None:
            return self._finish_plain(proc, status, spec)
        assert go_w is not None
        try:
            return self._finish_exec(proc, status, go_w, spec, attach)
        finally:
            with contextlib.suppress(OSError):
                os.close(go_w)
            status.close()
            proc.wait(timeout=_EXEC_DEADLINE_S)

    def _finish_plain(self, proc: _Child, status: _StatusPipe, spec: LaunchSpec) -> int:
        with self._lock:
            self._children[proc.pid] = proc  # the program is our child: the reaper waits for it
        try:
            report = status.line()
        except DeadlineExceeded:
            proc.kill()
            proc.wait()
            with self._lock:
                self._children.pop(proc.pid, None)
            raise
        finally:
            status.close()
        if report is not None:
            proc.wait()
            with self._lock:
                self._children.pop(proc.pid, None)
            raise _start_error(report, spec.argv[0])
        return proc.pid

    def _finish_exec(
        self,
        proc: _Child,
        status: _StatusPipe,
        go_w: int,
        spec: LaunchSpec,
        attach: Callable[[int], None] | None,
    ) -> int:
        try:
            first = status.line()
        except DeadlineExceeded:
            proc.kill()
            raise
        if first is None or not first.startswith(b"pid "):
            raise _start_error(first or b"", spec.argv[0])
        pid = int(first[4:])
        try:
            if attach is not None:
                attach(pid)
        except BaseException:
            os.close(go_w)  # the child sees EOF and exits without running anything
            raise
        os.write(go_w, b"g")
        report = status.line()  # None (EOF): the status fd was closed by the exec
        if report is not None:
            raise _start_error(report, spec.argv[0])
        return pid

    def watch(self, pid: int) -> None:
        """Start reporting the exit of ``pid``: call it after recording the process, so no exit is lost.

        A child that exited meanwhile stays a zombie until we reap it, so its pidfd is simply ready.
        For a process that is not our child the status is unknown (``wait_status`` None).
        """
        self._watch(pid)

    def hold(self, pid: int) -> bool:
        """Keep a pidfd of ``pid`` for signals without reporting its exit (the kernel's EXIT event,
        with the real status, does that for processes that are not our children). False if gone."""
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        with self._lock:
            if self._stopping:
                os.close(pidfd)
                return False
            old = self._held.pop(pid, None)
            if old is not None:
                os.close(old)
            self._held[pid] = pidfd
        return True

    def release(self, pid: int) -> None:
        """Drop the pidfd of :meth:`hold` (once the exit is recorded)."""
        with self._lock:
            pidfd = self._held.pop(pid, None)
        if pidfd is not None:
            os.close(pidfd)

    def send_signal(self, pid: int, sig: int) -> None:
        """Signal ``pid`` through its pidfd when we hold one (immune to pid reuse)."""
        with self._lock:
            pidfd = self._pidfds.get(pid, self._held.get(pid))
            try:
                if pidfd is not None:
                    signal.pidfd_send_signal(pidfd, sig)
                else:
                    os.kill(pid, sig)
            except ProcessLookupError as exc:
                raise FailedPrecondition(f"process {pid} has exited") from exc
            except PermissionError as exc:
                raise from_errno(exc.errno or errno.EPERM, f"cannot signal process {pid}") from exc

    def is_watched(self, pid: int) -> bool:
        with self._lock:
            return pid in self._pidfds

    def close(self) -> None:
        """Stop the reaper (processes keep running: the kernel is the source of truth)."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        with self._lock:
            for fd in [*self._pidfds.values(), *self._held.values()]:
                os.close(fd)
            self._pidfds.clear()
            self._held.clear()
            self._children.clear()  # left running
        self._sel.close()
        os.close(self._devnull)
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- reaper ----------------------------------------------------------------------------------

    def _watch(self, pid: int) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            # Gone (and reaped by someone else) already: report an unknown status.
            self._on_exit(pid, ExitStatus(exit_code=-1, signal=0, wait_status=None))
            return
        with self._lock:
            if self._stopping:
                os.close(pidfd)
                return
            old = self._pidfds.pop(pid, None)
            if old is not None:
                self._sel.unregister(old)
                os.close(old)
            self._pidfds[pid] = pidfd
            self._sel.register(pidfd, selectors.EVENT_READ, pid)
        os.write(self._wake_w, b"w")

    def _reap_loop(self) -> None:
        while True:
            for key, _ in self._sel.select():
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    with self._lock:
                        if self._stopping:
                            return
                    continue
                self._reap(int(key.data), key.fd)

    def _reap(self, pid: int, pidfd: int) -> None:
        with self._lock:
            if self._pidfds.get(pid) != pidfd:
                return
            self._sel.unregister(pidfd)
            del self._pidfds[pid]
            os.close(pidfd)
            proc = self._children.pop(pid, None)
        status: ExitStatus
        if proc is not None:
            try:
                _, raw = os.waitpid(pid, 0)
                status = decode_wait_status(raw)
                proc.returncode = status.exit_code if status.signal == 0 else -status.signal
            except ChildProcessError:
                status = ExitStatus(exit_code=-1, signal=0, wait_status=None)
                proc.returncode = -1
        else:
            status = ExitStatus(exit_code=-1, signal=0, wait_status=None)
        try:
            self._on_exit(pid, status)
        except Exception:
            log.exception("exit callback failed for pid %d", pid)


#: Failed exec errnos that are the caller's mistake (never Internal).
_EXEC_ERRORS: dict[int, type[ChitalError]] = {
    errno.EACCES: PermissionDenied,  # not executable, or a directory on the way is not searchable
    errno.ENOEXEC: InvalidArgument,  # not a format the kernel runs (no #! line, wrong architecture)
    errno.ELOOP: InvalidArgument,
    errno.ENOTDIR: InvalidArgument,
    errno.EISDIR: InvalidArgument,
    errno.E2BIG: InvalidArgument,
    errno.ETXTBSY: FailedPrecondition,
}
#: (stage, errno) -> class; errno 0: any errno of that stage.
_STAGE_ERRORS: dict[tuple[str, int], type[ChitalError]] = {
    ("chdir", 0): InvalidArgument,
    ("spec", 0): InvalidArgument,
    ("namespaces", errno.ESRCH): FailedPrecondition,  # the container's namespace holder is gone
}


def _start_error(report: bytes, program: str) -> ChitalError:
    """Map a launcher report (``err <stage> <errno> <message>``) to errdefs; never Internal for the
    usual mistakes (a missing program, not executable, a bad format, a symlink loop)."""
    parts = report.decode(errors="replace").strip().split(" ", 3)
    try:
        if parts[0] != "err" or len(parts) < 3:
            raise ValueError(report)
        stage, err = parts[1], int(parts[2])
        message = parts[3] if len(parts) > 3 else os.strerror(err)
    except (ValueError, IndexError):
        return from_errno(errno.EIO, f"launcher failed: {report[:200]!r}")
    if stage == "exec" and err == errno.ENOENT:
        return NotFound(f"executable {program!r} not found")
    cls = (
        _EXEC_ERRORS.get(err)
        if stage == "exec"
        else _STAGE_ERRORS.get((stage, err), _STAGE_ERRORS.get((stage, 0)))
    )
    if cls is not None:
        return cls(f"{stage}: cannot start {program!r}: {message}")
    return from_errno(err, f"{stage} failed for {program!r} ({message})")
