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
- cancels the run on SIGTERM (ansible-runner's own handler in the main thread: it kills the
  playbook's process group and reports ``canceled``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["main", "reduce_event"]

# What the controller reads of a task result (a result's stdout can be megabytes).
_RESULT_KEYS = ("changed", "msg", "stderr", "reason", "rc")
_DATA_KEYS = ("host", "task", "ignore_errors", "ok", "changed", "failures", "dark", "skipped")
_MAX_TEXT = 4096


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


def main() -> int:
    """Run the playbook described on stdin; events and the result on stdout."""
    import ansible_runner  # type: ignore[import-untyped]  # noqa: PLC0415 - ships no types; only here

    kwargs = json.load(sys.stdin)
    out = sys.stdout

    def on_event(event: dict[str, Any]) -> bool:
        out.write(json.dumps(reduce_event(event), default=str) + "\n")
        out.flush()
        return True

    # No cancel_callback: in the main thread ansible-runner installs its SIGTERM/SIGINT handler.
    result = ansible_runner.run(**kwargs, event_handler=on_event, quiet=True)
    out.write(json.dumps({"result": {"status": str(result.status), "rc": result.rc}}) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
