"""kill -9 of the controller during creates, stops and deletes, on SQLite and on PostgreSQL.

A client keeps creating containers (each with its own request_id, retried with that same id until
acknowledged), starting a process in them, and stopping or deleting them without waiting, while
the test kills the controller twice with SIGKILL and starts it again on the same database. After
the last restart and reconciliation:

- every acknowledged create exists exactly once (by name and by request_id), and no create was
  done twice, acknowledged or not;
- no container is left PENDING or STOPPING (the persisted stop deadlines and the reconciler finish
  what the crashes interrupted);
- no orphan: each agent has exactly the containers the controller says are on it (CREATED or
  RUNNING), so nothing a crash interrupted is left behind on a host, and nothing recorded is
  missing there.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from chital.api.agent.v1 import agent_pb2, agent_pb2_grpc
from chital.client import ChitalError, Client, ContainerState, RetryPolicy
from chital.devcluster.hollow import HollowFleet
from chital.security.tls import TLSFiles, channel_credentials

pytestmark = pytest.mark.timeout(600)

RETRIES = RetryPolicy(max_attempts=5, initial_backoff=0.05, max_backoff=0.5)


@pytest.fixture
def fleet(fresh_database_url: str) -> Iterator[HollowFleet]:
    with HollowFleet(agents=2, database_url=fresh_database_url) as f:
        yield f


@dataclass
class Workload:
    """Creates (retried with the same request_id until acknowledged), then an exec and a stop or a
    delete that does not wait; records what was acknowledged."""

    fleet: HollowFleet
    stop: threading.Event = field(default_factory=threading.Event)
    attempted: dict[str, str] = field(default_factory=dict)  # name -> request_id
    acked: dict[str, str] = field(default_factory=dict)  # name -> uid
    errors: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            name = f"k{i}-{uuid.uuid4().hex[:6]}"
            request_id = f"rq-{name}"
            with self.lock:
                self.attempted[name] = request_id
            uid = self._create(name, request_id)
            if uid is None:
                return
            with self.lock:
                self.acked[name] = uid
            self._then(i % 3, uid)

    def _client(self) -> Client:
        return self.fleet.client(timeout=5.0, retries=RETRIES)

    def _create(self, name: str, request_id: str) -> str | None:
        while not self.stop.is_set():
            try:
                with self._client() as client:
                    return client.create_container(name, request_id=request_id).uid
            except ChitalError as exc:  # the controller is down: the same request_id again
                self.errors[type(exc).__name__] += 1
                time.sleep(0.1)
        return None

    def _then(self, kind: int, uid: str) -> None:
        try:
            with self._client() as client:
                client.exec(uid, ["sleep", "600"])
                if kind == 1:
                    client.stop_container(uid, grace=0.5, wait=False)
                elif kind == 2:
                    client.delete_container(uid, force=True, wait=False)
        except ChitalError as exc:  # interrupted by a crash: what was recorded is finished later
            self.errors[type(exc).__name__] += 1


def until(done: Callable[[], bool], attempts: int = 1200) -> None:
    """Ask ``done()`` again (every 100 ms, at most ``attempts`` times) until it holds."""
    for _ in range(attempts):
        if done():
            return
        time.sleep(0.1)
    raise AssertionError("condition never met")


def all_containers(client: Client) -> list[object]:
    """Every container record, DELETED ones included."""
    out: list[object] = []
    for state in ContainerState:
        out.extend(client.iter_containers(state=state))
    return out


def agent_containers(fleet: HollowFleet) -> dict[str, set[str]]:
    """Each agent's containers (by uid), from its Sync, called with the controller's certificate."""
    assert fleet.controller is not None
    argv = fleet.controller.proc.args
    assert isinstance(argv, list)
    creds = channel_credentials(TLSFiles.from_dir(Path(argv[argv.index("--tls-dir") + 1])))
    out: dict[str, set[str]] = {}
    for agent in fleet.agent_procs:
        with grpc.secure_channel(agent.address, creds) as channel:
            sync = agent_pb2_grpc.AgentServiceStub(channel).Sync(agent_pb2.SyncRequest(), timeout=20)
        out[agent.address] = {c.uid for c in sync.containers}
    return out


def test_controller_kill_9_during_creates_stops_and_deletes(fleet: HollowFleet) -> None:
    work = Workload(fleet)
    thread = threading.Thread(target=work.run, name="workload")
    thread.start()
    try:
        for _ in range(2):
            before = len(work.acked)
            until(lambda before=before: len(work.acked) >= before + 6)  # type: ignore[misc]
            fleet.kill_controller()
            fleet.restart_controller()
        before = len(work.acked)
        until(lambda: len(work.acked) >= before + 3)
    finally:
        work.stop.set()
        thread.join(60)
    assert not thread.is_alive()
    assert work.errors, "no call was interrupted: the crashes missed the workload"

    with fleet.client(timeout=20.0) as client:
        # Reconciliation: nothing stays half done (the reconciler resumes PENDING creates after
        # its min_age; the operations driver resumes stops from their persisted deadlines).
        def settled() -> bool:
            states = Counter(c.state for c in all_containers(client))  # type: ignore[attr-defined]
            return states[ContainerState.PENDING] == 0 and states[ContainerState.STOPPING] == 0

        until(settled)
        # By uid: a container that changed state while the lists were read appears in two of them.
        records = list({c.uid: c for c in all_containers(client)}.values())  # type: ignore[attr-defined]
        by_name = Counter(c.name for c in records)  # type: ignore[attr-defined]
        # Exactly once: every acknowledged create, and no attempted one twice.
        for name, uid in work.acked.items():
            assert by_name[name] == 1, name
            got = client.get_container(uid)
            assert got.name == name
        assert all(by_name[name] <= 1 for name in work.attempted)
        # No orphans, nothing missing: each agent holds exactly the live containers placed on it.
        on_agents = agent_containers(fleet)
        live = {
            c.uid: c.host_address  # type: ignore[attr-defined]
            for c in records
            if c.state in (ContainerState.CREATED, ContainerState.RUNNING)  # type: ignore[attr-defined]
        }
        for address, uids in on_agents.items():
            expected = {uid for uid, host in live.items() if host == address}
            assert uids == expected, (address, uids ^ expected)
