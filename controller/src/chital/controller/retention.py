"""Retention: the janitor that keeps the database from growing without bound.

Three tasks, run together in passes, each in batches (one short transaction per batch, so creates and
agent events interleave with a long clean-up):

- **Event compaction.** Events older than ``event_retention`` seconds, and those beyond the newest
  ``max_events``, are deleted, oldest first; the highest revision deleted is remembered as the
  *compacted revision*. A Watch from a revision below it answers ``OUT_OF_RANGE`` with the
  compacted revision in the message and in the trailing metadata ``chital-compact-revision``
  (:class:`chital.errdefs.OutOfRange`), as etcd does: the watcher lists again and watches from a
  newer revision. The newest event is always kept, so revisions never go back.
- **Pruning of DELETED containers.** Containers DELETED (by their last change) more than
  ``deleted_retention`` seconds ago are deleted with their processes. Nothing that is not DELETED
  is ever pruned. A create retried with the request id of a pruned container makes a new one: the
  retention period is also how long a request id is remembered after a delete.
- **Pruning of the audit log.** Entries older than ``audit_retention`` seconds (90 days) are
  deleted.

Passes are scheduled from the time of the last pass stored in the database (table ``retention``),
not from the process's start: a controller that restarts more often than ``interval`` still runs an
overdue pass at once after each start.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from chital.controller.store import Store

__all__ = ["TASKS", "RetentionJanitor", "RetentionPass", "RetentionPolicy"]

log = logging.getLogger("chital.controller.retention")

#: The janitor's tasks, as named in the ``retention`` table.
TASKS = ("events", "deleted", "audit")


@dataclass(frozen=True)
class RetentionPolicy:
    """How long the controller keeps history. 0 turns a limit off."""

    #: Seconds an event is kept (Watch can resume from it for that long).
    event_retention: float = 3600.0
    #: At most this many events are kept, the newest ones.
    max_events: int = 1_000_000
    #: Seconds a DELETED container (and its processes) is kept after its delete.
    deleted_retention: float = 3600.0
    #: Seconds an audit log entry is kept (90 days).
    audit_retention: float = 90 * 86400.0
    #: Seconds between passes.
    interval: float = 60.0
    #: Rows per transaction.
    batch: int = 1000

    def __post_init__(self) -> None:
        if min(self.event_retention, self.deleted_retention, self.audit_retention, self.max_events) < 0:
            raise ValueError("retention limits must not be negative")
        if self.interval <= 0:
            raise ValueError("the retention interval must be positive")
        if self.batch <= 0:
            raise ValueError("the retention batch must be positive")


@dataclass(frozen=True)
class RetentionPass:
    """What one pass removed."""

    events: int
    containers: int
    processes: int
    compact_revision: int
    audit: int = 0


class RetentionJanitor:
    """Runs retention passes in a background thread, every ``policy.interval`` seconds after the
    last pass recorded in the database."""

    def __init__(
        self,
        store: Store,
        policy: RetentionPolicy,
        clock: Callable[[], datetime],
        *,
        on_pass: Callable[[RetentionPass], None] | None = None,
    ) -> None:
        self._store = store
        self.policy = policy
        self._clock = clock
        self._on_pass = on_pass
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Run passes in a background thread."""
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the current batch."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def next_delay(self) -> float:
        """Seconds until the next pass is due: ``interval`` after the oldest last pass of the
        tasks in the database (0: overdue, or never run), at most ``interval``."""
        state = self._store.retention_state()
        runs = [state[t][2] if t in state else None for t in TASKS]
        if any(r is None for r in runs):
            return 0.0
        last = min(r for r in runs if r is not None)
        due = last + timedelta(seconds=self.policy.interval)
        return min(self.policy.interval, max(0.0, (due - self._clock()).total_seconds()))

    def run_once(self) -> RetentionPass:
        """One pass: compact the events, prune DELETED containers (each in batches), then record it."""
        now = self._clock()
        policy = self.policy
        events = 0
        if policy.event_retention or policy.max_events:
            # event_retention 0: no age limit; a cut-off at the epoch selects nothing by age.
            before = (
                now - timedelta(seconds=policy.event_retention) if policy.event_retention else datetime.min
            )
            more = True
            while more and not self._stop.is_set():
                removed, more = self._store.compact_events(before, policy.max_events, policy.batch)
                events += removed
        containers = processes = 0
        if policy.deleted_retention:
            before = now - timedelta(seconds=policy.deleted_retention)
            while not self._stop.is_set():
                pruned, their_processes = self._store.prune_deleted(before, policy.batch)
                containers += pruned
                processes += their_processes
                if pruned < policy.batch:
                    break
        audit = 0
        if policy.audit_retention:
            before = now - timedelta(seconds=policy.audit_retention)
            while not self._stop.is_set():
                removed = self._store.prune_audit(before, policy.batch)
                audit += removed
                if removed < policy.batch:
                    break
        self._store.record_retention_pass(TASKS, self._clock())
        state = self._store.retention_state()
        result = RetentionPass(events, containers, processes, state.get("events", (0, 0, None))[0], audit)
        if events or containers or audit:
            log.info(
                "retention: %d events compacted (compacted revision %d), %d deleted containers and "
                "%d processes pruned, %d audit entries",
                events,
                result.compact_revision,
                containers,
                processes,
                audit,
            )
        return result

    def _loop(self) -> None:
        delay = self._safe_delay()
        while not self._stop.wait(delay):
            try:
                result = self.run_once()
            except Exception:  # the database is away, or a bug: try again after a full interval (logged)
                log.exception("retention pass failed")
                delay = self.policy.interval
                continue
            if self._on_pass is not None:
                self._on_pass(result)
            delay = self._safe_delay()

    def _safe_delay(self) -> float:
        try:
            return self.next_delay()
        except Exception:  # the database is away: try again after a full interval (logged)
            log.exception("scheduling the next retention pass failed")
            return self.policy.interval
