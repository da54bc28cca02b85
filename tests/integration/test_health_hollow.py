"""Host health with real agent processes: heartbeat streams against a frozen (SIGSTOP), a killed
and a restarted agent, with the controller's default timings. The fleet runs as deployed: mutual TLS
to the agents, TLS and a token to the controller, /metrics over HTTPS.

The timings themselves (detection within 3 s, no false NOT_READY under load) are measured by
bench/health_under_load.py; these tests check the behaviour.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import pytest

from chital.client import Client, ContainerState, HostState
from chital.devcluster.hollow import HollowFleet, ServiceProcess

pytestmark = pytest.mark.timeout(240)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def heartbeat_streams(fleet: HollowFleet, agent: ServiceProcess) -> float:
    """The agent's own count of open heartbeat streams (its /metrics: HTTPS with its certificate)."""
    assert agent.metrics_url is not None and agent.metrics_url.startswith("https://")
    assert fleet.pki is not None
    trust = ssl.create_default_context(cafile=str(fleet.pki.ca))
    text = urllib.request.urlopen(agent.metrics_url, timeout=10, context=trust).read().decode()
    found = re.search(r"^chital_agent_heartbeat_streams (\S+)$", text, re.M)
    assert found is not None, "chital_agent_heartbeat_streams is exported"
    return float(found.group(1))


@pytest.fixture(scope="module")
def fleet() -> Iterator[HollowFleet]:
    with HollowFleet(agents=2, metrics=True) as f:
        yield f


@pytest.fixture
def client(fleet: HollowFleet) -> Iterator[Client]:
    with fleet.client(timeout=30.0) as c:
        yield c


def state(client: Client, agent: ServiceProcess) -> HostState:
    return client.get_host(agent.address).state


def test_every_agent_is_watched_by_one_stream(client: Client, fleet: HollowFleet) -> None:
    for agent in fleet.agent_procs:
        wait_for(lambda a=agent: state(client, a) is HostState.READY, "READY")
        wait_for(lambda a=agent: heartbeat_streams(fleet, a) == 1, "one heartbeat stream per agent")


def test_a_frozen_agent_is_not_ready_until_it_resumes(client: Client, fleet: HollowFleet) -> None:
    """SIGSTOP keeps the agent's connection open (the kernel still answers TCP) but stops its
    beats: NOT_READY; after SIGCONT the host is READY again, and the other host never left READY."""
    frozen, other = fleet.agent_procs
    wait_for(lambda: state(client, frozen) is HostState.READY, "READY")
    os.kill(frozen.proc.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: state(client, frozen) is HostState.NOT_READY, "NOT_READY after SIGSTOP")
        assert state(client, other) is HostState.READY
    finally:
        os.kill(frozen.proc.pid, signal.SIGCONT)
    wait_for(lambda: state(client, frozen) is HostState.READY, "READY after SIGCONT")
    # The silent stream was cancelled and dialled again: one stream, not a leftover besides it.
    wait_for(lambda: heartbeat_streams(fleet, frozen) == 1, "one heartbeat stream after SIGCONT")
    assert state(client, other) is HostState.READY


def test_a_killed_agent_is_not_ready_and_its_restart_reconnects(client: Client, fleet: HollowFleet) -> None:
    index = 1
    victim = fleet.agent_procs[index]
    wait_for(lambda: state(client, victim) is HostState.READY, "READY")
    fleet.kill_agent(index)
    wait_for(lambda: state(client, victim) is HostState.NOT_READY, "NOT_READY after SIGKILL")
    assert "unavailable" in client.get_host(victim.address).message

    restarted = fleet.restart_agent(index)  # same address, a new process (a new boot id)
    wait_for(lambda: state(client, restarted) is HostState.READY, "READY after the restart")
    wait_for(lambda: heartbeat_streams(fleet, restarted) == 1, "the controller's stream on the new agent")
    created = client.create_container(
        f"after-restart-{uuid.uuid4().hex[:8]}", host=restarted.address, wait=True
    )
    assert created.state is ContainerState.CREATED
