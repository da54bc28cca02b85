"""Agent events in, waiters and watchers woken.

- :class:`ChangeNotifier` wakes in-process waiters after commits: WaitProcess registers on a process
  uid, Watch on the whole stream. Waiters also poll the database (every ``poll_interval``), so a
  change committed by another controller replica is seen too, only later.
- :class:`EventIngestor` runs one thread per READY host that consumes the agent's StreamEvents from
  the last sequence number applied (stored on the host row, in the same transaction as the effects of
  each event, so every event is applied exactly once). It reconnects with exponential backoff while the
  host stays READY and exits when it is not; the health monitor starts it again on READY.
  Beyond process starts and exits: EVENTS_DROPPED (the kernel's queue lost events) makes the
  host's reconciler sync it at once, so the exits it lost are read from the agent's Sync;
  SYSCALL_DENIED adds its count to ``chital_controller_denied_syscalls_total``; CONTAINER_EMPTY
  (the last member is gone) is passed to ``on_empty`` hooks (a stop waiting for its members ends
  at once).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import grpc

from chital.controller.agents import AgentPool, event_from_pb
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


class EventIngestor:
    """One StreamEvents consumer thread per READY host."""

    def __init__(
        self,
        store: Store,
        pool: AgentPool,
        clock: Callable[[], datetime],
        max_backoff: float = 2.0,
        metrics: ControllerMetrics | None = None,
    ) -> None:
        self._store = store
        self._pool = pool
        self._clock = clock
        self._max_backoff = max_backoff
        self._metrics = metrics or ControllerMetrics()
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self._calls: dict[str, Any] = {}
        self._stopping = threading.Event()
        #: Syncs a host whose agent reports EVENTS_DROPPED.
        self.syncer: HostSyncer | None = None
        #: Called with (host id, container uid) on CONTAINER_EMPTY.
        self.on_empty: list[Callable[[str, str], None]] = []
        #: False on a controller that is not the leader: the leader alone consumes the agents'
        #: streams (see leader.py), so :meth:`ensure` starts nothing.
        self.active = True

    def ensure(self, host_id: str, address: str) -> None:
        """Run a consumer for the host unless one runs already."""
        with self._lock:
            if self._stopping.is_set() or not self.active:
                return
            thread = self._threads.get(host_id)
            if thread is not None and thread.is_alive():
                return
            thread = threading.Thread(
                target=self._run, args=(host_id, address), name=f"events-{address}", daemon=True
            )
            self._threads[host_id] = thread
            thread.start()

    def active_streams(self) -> int:
        """How many hosts' event streams are being consumed."""
        with self._lock:
            return sum(1 for t in self._threads.values() if t.is_alive())

    def restart(self, host_id: str) -> None:
        """Reopen the host's stream (the agent restarted: its cursor changed)."""
        with self._lock:
            call = self._calls.get(host_id)
        if call is not None:
            call.cancel()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel every stream and wait for the threads."""
        self._stopping.set()
        with self._lock:
            calls = list(self._calls.values())
            threads = list(self._threads.values())
        for call in calls:
            call.cancel()
        for thread in threads:
            thread.join(timeout)

    def _run(self, host_id: str, address: str) -> None:
        backoff = 0.1
        client = self._pool.get(address)
        while not self._stopping.is_set():
            try:
                boot_id, seq = self._store.host_event_cursor(host_id)
            except NotFound:
                return
            except Exception:  # the database is away: wait and try again
                log.warning("reading the event cursor of %s failed", address, exc_info=True)
                if self._stopping.wait(self._max_backoff):
                    return
                continue
            applied = self._consume(host_id, address, client.stream_events(seq), boot_id)
            if applied is None:
                return
            if applied:
                backoff = 0.1
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, self._max_backoff)
            if not self._still_ready(host_id, address):
                return  # the monitor starts a consumer again when the host is READY

    def _consume(self, host_id: str, address: str, call: Any, boot_id: str) -> bool | None:
        """Apply the stream's events until it ends. Returns whether any event was applied, or
        None when the host is gone."""
        applied = False
        with self._lock:
            self._calls[host_id] = call
        try:
            if self._stopping.is_set():
                call.cancel()
            for msg in call:
                event = event_from_pb(msg)
                self._metrics.agent_events.labels(event.kind.lower()).inc()
                self._store.apply_agent_events(host_id, boot_id, [event], self._clock())
                applied = True
                self._react(host_id, address, event)
        except grpc.RpcError as exc:
            if not self._stopping.is_set():
                log.info("event stream of %s ended: %s", address, exc.code())
        except NotFound:
            return None
        except Exception:  # any failure: log, back off, reconnect from the stored cursor
            log.exception("applying events of %s failed", address)
        finally:
            call.cancel()  # no-op when the stream ended by itself
            with self._lock:
                self._calls.pop(host_id, None)
        return applied

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
