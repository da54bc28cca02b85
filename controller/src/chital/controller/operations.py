"""The operations driver: carries out the intent that Stop, Delete, DrainHost, CreateContainer and
Exec record, without holding an RPC thread while it takes time.

An RPC writes the desired state in one transaction and returns (see :mod:`containers` and
:mod:`hosts`); this driver then drives the agents towards it:

- **Stop** (and the stop half of a delete or a drain): the container is STOPPING with a persisted
  ``stop_deadline``. The driver sends SIGTERM to each of its live processes, and destroys the
  container on its agent (SIGKILL to whatever is left, then the kernel container, cgroup and
  membership are gone) as soon as no process is live any more, or at the deadline at the latest.
  Then it gives the exit events a moment (at most :data:`EXIT_REPORT_SECONDS`, without holding a
  thread) and records STOPPED, or DELETED when a delete was asked for. Processes whose exit was not
  reported by then become LOST; a late exit event still records the real exit.
- **Create** without ``wait`` and **Exec** without ``wait``: the agent call runs here, at once, on
  a small pool (the agent's CreateContainer and StartProcess are idempotent by uid).

Nothing of this is only in memory: after a restart, :meth:`Operations.start` reschedules every
STOPPING container from its persisted deadline (SIGTERM is sent again: harmless), and the
reconciler resumes PENDING creates and STARTING processes. An unreachable agent is retried with
backoff; when its host is LOST the store has made the container LOST, and a delete that was asked
for finishes as DELETED.

One timer thread keeps a heap of due times; agent calls run on a bounded pool of workers, at most
one at a time per container, each bounded by the agent timeout. So thousands of stops with long
grace periods hold no thread while they wait.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from chital.controller.agents import AgentPool
from chital.controller.records import ContainerRecord, ContainerRecordState
from chital.controller.store import Store
from chital.errdefs import ChitalError, FailedPrecondition, NotFound, Unavailable

__all__ = ["EXIT_REPORT_SECONDS", "Operations"]

log = logging.getLogger("chital.controller.operations")

#: After the destroy, how long the driver waits for the exit events of the killed members before it
#: records the stop (they usually arrive at once; this matters on a loaded controller).
EXIT_REPORT_SECONDS = 5.0
_EXIT_POLL = 0.2
_RETRY_MIN = 0.5
_RETRY_MAX = 10.0
_SCAN_BATCH = 10_000


@dataclass
class _Stop:
    """What the driver did so far for one STOPPING container (in memory; redone after a restart)."""

    term_sent: bool = False
    destroyed_at: float | None = None
    retry: float = _RETRY_MIN
    process_uids: set[str] = field(default_factory=set)


class Operations:
    """Drives stops (with deletes and drains), and creates and execs that did not wait."""

    def __init__(
        self,
        store: Store,
        pool: AgentPool,
        clock: Callable[[], datetime],
        *,
        workers: int = 8,
        exit_report_seconds: float = EXIT_REPORT_SECONDS,
    ) -> None:
        self._store = store
        self._pool = pool
        self._clock = clock
        self._exit_report = exit_report_seconds
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="operations")
        self._cond = threading.Condition()
        self._heap: list[tuple[float, str]] = []
        self._stops: dict[str, _Stop] = {}
        self._busy: set[str] = set()
        self._again: set[str] = set()
        self._by_process: dict[str, str] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None
        store.add_listener(self._on_commit)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Reschedule every unfinished stop from the database, then run the timer thread."""
        self._thread = threading.Thread(target=self._loop, name="operations", daemon=True)
        self._thread.start()
        self._executor.submit(self._resume_all)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the timer and the workers (unfinished work stays recorded; a restart resumes it)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _resume_all(self) -> None:
        try:
            containers = self._store.stopping_containers(_SCAN_BATCH)
        except Exception:  # the database is away: the reconciler's rounds kick them later (logged)
            log.exception("reading unfinished stops failed")
            return
        for container in containers:
            self.kick(container.uid)

    # -- requests ---------------------------------------------------------------------------------

    def kick(self, container_uid: str, delay: float = 0.0) -> None:
        """Look at a stopping container now (or after ``delay`` seconds).

        Before :meth:`start` this does nothing: a controller that does not drive stops (a follower,
        see leader.py) leaves them to the leader, whose driver finds them in the database (its
        start, the feed of state changes, the reconciler's rounds)."""
        with self._cond:
            if self._stopping or self._thread is None:
                return
            heapq.heappush(self._heap, (time.monotonic() + delay, container_uid))
            self._cond.notify()

    def submit(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` (an idempotent agent call and its record) on the workers; errors are logged."""

        def run() -> None:
            try:
                fn()
            except Exception:  # the reconciler resumes what failed here (logged)
                log.exception("operation failed")

        with self._cond:
            if self._stopping:
                return
        try:
            self._executor.submit(run)
        except RuntimeError:  # shut down meanwhile
            return

    # -- timer and workers ------------------------------------------------------------------------

    def _on_commit(self, process_uids: set[str]) -> None:
        """Store listener: a process of a container being stopped changed (it exited): look again."""
        with self._cond:
            due = {self._by_process[u] for u in process_uids if u in self._by_process}
        for uid in due:
            self.kick(uid)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = None if not self._heap else max(0.0, self._heap[0][0] - time.monotonic())
                    self._cond.wait(timeout)
                if self._stopping:
                    return
                _, uid = heapq.heappop(self._heap)
                if uid in self._busy:
                    self._again.add(uid)
                    continue
                self._busy.add(uid)
            try:
                self._executor.submit(self._step_safely, uid)
            except RuntimeError:
                return

    def _step_safely(self, uid: str) -> None:
        delay: float | None = None
        try:
            delay = self._step(uid)
        except Unavailable as exc:  # the database or the agent is away: back off
            delay = self._backoff(uid)
            log.info("stop of %s waits: %s", uid, exc.message)
        except Exception:
            delay = self._backoff(uid)
            log.exception("stop of %s failed; retrying", uid)
        finally:
            with self._cond:
                self._busy.discard(uid)
                again = uid in self._again
                self._again.discard(uid)
        if again:
            self.kick(uid)
        if delay is not None:
            self.kick(uid, delay)

    def _backoff(self, uid: str) -> float:
        with self._cond:
            st = self._stops.setdefault(uid, _Stop())
            delay = st.retry
            st.retry = min(st.retry * 2, _RETRY_MAX)
            return delay

    def _forget(self, uid: str) -> None:
        with self._cond:
            st = self._stops.pop(uid, None)
            if st is not None:
                for p in st.process_uids:
                    self._by_process.pop(p, None)

    def _step(self, uid: str) -> float | None:
        """One step of a stop; returns when to look again (None: done)."""
        try:
            record = self._store.get_container(uid)
        except NotFound:
            self._forget(uid)
            return None
        if record.state is not ContainerRecordState.STOPPING:
            if record.desired_state == ContainerRecordState.DELETED.value and record.state in (
                ContainerRecordState.LOST,
                ContainerRecordState.STOPPED,
            ):
                self._store.finish_stop(uid, self._clock())  # a delete whose host was lost meanwhile
            self._forget(uid)
            return None
        with self._cond:
            st = self._stops.setdefault(uid, _Stop())
        now = self._clock()
        to_deadline = (record.stop_deadline - now).total_seconds() if record.stop_deadline else 0.0
        if st.destroyed_at is None:
            live = self._store.live_processes(uid)
            if live and to_deadline > 0 and not st.term_sent:
                self._terminate(record, [p.uid for p in live], st)
            if live and to_deadline > 0:
                return to_deadline  # or earlier: an exit wakes it (_on_commit)
            self._destroy(record)
            st.destroyed_at = time.monotonic()
            self._watch(uid, st, [p.uid for p in live])
        waited = time.monotonic() - st.destroyed_at
        if waited < self._exit_report and self._store.live_processes(uid):
            return min(_EXIT_POLL, self._exit_report - waited)
        self._store.finish_stop(uid, self._clock())
        self._forget(uid)
        return None

    def _watch(self, uid: str, st: _Stop, process_uids: list[str]) -> None:
        with self._cond:
            for p in process_uids:
                st.process_uids.add(p)
                self._by_process[p] = uid

    def _terminate(self, record: ContainerRecord, process_uids: list[str], st: _Stop) -> None:
        """SIGTERM to each live process (an exited or unknown one is skipped)."""
        self._watch(record.uid, st, process_uids)
        if record.host_address:
            agent = self._pool.get(record.host_address)
            for p in process_uids:
                # Not started yet, or exited meanwhile: nothing to signal.
                with contextlib.suppress(NotFound, FailedPrecondition):
                    agent.signal_process(p, signal.SIGTERM)
        st.term_sent = True

    def _destroy(self, record: ContainerRecord) -> None:
        """SIGKILL what is left and remove the container from its host (no host: nothing to do)."""
        if not record.host_address:
            return
        try:
            self._pool.get(record.host_address).destroy_container(record.uid, 0.0)
        except Unavailable:
            raise
        except ChitalError as exc:
            raise Unavailable(f"destroying {record.uid} on {record.host_address} failed: {exc}") from exc

    # -- for tests and metrics ----------------------------------------------------------------------

    def pending(self) -> int:
        """Stops scheduled or running now."""
        with self._cond:
            return len({uid for _, uid in self._heap} | self._busy)
