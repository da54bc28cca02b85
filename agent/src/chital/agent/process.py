"""The process runner: starts programs through the exec helper and reaps them.

Never ``fork()`` without ``exec`` here (gRPC threads run in this process): programs are started with
``subprocess`` (fork+exec) of :mod:`chital.agent.exec_helper`, which applies the spec and execs. One
reaper thread waits on pidfds (``os.pidfd_open`` + epoll) and calls ``waitpid`` for our children.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import select
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from chital.errdefs import (
    ChitalError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    from_errno,
)

__all__ = ["ExitStatus", "LaunchSpec", "ProcessRunner", "decode_wait_status"]

log = logging.getLogger("chital.agent.process")

#: How long the exec helper may take to exec the program (Python start-up is ~30 ms here).
_EXEC_DEADLINE_S = 30.0


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: str  # absolute, inside the container root
    root: str  # host path of the container root
    uid: int | None
    gid: int | None
    stdout_path: str
    stderr_path: str
    container_id: int  # kernel id
    device_path: str | None  # None: fake device, no chroot, no self-attach
    cgroup: str | None = None  # the container's cgroup v2 group; None: no limits


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


OnExit = Callable[[int, ExitStatus], None]


class ProcessRunner:
    """Starts processes via the exec helper; reports every exit once through ``on_exit(pid, status)``."""

    def __init__(self, on_exit: OnExit, *, helper_cmd: Sequence[str] | None = None) -> None:
        self._on_exit = on_exit
        self._helper_cmd = list(helper_cmd or [sys.executable, "-I", "-m", "chital.agent.exec_helper"])
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._pidfds: dict[int, int] = {}  # pid -> pidfd
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._held: dict[int, int] = {}  # pid -> pidfd held for signals only (exits come from the kernel)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopping = False
        self._thread = threading.Thread(target=self._reap_loop, name="chital-reaper", daemon=True)
        self._thread.start()

    def start(self, spec: LaunchSpec) -> int:
        """Start a program; returns its pid once it has exec'd. Errors of the helper are mapped to errdefs."""
        payload = json.dumps(
            {
                "argv": list(spec.argv),
                "env": dict(spec.env),
                "cwd": spec.cwd,
                "root": spec.root,
                "uid": spec.uid,
                "gid": spec.gid,
                "container_id": spec.container_id,
                "device": spec.device_path,
                "cgroup": spec.cgroup,
            }
        ).encode()
        status_r, status_w = os.pipe()
        try:
            with open(spec.stdout_path, "ab") as out, open(spec.stderr_path, "ab") as err:
                proc = subprocess.Popen(
                    [*self._helper_cmd, "--status-fd", str(status_w)],
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=err,
                    pass_fds=(status_w,),
                    start_new_session=True,  # our signals (Ctrl-C, agent stop) never reach it
                    env={"PATH": os.environ.get("PATH", ""), "GRPC_VERBOSITY": "ERROR"},
                )
        except OSError as exc:
            os.close(status_r)
            os.close(status_w)
            raise from_errno(exc.errno or errno.EIO, "cannot start the exec helper") from exc
        os.close(status_w)
        with self._lock:
            self._children[proc.pid] = proc  # keep Popen alive so it never reaps behind our back
        try:
            assert proc.stdin is not None
            try:
                proc.stdin.write(payload)
                proc.stdin.close()
            except BrokenPipeError:
                pass
            report = _read_all(status_r)
        except DeadlineExceeded:
            proc.kill()
            proc.wait()
            with self._lock:
                self._children.pop(proc.pid, None)
            raise
        finally:
            os.close(status_r)
        if report:
            proc.wait()
            with self._lock:
                self._children.pop(proc.pid, None)
            raise _start_error(report, spec.argv[0])
        return proc.pid

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
            for proc in self._children.values():
                proc.returncode = 0  # stop Popen.__del__ from tracking it; we leave it running
            self._children.clear()
        self._sel.close()
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


def _read_all(fd: int, deadline_s: float = _EXEC_DEADLINE_S) -> bytes:
    """Read until EOF; raises DeadlineExceeded if the helper neither execs nor fails in time."""
    chunks: list[bytes] = []
    end = time.monotonic() + deadline_s
    while True:
        left = end - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise DeadlineExceeded(f"the exec helper did not exec within {deadline_s:g} s")
        data = os.read(fd, 65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def _start_error(report: bytes, program: str) -> ChitalError:
    try:
        info = json.loads(report.decode(errors="replace").strip().splitlines()[0])
        stage, err, message = str(info["stage"]), int(info["errno"]), str(info["message"])
    except (ValueError, KeyError, IndexError, TypeError):
        return from_errno(errno.EIO, f"exec helper failed: {report[:200]!r}")
    if stage == "exec" and err == errno.ENOENT:
        return NotFound(f"executable {program!r} not found")
    if stage == "chdir":
        return InvalidArgument(f"working directory: {message}")
    if stage == "spec":
        return InvalidArgument(message)
    return from_errno(err, f"{stage} failed for {program!r} ({message})")
