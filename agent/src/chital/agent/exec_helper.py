"""``chital-exec``: the small program between the agent and a container's process.

The agent never forks itself (gRPC threads run in it; FACTS.md): it starts this helper with
fork+exec, writes a JSON :class:`LaunchSpec`-shaped object to the helper's stdin and closes it, and
reads the status fd given as ``--status-fd``. The helper sets up the process and ``execvpe``\\ s the
program. On success the status fd (close-on-exec) just closes; on failure the helper writes one JSON
line ``{"stage", "errno", "message"}`` there and exits 127.

Spec keys: ``argv``, ``env``, ``cwd`` (inside the root), ``root``, ``uid``, ``gid`` (null: unchanged),
``container_id`` (kernel id), ``device`` (path of /dev/chital, or null for the fake device),
``cgroup`` (host path of the container's cgroup v2 group, or null: no limits).
stdout/stderr are already the log files (the agent opened them).

Order, so that the user's program never runs an instruction outside its container:

1. the cgroup: write our own pid to ``cgroup.procs`` (limits apply from here on, to us and to the
   program we become; the cgroupfs is not visible inside the root, so this comes first);
2. the real device only: open ``/dev/chital`` while the host's root is visible, ``chroot(root)`` +
   ``chdir(cwd)``, ``ADD_PROC(self)`` (after it, chroot/mount/unshare/pivot_root and the device are
   denied to us by the module: that is why the root is entered first), close the device;
3. credentials: supplementary groups cleared, gid, uid;
4. ``PR_SET_NO_NEW_PRIVS`` (a setuid binary in the root cannot regain privileges);
5. every inherited fd above 2 closed (the status fd is close-on-exec);
6. ``execve`` with exactly the spec's environment.

Why chroot and not a mount namespace + pivot_root: the module refuses chroot, pivot_root, mount,
unshare(CLONE_NEW*) and setns to members and confines every file open to the root in the kernel, so
the classic chroot escapes (a second chroot, fchdir to an fd from outside, mounting) fail at the
module; the remaining pivot_root benefit (the old root unreachable even by a privileged member)
is the next defense-in-depth step (DESIGN.md §5), together with a pid namespace, a capability drop
and seccomp.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import sys
from typing import Any

__all__ = ["main"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_PR_SET_NO_NEW_PRIVS = 38
_MAX_FD = 1 << 20


class _StageError(Exception):
    def __init__(self, stage: str, err: OSError) -> None:
        super().__init__(stage)
        self.stage = stage
        self.err = err


def _join_cgroup(group: str) -> None:
    """Move this process into the container's cgroup (before anything of the program runs)."""
    try:
        fd = os.open(os.path.join(group, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise _StageError("cgroup", exc) from exc


def _no_new_privs() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise _StageError("no_new_privs", OSError(err, os.strerror(err)))


def _close_inherited_fds(keep: int) -> None:
    """Close every fd above 2 except ``keep`` (close-on-exec already; it reports exec failures)."""
    if keep > 3:
        os.closerange(3, keep)
    os.closerange(max(3, keep + 1), _MAX_FD)


def _enter_sandbox(spec: dict[str, Any]) -> None:
    """With the real module: enter the container root and join the container before exec.

    1. Open ``spec["device"]`` while the host's root is still visible (neither the venv nor
       /dev/chital exist inside the container root).
    2. chroot(root) + chdir(cwd): ``chroot`` is denied to members, so it happens before joining.
    3. ADD_PROC(self) through the open device: joining before exec means the program's first
       instruction already runs as a member (no race with its forks). Then close the device fd.

    The ioctl is made here with the ABI mirror alone, not through ``LinuxDevice``: that one pulls in
    ``chital.errdefs`` and with it grpc (~20 MB more), and this process already counts against the
    container's memory limit. A version mismatch cannot happen here: the agent checked the module.
    Namespaces + pivot_root, capability drop and seccomp (DESIGN.md §5, defense in depth) are not
    done yet (see the module docstring).
    """
    import fcntl  # noqa: PLC0415 - only with the real module

    from chital.agent.device import abi  # noqa: PLC0415

    try:
        fd = os.open(spec["device"], os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:  # no device (module unloaded): Unavailable for the caller
        raise _StageError("attach", OSError(errno.ENODEV, f"cannot open {spec['device']}: {exc}")) from exc
    try:
        try:
            os.chroot(spec["root"])
        except OSError as exc:
            raise _StageError("chroot", exc) from exc
        try:
            os.chdir(spec["cwd"])
        except OSError as exc:
            raise _StageError("chdir", exc) from exc
        proc = abi.Proc(id=int(spec["container_id"]), pid=os.getpid(), flags=0)
        try:
            fcntl.ioctl(fd, abi.IOC_ADD_PROC, proc, True)
        except OSError as exc:
            raise _StageError("attach", exc) from exc
    finally:
        os.close(fd)


def _run(spec: dict[str, Any], status_fd: int) -> None:
    # The spec came on stdin; the program gets /dev/null there.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    if spec.get("cgroup"):
        _join_cgroup(str(spec["cgroup"]))
    if spec.get("device"):
        _enter_sandbox(spec)
    else:
        # Fake device: NOT sandboxed. The program runs on the host, cwd resolved inside the root dir.
        host_cwd = os.path.join(spec["root"], spec["cwd"].lstrip("/"))
        try:
            os.chdir(host_cwd)
        except OSError as exc:
            raise _StageError("chdir", exc) from exc
    gid, uid = spec.get("gid"), spec.get("uid")
    try:
        if gid is not None:
            os.setgroups([])
            os.setgid(int(gid))
        if uid is not None:
            os.setuid(int(uid))
    except OSError as exc:
        raise _StageError("credentials", exc) from exc
    _no_new_privs()
    _close_inherited_fds(status_fd)
    env = {str(k): str(v) for k, v in spec.get("env", {}).items()}
    env.setdefault("PATH", DEFAULT_PATH)
    argv = [str(a) for a in spec["argv"]]
    try:
        os.execvpe(argv[0], argv, env)  # noqa: S606 - exec without a shell is the point
    except OSError as exc:
        raise _StageError("exec", exc) from exc


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    status_fd = -1
    if len(args) == 2 and args[0] == "--status-fd":
        status_fd = int(args[1])
    else:
        print("usage: chital-exec --status-fd N  (JSON spec on stdin)", file=sys.stderr)
        return 2
    try:
        # Closed by the exec on success: the agent sees EOF and knows the program runs.
        os.set_inheritable(status_fd, False)
        spec = json.loads(sys.stdin.buffer.read())
        _run(spec, status_fd)
    except _StageError as exc:
        report = {
            "stage": exc.stage,
            "errno": exc.err.errno or 0,
            "message": exc.err.strerror or str(exc.err),
        }
    except (ValueError, KeyError, TypeError, OSError) as exc:
        report = {"stage": "spec", "errno": 22, "message": f"bad spec: {exc!r}"}
    os.write(status_fd, json.dumps(report).encode() + b"\n")
    return 127


if __name__ == "__main__":
    sys.exit(main())
