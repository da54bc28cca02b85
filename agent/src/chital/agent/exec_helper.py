"""``chital-exec``: the small program between the agent and a container's process.

The agent never forks itself (gRPC threads run in it; FACTS.md): it starts this helper with
fork+exec, writes a JSON :class:`LaunchSpec`-shaped object to the helper's stdin and closes it, and
reads the status fd given as ``--status-fd``. The helper sets up the process and ``execvpe``\\ s the
program. On success the status fd (close-on-exec) just closes; on failure the helper writes one JSON
line ``{"stage", "errno", "message"}`` there and exits 127.

Spec keys: ``argv``, ``env``, ``cwd`` (inside the root), ``root``, ``uid``, ``gid`` (null: unchanged),
``container_id`` (kernel id), ``device`` (path of /dev/chital, or null for the fake device).
stdout/stderr are already the log files (the agent opened them).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

__all__ = ["main"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class _StageError(Exception):
    def __init__(self, stage: str, err: OSError) -> None:
        super().__init__(stage)
        self.stage = stage
        self.err = err


def _enter_sandbox(spec: dict[str, Any]) -> None:
    """With the real module: enter the container root and join the container before exec.

    HOOK for LinuxDevice (the kernel-device issue finishes and tests it in a guest). Order:
    1. Import LinuxDevice and open ``spec["device"]`` while the host's root is still visible (neither
       the venv nor /dev/chital exist inside the container root).
    2. chroot(root) + chdir(cwd): ``chroot`` is denied to members, so it happens before joining.
    3. ADD_PROC(self) through the open device: joining before exec means the program's first
       instruction already runs as a member (no race with its forks). Then close the device fd.
    Namespaces + pivot_root, no_new_privs, capability drop and seccomp (DESIGN.md §5, defense in
    depth) belong here too; they are not done yet.
    """
    try:
        from chital.agent.device.linux import LinuxDevice  # noqa: PLC0415 - only with the real module
        from chital.errdefs import ChitalError  # noqa: PLC0415
    except ImportError as exc:
        raise _StageError("attach", OSError(38, f"no LinuxDevice: {exc}")) from exc
    try:
        device = LinuxDevice(spec["device"], check_version=False)
    except (OSError, ChitalError) as exc:
        raise _StageError("attach", OSError(19, f"cannot open {spec['device']}: {exc}")) from exc
    try:
        try:
            os.chroot(spec["root"])
        except OSError as exc:
            raise _StageError("chroot", exc) from exc
        try:
            os.chdir(spec["cwd"])
        except OSError as exc:
            raise _StageError("chdir", exc) from exc
        try:
            device.add_proc(int(spec["container_id"]), os.getpid())
        except (OSError, ChitalError) as exc:
            raise _StageError("attach", OSError(1, f"ADD_PROC(self) failed: {exc}")) from exc
    finally:
        device.close()


def _run(spec: dict[str, Any]) -> None:
    # The spec came on stdin; the program gets /dev/null there.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
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
        _run(spec)
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
