"""Restart policies: LOST containers placed again on a ready host.

A container is LOST when its host is lost (the health monitor) or when its agent no longer has it
(:mod:`chital.controller.hostsync`). Its restart policy (:class:`~chital.controller.lifecycle.RestartPolicy`,
chosen at create) decides what follows:

- ``never`` (the default): it stays LOST;
- ``on-failure``: it is placed again, at most ``max_restarts`` times (0: no limit);
- ``always``: it is placed again every time.

Attempts are spaced by :func:`~chital.controller.lifecycle.restart_delay` (1 s after the loss for
the first one, then doubling up to 5 minutes, by the restart count), from the time the container
became LOST. The time of the next attempt is written to the container (``restart_at``) before it
is due, so the backoff survives a controller restart, and rounds are scheduled from those
persisted times. An attempt moves the container LOST -> PENDING on another host chosen as for a
create (its uid and name stay; its restart count goes up) and creates it there at once. With no
ready host the attempt is scheduled again after the next delay. A container a client stopped or
deleted is never restarted, nor one the client pinned to a host (``host`` at create).

The copy left on the lost host is not forgotten: when that host comes back, its reconciler
(:mod:`chital.controller.hostsync`) finds the container placed on another host and destroys the
stale copy. Processes are not restarted: the container comes back empty (CREATED), and its
processes stay LOST; clients start them again (Watch tells them when).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from chital.controller import lifecycle
from chital.controller.containers import Containers
from chital.controller.hostsync import desired_of
from chital.controller.metrics import ControllerMetrics
from chital.controller.placement import choose_host
from chital.controller.records import ContainerRecord, ContainerRecordState
from chital.controller.store import Store
from chital.errdefs import ChitalError, NotFound

__all__ = ["Restarter"]

log = logging.getLogger("chital.controller.restarts")

BATCH = 200


class Restarter:
    """Carries out the restart policies of LOST containers (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        containers: Containers,
        clock: Callable[[], datetime],
        *,
        metrics: ControllerMetrics | None = None,
        interval: float = 10.0,
        lost_hooks: list[Callable[[list[ContainerRecord]], None]] | None = None,
    ) -> None:
        """``lost_hooks``: where others announce containers they made LOST (HostSyncer.on_lost);
        the restarter adds itself, so a round runs at once."""
        self._store = store
        self._containers = containers
        self._clock = clock
        self._metrics = metrics or ControllerMetrics()
        self.interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if lost_hooks is not None:
            lost_hooks.append(self.poke)

    def start(self) -> None:
        """Run rounds in a background thread."""
        self._thread = threading.Thread(target=self._loop, name="restarter", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the current round."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def poke(self, _lost: object = None) -> None:
        """Containers became LOST: run a round now (a hook for the host reconcilers)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                delay = self.run_once()
            except Exception:  # one bad round must not end the restarts (logged)
                log.exception("restart round failed")
                delay = self.interval
            self._wake.wait(delay)
            self._wake.clear()

    def run_once(self) -> float:
        """Schedule what became LOST, carry out what is due; returns seconds until the next round."""
        now = self._clock()
        fresh, _ = self._store.restart_work(BATCH)
        for record in fresh:
            self._schedule(record, now)
        for record in self._store.due_restarts(now, BATCH):
            self._attempt(record)
        _, due = self._store.restart_work(0)
        if due is None:
            return self.interval
        return min(self.interval, max(0.05, (due - self._clock()).total_seconds()))

    def _schedule(self, record: ContainerRecord, now: datetime) -> None:
        policy = lifecycle.RestartPolicy(record.restart_policy)
        wanted = desired_of(record) is lifecycle.ContainerDesiredState.RUNNING
        if record.requested_host:
            return  # pinned to its host by the client: it is not moved elsewhere
        if not wanted or not lifecycle.should_restart(policy, record.restart_count, record.max_restarts):
            return
        delay = lifecycle.restart_delay(record.restart_count)
        at = max(record.updated + timedelta(seconds=delay), now)
        self._store.schedule_restart(record.uid, at, now)
        log.info(
            "container %s is LOST: placed again at %s (restart %d)", record.name, at, record.restart_count + 1
        )

    def _attempt(self, record: ContainerRecord) -> None:
        now = self._clock()
        try:
            placed = self._store.place_again(record.uid, now, lambda c: choose_host(c, pinned=False))
        except ChitalError as exc:
            try:
                if self._store.get_container(record.uid).state is not ContainerRecordState.LOST:
                    return  # stopped, deleted or placed meanwhile
            except NotFound:
                return
            # No ready host with room: try again after the next delay.
            at = now + timedelta(seconds=lifecycle.restart_delay(record.restart_count + 1))
            log.info("container %s cannot be placed again yet: %s; next attempt at %s", record.name, exc, at)
            self._store.schedule_restart(record.uid, at, now)
            return
        self._metrics.sync_repairs.labels("restarted").inc()
        log.info("container %s placed again on %s", placed.name, placed.host_address)
        if placed.state is ContainerRecordState.PENDING:
            self._containers.resume_create(placed)  # unreachable: the reconciler finishes it
