"""One thread that notices log files growing, for every ``logs -f`` follower of the agent.

A follower used to open and read both of its process's log files every 0.1 s while nothing was
written: with hundreds of followers that is thousands of wake-ups and file opens a second, for no
output. :class:`LogWatch` instead looks at every followed file once per ``interval`` (a ``stat``,
shared by the followers of the same file) and wakes a follower only when one of its files changed
size or identity (a rotation), when its process exited, or when the agent closes. A follower also
wakes by itself every ``idle_wake`` seconds, to notice that its client left.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Follower", "LogWatch"]

log = logging.getLogger("chital.agent.logwatch")

#: How often the files are looked at (the latency a line can take to reach a follower).
DEFAULT_INTERVAL = 0.1
#: How often an idle follower wakes anyway (to see whether its client is still there).
DEFAULT_IDLE_WAKE = 1.0

_Signature = tuple[int, int, int] | None  # (device, inode, size); None: no such file


def _signature(path: str) -> _Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size)


@dataclass(eq=False)
class Follower:
    """One follower's files; ``wake`` is set when one changed or the follower should look again."""

    paths: tuple[str, ...]
    done: Callable[[], bool]  # the process has exited: wake once more to drain and end
    wake: threading.Event = field(default_factory=threading.Event)
    seen: dict[str, _Signature] = field(default_factory=dict)


class LogWatch:
    """Wakes log followers when their files change (see the module docstring)."""

    def __init__(self, interval: float = DEFAULT_INTERVAL, idle_wake: float = DEFAULT_IDLE_WAKE) -> None:
        self.interval = interval
        self.idle_wake = idle_wake
        self._lock = threading.Lock()
        self._followers: set[Follower] = set()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def follow(self, paths: tuple[str, ...], done: Callable[[], bool]) -> Follower:
        """Register a follower (its files as they are now count as seen); :meth:`unfollow` it."""
        follower = Follower(paths, done, seen={p: _signature(p) for p in paths})
        with self._lock:
            if self._closed.is_set():
                follower.wake.set()
                return follower
            self._followers.add(follower)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="chital-log-watch", daemon=True)
                self._thread.start()
        return follower

    def unfollow(self, follower: Follower) -> None:
        """Stop looking at a follower's files."""
        with self._lock:
            self._followers.discard(follower)

    def followers(self) -> int:
        """How many followers are registered."""
        with self._lock:
            return len(self._followers)

    def close(self) -> None:
        """Stop the thread and wake every follower."""
        with self._lock:
            self._closed.set()
            followers = list(self._followers)
            thread = self._thread
        for follower in followers:
            follower.wake.set()
        if thread is not None:
            thread.join(timeout=5)

    def _run(self) -> None:
        while not self._closed.wait(self.interval):
            try:
                self._look()
            except Exception:  # never let one bad file stop every follower
                log.exception("looking at followed log files failed")

    def _look(self) -> None:
        with self._lock:
            followers = list(self._followers)
        signatures: dict[str, _Signature] = {}
        for follower in followers:
            changed = follower.done()
            for path in follower.paths:
                if path not in signatures:
                    signatures[path] = _signature(path)
                if signatures[path] != follower.seen.get(path):
                    follower.seen[path] = signatures[path]
                    changed = True
            if changed:
                follower.wake.set()
