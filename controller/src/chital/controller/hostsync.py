"""Per-host reconcilers: compare each agent's Sync with the database and repair the difference.

The event stream (:mod:`chital.controller.events`) carries changes one by one; it cannot tell the
controller what it never saw: exits while the controller was away from the agent, an agent that
restarted without its containers (a hollow agent's in-memory device), events the kernel's queue
dropped, or a container left on a host that was LOST and came back. A :class:`HostSyncer` closes
those gaps. It syncs a host:

- when the host (re)connects: its first successful health check after the controller started, and
  every return to READY (from NOT_READY or LOST);
- when the ``state_hash`` in the agent's GetInfo differs from the one of its last sync (the
  agent changes it with every container or process change), coalesced: see below;
- at once when the event stream reports EVENTS_DROPPED (the kernel's queue overflowed).

Most state hash changes are the controller's own doing (every create, stop and delete changes it),
and their outcome reaches the database through the call's answer and the event stream; a sync
after each would read every container of the host once per create. So a changed hash is synced
only once it has been seen for ``settle`` seconds (a burst of creates becomes one change), once no
sync of the host runs, and once the host has been idle since its last sync for at least
``min_interval`` and long enough that syncs take at most ``max_share`` of the host's time (a host
whose sync takes 0.5 s is synced at most every 10 s under a steady load, at 5 %; never less often
than every 30 s while its hash keeps changing). Reconnections and EVENTS_DROPPED are not delayed.

A sync calls the agent's Sync first and reads the database after it, so every container a create
put on the agent before the Sync is in the database already. Then, in this order:

1. **Exits and starts the controller missed** (exits queued by the kernel while no agent ran, or
   read by the agent while no controller listened): recorded with their exit code, signal and OOM
   flag, under the same rules as events (an exit is recorded once; a late one after LOST wins).
2. **Orphan containers**: a container on the agent that the database does not know, knows on
   another host, or knows as STOPPED, FAILED, LOST or DELETED is destroyed on the agent (no grace:
   nothing of it should run). The policy is to destroy, never to adopt: the controller starts
   every container, so one it does not know has no owner, no spec and no place in any quota.
3. **What the agent lost**: a CREATED or RUNNING container that the agent does not have becomes
   LOST with its live processes (its restart policy then decides whether it is placed again); a
   RUNNING process that the agent does not know in a container it has becomes LOST. A record
   changed after the Sync was taken is left for the next sync (it may be newer than the Sync).
4. **Orphan processes**: a running process on the agent that the database does not know, or knows
   as finished, is killed (SIGKILL).

PENDING creates, stops and deletes in progress are not touched here: the reconciler and the
operations driver carry them out with their grace periods.

Syncs run on a bounded pool (``workers``, 4 by default), at most one at a time per host; a
reconnection or EVENTS_DROPPED that comes while the host syncs runs once more after it (a changed
hash waits for a later check). A failed sync is retried on a later
health check with exponential backoff (``min_interval`` doubling up to 30 s).
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from chital.controller import lifecycle
from chital.controller.agents import AgentPool, AgentSyncRecord
from chital.controller.metrics import ControllerMetrics
from chital.controller.records import (
    AgentEventRecord,
    AgentInfoRecord,
    ContainerRecord,
    ContainerRecordState,
    HostHealth,
    HostRecord,
    ProcessRecord,
    ProcessRecordState,
    SyncedContainer,
)
from chital.controller.store import Store
from chital.errdefs import ChitalError, NotFound

__all__ = ["HostSyncer", "SyncReport"]

log = logging.getLogger("chital.controller.hostsync")

_MAX_BACKOFF = 30.0
#: The longest a changed state hash waits for its sync because of ``max_share`` (seconds).
_MAX_SPACING = 30.0
#: Records in these states never have a copy on their host: one found there is stale.
_STALE = (
    ContainerRecordState.STOPPED,
    ContainerRecordState.FAILED,
    ContainerRecordState.LOST,
    ContainerRecordState.DELETED,
)


@dataclass
class SyncReport:
    """What one sync of one host found and repaired."""

    exits_recorded: int = 0
    starts_recorded: int = 0
    containers_lost: list[str] = field(default_factory=list)
    processes_lost: int = 0
    orphans_destroyed: list[str] = field(default_factory=list)
    processes_killed: int = 0

    @property
    def repairs(self) -> int:
        """How many things this sync changed."""
        return (
            self.exits_recorded
            + self.starts_recorded
            + len(self.containers_lost)
            + self.processes_lost
            + len(self.orphans_destroyed)
            + self.processes_killed
        )


@dataclass
class _HostState:
    address: str
    synced_hash: str = ""  # the agent's state_hash the last successful sync started from
    last_finished: float = float("-inf")  # monotonic, end of the last sync
    last_duration: float = 0.0  # seconds the last sync took
    changed_at: float | None = None  # monotonic: when a hash other than synced_hash was first seen
    failures: int = 0
    running: bool = False
    again: bool = False  # requested while running: run once more
    pending_hash: str = ""


@dataclass
class _Pass:
    """One sync of one host: what the agent said, what the database said, what was done."""

    host_id: str
    address: str
    sent: datetime  # when the Sync was asked for (records changed after it wait for the next)
    agent: AgentSyncRecord
    containers: list[SyncedContainer]
    processes: list[ProcessRecord]
    report: SyncReport = field(default_factory=SyncReport)

    @functools.cached_property
    def by_uid(self) -> dict[str, SyncedContainer]:
        return {c.uid: c for c in self.containers}


def desired_of(record: ContainerRecord | SyncedContainer) -> lifecycle.ContainerDesiredState:
    """The record's desired state, or the one its observed state implies when none is stored."""
    stored = getattr(record, "desired_state", "")
    if stored:
        return lifecycle.ContainerDesiredState(stored)
    return lifecycle.desired_from_observed(record.state)


