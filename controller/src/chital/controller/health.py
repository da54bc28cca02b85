"""HostMonitor: host health from heartbeats that the agents push over streams the controller opens.

For every host the monitor keeps one ``Heartbeat`` stream open (the controller dials, as for every
agent call): the agent sends a beat at once and then every ``interval`` (1 s); a beat carries the
agent's GetInfo answer whenever it changed since the beat before (versions, boot id, state hash), so
a restarted agent or a changed state reaches the controller with the next beat. Every stream is read
on one asyncio event loop in a thread of its own (an idle stream costs no thread; measured, a thread
per stream cost several times the CPU per beat), beats that bring news are written by a small pool
of threads, and one ticker thread checks deadlines in memory
every ``tick`` (0.25 s): a READY host becomes NOT_READY once it has been silent for
``not_ready_after - 2 * tick`` (2.5 s; one tick for the check that would come too late, one for
recording the change), so a killed, frozen (SIGSTOP) or unreachable agent is NOT_READY within
``not_ready_after`` (3 s) of its failure, and a beat that is a second late is no false alarm. LOST
follows after ``lost_after`` (60 s; its containers become LOST); READY again on the next beat. A
stream that stays silent for ``not_ready_after`` is cancelled and dialled again: a connection to a
frozen or cut-off peer can stay open for minutes without noticing. Measured costs and detection
times are in docs/benchmarks.md; why a stream rather than polling or gRPC Health.Watch is in
docs/architecture.md.

Silence is counted from the last beat, or from when the monitor began watching the host when that is
later (a controller that just started gives every host the time to answer); LOST also needs the
host's last beat (or ``last_seen``) to be ``lost_after`` old.

A beat is written to the database only when it brings news (the host was not READY, or its agent's
versions or boot id changed). The time of the last beat of every host (``last_seen``) is written
every ``persist_every`` (10 s) for the whole fleet in one transaction: a large healthy fleet costs
one write every 10 s, not one per beat. Every beat is passed to the host syncer (a changed state hash
or a new boot id makes it sync the host) and makes sure the host's event stream is consumed.

The fleet is read from the database every ``refresh_every`` (2 s) to start and stop streams; a host
registered through this controller is watched at once. :meth:`HostMonitor.start` and
:meth:`HostMonitor.stop` may be called again and again (a controller that gains and loses
leadership): stop cancels every stream and forgets every deadline, start begins afresh.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import grpc

from chital.api.agent.v1 import agent_pb2, agent_pb2_grpc
from chital.controller.agents import AgentPool, info_from_pb, map_agent_error
from chital.controller.aioloop import LoopThread
from chital.controller.events import EventIngestor
from chital.controller.hostsync import HostSyncer
from chital.controller.metrics import ControllerMetrics
from chital.controller.records import AgentInfoRecord, HostHealth, HostRecord
from chital.controller.store import Store
from chital.errdefs import ChitalError, NotFound
from chital.errdefs.grpc import to_grpc_code

__all__ = ["HealthConfig", "HostMonitor"]

log = logging.getLogger("chital.controller.health")

#: Waits between two attempts to open a host's stream: the first, and the most.
_RETRY_FIRST = 0.2
_RETRY_MAX = 1.0
#: Threads that write beats with news (a host turning READY, an agent restarted).
_WRITERS = 4


@dataclass(frozen=True)
class HealthConfig:
    """Timings of the health monitor, in seconds."""

    #: Between two heartbeats of an agent.
    interval: float = 1.0
    not_ready_after: float = 3.0
    lost_after: float = 60.0
    persist_every: float = 10.0
    #: Between two deadline checks (in memory). A host is NOT_READY once it has been silent for
    #: ``not_ready_after - 2 * tick``: one tick for the check that would come too late, one for
    #: recording the change.
    tick: float = 0.25
    #: Between two reads of the fleet from the database.
    refresh_every: float = 2.0

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.tick <= 0 or self.refresh_every <= 0:
            raise ValueError("health interval, tick and refresh_every must be positive")
        if self.not_ready_after <= self.interval:
            raise ValueError(
                f"not_ready_after ({self.not_ready_after} s) must be longer than the heartbeat "
                f"interval ({self.interval} s)"
            )


@dataclass
class _Watch:
    """One host's stream and what the monitor knows of the host.

    ``lock`` guards the fields and is held only for moments; ``writing`` is held for a health write
    to the database (which may wait behind other writes), so that a beat is noted at once even
    while a write of this host waits, and the deadline check passes over a host being written."""

    host: HostRecord  # as last written or read
    started: datetime  # when the monitor began watching it (silence is counted from here at most)
    lock: threading.Lock = field(default_factory=threading.Lock)
    writing: threading.Lock = field(default_factory=threading.Lock)
    last_ok: datetime | None = None  # the last beat
    last_signal: datetime | None = None  # the last beat or stream opening (silence cancels the stream)
    info: AgentInfoRecord | None = None  # the last info this stream carried
    error: str = ""  # why the stream failed last
    call: Any = None  # the stream open now (a grpc.aio call; touched on the event loop only)
    closed: bool = False
    task: concurrent.futures.Future[None] | None = None  # the coroutine reading the stream
    write_pending: bool = False  # a beat with news waits for a writer thread


class HostMonitor:
    """Watches every host's heartbeat stream and keeps host health in the store."""

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
        self._lock = threading.Lock()  # guards _watches, _last_written, _stop, _ticker, _loop, _writers
        self._watches: dict[str, _Watch] = {}
        self._last_written: dict[str, datetime] = {}
        self._stop = threading.Event()
        self._stop.set()  # not running until start()
        self._ticker: threading.Thread | None = None
        self._loop: LoopThread | None = None
        self._writers: concurrent.futures.ThreadPoolExecutor | None = None
        #: Told of every beat: syncs the host on reconnection and on state changes.
        self.syncer: HostSyncer | None = None
        self._metrics.heartbeat_streams.set_function(self.open_streams)

    # -- life cycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Between start() and stop()."""
        return not self._stop.is_set()

    def start(self) -> None:
        """Watch every host: open their streams and check deadlines in a background thread."""
        with self._lock:
            if self._ticker is not None:
                return
            self._stop = threading.Event()
            self._loop = LoopThread("heartbeats")
            self._writers = concurrent.futures.ThreadPoolExecutor(_WRITERS, thread_name_prefix="health-write")
            self._ticker = threading.Thread(target=self._tick_loop, name="host-monitor", daemon=True)
            self._ticker.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel every stream, stop the threads and forget every deadline (start() may follow)."""
        with self._lock:
            self._stop.set()
            ticker, self._ticker = self._ticker, None
            loop, self._loop = self._loop, None
            writers, self._writers = self._writers, None
            watches = list(self._watches.values())
            self._watches.clear()
            self._last_written.clear()
        for watch in watches:
            with watch.lock:
                watch.closed = True
        if ticker is not None:
            ticker.join(timeout)
        if loop is not None:
            loop.close(timeout)
        if writers is not None:
            writers.shutdown(wait=True, cancel_futures=True)

    def _tick_loop(self) -> None:
        stop = self._stop
        next_refresh = time.monotonic()
        next_persist = next_refresh + self.config.persist_every
        while not stop.is_set():
            try:
                if time.monotonic() >= next_refresh:
                    self.refresh()
                    next_refresh = time.monotonic() + self.config.refresh_every
                self.check_deadlines()
                if time.monotonic() >= next_persist:
                    next_persist = time.monotonic() + self.config.persist_every
                    self.persist_last_seen()
            except Exception:  # the monitor must survive a bad round (logged)
                log.exception("health monitor round failed")
            if stop.wait(self.config.tick):
                return

    # -- the fleet ----------------------------------------------------------------------------

    def refresh(self) -> None:
        """Read the fleet: watch new hosts, stop watching removed ones, take others' writes."""
        hosts = self._store.hosts_for_health()
        self._pool.set_host_ids({h.address: h.id for h in hosts})
        seen = set()
        for host in hosts:
            seen.add(host.id)
            watch = self._watch(host)
            if watch is not None and watch.writing.acquire(blocking=False):
                try:  # another controller may have written it (not while this one writes it)
                    with watch.lock:
                        watch.host = host
                finally:
                    watch.writing.release()
        with self._lock:
            gone = [w for host_id, w in self._watches.items() if host_id not in seen]
        for watch in gone:
            self.forget(watch.host.id)

    def _watch(self, host: HostRecord) -> _Watch | None:
        """The host's watch, started now if it has none; None when the monitor is stopped."""
        with self._lock:
            if self._stop.is_set():
                return None
            watch = self._watches.get(host.id)
            if watch is not None and watch.host.address == host.address:
                return watch
            loop = self._loop
            if loop is None:
                return None
            old, watch = watch, _Watch(host=host, started=self._clock())
            self._watches[host.id] = watch
            watch.task = loop.submit(self._stream(watch, self._stop))
        if old is not None:  # registered again under another address
            self._close(old)
        return watch

    def forget(self, host_id: str) -> None:
        """Stop watching a removed host and drop what the monitor remembers of it."""
        with self._lock:
            watch = self._watches.pop(host_id, None)
            self._last_written.pop(host_id, None)
        if watch is not None:
            self._close(watch)
        if self.syncer is not None:
            self.syncer.forget(host_id)

    @staticmethod
    def _close(watch: _Watch) -> None:
        with watch.lock:
            watch.closed = True
            task = watch.task
        if task is not None:
            task.cancel()  # thread-safe: cancels the coroutine on its loop

    def open_streams(self) -> int:
        """How many hosts' heartbeat streams are open now."""
        with self._lock:
            watches = list(self._watches.values())
        return sum(1 for w in watches if w.call is not None)

    def ages(self) -> dict[str, float]:
        """Seconds since the last beat, per host id that beat since this monitor started."""
        now = self._clock()
        with self._lock:
            watches = list(self._watches.values())
        return {w.host.id: (now - w.last_ok).total_seconds() for w in watches if w.last_ok is not None}

    # -- one host's stream --------------------------------------------------------------------

    async def _stream(self, watch: _Watch, stop: threading.Event) -> None:
        """Read the host's heartbeat stream, dialling again whenever it ends (on the event loop)."""
        retry = _RETRY_FIRST
        address = watch.host.address
        request = agent_pb2.HeartbeatRequest(interval_ms=max(1, round(self.config.interval * 1000)))
        channel: grpc.aio.Channel | None = None
        try:
            while not stop.is_set() and not watch.closed:
                try:
                    if channel is None:
                        channel = self._pool.aio_channel(address)
                except ChitalError as exc:
                    # The pool refuses the host (a non-loopback address with --insecure), or shuts down.
                    self._stream_failed(watch, str(exc), to_grpc_code(exc).name)
                    await asyncio.sleep(_RETRY_MAX)
                    continue
                call = agent_pb2_grpc.AgentServiceStub(channel).Heartbeat(request)
                with watch.lock:
                    watch.call = call
                    watch.last_signal = self._clock()
                try:
                    async for message in call:
                        self._beat(watch, message)
                        retry = _RETRY_FIRST
                except grpc.RpcError as exc:
                    code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else grpc.StatusCode.UNKNOWN
                    # CANCELLED: this monitor cancelled a silent stream (its silence is the reason).
                    if not watch.closed and not stop.is_set() and code != grpc.StatusCode.CANCELLED:
                        self._stream_failed(watch, str(map_agent_error(address, exc)), code.name)
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if watch.closed or stop.is_set() or (current is not None and current.cancelling()):
                        raise
                    # Otherwise the call was cancelled (a silent stream): dial again.
                except Exception:  # a failure while recording a beat: log, reconnect
                    log.exception("heartbeat of %s failed", address)
                finally:
                    call.cancel()
                    with watch.lock:
                        watch.call = None
                await asyncio.sleep(retry)
                retry = min(retry * 2, _RETRY_MAX)
        finally:
            if channel is not None:
                await channel.close()

    def _stream_failed(self, watch: _Watch, message: str, code: str) -> None:
        self._metrics.health_checks.labels("failed").inc()
        # A stream that cannot open is a failed call to the agent, as a failed unary call is.
        self._metrics.agent_call_failures.labels(watch.host.id, code).inc()
        with watch.lock:
            if message != watch.error:
                log.debug("heartbeat stream of %s: %s", watch.host.address, message)
            watch.error = message

    def _beat(self, watch: _Watch, message: Any) -> None:
        """Record one HeartbeatResponse of the host (called by its stream's thread)."""
        now = self._clock()
        with watch.lock:
            if message.HasField("info"):
                watch.info = info_from_pb(message.info)
            info = watch.info
            if info is None or watch.closed:
                return  # a stream always begins with the info: only an agent that breaks that
            watch.last_ok = watch.last_signal = now
            watch.error = ""
            host = watch.host
            if self._has_news(host, info):
                if not watch.write_pending and self._writers is not None:
                    watch.write_pending = True
                    self._writers.submit(self._write_beat, watch, info, now)
                return
        self._observed(host, info)

    def _write_beat(self, watch: _Watch, info: AgentInfoRecord, now: datetime) -> None:
        """Record a beat with news (on a writer thread: a write may wait behind others)."""
        try:
            with watch.writing:
                with watch.lock:
                    watch.write_pending = False
                    host = watch.host
                record = self._succeeded(host, info, now)
                with watch.lock:
                    watch.host = record
        except Exception:  # logged; the next beat with news tries again
            log.exception("recording a heartbeat of %s failed", watch.host.address)

    def persist_last_seen(self) -> int:
        """Write the last beat of every host that beat since its last write, in one transaction;
        returns how many hosts were written."""
        with self._lock:
            watches = list(self._watches.values())
            written = dict(self._last_written)
        seen: dict[str, datetime] = {}
        for watch in watches:
            last_ok = watch.last_ok
            host_id = watch.host.id
            if last_ok is not None and host_id in written and last_ok > written[host_id]:
                seen[host_id] = last_ok
        self._store.record_last_seen(seen)
        with self._lock:
            for host_id, when in seen.items():
                if host_id in self._last_written:
                    self._last_written[host_id] = max(self._last_written[host_id], when)
        return len(seen)

    # -- decisions ----------------------------------------------------------------------------

    def check_deadlines(self) -> None:
        """Mark silent hosts NOT_READY or LOST and cancel silent streams (the ticker calls this)."""
        with self._lock:
            watches = list(self._watches.values())
        now = self._clock()
        candidates = [w for w in watches if self._verdict(w, now, cancel_silent=True) is not None]
        if not candidates:
            return
        # On a busy controller, beats that arrived may still wait for the event loop: let it catch
        # up, then judge again. A loop that does not catch up within a tick (an overloaded process)
        # gets not_ready_after more before anyone is judged silent: a late verdict, never a false one.
        slack = 0.0 if self._loop_caught_up(self.config.tick) else self.config.not_ready_after
        now = self._clock()
        for watch in candidates:
            if not watch.writing.acquire(blocking=False):
                continue  # a beat is being written: the host answers
            try:
                verdict = self._verdict(watch, now, slack=slack)
                if verdict is not None:
                    record = self._failed(watch.host, verdict[0], verdict[1], now)
                    with watch.lock:
                        watch.host = record
            finally:
                watch.writing.release()

    def _loop_caught_up(self, timeout: float) -> bool:
        """Whether the event loop ran what was queued on it (beats read) within ``timeout``."""
        loop = self._loop
        if loop is None:
            return True

        async def barrier() -> None:
            for _ in range(3):  # a read message resumes its reader one loop iteration later
                await asyncio.sleep(0)

        try:
            loop.submit(barrier()).result(timeout)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError, RuntimeError):
            return False
        return True

    def _verdict(
        self, watch: _Watch, now: datetime, *, slack: float = 0.0, cancel_silent: bool = False
    ) -> tuple[HostHealth, str] | None:
        """The health a silent host must be given now, and why; None when it keeps its health.
        ``slack``: more silence required; ``cancel_silent``: cancel a stream silent for too long."""
        tick = self.config.tick
        with watch.lock:
            if watch.closed:
                return None
            host = watch.host
            last_ok = watch.last_ok or host.last_seen or host.created
            silent = (now - max(last_ok, watch.started)).total_seconds()
            watching = (now - watch.started).total_seconds()
            if watching + 2 * tick < self.config.not_ready_after + slack:
                return None  # a host just watched gets the time to answer
            call, signal = watch.call, watch.last_signal
            if (
                cancel_silent
                and call is not None
                and signal is not None
                and (now - signal).total_seconds() >= self.config.not_ready_after
            ):
                loop = self._loop
                if loop is not None:  # a silent stream: dial again (the peer may be gone for good)
                    loop.call(call.cancel)
            target = host.health
            if (now - last_ok).total_seconds() >= self.config.lost_after + slack:
                target = HostHealth.LOST
            elif silent + 2 * tick >= self.config.not_ready_after + slack and host.health is HostHealth.READY:
                target = HostHealth.NOT_READY
            if target is host.health:
                return None
            return target, watch.error or f"no heartbeat for {silent:.1f} s"

    def check_one(self, host: HostRecord) -> HostRecord:
        """Check one host now with a GetInfo call (RegisterHost), and watch it from now on."""
        sent = self._clock()
        try:
            # The first call to a new host opens its channel: a TLS handshake, slow on a slow host.
            timeout = max(self._pool.timeout, self.config.interval)
            info = self._pool.get(host.address).get_info(timeout=timeout)
        except ChitalError as exc:
            self._metrics.health_checks.labels("failed").inc()
            record = host
            silent = (sent - (host.last_seen or host.created)).total_seconds()
            if host.health is HostHealth.READY and silent >= self.config.not_ready_after:
                record = self._failed(host, HostHealth.NOT_READY, str(exc), sent)
        else:
            record = self._succeeded(host, info, sent)
        watch = self._watch(record)
        if watch is not None:
            with watch.lock:
                watch.host = record
        return record

    def _has_news(self, host: HostRecord, info: AgentInfoRecord) -> bool:
        """Whether a beat must be written: the host was not READY, its agent changed, or this
        monitor has not written it yet. (The time of the last beat of every host goes to the
        database in one transaction every persist_every: see persist_last_seen.)"""
        if host.health is not HostHealth.READY or _details(host.agent) != _details(info):
            return True
        with self._lock:
            return host.id not in self._last_written

    def _observed(self, host: HostRecord, info: AgentInfoRecord) -> None:
        """What every answer of an agent leads to, written or not."""
        self._metrics.health_checks.labels("ok").inc()
        self._ingestor.ensure(host.id, host.address)
        if self.syncer is not None:
            self.syncer.observe(host, info)

    def _succeeded(self, host: HostRecord, info: AgentInfoRecord, now: datetime) -> HostRecord:
        record = host
        if self._has_news(host, info):
            try:
                record, previous = self._store.record_health(
                    host.id, HostHealth.READY, now, info=info, last_seen=now
                )
            except NotFound:
                return host  # removed meanwhile
            with self._lock:
                self._last_written[host.id] = now
            if previous is not HostHealth.READY:
                self._metrics.host_transitions.labels("READY").inc()
                log.info("host %s is READY", host.address)
            if host.agent.boot_id and host.agent.boot_id != info.boot_id:
                log.info("agent on %s restarted", host.address)
                self._ingestor.restart(host.id)
        self._observed(host, info)
        return record

    def _failed(self, host: HostRecord, target: HostHealth, message: str, now: datetime) -> HostRecord:
        try:
            record, previous = self._store.record_health(host.id, target, now, message=message)
        except NotFound:
            return host
        if previous is not target:
            self._metrics.host_transitions.labels(target.value).inc()
            log.warning("host %s is %s: %s", host.address, target.value, message)
        return record


def _details(info: AgentInfoRecord) -> tuple[str, ...]:
    """What a write records of the agent: a change is written at once."""
    return (
        info.agent_version,
        info.kernel_release,
        info.module_version,
        info.abi_version,
        info.device,
        str(info.sandboxed),
        info.boot_id,
    )
