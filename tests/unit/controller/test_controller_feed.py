"""The event feed: one reader of the events table for every watcher and waiter."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import TypeVar

import pytest

from chital.controller.db import make_engine
from chital.controller.events import ChangeNotifier
from chital.controller.feed import EventFeed
from chital.controller.placement import choose_host
from chital.controller.records import AgentInfoRecord, ContainerSpec, EventRecord, HostHealth, ProcessSpec
from chital.controller.store import Store

T0 = datetime(2026, 1, 1, 12, 0, 0)


_S = TypeVar("_S", bound=Store)


def with_ready_host(s: _S) -> _S:
    """``s`` with its schema and one READY host."""
    s.create_schema()
    s.register_host("h1", "127.0.0.1:1", {}, 0, T0)
    s.record_health(
        "h1", HostHealth.READY, T0, info=AgentInfoRecord(device="fake", boot_id="b"), last_seen=T0
    )
    return s


@pytest.fixture
def store(fresh_database_url: str) -> Iterator[Store]:
    engine = make_engine(fresh_database_url)
    yield with_ready_host(Store(engine))
    engine.dispose()


@pytest.fixture
def notifier(store: Store) -> ChangeNotifier:
    n = ChangeNotifier()
    store.add_listener(n)
    return n


def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a condition the feed's thread makes true (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def create(store: Store, uid: str) -> None:
    store.create_container(uid, f"r-{uid}", ContainerSpec(name=uid), T0 + timedelta(seconds=1), choose_host)


def test_subscribers_are_woken_only_for_what_they_follow(store: Store, notifier: ChangeNotifier) -> None:
    feed = EventFeed(store, notifier, poll_interval=60.0)  # woken by commits, not by its poll
    feed.start()
    try:
        everything = feed.subscribe()
        one = feed.subscribe(container_uid="c1")
        other = feed.subscribe(container_uid="c2")
        create(store, "c1")
        until(lambda: everything.event.is_set() and one.event.is_set())
        assert not other.event.is_set()
        events, covered = feed.read(0, "c1", 100)
        assert [e.container.uid for e in events if e.container] == ["c1"]
        assert covered == feed.head() == store.last_revision()
        # Nothing of c2 up to the head: a c2 watcher moves past c1's events without reading them.
        assert feed.read(0, "c2", 100) == ([], covered)

        store.finish_create("c1", True, "", T0 + timedelta(seconds=2))
        waiter_before = feed.subscribe(process_uid="p1")
        process, _, _ = store.create_process("p1", "c1", "e1", ProcessSpec(argv=("true",)), T0)
        until(waiter_before.event.is_set)
        assert not other.event.is_set()
        events, _ = feed.read(covered, "", 100)
        assert [e.process.uid for e in events if e.process] == [process.uid]
        assert feed.subscribers() == 4
        for sub in (everything, one, other, waiter_before):
            feed.unsubscribe(sub)
        assert feed.subscribers() == 0
    finally:
        feed.stop()


def test_a_reader_behind_the_kept_events_reads_the_database_without_gaps(
    store: Store, notifier: ChangeNotifier
) -> None:
    feed = EventFeed(store, notifier, poll_interval=60.0, keep=4)
    feed.start()
    try:
        for i in range(12):
            create(store, f"c{i}")
        until(lambda: feed.head() == store.last_revision())
        # Page through from the start in small batches: the first come from the database (the
        # feed keeps the newest few), the last from memory, each revision exactly once.
        seen: list[int] = []
        after = 0
        while True:
            events, covered = feed.read(after, "", 3)
            seen += [e.revision for e in events]
            after = events[-1].revision if len(events) == 3 else covered
            if len(events) < 3:
                break
        assert seen == [e.revision for e in store.list_events(0, 100)]
        assert after == store.last_revision()
    finally:
        feed.stop()


def test_stop_wakes_every_subscriber(store: Store, notifier: ChangeNotifier) -> None:
    feed = EventFeed(store, notifier)
    feed.start()
    sub = feed.subscribe(container_uid="c9")
    feed.stop()
    assert sub.event.is_set()
    assert feed.subscribe().event.is_set()  # subscribed after the stop: woken at once


def test_a_feed_that_is_not_started_reads_the_database_and_uses_the_notifier(
    store: Store, notifier: ChangeNotifier
) -> None:
    feed = EventFeed(store, notifier)
    sub = feed.subscribe()
    waiter = feed.subscribe(process_uid="p1")
    create(store, "c1")
    assert sub.event.is_set()  # the notifier woke it in the committing thread
    events, covered = feed.read(0, "", 100)
    assert [e.revision for e in events] == [e.revision for e in store.list_events(0, 100)]
    assert covered == store.last_revision() and not feed.running
    feed.unsubscribe(sub)
    feed.unsubscribe(waiter)


class CountingStore(Store):
    """A store that counts the feed's reads of the events table."""

    reads = 0

    def list_events(self, after_revision: int, limit: int, container_uid: str = "") -> list[EventRecord]:
        self.reads += 1
        return super().list_events(after_revision, limit, container_uid)


def test_own_commits_are_published_without_a_read_and_others_are_read(fresh_database_url: str) -> None:
    engine = make_engine(fresh_database_url)
    ours = with_ready_host(CountingStore(engine))
    replica = Store(make_engine(fresh_database_url))  # another controller on the same database
    feed = EventFeed(ours, ChangeNotifier(), poll_interval=0.2)
    feed.start()
    try:
        sub = feed.subscribe()
        reads = ours.reads
        for i in range(20):
            create(ours, f"c{i}")
        # Taken from the commits: the feed is at the database's head at once, without a read.
        assert feed.head() == ours.last_revision()
        assert ours.reads == reads
        assert sub.event.is_set()
        published, _ = feed.read(0, "", 100)
        assert [(e.revision, e.container) for e in published] == [
            (e.revision, e.container) for e in ours.list_events(0, 100)
        ]

        # The replica's commit is not published here: the poll reads it.
        create(replica, "r1")
        until(lambda: feed.head() == ours.last_revision())
        # Our next commit follows the replica's, which the feed may not have read yet: either way
        # it ends with every event once, in order.
        create(replica, "r2")
        create(ours, "c20")
        until(lambda: feed.head() == ours.last_revision())
        events, covered = feed.read(0, "", 100)
        assert [e.revision for e in events] == [e.revision for e in ours.list_events(0, 100)]
        assert {e.container.uid for e in events if e.container} >= {"r1", "r2", "c20"}
        assert covered == ours.last_revision()
    finally:
        feed.stop()
        replica.engine.dispose()
        engine.dispose()
