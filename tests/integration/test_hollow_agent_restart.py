"""Agent crashes on a hollow fleet: kill -9 of an agent while its processes run and exit, and a host
that is LOST and comes back. Nothing is lost (every exit recorded with its code), nothing is
RUNNING that is not, and nothing is left behind on the host.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chital.client import ContainerState, HostState, ProcessState
from chital.devcluster.hollow import HollowFleet

pytestmark = pytest.mark.timeout(300)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def wait_for(condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout:.0f} s"
        time.sleep(0.1)


def runs(pid: int) -> bool:
    """``pid`` exists and has not ended (a zombie waiting for its reaper has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return not stat[stat.rindex(b")") + 2 :].startswith(b"Z")


def programs_of(shim: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{shim}/task/{shim}/children").read_text().split()]
    except OSError:
        return []


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the programs can see: they run as nobody, and pytest's tmp_path is private."""
    path = Path(tempfile.mkdtemp(prefix="chital-k9-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_agent_kill9_loses_no_exit_and_leaves_no_orphan(shared_dir: Path) -> None:
    with HollowFleet(agents=1) as fleet, fleet.client(timeout=30) as client:
        assert fleet.workdir is not None
        c = client.create_container(unique("k9"), host=fleet.agent_procs[0].address)
        go = shared_dir / "go"
        quick = [
            client.exec(c.uid, ["sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done; exit {10 + i}"])
            for i in range(3)
        ]
        term = client.exec(c.uid, ["sleep", "600"])
        long = client.exec(c.uid, ["sleep", "600"])
        assert all(p.state is ProcessState.RUNNING and p.pid for p in [*quick, term, long])
        program = programs_of(long.pid)

        fleet.kill_agent(0)
        # While no agent runs: three programs end by themselves, one is killed by a signal.
        go.touch()
        os.kill(term.pid, signal.SIGTERM)
        kept = fleet.workdir / "agent-0" / "state" / "containers" / c.uid / "processes"
        wait_for(
            lambda: all((kept / f"{p.uid}.exit").exists() for p in [*quick, term]),
            what="the exits of the programs that ended while no agent ran",
        )
        fleet.restart_agent(0)

        for i, p in enumerate(quick):
            done = client.wait_process(p.uid, timeout=60)
            assert (done.state, done.exit_code) == (ProcessState.EXITED, 10 + i), done
        done = client.wait_process(term.uid, timeout=60)
        assert (done.state, done.signal) == (ProcessState.EXITED, signal.SIGTERM), done
        assert client.get_process(long.uid).state is ProcessState.RUNNING
        assert runs(long.pid) and all(runs(p) for p in program)
        running = [p.uid for p in client.list_processes(c.uid) if p.state is ProcessState.RUNNING]
        assert running == [long.uid]
        assert client.get_container(c.uid).state is ContainerState.RUNNING
        # The restarted agent still has the container: exec into it works.
        again = client.exec(c.uid, ["sh", "-c", "exit 3"])
        assert client.wait_process(again.uid, timeout=60).exit_code == 3

        stopped = client.stop_container(c.uid, grace=1.0)
        assert stopped.state is ContainerState.STOPPED
        wait_for(
            lambda: not runs(long.pid) and not any(runs(p) for p in program), what="nothing left on the host"
        )
        assert client.get_process(long.uid).state is not ProcessState.RUNNING


def test_a_host_back_from_lost_has_its_stale_containers_destroyed() -> None:
    args = ["--health-interval", "0.5", "--not-ready-after", "1.5", "--lost-after", "4"]
    with HollowFleet(agents=2, controller_args=args) as fleet, fleet.client(timeout=30) as client:
        assert fleet.workdir is not None
        victim = fleet.agent_procs[1]
        c = client.create_container(unique("stale"), host=victim.address)
        p = client.exec(c.uid, ["sleep", "600"])
        program = programs_of(p.pid)

        fleet.kill_agent(1)
        wait_for(lambda: client.get_host(victim.address).state is HostState.LOST, what="host LOST")
        assert client.get_container(c.uid).state is ContainerState.LOST
        assert client.get_process(p.uid).state is ProcessState.LOST
        assert runs(p.pid)  # the kernel (here: the shim) kept it while no agent ran

        fleet.restart_agent(1)  # it brings the container and its member back from its state
        wait_for(lambda: client.get_host(victim.address).state is HostState.READY, what="host READY")
        kept = fleet.workdir / "agent-1" / "state" / "containers" / c.uid / "container.json"
        wait_for(
            lambda: not kept.exists() and not runs(p.pid) and not any(runs(x) for x in program),
            what="the stale container destroyed on the host",
        )
        assert client.get_container(c.uid).state is ContainerState.LOST


def test_a_host_lost_for_good_restarts_its_always_containers_elsewhere() -> None:
    """Restart policies: ``always`` and ``on-failure`` containers of a host lost for good are
    created again on a ready host; ``never`` stays LOST. When the host comes back, the copies it
    kept are destroyed there."""
    args = ["--health-interval", "0.5", "--not-ready-after", "1.5", "--lost-after", "4"]
    with HollowFleet(agents=2, controller_args=args) as fleet, fleet.client(timeout=30) as client:
        assert fleet.workdir is not None
        survivor, victim = fleet.agent_procs
        client.cordon_host(survivor.address)  # place everything on the victim first
        always = client.create_container(unique("always"), restart_policy="always")
        retry = client.create_container(unique("retry"), restart_policy="on-failure", max_restarts=2)
        never = client.create_container(unique("never"))
        assert {c.host_address for c in (always, retry, never)} == {victim.address}
        assert (always.restart_policy, retry.max_restarts, never.restart_policy) == ("always", 2, "never")
        p = client.exec(always.uid, ["sleep", "600"])
        program = programs_of(p.pid)
        client.uncordon_host(survivor.address)

        fleet.kill_agent(1)  # lost for good (until it comes back below)
        for c in (always, retry):
            wait_for(
                lambda c=c: client.get_container(c.uid).state is ContainerState.CREATED,
                what=f"{c.name} created again",
            )
            moved = client.get_container(c.uid)
            assert (moved.host_address, moved.restart_count) == (survivor.address, 1)
        assert client.get_container(never.uid).state is ContainerState.LOST
        assert client.get_process(p.uid).state is ProcessState.LOST
        # It runs on its new host: exec works there.
        again = client.exec(always.uid, ["sh", "-c", "exit 4"])
        assert client.wait_process(again.uid, timeout=60).exit_code == 4

        fleet.restart_agent(1)  # it comes back with the old copies
        wait_for(lambda: client.get_host(victim.address).state is HostState.READY, what="host READY")
        kept = fleet.workdir / "agent-1" / "state" / "containers"
        wait_for(
            lambda: (
                not any((kept / c.uid / "container.json").exists() for c in (always, retry, never))
                and not runs(p.pid)
                and not any(runs(x) for x in program)
            ),
            what="the stale copies destroyed on the host that came back",
        )
        assert client.get_container(always.uid).state is ContainerState.CREATED
        assert client.get_container(always.uid).host_address == survivor.address
