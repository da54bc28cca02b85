"""Removal of the state directories (``containers/<uid>/``: logs, process records, metadata) of
containers that are gone, so that an agent's disk use does not grow with every container it ever ran.

When a directory goes:

- **After DestroyContainer**, once nothing needs it: its members are gone (the destroy waits for
  that) and none of its exited processes is still in the agent's memory of exited processes (the
  last ``exited_process_limit``), which is what lets StreamLogs read a finished process's logs
  after its container was stopped. The directory goes when the last of them leaves that memory;
  a destroyed container none of whose processes is remembered loses its directory at once.
- **At start-up**, after recovery: directories of containers that neither the kernel nor the
  recovery knows. A directory is kept, and reported, while a process recorded in it as running
  still runs (same pid and start time): its files are never removed under a live process.

Removal happens on a background thread (:class:`DirReaper`), never under the runtime's lock, and
checks once more that the container is not live (a create with the same uid came meanwhile).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["DirReaper", "live_pids_recorded", "stale_dirs"]

log = logging.getLogger("chital.agent.dirs")


def live_pids_recorded(cdir: Path, start_time: Callable[[int], int | None]) -> list[int]:
    """Pids that ``cdir``'s process records name as running and that still run the same process
    (same start time in /proc), so the same program, not a reused pid."""
    live: list[int] = []
    for path in sorted((cdir / "processes").glob("*.json")):
        try:
            data = json.loads(path.read_text())
            pid = int(data["pid"])
            state = str(data.get("state") or "")
            ticks = int(data.get("start_ticks") or 0)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not pid or state.upper().endswith("EXITED"):
            continue
        now = start_time(pid)
        if now is not None and (not ticks or now == ticks):
            live.append(pid)
    return live


def stale_dirs(
    containers_root: Path, known: Callable[[str], bool], start_time: Callable[[int], int | None]
) -> list[Path]:
    """Directories under ``containers_root`` of containers that ``known`` does not know and in
    which no recorded process still runs (those are logged and kept)."""
    stale: list[Path] = []
    try:
        entries = sorted(containers_root.iterdir())
    except OSError:
        return stale
    for cdir in entries:
        if not cdir.is_dir() or cdir.is_symlink() or known(cdir.name):
            continue
        running = live_pids_recorded(cdir, start_time)
        if running:
            log.warning(
                "directory of unknown container %s kept: processes recorded in it still run (%s)",
                cdir.name,
                ", ".join(map(str, running[:10])),
            )
            continue
        stale.append(cdir)
    return stale


class DirReaper:
    """Removes container directories on a background thread; ``is_live(uid)`` is asked again
    right before each removal."""

    def __init__(self, containers_root: Path, is_live: Callable[[str], bool]) -> None:
        self._root = containers_root
        self._is_live = is_live
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="dir-reaper", daemon=True)
        self._thread.start()
        self.removed = 0

    def remove(self, uid: str) -> None:
        """Remove ``containers/<uid>`` soon (unless the container is live again by then)."""
        if uid and os.sep not in uid and uid not in (".", ".."):
            self._queue.put(uid)

    def remove_now(self, uid: str) -> bool:
        """Remove ``containers/<uid>`` in this thread; whether it was removed."""
        if self._is_live(uid):
            return False
        cdir = self._root / uid
        if not cdir.is_dir() or cdir.is_symlink():
            return False
        shutil.rmtree(cdir, ignore_errors=True)
        if cdir.exists():
            log.warning("could not remove the directory of container %s", uid)
            return False
        self.removed += 1
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Finish what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            uid = self._queue.get()
            if uid is None:
                return
            try:
                self.remove_now(uid)
            except Exception:  # one directory must not stop the others (logged)
                log.exception("removing the directory of container %s failed", uid)
