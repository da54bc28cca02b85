"""HostMonitor: the controller's health checks of its agents.

Every ``interval`` (0.5 s) the monitor calls GetInfo on every host at once (futures, one deadline of
``0.8 x interval`` each; checks are dated when sent). A host becomes NOT_READY when the failure must
be reported within ``not_ready_after`` (3 s) of the last success: once a failed check finds
``silent + interval >= not_ready_after`` (waiting for the next check would be too late). With the
defaults that is 5 failed checks in a row (one slow answer is no false alarm); the measured detection
time is in docs/benchmarks.md. LOST follows after
``lost_after`` (60 s; its containers become LOST); READY again on the next success.

Successes are written to the database only when something changed or every
``persist_every`` seconds (``last_seen``), so a large healthy fleet costs few writes; the monitor keeps
the exact time of the last success in memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc

from chital.controller.agents import AgentPool, info_from_pb, map_agent_error
from chital.controller.events import EventIngestor
from chital.controller.hostsync import HostSyncer
from chital.controller.metrics import ControllerMetrics
from chital.controller.records import AgentInfoRecord, HostHealth, HostRecord
from chital.controller.store import Store
from chital.errdefs import ChitalError, NotFound

__all__ = ["HealthConfig", "HostMonitor"]

log = logging.getLogger("chital.controller.health")


@dataclass(frozen=True)
class HealthConfig:
    """Timings of the health checks, in seconds."""

    interval: float = 0.5
    not_ready_after: float = 3.0
    lost_after: float = 60.0
    persist_every: float = 10.0


class HostMonitor:
    """Polls every host's agent and keeps host health in the store."""

    def __init__(
        self,
        store: Store,
        pool: AgentPool,
        ingestor: EventIngestor,
        clock: Callable[[], datetime],
        *,
        config: HealthConfig = HealthConfig(),
        metrics: ControllerMetrics | None = None,
    ) -> None:
        self._store = store
        self._pool = pool
        self._ingestor = ingestor
        self._clock = clock
        self.config = config
        self._metrics = metrics or ControllerMetrics()
        self._last_ok: dict[str, datetime] = {}
        self._last_written: dict[str, datetime] = {}
        self._last_info: dict[str, AgentInfoRecord] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Told of every successful check: syncs the host on reconnection and on state changes.
        self.syncer: HostSyncer | None = None

    def start(self) -> None:
        """Run the checks in a background thread."""
        self._thread = threading.Thread(target=self._loop, name="host-monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the checks."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            try:
                self.check_all()
            except Exception:  # the monitor must survive a bad round (logged)
                log.exception("health check round failed")
            next_tick += self.config.interval
            delay = next_tick - time.monotonic()
            if delay < 0:  # a slow round: do not try to catch up with a burst
                next_tick = time.monotonic()
                delay = 0
            if self._stop.wait(delay):
                return

    def check_all(self) -> None:
        """One round: check every host concurrently and record the results."""
        hosts = self._store.all_hosts()
        self._pool.set_host_ids({h.address: h.id for h in hosts})
        # Checks are dated when they are sent, so "silent for 3 s" means 3 rounds, whatever the
        # latency of the answers.
        sent = self._clock()
        timeout = max(0.1, self.config.interval * 0.8)
        calls: list[tuple[HostRecord, Any]] = []
        for host in hosts:
            if self._stop.is_set():
                return
            try:
                calls.append((host, self._pool.get(host.address).get_info_future(timeout)))
            except ChitalError as exc:
                # The pool refuses this host (e.g. a non-loopback address with --insecure): a
                # failed check of this host only, never the end of the round for the others.
                self._failed(host, str(exc), sent)
        for host, future in calls:
            try:
                info = info_from_pb(future.result())
            except grpc.RpcError as exc:
                self._failed(host, str(map_agent_error(host.address, exc)), sent)
            else:
                self._succeeded(host, info, sent)

    def check_one(self, host: HostRecord) -> HostRecord:
        """Check one host now (used by RegisterHost)."""
        sent = self._clock()
        try:
            # The first call to a new host opens its channel: a TLS handshake, slow on a slow host.
            timeout = max(self._pool.timeout, self.config.interval)
            info = self._pool.get(host.address).get_info(timeout=timeout)
        except ChitalError as exc:
            return self._failed(host, str(exc), sent)
        return self._succeeded(host, info, sent)

    def _succeeded(self, host: HostRecord, info: AgentInfoRecord, now: datetime) -> HostRecord:
        self._metrics.health_checks.labels("ok").inc()
        self._last_ok[host.id] = now
        previous_info = self._last_info.get(host.id)
        written = self._last_written.get(host.id)
        needs_write = (
            host.health is not HostHealth.READY
            or previous_info is None
            or _details(previous_info) != _details(info)
            or host.agent.boot_id != info.boot_id
            or written is None
            or (now - written).total_seconds() >= self.config.persist_every
        )
        record = host
        if needs_write:
            try:
                record, previous = self._store.record_health(
                    host.id, HostHealth.READY, now, info=info, last_seen=now
                )
            except NotFound:
                return host  # removed meanwhile
            self._last_written[host.id] = now
            self._last_info[host.id] = info
            if previous is not HostHealth.READY:
                self._metrics.host_transitions.labels("READY").inc()
                log.info("host %s is READY", host.address)
            if host.agent.boot_id and host.agent.boot_id != info.boot_id:
                log.info("agent on %s restarted", host.address)
                self._ingestor.restart(host.id)
        self._ingestor.ensure(host.id, host.address)
        if self.syncer is not None:
            self.syncer.observe(host, info)
        return record

    def _failed(self, host: HostRecord, message: str, now: datetime) -> HostRecord:
        self._metrics.health_checks.labels("failed").inc()
        last_ok = self._last_ok.get(host.id) or host.last_seen or host.created
        # A little slack, so that a round that starts a hair early still counts as the Nth.
        silent = (now - last_ok).total_seconds() + self.config.interval * 0.05
        target = host.health
        if silent >= self.config.lost_after:
            target = HostHealth.LOST
        elif silent + self.config.interval >= self.config.not_ready_after and host.health is HostHealth.READY:
            target = HostHealth.NOT_READY
        if target is host.health and host.message == message:
            return host
        try:
            record, previous = self._store.record_health(host.id, target, now, message=message)
        except NotFound:
            return host
        if previous is not target:
            self._metrics.host_transitions.labels(target.value).inc()
            log.warning("host %s is %s: %s", host.address, target.value, message)
        return record

    def ages(self) -> dict[str, float]:
        """Seconds since the last successful check, per host id this monitor has seen answer."""
        now = self._clock()
        return {host_id: (now - ok).total_seconds() for host_id, ok in list(self._last_ok.items())}

    def forget(self, host_id: str) -> None:
        """Drop what the monitor remembers of a removed host."""
        self._last_ok.pop(host_id, None)
        self._last_written.pop(host_id, None)
        self._last_info.pop(host_id, None)
        if self.syncer is not None:
            self.syncer.forget(host_id)


def _details(info: AgentInfoRecord) -> tuple[str, ...]:
    return (
        info.agent_version,
        info.kernel_release,
        info.module_version,
        info.abi_version,
        info.device,
        str(info.sandboxed),
        info.boot_id,
    )
