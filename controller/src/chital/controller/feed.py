"""One reader of the events table for every attached watcher and waiter.

Without it, every Watch stream and every WaitProcess read the database on every commit and every
poll interval: N attached clients cost N queries per change, and the herd of woken threads competes
with the unary calls for the GIL and the database. :class:`EventFeed` keeps the newest events in
memory and wakes only the subscribers an event is about: a watcher of one container for that
container's events, a waiter for its process.

The events this process commits reach the feed without a read: the store *publishes* each
transaction's events with their revisions right after its commit, and the feed takes them when
they follow its head. A gap (another controller replica committed in between, or, on PostgreSQL,
two of this process's writers published out of order) wakes the feed's reader thread, which reads
the events after the head from the database; it also polls every ``poll_interval`` for the
commits of other replicas. Once woken it waits ``gather`` (10 ms) so that a burst is read at once.

A watcher reads from memory while its position is within what the feed keeps, and from the
database while it catches up from further back (a resume from an old revision). The feed holds
every event above its *floor* up to its *head*; :meth:`EventFeed.read` tells the reader the
revision its answer covers, so a watcher (and its heartbeats) advance past events it does not
select without reading them again.

Reading "the events after the head" skips nothing because the store gives revisions out in commit
order (on PostgreSQL its writers append their event rows last, under one transaction-level advisory
lock held until the commit): once the feed has read revision *n*, no event with a smaller revision
can commit any more, whichever thread or controller replica writes it.

A feed that is not started (unit tests that build the use cases alone) reads the database on every
call and its subscriptions are the change notifier's own, as before it existed.
"""

from __future__ import annotations

import bisect
import logging
import threading
from dataclasses import dataclass, field

from chital.controller.events import ChangeNotifier
from chital.controller.records import EventRecord
from chital.controller.store import Store

__all__ = ["EventFeed", "Subscription"]

log = logging.getLogger("chital.controller.feed")

#: Events kept in memory: a watcher further behind than this reads the database.
DEFAULT_KEEP = 20_000
#: Events read from the database per query by the feed.
TAIL_BATCH = 1000


@dataclass(eq=False)
class Subscription:
    """Woken (``event`` set) when the feed has an event it selects: one container's (or every
    event when ``container_uid`` is empty), or one process's when ``process_uid`` is set."""

    container_uid: str = ""
    process_uid: str = ""
    event: threading.Event = field(default_factory=threading.Event)

    def wake(self) -> None:
        """Wake the subscriber (its RPC ended, or the feed stops)."""
        self.event.set()

    def selects(self, containers: set[str], processes: set[str]) -> bool:
        """Whether events about ``containers`` and ``processes`` concern this subscription."""
        if self.process_uid:
            return self.process_uid in processes
        return not self.container_uid or self.container_uid in containers


def _container_of(event: EventRecord) -> str:
    if event.container is not None:
        return event.container.uid
    if event.process is not None:
        return event.process.container_uid
    return ""