class HostSyncer:
    """The per-host reconcilers (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        pool: AgentPool,
        clock: Callable[[], datetime],
        *,
        metrics: ControllerMetrics | None = None,
        workers: int = 4,
        min_interval: float = 2.0,
        settle: float = 0.5,
        max_share: float = 0.05,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._pool = pool
        self._clock = clock
        self._metrics = metrics or ControllerMetrics()
        self.min_interval = min_interval
        self.settle = settle
        self.max_share = max_share
        self._monotonic = monotonic
        self._executor = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="hostsync")
        self._lock = threading.Lock()
        self._hosts: dict[str, _HostState] = {}
        self._closed = False
        self._idle = threading.Condition(self._lock)
        #: Called with the containers a sync made LOST (the restart policy acts on them).
        self.on_lost: list[Callable[[list[ContainerRecord]], None]] = []
        #: False on a controller that is not the leader: the leader alone syncs hosts (leader.py).
        self.active = True

    def stop(self, timeout: float = 5.0) -> None:
        """Run no more syncs; wait for the running ones."""
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)

    # -- triggers ---------------------------------------------------------------------------------

    def observe(self, host: HostRecord, info: AgentInfoRecord) -> None:
        """A successful health check of ``host`` (as it was before the check) answered ``info``."""
        now = self._monotonic()
        with self._lock:
            state = self._hosts.get(host.id)
            first = state is None  # the first check since the controller started: sync now
            if state is None:
                state = self._hosts[host.id] = _HostState(host.address)
            reconnected = first or host.health is not HostHealth.READY or host.agent.boot_id != info.boot_id
            if not reconnected:
                if info.state_hash and info.state_hash == state.synced_hash:
                    state.changed_at = None
                    return
                if state.running:
                    return  # a later check asks again once it has ended
                if state.changed_at is None:
                    state.changed_at = now
                if now - state.changed_at < self.settle or now - state.last_finished < self._spacing(state):
                    return  # coalesced with the changes that follow: a later check asks again
        self._request(host.id, host.address, info.state_hash, forced=reconnected)

    def _spacing(self, state: _HostState) -> float:
        """How long the host stays idle after a sync before a changed hash is synced (seconds)."""
        backoff = min(_MAX_BACKOFF, self.min_interval * 2**state.failures) if state.failures else 0.0
        share = 0.0
        if 0 < self.max_share < 1:
            share = min(_MAX_SPACING, state.last_duration * (1 / self.max_share - 1))
        return max(self.min_interval, backoff, share)

    def request(self, host_id: str, address: str) -> None:
        """Sync the host as soon as a worker is free (EVENTS_DROPPED, tests)."""
        self._request(host_id, address, "", forced=True)

    def forget(self, host_id: str) -> None:
        """Drop what is remembered of a removed host."""
        with self._lock:
            self._hosts.pop(host_id, None)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no sync runs or waits (tests)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while any(s.running for s in self._hosts.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
            return True

    def _request(self, host_id: str, address: str, state_hash: str, *, forced: bool) -> None:
        with self._lock:
            if self._closed or not self.active:
                return
            state = self._hosts.setdefault(host_id, _HostState(address))
            state.address = address
            if state.running:
                if forced:
                    state.again = True
                    state.pending_hash = state_hash
                return
            state.running = True
            state.changed_at = None
        try:
            self._executor.submit(self._run, host_id, state_hash)
        except RuntimeError:  # shut down meanwhile
            with self._lock:
                state.running = False

    def _run(self, host_id: str, state_hash: str) -> None:
        while True:
            with self._lock:
                state = self._hosts.get(host_id)
                address = state.address if state else ""
            ok = False
            started = time.perf_counter()
            if state is not None:
                try:
                    self.sync_host(host_id, address)
                    ok = True
                except NotFound:
                    pass  # the host was removed
                except ChitalError as exc:
                    log.info("sync of %s failed: %s", address, exc)
                except Exception:  # one bad sync must not end the reconciler (logged)
                    log.exception("sync of %s failed", address)
                self._metrics.host_syncs.labels("ok" if ok else "failed").inc()
                self._metrics.host_sync_duration.observe(time.perf_counter() - started)
            with self._lock:
                if state is None or self._hosts.get(host_id) is not state:
                    return
                state.last_duration = time.perf_counter() - started
                state.last_finished = self._monotonic()
                if ok:
                    state.failures = 0
                    if state_hash:
                        state.synced_hash = state_hash
                else:
                    state.failures += 1
                if state.again and not self._closed:
                    state.again = False
                    state_hash = state.pending_hash
                    state.changed_at = None
                    continue
                state.running = False
                self._idle.notify_all()
                return

    # -- one sync ---------------------------------------------------------------------------------

    def sync_host(self, host_id: str, address: str) -> SyncReport:
        """Sync one host now (in the caller's thread) and return what it repaired."""
        sent = self._clock()
        agent = self._pool.get(address).sync()
        containers, processes = self._store.sync_view(host_id, list(agent.containers), list(agent.processes))
        sync = _Pass(host_id, address, sent, agent, containers, processes)
        report = sync.report
        self._record_missed(sync)
        self._destroy_orphans(sync)
        self._mark_lost(sync)
        self._kill_orphan_processes(sync)
        if report.repairs:
            log.info(
                "sync of %s: %d exits and %d starts recorded, %d containers and %d processes lost, "
                "%d orphan containers destroyed, %d orphan processes killed",
                address,
                report.exits_recorded,
                report.starts_recorded,
                len(report.containers_lost),
                report.processes_lost,
                len(report.orphans_destroyed),
                report.processes_killed,
            )
        return report

    def _record_missed(self, sync: _Pass) -> None:
        host_id, agent, report, by_uid = sync.host_id, sync.agent, sync.report, sync.by_uid
        processes = sync.processes
        observed: list[AgentEventRecord] = []
        for process in processes:
            view = agent.processes.get(process.uid)
            container = by_uid.get(process.container_uid)
            if view is None or container is None or container.host_id != host_id:
                continue
            if view.exited and process.state is not ProcessRecordState.EXITED:
                observed.append(
                    AgentEventRecord(
                        seq=0,
                        kind="PROCESS_EXITED",
                        container_uid=view.container_uid,
                        process_uid=view.uid,
                        pid=view.pid,
                        exit_code=view.exit_code,
                        signal=view.signal,
                        oom_killed=view.oom_killed,
                        time=view.exit_time,
                    )
                )
                report.exits_recorded += 1
            elif (
                not view.exited
                and process.state in (ProcessRecordState.STARTING, ProcessRecordState.LOST)
                and container.state in lifecycle.ON_HOST
            ):
                observed.append(
                    AgentEventRecord(
                        seq=0,
                        kind="PROCESS_STARTED",
                        container_uid=view.container_uid,
                        process_uid=view.uid,
                        pid=view.pid,
                        time=view.start_time,
                    )
                )
                report.starts_recorded += 1
        if observed:
            self._store.apply_synced_processes(host_id, observed, self._clock())
            self._metrics.sync_repairs.labels("exit_recorded").inc(report.exits_recorded)
            self._metrics.sync_repairs.labels("start_recorded").inc(report.starts_recorded)

    def _destroy_orphans(self, sync: _Pass) -> None:
        host_id, address, agent, report, by_uid = (
            sync.host_id,
            sync.address,
            sync.agent,
            sync.report,
            sync.by_uid,
        )
        client = self._pool.get(address)
        for uid in agent.containers:
            record = by_uid.get(uid)
            if record is not None and record.host_id == host_id:
                action = lifecycle.container_action(record.state, desired_of(record), True)
                if action is not lifecycle.ContainerAction.DESTROY or record.state not in _STALE:
                    continue  # wanted there, or a stop/delete the operations driver carries out
                why = f"its record is {record.state.value}"
            elif record is not None:
                why = f"it was placed again on another host ({record.host_address or record.host_id})"
            else:
                why = "the controller does not know it"
            log.warning("destroying container %s on %s: %s", uid, address, why)
            client.destroy_container(uid, 0.0)
            report.orphans_destroyed.append(uid)
            self._metrics.sync_repairs.labels("orphan_destroyed").inc()

    def _mark_lost(self, sync: _Pass) -> None:
        host_id, address, agent, report = sync.host_id, sync.address, sync.agent, sync.report
        now = self._clock()
        missing = [
            c.uid
            for c in sync.containers
            if c.host_id == host_id
            and c.uid not in agent.containers
            and lifecycle.container_action(c.state, desired_of(c), False)
            is lifecycle.ContainerAction.MARK_LOST
        ]
        if missing:
            lost = self._store.lose_unchanged_containers(
                missing, sync.sent, f"the agent on {address} no longer has this container", now
            )
            report.containers_lost = [c.uid for c in lost]
            self._metrics.sync_repairs.labels("container_lost").inc(len(lost))
            if lost:
                for hook in list(self.on_lost):
                    try:
                        hook(lost)
                    except Exception:  # a hook's failure must not fail the sync (logged)
                        log.exception("a lost-container hook failed")
        unknown = [
            p.uid
            for p in sync.processes
            if p.state is ProcessRecordState.RUNNING
            and p.uid not in agent.processes
            and p.container_uid in agent.containers
        ]
        if unknown:
            report.processes_lost = self._store.lose_unchanged_processes(
                unknown, sync.sent, f"the agent on {address} does not know this process", now
            )
            self._metrics.sync_repairs.labels("process_lost").inc(report.processes_lost)

    def _kill_orphan_processes(self, sync: _Pass) -> None:
        address, agent, report, by_uid = sync.address, sync.agent, sync.report, sync.by_uid
        known = {p.uid: p for p in sync.processes}
        client = self._pool.get(address)
        for uid, view in agent.processes.items():
            if view.exited or view.container_uid not in agent.containers:
                continue
            container = by_uid.get(view.container_uid)
            if container is None or container.state not in lifecycle.ON_HOST:
                continue  # its container is destroyed, or a stop of it runs
            record = known.get(uid)
            if record is not None and record.state is not ProcessRecordState.EXITED:
                continue
            log.warning(
                "killing process %s (pid %d) on %s: not started by the controller", uid, view.pid, address
            )
            try:
                client.signal_process(uid, signal.SIGKILL)
            except ChitalError as exc:
                log.info("killing process %s on %s failed: %s", uid, address, exc)
                continue
            report.processes_killed += 1
            self._metrics.sync_repairs.labels("process_killed").inc()
