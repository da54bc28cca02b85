"""Agent events in, waiters and watchers woken.

- :class:`ChangeNotifier` wakes in-process waiters after commits: WaitProcess registers on a process
  uid, Watch on the whole stream. Waiters also poll the database (every ``poll_interval``), so a
  change committed by another controller replica is seen too, only later.
- :class:`EventIngestor` consumes every READY host's StreamEvents from the last sequence number
  applied (stored on the host row, in the same transaction as the effects of the events, so every
  event is applied exactly once). The streams are read on one asyncio event loop (an idle stream
  costs a coroutine, not a thread); a small pool of threads (``workers``, 4) applies what a stream
  brought, in order, one transaction for all the events that arrived while the previous ones were
  being written (at most ``max_batch``). A stream reconnects with exponential backoff while the host
  stays READY and ends when it is not; the health monitor starts it again on READY.
  Beyond process starts and exits: EVENTS_DROPPED (the kernel's queue lost events) makes the
  host's reconciler sync it at once, so the exits it lost are read from the agent's Sync;
  SYSCALL_DENIED adds its count to ``chital_controller_denied_syscalls_total``; CONTAINER_EMPTY
  (the last member is gone) is passed to ``on_empty`` hooks (a stop waiting for its members ends
  at once).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc

from chital.api.agent.v1 import agent_pb2, agent_pb2_grpc
from chital.controller.agents import AgentPool, event_from_pb
from chital.controller.aioloop import LoopThread
from chital.controller.hostsync import HostSyncer
from chital.controller.metrics import ControllerMetrics
from chital.controller.records import AgentEventRecord, HostHealth
from chital.controller.store import Store
from chital.errdefs import NotFound

__all__ = ["ChangeNotifier", "EventIngestor"]

log = logging.getLogger("chital.controller.events")


class ChangeNotifier:
    """Per-process wake-ups for WaitProcess and a broadcast for Watch."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_process: dict[str, set[threading.Event]] = {}
        self._watchers: set[threading.Event] = set()

    def __call__(self, process_uids: set[str]) -> None:
        """Store listener: something committed; ``process_uids`` changed."""
        with self._lock:
            targets = set(self._watchers)
            for uid in process_uids:
                targets |= self._by_process.get(uid, set())
        for ev in targets:
            ev.set()

    def watch_process(self, uid: str) -> threading.Event:
        """An event set whenever process ``uid`` changes; call :meth:`unwatch_process` after."""
        ev = threading.Event()
        with self._lock:
            self._by_process.setdefault(uid, set()).add(ev)
        return ev

    def unwatch_process(self, uid: str, ev: threading.Event) -> None:
        """Stop waking ``ev``."""
        with self._lock:
            waiters = self._by_process.get(uid)
            if waiters is not None:
                waiters.discard(ev)
                if not waiters:
                    del self._by_process[uid]

    def watch_all(self) -> threading.Event:
        """An event set on every commit; call :meth:`unwatch_all` after."""
        ev = threading.Event()
        with self._lock:
            self._watchers.add(ev)
        return ev

    def unwatch_all(self, ev: threading.Event) -> None:
        """Stop waking ``ev``."""
        with self._lock:
            self._watchers.discard(ev)


@dataclass
class _Stream:
    """One host's event stream (its fields are touched on the event loop only, but ``future``)."""

    host_id: str
    address: str
    future: concurrent.futures.Future[None] | None = None  # the coroutine consuming the stream
    call: Any = None  # the grpc.aio call open now

    def cancel_call(self) -> None:
        if self.call is not None:
            self.call.cancel()


