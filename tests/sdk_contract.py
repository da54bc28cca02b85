"""The SDK's behaviour cases that hold for any server that serves the API: run against the SDK's
test fake (tests/unit/client/test_client_contract.py) and against the real controller of a hollow
fleet (tests/integration/test_sdk_contract_hollow.py), so the fake is checked against the real
server by the same tests and cannot drift from it unnoticed.

A module that imports these cases provides a ``backend`` fixture: a :class:`Backend` whose client
talks to its server. Every case names its containers after ``backend.run`` (fresh per test), so
cases share a server without seeing each other's containers. Programs are ones both servers run
alike: ``echo ARGS`` prints ARGS and exits 0, ``sleep N`` runs until it is signalled.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

import chital.client
from chital.client import Client, ContainerState, EventType, LogStream, ProcessState, WatchEvent

__all__ = [
    "Backend",
    "test_contract_create_get_and_request_ids",
    "test_contract_delete_frees_the_name_and_keeps_the_uid",
    "test_contract_errors",
    "test_contract_exec_wait_logs_and_signal",
    "test_contract_invalid_names_are_refused",
    "test_contract_list_pages_and_label_selectors",
    "test_contract_live_watch_sees_only_new_events",
    "test_contract_stop_ends_the_processes",
    "test_contract_watch_from_a_revision_of_one_container",
]

T = 30.0  # generous deadlines: a 2-core machine shared with other test runs


@dataclass
class Backend:
    """A server under test and a client of it."""

    kind: str  # "fake" or "controller"
    client: Client
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def name(self, base: str) -> str:
        """A container name of this test only."""
        return f"{base}-{self.run}"


def wait_state(client: Client, ref: str, state: ContainerState) -> None:
    """Until the container is in ``state`` (a server may finish a change after it answers)."""
    events = client.watch(since_revision=1, container=ref, timeout=T)
    try:
        if client.get_container(ref).state is state:
            return
        for event in events:
            if event.container is not None and event.container.state is state:
                return
    finally:
        events.close()  # type: ignore[attr-defined]


def test_contract_create_get_and_request_ids(backend: Backend) -> None:
    client = backend.client
    name = backend.name("web")
    c = client.create_container(name, labels={"team": "a"}, request_id=f"r-{backend.run}")
    assert c.name == name and c.labels == {"team": "a"}
    assert c.state in (ContainerState.PENDING, ContainerState.CREATED)
    assert c.create_time is not None and c.create_time.tzinfo is not None
    wait_state(client, c.uid, ContainerState.CREATED)
    by_name, by_uid = client.get_container(name), client.get_container(c.uid)
    assert by_name.uid == by_uid.uid == c.uid and by_name.state is ContainerState.CREATED
    # A retry with the same request id and spec is the same container, not a second one.
    again = client.create_container(name, labels={"team": "a"}, request_id=f"r-{backend.run}")
    assert again.uid == c.uid
    # The same request id for another spec, or another request id for a taken name: ALREADY_EXISTS.
    with pytest.raises(chital.client.AlreadyExists):
        client.create_container(name, labels={"team": "b"}, request_id=f"r-{backend.run}")
    with pytest.raises(chital.client.AlreadyExists):
        client.create_container(name, request_id=f"r2-{backend.run}")


def test_contract_invalid_names_are_refused(backend: Backend) -> None:
    for bad in ("", "Web", "-web", "a b", "x" * 64):
        with pytest.raises(chital.client.InvalidArgument):
            backend.client.create_container(bad)


def test_contract_list_pages_and_label_selectors(backend: Backend) -> None:
    client = backend.client
    created = [
        client.create_container(backend.name(f"c{i}"), labels={"run": backend.run, "odd": str(i % 2)})
        for i in range(5)
    ]
    selector = {"run": backend.run}
    page = client.list_containers_page(page_size=2, label_selector=selector)
    assert [c.uid for c in page.items] == [c.uid for c in created[:2]] and page.next_page_token
    assert [c.uid for c in client.list_containers(label_selector=selector, page_size=3)] == [
        c.uid for c in created
    ]
    odd = client.list_containers(label_selector={"run": backend.run, "odd": "1"})
    assert [c.uid for c in odd] == [created[1].uid, created[3].uid]
    assert list(client.list_containers(label_selector={"run": backend.run, "odd": "2"})) == []


def test_contract_exec_wait_logs_and_signal(backend: Backend) -> None:
    client = backend.client
    box = client.create_container(backend.name("box"))
    wait_state(client, box.uid, ContainerState.CREATED)
    echo = client.exec(box.uid, ["echo", "hi"])
    assert echo.argv == ("echo", "hi") and echo.container_uid == box.uid
    done = client.wait_process(echo.uid, timeout=T)
    assert (done.state, done.exit_code, done.signal) == (ProcessState.EXITED, 0, 0)
    chunks = list(client.stream_logs(echo.uid))
    assert [(c.stream, c.data) for c in chunks] == [(LogStream.STDOUT, b"hi\n")]

    sleeper = client.exec(box.uid, ["sleep", "60"])
    assert sleeper.state in (ProcessState.STARTING, ProcessState.RUNNING)
    still = client.wait_process(sleeper.uid, timeout=0.2)  # the wait's timeout passes first
    assert still.state in (ProcessState.STARTING, ProcessState.RUNNING)
    client.signal_process(sleeper.uid, 9)
    killed = client.wait_process(sleeper.uid, timeout=T)
    assert (killed.state, killed.signal, killed.shell_exit_status) == (ProcessState.EXITED, 9, 137)
    with pytest.raises(chital.client.FailedPrecondition):
        client.signal_process(sleeper.uid, 9)  # it has exited
    assert [p.uid for p in client.list_processes(box.uid)] == [echo.uid, sleeper.uid]


def test_contract_stop_ends_the_processes(backend: Backend) -> None:
    client = backend.client
    box = client.create_container(backend.name("stopped"))
    wait_state(client, box.uid, ContainerState.CREATED)
    sleeper = client.exec(box.uid, ["sleep", "60"])
    client.wait_process(sleeper.uid, timeout=0.2)
    client.stop_container(box.uid, grace=0)
    wait_state(client, box.uid, ContainerState.STOPPED)
    ended = client.wait_process(sleeper.uid, timeout=T)
    assert ended.state in (ProcessState.EXITED, ProcessState.LOST)
    with pytest.raises(chital.client.FailedPrecondition):
        client.exec(box.uid, ["echo", "late"])  # a stopped container runs nothing again


def test_contract_delete_frees_the_name_and_keeps_the_uid(backend: Backend) -> None:
    client = backend.client
    name = backend.name("gone")
    first = client.create_container(name)
    wait_state(client, first.uid, ContainerState.CREATED)
    client.delete_container(name)
    wait_state(client, first.uid, ContainerState.DELETED)
    assert client.get_container(first.uid).state is ContainerState.DELETED
    with pytest.raises(chital.client.NotFound):
        client.get_container(name)
    second = client.create_container(name)
    assert second.uid != first.uid and client.get_container(name).uid == second.uid


def test_contract_errors(backend: Backend) -> None:
    client = backend.client
    missing = backend.name("missing")
    with pytest.raises(chital.client.NotFound):
        client.get_container(missing)
    with pytest.raises(chital.client.NotFound):
        client.exec(missing, ["echo"])
    with pytest.raises(chital.client.NotFound):
        client.get_process("0" * 32)
    with pytest.raises(chital.client.NotFound):
        client.wait_process("0" * 32, timeout=1)
    with pytest.raises(chital.client.NotFound):
        list(client.stream_logs("0" * 32))
    with pytest.raises(chital.client.NotFound):
        next(iter(client.watch(container=missing, timeout=T)))


def test_contract_watch_from_a_revision_of_one_container(backend: Backend) -> None:
    client = backend.client
    box = client.create_container(backend.name("watched"))
    other = client.create_container(backend.name("other"))
    wait_state(client, box.uid, ContainerState.CREATED)

    def until_exit(since: int, process_uid: str) -> list[WatchEvent]:
        seen: list[WatchEvent] = []
        for event in client.watch(since_revision=since, container=box.uid, timeout=T):
            seen.append(event)
            if event.process is not None and event.process.uid == process_uid and event.process.exited:
                return seen
        raise AssertionError("the watch ended")

    def about(event: WatchEvent) -> str:
        return event.container.uid if event.container is not None else event.process.container_uid  # type: ignore[union-attr]

    first = client.exec(box.uid, ["echo", "x"])
    before = until_exit(1, first.uid)
    assert before[-1].type is EventType.PROCESS_CHANGED
    mark = before[-1].revision
    # From a revision: only later events, each once, only of the container asked for.
    second = client.exec(box.uid, ["echo", "y"])
    client.exec(other.uid, ["echo", "z"])
    after = until_exit(mark, second.uid)
    revisions = [e.revision for e in after]
    assert all(r > mark for r in revisions) and revisions == sorted(set(revisions))
    assert {about(e) for e in before + after} == {box.uid}


def test_contract_live_watch_sees_only_new_events(backend: Backend) -> None:
    client = backend.client
    old = client.create_container(backend.name("old"))
    wait_state(client, old.uid, ContainerState.CREATED)
    stop = threading.Event()
    made: list[str] = []

    def make() -> None:
        # Keep making changes until the watch sees one: a live watch starts when the server
        # takes it, which this test cannot observe through the SDK.
        n = 0
        while not stop.wait(0.2):
            made.append(client.create_container(backend.name(f"new{n}")).uid)
            n += 1

    maker = threading.Thread(target=make)
    watch: Iterator[WatchEvent] = client.watch(timeout=T)
    maker.start()
    try:
        event = next(watch)
    finally:
        stop.set()
        maker.join(T)
        watch.close()  # type: ignore[attr-defined]
    assert event.container is not None and event.container.uid != old.uid
    assert event.container.uid in made
