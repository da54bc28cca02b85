"""``python -m chital.controller.rollout_runner``: one playbook run by ansible-runner, in a process of
its own.

The controller never calls ansible-runner in its own process: ansible-runner starts
``ansible-playbook`` through pexpect, which forks and runs Python code in the child before it execs,
and a fork of a process whose gRPC threads are busy can crash in that window (gRPC's fork handlers
are skipped, its event engine's are not: the child died of a signal before ansible-playbook ran).
This helper is started with ``subprocess`` (fork and exec at once, in C), holds no gRPC, and:

- reads the run's keyword arguments for ``ansible_runner.run`` as one JSON object on stdin;
- writes each event, reduced to what the controller uses, as one JSON line on stdout, then a last
  line ``{"result": {"status": ..., "rc": ...}}``;
- cancels the run on SIGTERM: first SIGTERM to ``ansible-playbook``, whose handler stops its
  workers (since ansible-core 2.19 each worker is a session of its own, so ansible-runner's SIGKILL
  of the playbook's process group alone would leave them running the task); after
  ``CANCEL_GRACE`` seconds ansible-runner's SIGKILL of the group follows. The helper is a child
  subreaper, so what the killed playbook leaves (a worker's module process on a local connection)
  becomes its child, and a cancelled run ends with every such process killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from typing import Any

__all__ = ["main", "reduce_event"]

# What the controller reads of a task result (a result's stdout can be megabytes).
_RESULT_KEYS = ("changed", "msg", "stderr", "reason", "rc")
_DATA_KEYS = ("host", "task", "ignore_errors", "ok", "changed", "failures", "dark", "skipped")
_MAX_TEXT = 4096
CANCEL_GRACE = 10.0


def _short(value: Any) -> Any:
    return value[:_MAX_TEXT] if isinstance(value, str) else value


def reduce_event(event: dict[str, Any]) -> dict[str, Any]:
    """The parts of an ansible-runner event that the controller uses."""
    data = event.get("event_data") or {}
    out: dict[str, Any] = {k: data[k] for k in _DATA_KEYS if k in data}
    res = data.get("res")
    if isinstance(res, dict):
        out["res"] = {k: _short(res[k]) for k in _RESULT_KEYS if k in res}
    return {
        "event": event.get("event", ""),
        "uuid": event.get("uuid", ""),
        "counter": event.get("counter", 0),
        "event_data": out,
    }


_PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    """Orphaned descendants are re-parented to this process instead of init (Linux >= 3.4)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _children() -> list[int]:
    me = str(os.getpid())
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses; ppid follows the last ')'.
        if stat.rsplit(")", 1)[-1].split()[1] == me:
            out.append(int(entry))
    return out


def kill_leftovers(deadline: float = 10.0) -> None:
    """SIGKILL every remaining descendant (each with its process group) and reap them."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        children = _children()
        if not children:
            return
        for pid in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def main() -> int:
    """Run the playbook described on stdin; events and the result on stdout."""
    import ansible_runner  # type: ignore[import-untyped]  # noqa: PLC0415 - ships no types; only here

    kwargs = json.load(sys.stdin)
    out = sys.stdout
    playbook_pid: list[int] = []  # ansible-playbook's pid, from its first event
    cancel_asked: list[float] = []
    terminated: list[bool] = []

    def on_signal(signum: int, frame: Any) -> None:
        if not cancel_asked:
            cancel_asked.append(time.monotonic())

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def cancel_callback() -> bool:
        """True (ansible-runner SIGKILLs the playbook's group) once the playbook had its grace."""
        if not cancel_asked:
            return False
        if not playbook_pid:
            return True
        if not terminated:
            terminated.append(True)
            try:
                os.kill(playbook_pid[0], signal.SIGTERM)
            except ProcessLookupError:
                return True
        return time.monotonic() - cancel_asked[0] > CANCEL_GRACE

    def on_event(event: dict[str, Any]) -> bool:
        if not playbook_pid and isinstance(event.get("pid"), int):
            playbook_pid.append(event["pid"])
        out.write(json.dumps(reduce_event(event), default=str) + "\n")
        out.flush()
        return True

    _become_subreaper()
    result = ansible_runner.run(**kwargs, event_handler=on_event, cancel_callback=cancel_callback, quiet=True)
    if cancel_asked:
        kill_leftovers()
    out.write(json.dumps({"result": {"status": str(result.status), "rc": result.rc}}) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
