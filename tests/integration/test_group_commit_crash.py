"""Group commit under kill -9: no acknowledged create is lost, none is made twice.

Many client threads create containers at once (each with its own request_id, retried with that same
id until acknowledged), so that the controller's create committer writes them in shared
transactions, while the test kills the controller with SIGKILL at a random moment (after a random
number of acknowledgements) and starts it again on the same database, twice. Afterwards:

- every acknowledged create exists exactly once (by name and by request_id) and is CREATED: the
  crash may have left intents PENDING, and the reconciler finished them on their hosts;
- no create was made twice, acknowledged or not;
- a retry of every acknowledged create with its request_id returns the same container;
- each agent holds exactly the CREATED containers placed on it: nothing a crash interrupted is
  left behind on a host, and nothing recorded is missing there.
"""

from __future__ import annotations

import random
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

THREADS = 12
RETRIES = RetryPolicy(max_attempts=3, initial_backoff=0.05, max_backoff=0.3)


@pytest.fixture
def fleet(fresh_database_url: str) -> Iterator[HollowFleet]:
    with HollowFleet(agents=2, database_url=fresh_database_url) as f:
        yield f


@dataclass
class Creators:
    """``THREADS`` threads that create containers as fast as they are acknowledged; each create is
    retried with its request_id until the controller answers it."""

    fleet: HollowFleet
    stop: threading.Event = field(default_factory=threading.Event)
    attempted: dict[str, str] = field(default_factory=dict)  # request_id -> name
    acked: dict[str, str] = field(default_factory=dict)  # request_id -> uid
    retried: Counter[str] = field(default_factory=Counter)  # error class -> count
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)

    def run(self, index: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            name = f"g{index}-{n}-{uuid.uuid4().hex[:6]}"
            request_id = f"rq-{name}"
            with self.lock:
                self.attempted[request_id] = name
            uid = self._create(name, request_id)
            if uid is None:
                return
            with self.changed:
                self.acked[request_id] = uid
                self.changed.notify_all()

    def _create(self, name: str, request_id: str) -> str | None:
        while not self.stop.is_set():
            try:
                with self.fleet.client(timeout=10.0, retries=RETRIES) as client:
                    return client.create_container(name, request_id=request_id).uid
            except ChitalError as exc:  # the controller is down: the same request_id again
                with self.lock:
                    self.retried[type(exc).__name__] += 1
                time.sleep(0.05)
        return None

    def wait_acked(self, count: int, timeout: float = 120.0) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.acked) >= count, timeout):
                raise AssertionError(f"only {len(self.acked)} of {count} creates acknowledged")


def until(done: Callable[[], bool], attempts: int = 1200) -> None:
    """Ask ``done()`` again (every 100 ms, at most ``attempts`` times) until it holds."""
    for _ in range(attempts):
        if done():
            return
        time.sleep(0.1)
    raise AssertionError("condition never met")


def all_containers(client: Client) -> list[object]:
    """Every container record, DELETED ones included, once each (by uid)."""
    out: dict[str, object] = {}
    for state in ContainerState:
        out.update((c.uid, c) for c in client.iter_containers(state=state))
    return list(out.values())


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


def test_kill_9_during_concurrent_creates_loses_no_acknowledged_create(fleet: HollowFleet) -> None:
    rng = random.Random()
    work = Creators(fleet)
    threads = [threading.Thread(target=work.run, args=(i,), name=f"creator-{i}") for i in range(THREADS)]
    for t in threads:
        t.start()
    try:
        for _ in range(2):
            # A random moment: after a random number of further acknowledgements.
            work.wait_acked(len(work.acked) + rng.randint(THREADS, 6 * THREADS))
            fleet.kill_controller()
            fleet.restart_controller()
        work.wait_acked(len(work.acked) + 2 * THREADS)
    finally:
        work.stop.set()
        for t in threads:
            t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert work.retried, "no create was interrupted: the kills missed the creates"

    with fleet.client(timeout=30.0) as client:
        # Intents a crash left PENDING are created on their hosts by the reconciler.
        until(lambda: not any(c.state is ContainerState.PENDING for c in all_containers(client)))  # type: ignore[attr-defined]
        records = all_containers(client)
        by_name = Counter(c.name for c in records)  # type: ignore[attr-defined]
        for request_id, uid in work.acked.items():
            name = work.attempted[request_id]
            assert by_name[name] == 1, name
            got = client.get_container(uid)
            assert (got.name, got.state) == (name, ContainerState.CREATED), (name, got.state, got.message)
        assert all(count == 1 for count in by_name.values()), [n for n, c in by_name.items() if c > 1]
        assert set(by_name) <= set(work.attempted.values())
        # A retry by request_id answers with the same container, and creates nothing.
        for request_id, uid in work.acked.items():
            again = client.create_container(work.attempted[request_id], request_id=request_id)
            assert again.uid == uid
        assert len(all_containers(client)) == len(records)
        # No orphan, nothing missing: each agent holds exactly the containers placed on it.
        live = {c.uid: c.host_address for c in records if c.state is ContainerState.CREATED}  # type: ignore[attr-defined]
        for address, uids in agent_containers(fleet).items():
            expected = {uid for uid, host in live.items() if host == address}
            assert uids == expected, (address, uids ^ expected)
