"""The programs in examples/ run against a hollow fleet, each as a user runs it: a separate
Python process that finds the controller through the environment (CHITAL_CONFIG, the fleet's config
file with its current context)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chital.client import Client, HostState, NotFound, ProcessState
from chital.devcluster.hollow import HollowFleet

pytestmark = pytest.mark.timeout(180)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def fleet() -> Iterator[HollowFleet]:
    with HollowFleet(agents=2) as f:
        yield f


@pytest.fixture
def client(fleet: HollowFleet) -> Iterator[Client]:
    with fleet.client(timeout=20.0) as c:
        yield c


def example(fleet: HollowFleet, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHITAL_")}
    env["CHITAL_CONFIG"] = str(fleet.config_path)
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_batch_job_collects_every_exit_code(fleet: HollowFleet, client: Client) -> None:
    name = f"batch-{uuid.uuid4().hex[:8]}"
    done = example(fleet, "batch_job.py", "--name", name, "--keep", "echo hi", "exit 3", "kill -9 $$")
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == ["0\texit 0\techo hi", "1\texit 3\texit 3", "2\tkilled by signal 9\tkill -9 $$"]
    assert lines[3] == "1 of 3 succeeded"
    processes = list(client.iter_processes(name))
    assert sorted(p.shell_exit_status for p in processes) == [0, 3, 128 + 9]
    assert all(p.state is ProcessState.EXITED for p in processes)
    client.delete_container(name, force=True)
    ok = example(fleet, "batch_job.py", "true", "exit 0")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[-1] == "2 of 2 succeeded"


def test_watch_fleet_prints_hosts_and_changes(fleet: HollowFleet, client: Client) -> None:
    container = client.create_container(f"watched-{uuid.uuid4().hex[:8]}")
    proc = client.exec(container.uid, ["true"])
    client.wait_process(proc.uid, timeout=30)
    done = example(fleet, "watch_fleet.py", "--since", "1", "--container", container.uid, "--count", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    hosts = [line for line in lines if line.startswith("host ")]
    assert sorted(h.split()[1] for h in hosts) == sorted(a.address for a in fleet.agent_procs)
    events = [line for line in lines if not line.startswith("host ")]
    assert len(events) == 3
    revisions = [int(line.split("\t")[0]) for line in events]
    assert revisions == sorted(set(revisions))
    assert any(f"container {container.name} " in line for line in events)
    assert any(f"process {proc.uid[:12]} true" in line for line in events)
    client.delete_container(container.uid, force=True)


def test_drain_host_stops_its_work_and_removes_it(fleet: HollowFleet, client: Client) -> None:
    agent = fleet.add_agent(name=f"to-drain-{uuid.uuid4().hex[:6]}")
    deadline = time.monotonic() + 30
    while (host := client.get_host(agent.address)).state is not HostState.READY:
        assert time.monotonic() < deadline, f"the new host stays {host.state}"
        time.sleep(0.1)
    container = client.create_container(f"drained-{uuid.uuid4().hex[:8]}", host=host.id)
    proc = client.exec(container.uid, ["sleep", "600"])

    dry = example(fleet, "drain_host.py", agent.address, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"  {container.name}\tRUNNING\t1 running" in dry.stdout.splitlines()
    assert client.get_host(host.id).state is HostState.READY  # a dry run changes nothing

    done = example(fleet, "drain_host.py", agent.address, "--wait", "1", "--grace", "1", "--remove")
    assert done.returncode == 0, done.stderr
    assert "drained" in done.stdout and "stopped 1 containers" in done.stdout
    assert f"removed {agent.address}" in done.stdout
    assert client.get_process(proc.uid).state is ProcessState.EXITED
    assert container.uid not in {c.uid for c in client.iter_containers()}  # deleted with the host
    with pytest.raises(NotFound):
        client.get_host(host.id)
    agent.stop()


def test_drain_host_refuses_the_last_ready_host(fleet: HollowFleet, client: Client) -> None:
    ready = list(client.iter_hosts(state=HostState.READY))
    for other in ready[1:]:
        client.cordon_host(other.id)
    try:
        refused = example(fleet, "drain_host.py", ready[0].address)
        assert refused.returncode == 3, refused.stderr
        assert "refusing" in refused.stdout
        assert client.get_host(ready[0].id).state is HostState.READY
    finally:
        for other in ready[1:]:
            client.uncordon_host(other.id)
