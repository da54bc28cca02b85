"""Intent first, end to end on a hollow fleet: stops and drains are recorded and returned at once,
carried out by the controller with their persisted deadlines, and never hold an RPC thread.

No timed assertions: the tests assert outcomes and order (which exit came from SIGTERM, which from
SIGKILL at the deadline, which container stopped first), with per-call deadlines far below what the
old inline stop or drain would have needed.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from chital.cli import main as cli_main
from chital.client import ChitalError, Client, ContainerState, ProcessState, RetryPolicy
from chital.devcluster.hollow import HollowFleet

pytestmark = pytest.mark.timeout(300)

# SIGTERM is ignored by the shell and inherited by its children: only SIGKILL ends it.
IGNORES_TERM = ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"]
# Ends at once on SIGTERM.
OBEYS_TERM = ["sleep", "600"]

NO_RETRY = RetryPolicy(max_attempts=1)
T = TypeVar("T")


@pytest.fixture(scope="module")
def fleet() -> Iterator[HollowFleet]:
    # Few RPC threads: a design that held one per stop or drain would starve at once.
    with HollowFleet(agents=2, controller_args=["--max-workers", "4"]) as f:
        yield f


@pytest.fixture
def client(fleet: HollowFleet) -> Iterator[Client]:
    with fleet.client(timeout=20.0) as c:
        yield c


def until(get: Callable[[], T], done: Callable[[T], bool], attempts: int = 400) -> T:
    """``get()`` again until ``done`` says so (a condition awaited by asking, at most ``attempts``
    times, 50 ms apart)."""
    value = get()
    for _ in range(attempts):
        if done(value):
            return value
        time.sleep(0.05)
        value = get()
    raise AssertionError(f"condition never met: {value}")


def history(client: Client, container: str) -> list[tuple[int, str, str]]:
    """The container's events so far (revision, what changed, its message): a failure's context."""
    out: list[tuple[int, str, str]] = []
    try:
        for ev in client.watch(since_revision=1, container=container, timeout=3, resume=False):
            record = ev.container or ev.process
            if record is not None:
                out.append((ev.revision, f"{type(record).__name__} {record.state.value}", record.message))
    except ChitalError:  # the watch's deadline: what came so far
        pass
    return out


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_a_drain_with_containers_that_ignore_sigterm_completes_by_its_deadline(
    fleet: HollowFleet, client: Client
) -> None:
    host = client.get_host(fleet.agent_procs[0].address)
    stubborn = []
    for _ in range(2):
        c = client.create_container(unique("stubborn"), host=host.id)
        stubborn.append((c, client.exec(c.uid, IGNORES_TERM)))
    polite = client.create_container(unique("polite"), host=host.id)
    polite_proc = client.exec(polite.uid, OBEYS_TERM)
    try:
        # An hour of grace, but a drain deadline of 3 s: the drain is complete by its deadline.
        # The old inline drain stopped containers one by one inside the RPC and needed two grace
        # periods here: far past the 20 s deadline of each of these calls.
        progress: list[int] = []
        result = client.drain_host(
            host.id, grace=3600, deadline=3, progress=lambda h: progress.append(h.drain.remaining)
        )
        assert result.stopped_containers == 3
        assert result.host.drain is not None and result.host.drain.complete
        assert result.host.drain.remaining == 0 and result.host.drain.containers == 3
        assert all(0 <= n <= 3 for n in progress)
        deadline = result.host.drain.deadline_time
        assert deadline is not None

        # Every container is stopped; the stubborn processes were killed (SIGKILL) at the deadline,
        # the polite one ended on SIGTERM, before it.
        for c, p in stubborn:
            assert client.get_container(c.uid).state is ContainerState.STOPPED
            done = client.wait_process(p.uid, timeout=10)
            assert done.state in (ProcessState.EXITED, ProcessState.LOST), done
            if done.state is ProcessState.EXITED:
                assert done.signal == signal.SIGKILL, done
                killed_at_deadline = done.exit_time is not None and done.exit_time >= deadline
                assert killed_at_deadline, (done, deadline, history(client, c.uid))
        assert client.get_container(polite.uid).state is ContainerState.STOPPED
        ended = client.wait_process(polite_proc.uid, timeout=10)
        assert ended.state is ProcessState.EXITED and ended.signal == signal.SIGTERM, ended
        assert ended.exit_time is not None and ended.exit_time < deadline
    finally:
        client.uncordon_host(host.id)


def test_stops_return_at_once_and_leave_the_rpc_threads_free(fleet: HollowFleet, client: Client) -> None:
    """Twelve stops with an hour's grace on a controller with 4 RPC threads: each returns STOPPING at
    once, other calls keep being answered, and a second stop with no grace finishes them."""
    containers = []
    for _ in range(12):
        c = client.create_container(unique("long-grace"))
        client.exec(c.uid, IGNORES_TERM)
        containers.append(c)
    answers: dict[str, ContainerState] = {}
    errors: list[BaseException] = []

    def stop(uid: str) -> None:
        try:
            with fleet.client(timeout=20.0, retries=NO_RETRY) as own:
                answers[uid] = own.stop_container(uid, grace=3600, wait=False).state
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=stop, args=(c.uid,)) for c in containers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert set(answers.values()) == {ContainerState.STOPPING}
    # The stops are under way and hold no thread: unary calls are answered, more than 4 at once.
    with fleet.client(timeout=20.0, retries=NO_RETRY) as other:
        assert len(list(other.list_hosts())) == 2
        stopping = {c.uid for c in other.iter_containers(state=ContainerState.STOPPING)}
        assert {c.uid for c in containers} <= stopping
        for c in containers:
            got = other.get_container(c.uid)
            assert got.state is ContainerState.STOPPING and got.stop_deadline_time is not None
    # A stop with no grace brings the deadline forward: SIGKILL now, then STOPPED.
    for c in containers:
        assert client.stop_container(c.uid, grace=0).state is ContainerState.STOPPED
    for c in containers:
        for p in client.iter_processes(c.uid):
            assert p.state in (ProcessState.EXITED, ProcessState.LOST) and p.signal in (0, signal.SIGKILL)


def test_a_forced_delete_stops_then_deletes(client: Client) -> None:
    c = client.create_container(unique("doomed"))
    p = client.exec(c.uid, IGNORES_TERM)
    deleting = client.delete_container(c.uid, force=True, wait=False)
    assert deleting.state in (ContainerState.STOPPING, ContainerState.DELETED)
    gone = client.delete_container(c.uid, force=True)  # idempotent; waits
    assert gone.state is ContainerState.DELETED
    assert client.wait_process(p.uid, timeout=10).state in (ProcessState.EXITED, ProcessState.LOST)


def test_create_and_exec_without_waiting_are_carried_out(client: Client) -> None:
    c = client.create_container(unique("async"), wait=False)
    assert c.state in (ContainerState.PENDING, ContainerState.CREATED)
    c = until(lambda: client.get_container(c.uid), lambda x: x.state is not ContainerState.PENDING)
    assert c.state is ContainerState.CREATED
    p = client.exec(c.uid, ["sh", "-c", "exit 4"], wait=False)
    assert p.state in (ProcessState.STARTING, ProcessState.RUNNING, ProcessState.EXITED)
    done = client.wait_process(p.uid, timeout=20)
    assert done.state is ProcessState.EXITED and done.exit_code == 4
    client.delete_container(c.uid, force=True)


def test_cli_drain_waits_and_detach_returns_at_once(
    fleet: HollowFleet, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    host = client.get_host(fleet.agent_procs[1].address)
    c = client.create_container(unique("cli-drained"), host=host.id)
    client.exec(c.uid, IGNORES_TERM)
    config = ["--config", str(fleet.config_path), "--output", "json"]
    try:
        # --detach: started, not waited for (an hour of grace).
        assert cli_main([*config, "hosts", "drain", host.address, "--grace", "3600", "--detach"]) == 0
        started = json.loads(capsys.readouterr().out)
        assert started["stopped_containers"] == 1 and started["host"]["state"] == "DRAINING"
        assert started["host"]["drain"]["remaining"] == 1
        # Again, without --detach and with a deadline: the same drain, waited for until complete.
        assert cli_main([*config, "hosts", "drain", host.address, "--grace", "3600", "--deadline", "1"]) == 0
        done = json.loads(capsys.readouterr().out)
        assert done["host"]["drain"]["complete"] and done["host"]["drain"]["remaining"] == 0
        assert client.get_container(c.uid).state is ContainerState.STOPPED
    finally:
        client.uncordon_host(host.id)
