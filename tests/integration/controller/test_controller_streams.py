"""Attached clients do not starve the short calls.

Watch, StreamLogs and WaitProcess each hold a thread while their client is attached. The controller
serves them from a budget of their own (``max_streams``) beside the ``max_workers`` threads of the
short calls, and refuses one more than the budget with RESOURCE_EXHAUSTED. These tests attach more
clients than the short calls' threads (the whole pool before the budget existed) and check that
unary calls still complete, that every watcher still gets the events and every waiter its exit.
Nothing here is timed: the latency figures are bench/attached_streams.py's.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from controller_harness import Cluster, running_cluster
from google.protobuf import duration_pb2

from chital.api.container.v1 import container_pb2 as cpb
from chital.api.host.v1 import host_pb2 as hpb

T = 30.0  # generous: a 2-core machine shared with other test runs

#: The short calls' threads in these clusters, and more attached clients than that.
WORKERS = 4
WATCHERS = 24
WAITERS = 8


@pytest.fixture
def small_cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path, max_workers=WORKERS, max_streams=WATCHERS + WAITERS + 2) as c:
        yield c


def until(predicate: Callable[[], bool], timeout: float = T) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def setup_container(cluster: Cluster, name: str) -> Any:
    for agent in cluster.agents:
        cluster.hosts.RegisterHost(hpb.RegisterHostRequest(address=agent.address), timeout=T)
    until(
        lambda: all(
            h.state == hpb.HOST_STATE_READY
            for h in cluster.hosts.ListHosts(hpb.ListHostsRequest(), timeout=T).hosts
        )
    )
    return cluster.containers.CreateContainer(
        cpb.CreateContainerRequest(name=name, request_id=f"r-{name}", wait=True), timeout=T
    ).container


def next_event(stream: Any) -> Any:
    """The next event (not a heartbeat) of a watch."""
    for message in stream:
        if not message.heartbeat:
            return message
    raise AssertionError("the watch ended")


def test_more_attached_clients_than_workers_leave_unary_calls_and_events_flowing(
    small_cluster: Cluster,
) -> None:
    cluster = small_cluster
    box = setup_container(cluster, "attached")
    sleepers = [
        cluster.containers.Exec(
            cpb.ExecRequest(container=box.uid, request_id=f"s{i}", argv=["sleep"], wait=True), timeout=T
        ).process
        for i in range(WAITERS)
    ]
    # Every watcher is live and has told where it starts (heartbeat) before the change below.
    heartbeat = duration_pb2.Duration(seconds=1)
    watchers = [
        cluster.containers.Watch(
            cpb.WatchRequest(heartbeat_interval=heartbeat, container=box.uid if i % 2 else ""), timeout=T
        )
        for i in range(WATCHERS)
    ]
    waits = [
        cluster.containers.WaitProcess.future(cpb.WaitProcessRequest(process_uid=p.uid), timeout=T)
        for p in sleepers
    ]
    try:
        starts = [next(w) for w in watchers]
        assert all(s.heartbeat for s in starts)
        until(lambda: cluster.controller.streams.in_use() == WATCHERS + WAITERS)

        # The short calls run while every attached client holds its thread: more of them than
        # the short calls have threads, so none of them waits for an attached client to leave.
        for _ in range(3 * WORKERS):
            got = cluster.containers.GetContainer(cpb.GetContainerRequest(container=box.uid), timeout=T)
            assert got.container.uid == box.uid
            cluster.hosts.ListHosts(hpb.ListHostsRequest(), timeout=T)
        assert not any(w.done() for w in waits)

        # The watchers get the change, the waiters their exits.
        for p in sleepers:
            cluster.containers.SignalProcess(cpb.SignalProcessRequest(process_uid=p.uid, signal=9), timeout=T)
        for w in waits:
            assert w.result(timeout=T).process.state == cpb.PROCESS_STATE_EXITED
        for w in watchers:
            event = next_event(w)
            assert event.type == cpb.EVENT_TYPE_PROCESS_CHANGED
            assert event.process.container_uid == box.uid
            assert event.process.uid in {p.uid for p in sleepers}
    finally:
        for w in watchers:
            w.cancel()
    until(lambda: cluster.controller.streams.in_use() == 0)


def scrape(cluster: Cluster) -> dict[str, float]:
    """The controller's /metrics samples (name and labels -> value)."""
    url = f"http://127.0.0.1:{cluster.controller.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=T) as response:
        lines = response.read().decode().splitlines()
    samples = {}
    for line in lines:
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def test_one_more_than_max_streams_is_resource_exhausted(tmp_path: Path) -> None:
    with running_cluster(tmp_path, metrics=True, max_workers=WORKERS, max_streams=3) as cluster:
        box = setup_container(cluster, "full")
        watchers = [cluster.containers.Watch(cpb.WatchRequest(), timeout=T) for _ in range(3)]
        try:
            until(lambda: cluster.controller.streams.in_use() == 3)
            with pytest.raises(grpc.RpcError) as err:
                next(cluster.containers.Watch(cpb.WatchRequest(), timeout=T))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            metrics = scrape(cluster)
            assert metrics["chital_controller_grpc_streams"] == 3
            assert metrics["chital_controller_grpc_streams_limit"] == 3
            refused = (
                'chital_controller_grpc_server_handled_total{grpc_code="RESOURCE_EXHAUSTED",'
                'grpc_method="Watch",grpc_service="chital.api.container.v1.ContainerService"}'
            )
            assert metrics[refused] == 1
            sleeper = cluster.containers.Exec(
                cpb.ExecRequest(container=box.uid, request_id="s", argv=["sleep"], wait=True), timeout=T
            ).process
            with pytest.raises(grpc.RpcError) as err:  # a wait is long-lived too
                cluster.containers.WaitProcess(cpb.WaitProcessRequest(process_uid=sleeper.uid), timeout=T)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # A watcher that leaves frees its slot.
            watchers.pop().cancel()
            until(lambda: cluster.controller.streams.in_use() == 2)
            again = cluster.containers.Watch(
                cpb.WatchRequest(heartbeat_interval=duration_pb2.Duration(seconds=1)), timeout=T
            )
            watchers.append(again)
            assert next(again).heartbeat
        finally:
            for w in watchers:
                w.cancel()
