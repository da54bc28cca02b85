"""Reconciler: finishes work that a crash or an unreachable agent left half done.

Rounds resume records unchanged for ``min_age`` (10 s, so in-flight requests are left alone):

- PENDING containers (the controller died between the durable PENDING write and the agent's answer):
  create them on their host again (the agent's CreateContainer is idempotent by uid) -> CREATED, or
  FAILED with the error. An unreachable host leaves them PENDING for the next round.
- STOPPING containers: handed to the operations driver again, which keeps their persisted stop
  deadline (SIGKILL then at the latest) -> STOPPED.
- STARTING processes (Exec never heard back): LOST with a message. If the agent did start the
  process, its events still move it to RUNNING/EXITED.

Scheduling comes from the times in the database, not from the process's start: the next round
is due when the longest-waiting record (by its persisted ``updated`` time) reaches ``min_age``,
and at the latest ``interval`` (10 s) after the last round. So a controller that restarts more often
than ``interval`` still resumes overdue work at once after each start. While a round leaves work
waiting (an unreachable host), the next one comes ``interval`` later.

Comparing each agent's Sync with the database (exits the event stream missed, orphans on hosts,
what an agent lost) is the per-host reconcilers' work: :mod:`chital.controller.hostsync`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from chital.controller.agents import AgentPool
from chital.controller.containers import Containers
from chital.controller.metrics import ControllerMetrics
from chital.controller.records import ContainerRecordState, ProcessRecordState
from chital.controller.store import Store

__all__ = ["Reconciler"]

log = logging.getLogger("chital.controller.reconcile")

BATCH = 200
_PAST_DUE = 0.05


class Reconciler:
    """Resumes interrupted creates, stops and execs."""

    def __init__(
        self,
        store: Store,
        pool: AgentPool,
        containers: Containers,
        clock: Callable[[], datetime],
        *,
        metrics: ControllerMetrics,
        interval: float = 10.0,
        min_age: float = 10.0,
    ) -> None:
        self._store = store
        self._pool = pool
        self._containers = containers
        self._clock = clock
        self._metrics = metrics
        self.interval = interval
        self.min_age = min_age
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Run rounds in a background thread."""
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the current round."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def next_delay(self, backlog: int = 0) -> float:
        """Seconds until the next round: when the longest-waiting record (by its time in the
        database) reaches ``min_age``, within [0, ``interval``]; ``interval`` while the last round
        left a ``backlog`` (those records are overdue already: no busy loop)."""
        if backlog:
            return self.interval
        oldest = self._store.oldest_unfinished(
            (ContainerRecordState.PENDING, ContainerRecordState.STOPPING), ProcessRecordState.STARTING
        )
        if oldest is None:
            return self.interval
        due = (oldest - self._clock()).total_seconds() + self.min_age
        # A little past due: rounds take records strictly older than min_age.
        return min(self.interval, max(0.0, due) + _PAST_DUE)

    def _loop(self) -> None:
        delay = self._safe_delay(0)
        while not self._stop.wait(delay):
            started = time.perf_counter()
            try:
                backlog = self.run_once()
            except Exception:  # one bad round must not stop reconciliation (logged)
                log.exception("reconcile round failed")
                self._metrics.reconcile_runs.labels("failed").inc()
                backlog = 1  # try again after a full interval, not at once
            else:
                self._metrics.reconcile_runs.labels("ok").inc()
                self._metrics.reconcile_backlog.set(backlog)
                self._metrics.reconcile_last_success.set_to_current_time()
            self._metrics.reconcile_duration.observe(time.perf_counter() - started)
            delay = self._safe_delay(backlog)

    def _safe_delay(self, backlog: int) -> float:
        try:
            return self.next_delay(backlog)
        except Exception:  # the database is away: try again after a full interval (logged)
            log.exception("scheduling the next reconcile round failed")
            return self.interval

    def run_once(self) -> int:
        """One round; returns how many records still wait (the backlog)."""
        before = self._clock() - timedelta(seconds=self.min_age)
        waiting = 0
        for container in self._store.stale_containers((ContainerRecordState.PENDING,), before, BATCH):
            if self._containers.resume_create(container).state is ContainerRecordState.PENDING:
                waiting += 1
        for container in self._store.stale_containers((ContainerRecordState.STOPPING,), before, BATCH):
            # The operations driver carries stops out, by their persisted deadlines: look again.
            # It still waits (a long grace period): the next round comes a full interval later.
            self._containers.resume_stop(container.uid)
            waiting += 1
        for process in self._store.stale_processes(ProcessRecordState.STARTING, before, BATCH):
            self._store.mark_process_lost(
                process.uid, "start was never confirmed by the agent", self._clock()
            )
        return waiting
