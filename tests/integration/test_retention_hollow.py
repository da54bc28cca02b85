"""Retention on a real hollow fleet (controller and agent processes on 127.0.0.1), SQLite and
PostgreSQL: a watch from a compacted revision is OUT_OF_RANGE with the compacted revision (SDK and
CLI), DELETED containers are pruned while live ones stay, and the agent removes the directories
of destroyed containers."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from chital.cli import main
from chital.client import Client, ContainerState, NotFound, OutOfRange, ProcessState
from chital.client.aio import AsyncClient
from chital.devcluster.hollow import HollowFleet

pytestmark = pytest.mark.timeout(240)

T = TypeVar("T")

# Short windows, so that the janitor acts within the test; passes every half second.
RETENTION_ARGS = ("--event-retention", "1", "--deleted-retention", "1", "--retention-interval", "0.5")


@pytest.fixture(scope="module")
def fleet(database_url: str) -> Iterator[HollowFleet]:
    # The agent remembers one exited process: a destroyed container's directory goes with the next exit.
    with HollowFleet(
        agents=1,
        database_url=database_url,
        controller_args=RETENTION_ARGS,
        agent_args=("--exited-process-limit", "1"),
    ) as f:
        yield f


@pytest.fixture
def client(fleet: HollowFleet) -> Iterator[Client]:
    with fleet.client(timeout=30.0) as c:
        yield c


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """Poll ``probe`` until it returns a value (the janitor works on its own schedule)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def first_revision(client: Client, since: int) -> int:
    for event in client.watch(since_revision=since, timeout=30.0):
        return event.revision
    raise AssertionError("the watch ended")


def lifecycle(client: Client, name: str) -> str:
    """Create, exec, wait, stop, delete: the container's uid once it is DELETED."""
    c = client.create_container(name)
    p = client.exec(c.uid, ["true"])
    assert client.wait_process(p.uid).state is ProcessState.EXITED
    client.stop_container(c.uid, grace=0)
    client.delete_container(c.uid)

    def deleted() -> bool | None:
        try:
            return client.get_container(c.uid).state is ContainerState.DELETED or None
        except NotFound:
            return True  # pruned already

    eventually(deleted, f"{name} to be DELETED")
    return c.uid


def resumed_after(client: Client, revision: int) -> int | None:
    """The first revision a watch from ``revision`` (or from a newer compacted one) delivers."""
    while True:
        try:
            first = first_revision(client, revision)
        except OutOfRange as exc:
            assert exc.compact_revision > revision
            revision = exc.compact_revision
            continue
        return first if first > revision else None


async def async_compacted_past(fleet: HollowFleet, revision: int) -> OutOfRange | None:
    async with AsyncClient(**fleet.client_config.client_kwargs(), timeout=30.0) as client:
        try:
            async for _ in client.watch(since_revision=revision, timeout=30.0):
                return None
        except OutOfRange as exc:
            return exc
    return None


def compacted_past(client: Client, revision: int) -> OutOfRange | None:
    try:
        first_revision(client, revision)
    except OutOfRange as exc:
        return exc
    return None


def test_watch_from_a_compacted_revision_is_out_of_range(
    client: Client, fleet: HollowFleet, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client.create_container("retention-first")
    client.create_container("retention-second")
    exc = eventually(lambda: compacted_past(client, 1), "the events to be compacted")
    assert exc.compact_revision > 1
    assert "revision 1 has been compacted" in str(exc)
    # The asyncio client raises the same, with the revision from the trailers.
    aexc = asyncio.run(async_compacted_past(fleet, 1))
    assert isinstance(aexc, OutOfRange) and aexc.compact_revision >= exc.compact_revision
    # From the compacted revision on nothing is missing: the next change arrives. (The janitor may
    # compact further meanwhile, with its window of a second: then go on from its new revision.)
    client.create_container("retention-after")
    eventually(lambda: resumed_after(client, exc.compact_revision), "a watch from the compacted revision")

    # The CLI says what happened and how to go on.
    for name in list(os.environ):
        if name.startswith("CHITAL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CHITAL_CONFIG", str(fleet.config_path))
    capsys.readouterr()
    code = main(["events", "--since", "1"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "out of range" in err and "has been compacted" in err
    assert "--since " in err and "chital ps" in err


def _gone(client: Client, uid: str) -> bool | None:
    try:
        client.get_container(uid)
    except NotFound:
        return True
    return None


def test_deleted_containers_are_pruned_and_live_ones_stay(client: Client) -> None:
    keep = client.create_container("retention-kept")
    gone = lifecycle(client, "retention-gone")
    eventually(lambda: _gone(client, gone), "the deleted container to be pruned")
    # Older than the retention period, but not DELETED: kept.
    assert client.get_container(keep.uid).state is ContainerState.CREATED


def test_agent_removes_a_destroyed_containers_directories(client: Client, fleet: HollowFleet) -> None:
    assert fleet.workdir is not None
    containers_dir = Path(fleet.workdir) / "agent-0" / "state" / "containers"
    live = client.create_container("retention-live-dir")
    first = lifecycle(client, "retention-dir-1")
    # Its process is still remembered (StreamLogs may read it): the directory stays for now...
    assert (containers_dir / first / "logs").is_dir()
    # ...until another process exits and pushes it out of the agent's memory.
    second = lifecycle(client, "retention-dir-2")
    eventually(lambda: True if not (containers_dir / first).exists() else None, "the directory to go")
    assert (containers_dir / second / "logs").is_dir()
    assert (containers_dir / live.uid / "logs").is_dir()