class EventIngestor:
    """Every READY host's StreamEvents, read on one event loop and applied by a pool of threads."""

    def __init__(
        self,
        store: Store,
        pool: AgentPool,
        clock: Callable[[], datetime],
        max_backoff: float = 2.0,
        metrics: ControllerMetrics | None = None,
        *,
        workers: int = 4,
        max_batch: int = 256,
    ) -> None:
        self._store = store
        self._pool = pool
        self._clock = clock
        self._max_backoff = max_backoff
        self._metrics = metrics or ControllerMetrics()
        self._workers = workers
        self._max_batch = max_batch
        self._lock = threading.Lock()  # guards _streams, _loop, _db
        self._streams: dict[str, _Stream] = {}
        self._loop: LoopThread | None = None
        self._db: ThreadPoolExecutor | None = None
        self._stopping = threading.Event()
        #: Syncs a host whose agent reports EVENTS_DROPPED.
        self.syncer: HostSyncer | None = None
        #: Called with (host id, container uid) on CONTAINER_EMPTY.
        self.on_empty: list[Callable[[str, str], None]] = []
        #: False on a controller that is not the leader: the leader alone consumes the agents'
        #: streams (see leader.py), so :meth:`ensure` starts nothing.
        self.active = True

    def ensure(self, host_id: str, address: str) -> None:
        """Consume the host's stream unless that is being done already (from any thread)."""
        with self._lock:
            if self._stopping.is_set() or not self.active:
                return
            stream = self._streams.get(host_id)
            if stream is not None and stream.future is not None and not stream.future.done():
                return
            if self._loop is None or self._db is None:
                self._loop = LoopThread("events")
                self._db = ThreadPoolExecutor(self._workers, thread_name_prefix="events-apply")
            stream = _Stream(host_id, address)
            self._streams[host_id] = stream
            stream.future = self._loop.submit(self._run(stream, self._db))
            stream.future.add_done_callback(functools.partial(self._ended, stream))

    def _ended(self, stream: _Stream, future: concurrent.futures.Future[None]) -> None:
        """A host's consumer returned (the host is gone or no longer READY), was cancelled, or
        failed: forget its entry (unless a newer one replaced it), and log a failure, which would
        otherwise vanish with the future."""
        with self._lock:
            if self._streams.get(stream.host_id) is stream:
                del self._streams[stream.host_id]
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None and not self._stopping.is_set():
            log.error("the event stream of %s stopped on an error", stream.address, exc_info=exc)

    def active_streams(self) -> int:
        """How many hosts' event streams are being consumed."""
        with self._lock:
            return sum(1 for s in self._streams.values() if s.future is not None and not s.future.done())

    def streamed_hosts(self) -> set[str]:
        """The hosts whose stream has a consumer (running, or ending now)."""
        with self._lock:
            return set(self._streams)

    def restart(self, host_id: str) -> None:
        """Reopen the host's stream (the agent restarted: its cursor changed)."""
        with self._lock:
            stream, loop = self._streams.get(host_id), self._loop
        if stream is not None and loop is not None:
            loop.call(stream.cancel_call)

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel every stream and wait for them; final."""
        self._stopping.set()
        with self._lock:
            loop, self._loop = self._loop, None
            db, self._db = self._db, None
        if loop is not None:
            loop.close(timeout)
        if db is not None:
            db.shutdown(wait=False, cancel_futures=True)

    # -- on the event loop ------------------------------------------------------------------

    async def _run(self, stream: _Stream, db: ThreadPoolExecutor) -> None:
        """Consume the host's stream from the stored cursor, again after every end, while the
        host is READY (the monitor starts it again on READY)."""
        loop = asyncio.get_running_loop()
        backoff = 0.1
        channel: grpc.aio.Channel | None = None
        try:
            while not self._stopping.is_set():
                try:
                    cursor = await loop.run_in_executor(db, self._store.host_event_cursor, stream.host_id)
                    if channel is None:
                        channel = self._pool.aio_channel(stream.address)
                except NotFound:
                    return
                except Exception:  # the database is away, or the pool refuses: wait, try again
                    log.warning("opening the event stream of %s failed", stream.address, exc_info=True)
                    await asyncio.sleep(self._max_backoff)
                    continue
                applied = await self._consume(stream, channel, db, *cursor)
                if applied is None:
                    return
                if applied:
                    backoff = 0.1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                if not await loop.run_in_executor(db, self._still_ready, stream.host_id, stream.address):
                    return
        finally:
            if channel is not None:
                await channel.close()

    async def _consume(
        self, stream: _Stream, channel: grpc.aio.Channel, db: ThreadPoolExecutor, boot_id: str, seq: int
    ) -> bool | None:
        """Read the stream until it ends while a second task applies what it read, in batches of
        what arrived meanwhile (one transaction each, in order). Returns whether any event was
        applied, or None when the host is gone."""
        call = agent_pb2_grpc.AgentServiceStub(channel).StreamEvents(
            agent_pb2.StreamEventsRequest(after_seq=seq)
        )
        stream.call = call
        # Bounded: a host that sends faster than the database takes waits (the agent keeps its
        # events; the kernel's queue tells when it had to drop some).
        queue: asyncio.Queue[AgentEventRecord | None] = asyncio.Queue(maxsize=4 * self._max_batch)
        applier = asyncio.create_task(self._apply_queue(stream, db, boot_id, queue))
        try:
            if self._stopping.is_set():
                call.cancel()
            async for msg in call:
                event = event_from_pb(msg)
                self._metrics.agent_events.labels(event.kind.lower()).inc()
                await queue.put(event)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else grpc.StatusCode.UNKNOWN
            if not self._stopping.is_set() and code != grpc.StatusCode.CANCELLED:
                log.info("event stream of %s ended: %s", stream.address, code)
        except asyncio.CancelledError:
            # Either this task is cancelled (the ingestor stops), or only the call was (restart,
            # or the applier gave up on this stream): then the stream has ended, go on.
            current = asyncio.current_task()
            if self._stopping.is_set() or (current is not None and current.cancelling()):
                applier.cancel()
                raise
        except Exception:  # a message that cannot be read: log, back off, reconnect from the cursor
            log.exception("reading events of %s failed", stream.address)
        finally:
            call.cancel()  # no-op when the stream ended by itself
            stream.call = None
        await queue.put(None)  # the applier drains the queue (it never stops before this)
        return await applier

    async def _apply_queue(
        self,
        stream: _Stream,
        db: ThreadPoolExecutor,
        boot_id: str,
        queue: asyncio.Queue[AgentEventRecord | None],
    ) -> bool | None:
        loop = asyncio.get_running_loop()
        applied: bool | None = False
        failed = False
        while True:
            batch: list[AgentEventRecord] = []
            item = await queue.get()
            while item is not None:
                batch.append(item)
                if len(batch) >= self._max_batch or queue.empty():
                    break
                item = queue.get_nowait()
            if batch and not failed:
                try:
                    await loop.run_in_executor(db, self._apply, stream, boot_id, batch)
                    applied = True
                except NotFound:
                    failed, applied = True, None
                    stream.cancel_call()
                except Exception:  # log; the rest is read again from the stored cursor
                    log.exception("applying events of %s failed", stream.address)
                    failed = True
                    stream.cancel_call()
            if item is None:
                return applied

    # -- on the pool's threads --------------------------------------------------------------

    def _apply(self, stream: _Stream, boot_id: str, batch: list[AgentEventRecord]) -> None:
        self._store.apply_agent_events(stream.host_id, boot_id, batch, self._clock())
        for event in batch:
            self._react(stream.host_id, stream.address, event)

    def _react(self, host_id: str, address: str, event: AgentEventRecord) -> None:
        """What an event means beyond the records it changes."""
        if event.kind == "EVENTS_DROPPED":
            log.warning("the kernel on %s dropped %d events: syncing the host", address, event.count)
            if self.syncer is not None:
                self.syncer.request(host_id, address)
        elif event.kind == "SYSCALL_DENIED":
            self._metrics.denied_syscalls.inc(max(1, event.count))
        elif event.kind == "CONTAINER_EMPTY" and event.container_uid:
            for hook in list(self.on_empty):
                try:
                    hook(host_id, event.container_uid)
                except Exception:  # a hook's failure must not end the stream (logged)
                    log.exception("a CONTAINER_EMPTY hook failed")

    def _still_ready(self, host_id: str, address: str) -> bool:
        try:
            return self._store.get_host(host_id).health is HostHealth.READY
        except NotFound:
            return False
        except Exception:  # the database is away: keep trying while it is
            log.warning("reading host %s failed", address, exc_info=True)
            return True
