"""EventIngestor against real gRPC agents that serve StreamEvents only, with a recording store.

What the ingestor promises: every event applied once and in order per host, from the stored cursor;
the events that arrive during a write go into the next write (batches, not one transaction each);
a host that is gone ends its stream; a restart reopens the stream from the cursor; and a fleet of
streams costs no thread per host.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from chital.api.agent.v1 import agent_pb2, agent_pb2_grpc
from chital.controller.agents import AgentPool
from chital.controller.events import EventIngestor
from chital.controller.metrics import ControllerMetrics
from chital.controller.records import AgentEventRecord, HostHealth
from chital.errdefs import NotFound

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Events(agent_pb2_grpc.AgentServiceServicer):
    """StreamEvents only: ``total`` SYSCALL_DENIED events numbered 1..total, then an open stream."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.opened: list[int] = []  # after_seq of every StreamEvents call

    def StreamEvents(self, request: Any, context: Any) -> Iterator[Any]:
        self.opened.append(request.after_seq)
        for seq in range(request.after_seq + 1, self.total + 1):
            yield agent_pb2.StreamEventsResponse(seq=seq, kind=agent_pb2.EVENT_KIND_SYSCALL_DENIED, count=1)
        while context.is_active():
            time.sleep(0.02)


class RecordingStore:
    """What the ingestor reads and writes of the store, in memory; each write takes ``delay``."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.lock = threading.Lock()
        self.cursor: dict[str, int] = {}
        self.batches: dict[str, list[list[int]]] = {}
        self.gone: set[str] = set()

    def host_event_cursor(self, host_id: str) -> tuple[str, int]:
        if host_id in self.gone:
            raise NotFound(host_id)
        with self.lock:
            return "boot", self.cursor.get(host_id, 0)

    def apply_agent_events(
        self, host_id: str, boot_id: str, events: list[AgentEventRecord], now: datetime
    ) -> int:
        if host_id in self.gone:
            raise NotFound(host_id)
        time.sleep(self.delay)
        with self.lock:
            last = self.cursor.get(host_id, 0)
            fresh = [e.seq for e in events if e.seq > last]
            self.batches.setdefault(host_id, []).append(fresh)
            if fresh:
                self.cursor[host_id] = fresh[-1]
            return self.cursor.get(host_id, 0)

    def get_host(self, host_id: str) -> Any:
        if host_id in self.gone:
            raise NotFound(host_id)
        return type("Host", (), {"health": HostHealth.READY})()

    def applied(self, host_id: str) -> list[int]:
        with self.lock:
            return [seq for batch in self.batches.get(host_id, []) for seq in batch]


@pytest.fixture
def serve() -> Iterator[Callable[[int], tuple[Events, str]]]:
    servers: list[grpc.Server] = []

    def start(total: int) -> tuple[Events, str]:
        events = Events(total)  # type: ignore[abstract]  # serves StreamEvents only
        # A thread per open stream (the test agents' side; named to tell them from the ingestor's).
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=128, thread_name_prefix="test-agent"))
        agent_pb2_grpc.add_AgentServiceServicer_to_server(events, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return events, f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(0).wait(5)


@pytest.fixture
def make_ingestor() -> Iterator[Callable[[RecordingStore], EventIngestor]]:
    made: list[tuple[EventIngestor, AgentPool]] = []

    def make(store: RecordingStore) -> EventIngestor:
        pool = AgentPool(timeout=5.0)
        ingestor = EventIngestor(
            store,  # type: ignore[arg-type]  # duck-typed: what the ingestor uses of a Store
            pool,
            lambda: T0,
            max_backoff=0.2,
            metrics=ControllerMetrics(),
            max_batch=50,
        )
        made.append((ingestor, pool))
        return ingestor

    yield make
    for ingestor, pool in made:
        ingestor.stop()
        pool.close()


def controller_threads() -> int:
    """The threads of this process but the test agents' servers'."""
    return sum(1 for t in threading.enumerate() if not t.name.startswith("test-agent"))


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_every_event_once_in_order_in_batches(
    serve: Callable[[int], tuple[Events, str]], make_ingestor: Callable[[RecordingStore], EventIngestor]
) -> None:
    store = RecordingStore(delay=0.01)  # a write takes a while: the next events wait and go together
    _agent, address = serve(2000)
    ingestor = make_ingestor(store)
    ingestor.ensure("h1", address)
    wait_for(lambda: len(store.applied("h1")) == 2000, "2000 events applied")
    assert store.applied("h1") == list(range(1, 2001))
    sizes = [len(b) for b in store.batches["h1"]]
    assert max(sizes) <= 50  # max_batch
    assert len(sizes) < 2000 / 5, f"{len(sizes)} writes for 2000 events: not batched"
    assert ingestor.active_streams() == 1
    ingestor.ensure("h1", address)  # a second ensure opens nothing more
    assert ingestor.active_streams() == 1


def test_restart_reopens_from_the_stored_cursor(
    serve: Callable[[int], tuple[Events, str]], make_ingestor: Callable[[RecordingStore], EventIngestor]
) -> None:
    store = RecordingStore()
    agent, address = serve(30)
    ingestor = make_ingestor(store)
    ingestor.ensure("h1", address)
    wait_for(lambda: len(store.applied("h1")) == 30, "30 events applied")
    ingestor.restart("h1")
    wait_for(lambda: len(agent.opened) == 2, "the stream opened again")
    assert agent.opened == [0, 30]
    agent.total = 40  # the reopened call has already sent what it had: a third open brings the rest
    ingestor.restart("h1")
    wait_for(lambda: len(store.applied("h1")) == 40, "the new events applied")
    assert store.applied("h1") == list(range(1, 41))


def test_a_host_that_is_gone_ends_its_stream(
    serve: Callable[[int], tuple[Events, str]], make_ingestor: Callable[[RecordingStore], EventIngestor]
) -> None:
    store = RecordingStore()
    _agent, address = serve(5)
    ingestor = make_ingestor(store)
    ingestor.ensure("h1", address)
    wait_for(lambda: len(store.applied("h1")) == 5, "5 events applied")
    store.gone.add("h1")
    ingestor.restart("h1")
    wait_for(lambda: ingestor.active_streams() == 0, "the stream to end")
    wait_for(lambda: ingestor.streamed_hosts() == set(), "the host's entry to be dropped")


def test_a_consumer_that_fails_is_logged_and_forgotten(
    serve: Callable[[int], tuple[Events, str]],
    make_ingestor: Callable[[RecordingStore], EventIngestor],
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = RecordingStore()
    _agent, address = serve(1)
    ingestor = make_ingestor(store)

    async def broken(*args: Any) -> bool:
        raise RuntimeError("a bug in the consumer")

    ingestor._consume = broken  # type: ignore[method-assign]
    ingestor.ensure("h1", address)
    wait_for(lambda: ingestor.streamed_hosts() == set(), "the failed consumer's entry to be dropped")
    failures = [r for r in caplog.records if "stopped on an error" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert "a bug in the consumer" in str(failures[0].exc_info[1])
    ingestor._consume = EventIngestor._consume.__get__(ingestor)  # type: ignore[method-assign]
    ingestor.ensure("h1", address)  # the host can be streamed again
    wait_for(lambda: store.applied("h1") == [1], "the event applied by a new consumer")


def test_a_fleet_of_streams_costs_no_thread_per_host(
    serve: Callable[[int], tuple[Events, str]], make_ingestor: Callable[[RecordingStore], EventIngestor]
) -> None:
    store = RecordingStore()
    agent, address = serve(3)
    ingestor = make_ingestor(store)
    before = controller_threads()
    hosts = [f"h{i}" for i in range(100)]
    for host in hosts:  # 100 hosts (one agent serves them all: the streams are separate calls)
        ingestor.ensure(host, address)
    wait_for(lambda: all(len(store.applied(h)) == 3 for h in hosts), "every host's events applied")
    assert ingestor.active_streams() == 100
    wait_for(lambda: len(agent.opened) == 100, "100 streams open")
    # The event loop's thread and the pool's 4 writers, and grpc's own few; never one per host.
    assert controller_threads() - before <= 10, threading.enumerate()
