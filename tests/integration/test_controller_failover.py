"""Two controllers on one PostgreSQL database: kill -9 of the leader during 2,000 creates.

Controller A (started first, so the leader) and controller B serve the same database and a hollow
fleet of two agents. First, B (a follower) is asked to stop containers: it only records the stops,
and the leader carries them out (its operations driver learns of them from the events table), while
B's own watch sees them end. Then clients that know both addresses create 2,000 containers, each
create retried with its own request_id until acknowledged, and the test kills the leader with
SIGKILL part-way. The clients fail over to B, and B takes the lease. Afterwards:

- 0 lost: every acknowledged create exists, once;
- 0 duplicated: no request_id (each names one container) made two containers;
- 0 orphans: each agent holds exactly the live containers the database places on it;
- a new leader: B holds the lease (the time it took is printed; bench/failover.py measures it).

And a frozen controller (SIGSTOP), first in a client's list: a read sent to it is answered by the
other controller within its deadline (the SDK's keepalive pings notice the silent connection).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import pytest
import sqlalchemy as sa

from chital.api.agent.v1 import agent_pb2, agent_pb2_grpc
from chital.client import ChitalError, Client, ContainerState, RetryPolicy
from chital.controller.leader import leader_query
from chital.devcluster.hollow import HollowFleet, ServiceProcess, start_controller
from chital.devcluster.postgres import PostgresServer
from chital.security.tls import TLSFiles, channel_credentials

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(1200)]

CREATES = 2000
WORKERS = 8
KILL_AFTER = 400  # acknowledged creates before the leader is killed
RETRIES = RetryPolicy(max_attempts=3, initial_backoff=0.05, max_backoff=0.3)


@dataclass
class Pair:
    """The fleet (controller A and the agents) and controller B, on one database."""

    fleet: HollowFleet
    b: ServiceProcess
    url: str

    @property
    def a(self) -> ServiceProcess:
        assert self.fleet.controller is not None
        return self.fleet.controller

    def client(self, *targets: str, timeout: float = 10.0) -> Client:
        assert self.fleet.pki is not None and self.fleet.token is not None
        return Client(
            ",".join(targets),
            tls=TLSFiles(ca=self.fleet.pki.ca),
            token=self.fleet.token,
            timeout=timeout,
            retries=RETRIES,
        )

    def leader(self) -> ServiceProcess | None:
        """The controller whose session holds the lease (None: no leader now)."""
        engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                names = [row[0] for row in conn.exec_driver_sql(leader_query())]
        finally:
            engine.dispose()
        for proc in (self.a, self.b):
            port = proc.address.rsplit(":", 1)[1]
            if any(f":{port} pid {proc.proc.pid}" in name for name in names):
                return proc
        return None


@pytest.fixture
def pair(postgres_server: PostgresServer) -> Iterator[Pair]:
    url = postgres_server.create_database(f"failover_{uuid.uuid4().hex[:8]}")
    with HollowFleet(agents=2, database_url=url) as fleet:
        assert fleet.workdir is not None and fleet.pki is not None
        b = start_controller(
            fleet.workdir / "controller-b",
            database_url=url,
            tls_dir=fleet.pki.controller(),
            timeout=120.0,  # a loaded machine: starting is not what this test measures
        )
        try:
            yield Pair(fleet, b, url)
        finally:
            b.stop()


def until(done: Callable[[], bool], attempts: int = 1800) -> None:
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


def agent_containers(pair: Pair) -> dict[str, set[str]]:
    """Each agent's containers (by uid), from its Sync, called with the controller's certificate."""
    assert pair.fleet.pki is not None
    creds = channel_credentials(TLSFiles.from_dir(pair.fleet.pki.controller()))
    out: dict[str, set[str]] = {}
    for agent in pair.fleet.agent_procs:
        with grpc.secure_channel(agent.address, creds) as channel:
            sync = agent_pb2_grpc.AgentServiceStub(channel).Sync(agent_pb2.SyncRequest(), timeout=30)
        out[agent.address] = {c.uid for c in sync.containers}
    return out


@dataclass
class Creates:
    """2,000 creates over clients that know both controllers, each retried with its request_id."""

    pair: Pair
    acked: dict[str, str] = field(default_factory=dict)  # name -> uid
    errors: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    acked_enough: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        names = [f"f{i}-{uuid.uuid4().hex[:6]}" for i in range(CREATES)]
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="creates") as pool:
            chunks = [names[i::WORKERS] for i in range(WORKERS)]
            for future in [pool.submit(self._worker, chunk) for chunk in chunks]:
                future.result()

    def _worker(self, names: list[str]) -> None:
        with self.pair.client(self.pair.a.address, self.pair.b.address) as client:
            for name in names:
                uid = self._create(client, name)
                with self.lock:
                    self.acked[name] = uid
                    if len(self.acked) >= KILL_AFTER:
                        self.acked_enough.set()

    def _create(self, client: Client, name: str) -> str:
        request_id = f"rq-{name}"
        for _ in range(600):
            try:
                return client.create_container(name, request_id=request_id).uid
            except ChitalError as exc:  # both controllers away for a moment: the same request_id
                with self.lock:
                    self.errors[type(exc).__name__] += 1
                time.sleep(0.1)
        raise AssertionError(f"create {name} never acknowledged")


def test_kill_9_of_the_leader_during_creates(pair: Pair) -> None:
    until(lambda: pair.leader() is pair.a)  # the first controller leads; B follows

    # A follower records stops; the leader carries them out; the follower's watch sees the end.
    with pair.client(pair.b.address, timeout=30) as via_b:
        made = [via_b.create_container(f"s{i}", request_id=f"rq-s{i}", wait=True) for i in range(10)]
        assert {c.state for c in made} == {ContainerState.CREATED}
        for c in made:
            via_b.exec(c.uid, ["sleep", "600"])
        stopped = [via_b.stop_container(c.uid, grace=1.0, wait=True) for c in made]
    assert {s.state for s in stopped} == {ContainerState.STOPPED}

    work = Creates(pair)
    thread = threading.Thread(target=work.run, name="creates")
    thread.start()
    try:
        assert work.acked_enough.wait(600), "the creates did not get going"
        killed = time.monotonic()
        pair.fleet.kill_controller()  # A, the leader
        until(lambda: pair.leader() is pair.b, attempts=600)
        failover = time.monotonic() - killed
    finally:
        thread.join(900)
    assert not thread.is_alive()
    print(f"\nnew leader {failover:.2f} s after kill -9 of the old one; client errors: {dict(work.errors)}")
    assert len(work.acked) == CREATES

    with pair.client(pair.b.address, timeout=30) as client:
        # The new leader's reconciler finishes the creates the old one left PENDING.
        def settled() -> bool:
            states = Counter(c.state for c in all_containers(client))  # type: ignore[attr-defined]
            return states[ContainerState.PENDING] == 0 and states[ContainerState.STOPPING] == 0

        until(settled)
        records = list({c.uid: c for c in all_containers(client)}.values())  # type: ignore[attr-defined]
        by_name = Counter(c.name for c in records)  # type: ignore[attr-defined]
        # Each request_id is rq-<name>: a request_id that made two containers shows as a name twice.
        lost = [name for name in work.acked if by_name[name] == 0]
        duplicated = [name for name, n in by_name.items() if n > 1]
        states = Counter(c.state for c in records if c.name in work.acked)  # type: ignore[attr-defined]
        on_agents = agent_containers(pair)
        live = {
            c.uid: c.host_address  # type: ignore[attr-defined]
            for c in records
            if c.state in (ContainerState.CREATED, ContainerState.RUNNING)  # type: ignore[attr-defined]
        }
        orphans = {a: uids - {u for u, h in live.items() if h == a} for a, uids in on_agents.items()}
        missing = {a: {u for u, h in live.items() if h == a} - uids for a, uids in on_agents.items()}
    print(
        f"acknowledged {len(work.acked)}, lost {len(lost)}, duplicated {len(duplicated)}, "
        f"orphans {sum(map(len, orphans.values()))}, missing on hosts {sum(map(len, missing.values()))}, "
        f"states {dict(states)}"
    )
    assert lost == [] and duplicated == []
    assert all(not o for o in orphans.values()), orphans
    assert all(not m for m in missing.values()), missing
    assert states == Counter({ContainerState.CREATED: CREATES})


def test_a_call_to_a_frozen_controller_moves_to_the_next(pair: Pair) -> None:
    """B, first in the client's list, is frozen (SIGSTOP) between two reads. Its TCP connection
    stays open and takes the second call, which would wait for its whole deadline; the client's
    keepalive pings go unanswered, the connection is dropped (UNAVAILABLE), and the read is
    answered by A well within its 60 s deadline."""
    with pair.client(pair.b.address, pair.a.address, timeout=60.0) as client:
        assert len(list(client.list_hosts())) == 2  # B answers: its channel is the current one
        os.kill(pair.b.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            hosts = list(client.list_hosts())
            took = time.monotonic() - started
        finally:
            os.kill(pair.b.proc.pid, signal.SIGCONT)
    assert len(hosts) == 2
    print(f"a read sent to the frozen controller was answered by the other after {took:.1f} s")