class EventFeed:
    """The events table, read once and fanned out to subscribers (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        notifier: ChangeNotifier,
        *,
        poll_interval: float = 0.5,
        keep: int = DEFAULT_KEEP,
        gather: float = 0.01,
    ) -> None:
        self._store = store
        self._notifier = notifier
        self._poll_interval = poll_interval
        self._gather = gather
        self._keep = max(1, keep)
        self._lock = threading.Lock()
        self._events: list[EventRecord] = []
        self._revisions: list[int] = []
        self._floor = 0
        self._head = 0
        self._subscriptions: set[Subscription] = set()
        self._running = False
        self._stopping = threading.Event()
        self._wake: threading.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the feed's reader runs (otherwise reads and wake-ups go to the database and the
        change notifier directly)."""
        return self._running

    def start(self) -> None:
        """Start reading after the newest event in the database."""
        head = self._store.last_revision()
        with self._lock:
            self._floor = self._head = head
            self._running = True
        self._wake = threading.Event()
        self._store.add_publisher(self._publish)
        self._thread = threading.Thread(target=self._run, name="event-feed", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reading and wake every subscriber (their streams then see their RPC has ended)."""
        self._stopping.set()
        if self._wake is not None:
            self._wake.set()
        self._store.remove_publisher(self._publish)
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            subscriptions = list(self._subscriptions)
        for sub in subscriptions:
            sub.wake()

    def head(self) -> int:
        """The newest revision the feed has read (0 before it starts)."""
        with self._lock:
            return self._head

    # -- subscribers ----------------------------------------------------------------------------

    def subscribe(self, container_uid: str = "", process_uid: str = "") -> Subscription:
        """A subscription to wait on; :meth:`unsubscribe` it after."""
        if not self._running:
            # Not started: the change notifier wakes it (and the caller polls the database).
            if process_uid:
                return Subscription(container_uid, process_uid, self._notifier.watch_process(process_uid))
            return Subscription(container_uid, process_uid, self._notifier.watch_all())
        sub = Subscription(container_uid, process_uid)
        with self._lock:
            self._subscriptions.add(sub)
        if self._stopping.is_set():
            sub.wake()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop waking ``sub``."""
        with self._lock:
            if sub in self._subscriptions:
                self._subscriptions.discard(sub)
                return
        if sub.process_uid:
            self._notifier.unwatch_process(sub.process_uid, sub.event)
        else:
            self._notifier.unwatch_all(sub.event)

    def subscribers(self) -> int:
        """How many subscriptions the feed wakes."""
        with self._lock:
            return len(self._subscriptions)

    # -- readers --------------------------------------------------------------------------------

    def read(self, after: int, container_uid: str, limit: int) -> tuple[list[EventRecord], int]:
        """Up to ``limit`` events after revision ``after`` (of one container, or all), oldest first,
        and the revision the answer covers: every selected event up to it is in the list."""
        with self._lock:
            # Below the compacted revision: the database answers (OUT_OF_RANGE), not the memory.
            if self._running and after >= max(self._floor, self._store.compact_revision):
                start = bisect.bisect_right(self._revisions, after)
                out: list[EventRecord] = []
                for i in range(start, len(self._events)):
                    event = self._events[i]
                    if not container_uid or _container_of(event) == container_uid:
                        out.append(event)
                        if len(out) >= limit:
                            return out, event.revision
                return out, max(after, self._head)
            covered = self._head if self._running else -1
        if covered < 0:
            covered = self._store.last_revision()  # read first: the list then covers up to it
        events = self._store.list_events(after, limit, container_uid)
        if len(events) >= limit:
            return events, events[-1].revision
        return events, max(after, covered)

    # -- the reader thread ----------------------------------------------------------------------

    def _run(self) -> None:
        assert self._wake is not None
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                full = self._read_new()
            except Exception:  # the database is away: keep the feed, try again after a pause
                log.warning("reading new events failed", exc_info=True)
                full = False
            if not full and self._wake.wait(self._poll_interval):
                # Woken by a gap: gather what the next few milliseconds commit into the same read.
                self._stopping.wait(self._gather)

    def _publish(self, events: list[EventRecord]) -> None:
        """Store publisher: a commit of this process appended ``events``. Taken as they are when
        they follow the head without a gap; otherwise (a commit of another thread or controller
        came between, or was published later) the reader reads the database."""
        if not events:
            return
        with self._lock:
            if not self._running or events[-1].revision <= self._head:
                return  # read already
            contiguous = all(e.revision == self._head + 1 + i for i, e in enumerate(events))
            woken = self._keep_locked(events) if contiguous else []
        if not contiguous:
            assert self._wake is not None
            self._wake.set()
        for sub in woken:
            sub.wake()

    def _read_new(self) -> bool:
        """Read the events after the head, keep them and wake their subscribers. Returns whether
        the batch was full (more may be waiting)."""
        with self._lock:
            head = self._head
        batch = self._store.list_events(head, TAIL_BATCH)
        with self._lock:
            # What was published meanwhile is kept already.
            batch = [e for e in batch if e.revision > self._head]
            if not batch:
                return False
            woken = self._keep_locked(batch)
        for sub in woken:
            sub.wake()
        return len(batch) >= TAIL_BATCH

    def _keep_locked(self, batch: list[EventRecord]) -> list[Subscription]:
        """Append ``batch`` (above the head, in order), trim, and return the subscriptions to wake."""
        containers = {_container_of(e) for e in batch}
        processes = {e.process.uid for e in batch if e.process is not None}
        self._events.extend(batch)
        self._revisions.extend(e.revision for e in batch)
        self._head = batch[-1].revision
        # Trim in steps of a quarter, not one event at a time (a list's front is costly to cut).
        if len(self._events) > self._keep + self._keep // 4:
            cut = len(self._events) - self._keep
            self._floor = self._revisions[cut - 1]
            del self._events[:cut]
            del self._revisions[:cut]
        return [sub for sub in self._subscriptions if sub.selects(containers, processes)]
