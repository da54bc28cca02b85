"""The controller's gRPC API against three in-process fake agents."""

from __future__ import annotations

import contextlib
import gc
import logging
import queue
import re
import time
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest
from controller_harness import Cluster
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from chital.api.container.v1 import container_pb2 as cpb
from chital.api.host.v1 import host_pb2 as hpb
from chital.controller.metrics import ControllerMetrics
from chital.controller.placement import choose_host
from chital.controller.reconcile import Reconciler
from chital.controller.records import ContainerRecordState, ContainerSpec, ProcessRecordState, ProcessSpec
from chital.controller.server import utc_now

T = 10.0  # deadline of every call in these tests


def register_all(cluster: Cluster) -> list[Any]:
    hosts = []
    for agent in cluster.agents:
        resp = cluster.hosts.RegisterHost(hpb.RegisterHostRequest(address=agent.address), timeout=T)
        assert resp.host.state == hpb.HOST_STATE_READY, resp.host
        assert resp.host.agent.device == "fake"
        hosts.append(resp.host)
    return hosts


def create(cluster: Cluster, name: str, request_id: str | None = None, **kw: Any) -> Any:
    """Create and wait for the host's create (the call returns CREATED, or the host's error)."""
    kw.setdefault("wait", True)
    req = cpb.CreateContainerRequest(request_id=request_id or f"req-{name}", name=name, **kw)
    return cluster.containers.CreateContainer(req, timeout=T).container


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def settled(cluster: Cluster, ref: str, *states: int, timeout: float = 30.0) -> Any:
    """The container once it is in one of ``states`` (stops and deletes are carried out after the
    call returns)."""
    found: list[Any] = []

    def check() -> bool:
        found[:] = [
            cluster.containers.GetContainer(cpb.GetContainerRequest(container=ref), timeout=T).container
        ]
        return found[0].state in states

    wait_for(check, timeout)
    return found[0]


def test_containers_spread_over_hosts(cluster: Cluster) -> None:
    hosts = register_all(cluster)
    created = [create(cluster, f"c{i}") for i in range(6)]
    assert all(c.state == cpb.CONTAINER_STATE_CREATED for c in created)
    per_host = {h.id: 0 for h in hosts}
    for c in created:
        per_host[c.host_id] += 1
    assert sorted(per_host.values()) == [2, 2, 2]
    assert [a.agent.calls["CreateContainer"] for a in cluster.agents] == [2, 2, 2]
    listed = cluster.hosts.ListHosts(hpb.ListHostsRequest(), timeout=T).hosts
    assert [h.container_count for h in listed] == [2, 2, 2]
    # Registering again is idempotent and updates labels.
    again = cluster.hosts.RegisterHost(
        hpb.RegisterHostRequest(address=hosts[0].address, labels={"zone": "a"}), timeout=T
    ).host
    assert again.id == hosts[0].id and dict(again.labels) == {"zone": "a"}


def test_create_is_idempotent_by_request_id(cluster: Cluster) -> None:
    register_all(cluster)
    first = create(cluster, "web", "r1", labels={"app": "web"})
    second = create(cluster, "web", "r1", labels={"app": "web"})
    assert first.uid == second.uid
    assert sum(a.agent.calls["CreateContainer"] for a in cluster.agents) == 1
    listed = cluster.containers.ListContainers(cpb.ListContainersRequest(), timeout=T).containers
    assert [c.uid for c in listed] == [first.uid]
    # Same request_id, different spec; and a new request_id with a taken name.
    for name, rid in (("other", "r1"), ("web", "r2")):
        with pytest.raises(grpc.RpcError) as err:
            create(cluster, name, rid)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_request_id_is_optional_and_then_a_call_is_not_idempotent(cluster: Cluster) -> None:
    """AIP-155: without a request_id every create and exec makes a new one; with one, a retry
    (even one that does not wait) returns the first and makes nothing new."""
    register_all(cluster)

    def create_without_id(name: str, wait: bool = True) -> Any:
        req = cpb.CreateContainerRequest(name=name, wait=wait)
        return cluster.containers.CreateContainer(req, timeout=T).container

    a = create_without_id("anon-a")
    b = create_without_id("anon-b")
    assert a.uid != b.uid and {a.state, b.state} == {cpb.CONTAINER_STATE_CREATED}
    # Not idempotent: the same call again is a second create, refused here by the name only.
    with pytest.raises(grpc.RpcError) as err:
        create_without_id("anon-a")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert sum(x.agent.calls["CreateContainer"] for x in cluster.agents) == 2

    def exec_(request_id: str, wait: bool = True) -> Any:
        req = cpb.ExecRequest(container=a.uid, request_id=request_id, argv=["sleep", "inf"], wait=wait)
        return cluster.containers.Exec(req, timeout=T).process

    p1, p2 = exec_(""), exec_("")
    assert p1.uid != p2.uid  # two processes
    q1, q2 = exec_("q", wait=False), exec_("q")
    assert q1.uid == q2.uid  # one process, however the retry waits
    procs = cluster.containers.ListProcesses(cpb.ListProcessesRequest(container=a.uid), timeout=T).processes
    assert sorted(p.uid for p in procs) == sorted({p1.uid, p2.uid, q1.uid})
    # A create that does not wait, retried with its request_id: the same container, made once (the
    # retry may call the agent again while the first create is under way: idempotent by uid).
    first = create(cluster, "keyed", "k1", wait=False)
    again = create(cluster, "keyed", "k1")
    assert again.uid == first.uid and again.state == cpb.CONTAINER_STATE_CREATED
    listed = cluster.containers.ListContainers(cpb.ListContainersRequest(), timeout=T).containers
    assert [c.uid for c in listed if c.name == "keyed"] == [first.uid]


def test_placement_capacity_and_cordon(cluster: Cluster) -> None:
    a, b, c = cluster.agents
    cluster.hosts.RegisterHost(
        hpb.RegisterHostRequest(address=a.address, capacity=hpb.Capacity(max_containers=1)), timeout=T
    )
    host_b = cluster.hosts.RegisterHost(hpb.RegisterHostRequest(address=b.address), timeout=T).host
    cluster.hosts.CordonHost(hpb.CordonHostRequest(host=host_b.address), timeout=T)
    assert (
        cluster.hosts.GetHost(hpb.GetHostRequest(host=host_b.id), timeout=T).host.state
        == hpb.HOST_STATE_CORDONED
    )
    assert create(cluster, "one").host_address == a.address
    with pytest.raises(grpc.RpcError) as err:
        create(cluster, "two")
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    cluster.hosts.UncordonHost(hpb.UncordonHostRequest(host=host_b.id), timeout=T)
    assert create(cluster, "two").host_address == b.address
    # Pinned to a host.
    cluster.hosts.RegisterHost(hpb.RegisterHostRequest(address=c.address), timeout=T)
    assert create(cluster, "three", host=c.address).host_address == c.address


def test_no_hosts_is_failed_precondition(cluster: Cluster) -> None:
    with pytest.raises(grpc.RpcError) as err:
        create(cluster, "lonely")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_agent_refusal_is_the_rpc_error_and_the_container_stays_failed(cluster: Cluster) -> None:
    register_all(cluster)
    for agent in cluster.agents:
        agent.agent.fail_create = grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        create(cluster, "broken")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "create refused" in err.value.details() and "broken" in err.value.details()
    c = cluster.containers.GetContainer(cpb.GetContainerRequest(container="broken"), timeout=T).container
    assert c.state == cpb.CONTAINER_STATE_FAILED
    assert "create refused" in c.message
    # A retry of the same request reports the failure again; it does not return OK.
    with pytest.raises(grpc.RpcError) as again:
        create(cluster, "broken")
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "create refused" in again.value.details()


def test_unreachable_agent_leaves_the_create_pending_for_a_retry(cluster: Cluster) -> None:
    register_all(cluster)
    for agent in cluster.agents:
        agent.agent.fail_create = grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as err:
        create(cluster, "later")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    c = cluster.containers.GetContainer(cpb.GetContainerRequest(container="later"), timeout=T).container
    assert c.state == cpb.CONTAINER_STATE_PENDING
    for agent in cluster.agents:
        agent.agent.fail_create = None
    assert create(cluster, "later").state == cpb.CONTAINER_STATE_CREATED


BAD_CONTAINER_CALLS: list[tuple[str, str, Any, str]] = [
    (
        "bad capability",
        "CreateContainer",
        cpb.CreateContainerRequest(request_id="x", name="x", sandbox=cpb.Sandbox(capabilities=["net_raw"])),
        "INVALID_ARGUMENT",
    ),
    (
        "bad allowed syscall",
        "CreateContainer",
        cpb.CreateContainerRequest(request_id="x", name="x", sandbox=cpb.Sandbox(allow_syscalls=["Mount!"])),
        "INVALID_ARGUMENT",
    ),
    (
        "user id out of range",
        "Exec",
        cpb.ExecRequest(wait=True, container="web", request_id="u", argv=["true"], user_id=0xFFFFFFFF),
        "INVALID_ARGUMENT",
    ),
    (
        "empty name",
        "CreateContainer",
        cpb.CreateContainerRequest(request_id="x", name=""),
        "INVALID_ARGUMENT",
    ),
    (
        "long name",
        "CreateContainer",
        cpb.CreateContainerRequest(request_id="x", name="a" * 64),
        "INVALID_ARGUMENT",
    ),
    (
        "odd name",
        "CreateContainer",
        cpb.CreateContainerRequest(request_id="x", name="-Web_"),
        "INVALID_ARGUMENT",
    ),
    (
        "slash name",
        "CreateContainer",
        cpb.CreateContainerRequest(request_id="x", name="a/../b"),
        "INVALID_ARGUMENT",
    ),
    (
        "request id with a space",
        "CreateContainer",
        cpb.CreateContainerRequest(request_id="a b", name="ok"),
        "INVALID_ARGUMENT",
    ),
    (
        "long request id",
        "CreateContainer",
        cpb.CreateContainerRequest(request_id="r" * 129, name="ok"),
        "INVALID_ARGUMENT",
    ),
    (
        "negative limit",
        "CreateContainer",
        cpb.CreateContainerRequest(request_id="x", name="ok", limits=cpb.Limits(memory_max_bytes=-1)),
        "INVALID_ARGUMENT",
    ),
    (
        "relative root",
        "CreateContainer",
        cpb.CreateContainerRequest(request_id="x", name="ok", root="srv"),
        "INVALID_ARGUMENT",
    ),
    (
        "dotdot root",
        "CreateContainer",
        cpb.CreateContainerRequest(request_id="x", name="ok", root="/srv/../etc"),
        "INVALID_ARGUMENT",
    ),
    (
        "bad label",
        "CreateContainer",
        cpb.CreateContainerRequest(request_id="x", name="ok", labels={"": "v"}),
        "INVALID_ARGUMENT",
    ),
    (
        "unknown host",
        "CreateContainer",
        cpb.CreateContainerRequest(request_id="x", name="ok", host="nope:1"),
        "NOT_FOUND",
    ),
    ("unknown container", "GetContainer", cpb.GetContainerRequest(container="nope"), "NOT_FOUND"),
    ("empty container", "GetContainer", cpb.GetContainerRequest(container=""), "INVALID_ARGUMENT"),
    (
        "bad page token",
        "ListContainers",
        cpb.ListContainersRequest(page_token="%%%not-a-token"),
        "INVALID_ARGUMENT",
    ),
    (
        "garbage page token",
        "ListContainers",
        cpb.ListContainersRequest(page_token="aGVsbG8"),
        "INVALID_ARGUMENT",
    ),
    ("huge page size", "ListContainers", cpb.ListContainersRequest(page_size=1001), "INVALID_ARGUMENT"),
    ("negative page size", "ListContainers", cpb.ListContainersRequest(page_size=-1), "INVALID_ARGUMENT"),
    ("unknown state", "ListContainers", cpb.ListContainersRequest(state=99), "INVALID_ARGUMENT"),
    (
        "bad selector",
        "ListContainers",
        cpb.ListContainersRequest(label_selector="novalue"),
        "INVALID_ARGUMENT",
    ),
    ("unknown host filter", "ListContainers", cpb.ListContainersRequest(host="nope"), "NOT_FOUND"),
    (
        "exec unknown container",
        "Exec",
        cpb.ExecRequest(wait=True, container="nope", request_id="e", argv=["x"]),
        "NOT_FOUND",
    ),
    (
        "exec empty argv",
        "Exec",
        cpb.ExecRequest(wait=True, container="web", request_id="e"),
        "INVALID_ARGUMENT",
    ),
    (
        "exec request id with a space",
        "Exec",
        cpb.ExecRequest(container="web", request_id="a b", argv=["x"]),
        "INVALID_ARGUMENT",
    ),
    (
        "exec dotdot cwd",
        "Exec",
        cpb.ExecRequest(wait=True, container="web", request_id="e", argv=["x"], cwd="/../x"),
        "INVALID_ARGUMENT",
    ),
    ("unknown process", "GetProcess", cpb.GetProcessRequest(process_uid="nope"), "NOT_FOUND"),
    ("signal 0", "SignalProcess", cpb.SignalProcessRequest(process_uid="nope", signal=0), "INVALID_ARGUMENT"),
    (
        "signal 65",
        "SignalProcess",
        cpb.SignalProcessRequest(process_uid="nope", signal=65),
        "INVALID_ARGUMENT",
    ),
    ("signal unknown", "SignalProcess", cpb.SignalProcessRequest(process_uid="nope", signal=9), "NOT_FOUND"),
    ("wait unknown", "WaitProcess", cpb.WaitProcessRequest(process_uid="nope"), "NOT_FOUND"),
    (
        "wait negative",
        "WaitProcess",
        cpb.WaitProcessRequest(process_uid="nope", timeout=duration_pb2.Duration(seconds=-1)),
        "INVALID_ARGUMENT",
    ),
    ("stop unknown", "StopContainer", cpb.StopContainerRequest(container="nope"), "NOT_FOUND"),
    ("delete unknown", "DeleteContainer", cpb.DeleteContainerRequest(container="nope"), "NOT_FOUND"),
    ("list processes unknown", "ListProcesses", cpb.ListProcessesRequest(container="nope"), "NOT_FOUND"),
    ("watch unknown container", "Watch", cpb.WatchRequest(container="nope"), "NOT_FOUND"),
    ("watch negative revision", "Watch", cpb.WatchRequest(since_revision=-1), "INVALID_ARGUMENT"),
    ("logs unknown process", "StreamLogs", cpb.StreamLogsRequest(process_uid="nope"), "NOT_FOUND"),
    (
        "logs negative tail",
        "StreamLogs",
        cpb.StreamLogsRequest(process_uid="nope", tail_lines=-1),
        "INVALID_ARGUMENT",
    ),
    (
        "stop negative grace",
        "StopContainer",
        cpb.StopContainerRequest(container="web", grace_period=duration_pb2.Duration(seconds=-5)),
        "INVALID_ARGUMENT",
    ),
    (
        "exec oversized argv",
        "Exec",
        cpb.ExecRequest(wait=True, container="web", request_id="e", argv=["x"] * 5000),
        "INVALID_ARGUMENT",
    ),
    (
        "exec bad env",
        "Exec",
        cpb.ExecRequest(wait=True, container="web", request_id="e", argv=["x"], env={"A=B": "1"}),
        "INVALID_ARGUMENT",
    ),
    (
        "bad syscall name",
        "CreateContainer",
        cpb.CreateContainerRequest(request_id="x", name="ok", deny_syscalls=["mount; rm"]),
        "INVALID_ARGUMENT",
    ),
    (
        "name taken",
        "CreateContainer",
        cpb.CreateContainerRequest(request_id="x", name="web"),
        "ALREADY_EXISTS",
    ),
]

BAD_HOST_CALLS: list[tuple[str, str, Any, str]] = [
    ("empty address", "RegisterHost", hpb.RegisterHostRequest(address=""), "INVALID_ARGUMENT"),
    ("no port", "RegisterHost", hpb.RegisterHostRequest(address="host"), "INVALID_ARGUMENT"),
    ("port 0", "RegisterHost", hpb.RegisterHostRequest(address="host:0"), "INVALID_ARGUMENT"),
    (
        "negative capacity",
        "RegisterHost",
        hpb.RegisterHostRequest(address="h:1", capacity=hpb.Capacity(max_containers=-1)),
        "INVALID_ARGUMENT",
    ),
    ("unknown host", "GetHost", hpb.GetHostRequest(host="nope"), "NOT_FOUND"),
    ("cordon unknown", "CordonHost", hpb.CordonHostRequest(host="nope"), "NOT_FOUND"),
    ("remove unknown", "RemoveHost", hpb.RemoveHostRequest(host="nope"), "NOT_FOUND"),
    ("list bad state", "ListHosts", hpb.ListHostsRequest(state=42), "INVALID_ARGUMENT"),
]


def _invoke(stub: Any, method: str, request: Any) -> Any:
    fn = getattr(stub, method)
    result = fn(request, timeout=T)
    if method in ("StreamLogs", "Watch"):
        return list(result)
    return result


@pytest.mark.parametrize(
    ("why", "method", "request_", "code"), BAD_CONTAINER_CALLS, ids=[c[0] for c in BAD_CONTAINER_CALLS]
)
def test_bad_container_input(
    shared_cluster: Cluster, why: str, method: str, request_: Any, code: str
) -> None:
    register_all(shared_cluster)  # idempotent: the same hosts every time
    create(shared_cluster, "web")  # idempotent by request_id
    with pytest.raises(grpc.RpcError) as err:
        _invoke(shared_cluster.containers, method, request_)
    assert err.value.code().name == code, (why, err.value.details())


@pytest.mark.parametrize(
    ("why", "method", "request_", "code"), BAD_HOST_CALLS, ids=[c[0] for c in BAD_HOST_CALLS]
)
def test_bad_host_input(shared_cluster: Cluster, why: str, method: str, request_: Any, code: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _invoke(shared_cluster.hosts, method, request_)
    assert err.value.code().name == code, (why, err.value.details())


def test_sandbox_reaches_the_agent_and_inspect_shows_the_effective_policy(cluster: Cluster) -> None:
    register_all(cluster)
    sandbox = cpb.Sandbox(allow_syscalls=["syslog"], capabilities=["CAP_NET_BIND_SERVICE"], host_network=True)
    c = create(cluster, "relaxed", deny_syscalls=["ptrace"], sandbox=sandbox)
    assert c.state == cpb.CONTAINER_STATE_CREATED
    got = cluster.containers.GetContainer(cpb.GetContainerRequest(container="relaxed"), timeout=T).container
    assert got.sandbox == sandbox
    assert list(got.effective_deny_syscalls) == ["ptrace"]  # the agent's default "syslog" was relaxed
    strict = create(cluster, "strict")
    assert list(strict.effective_deny_syscalls) == ["syslog"]
    assert strict.sandbox == cpb.Sandbox()
    # A retry with another sandbox is another container: refused.
    with pytest.raises(grpc.RpcError) as err:
        create(cluster, "relaxed", sandbox=cpb.Sandbox())
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_exec_defaults_to_the_unprivileged_user(cluster: Cluster) -> None:
    register_all(cluster)
    c = create(cluster, "users")
    agent = next(a for a in cluster.agents if a.address == c.host_address)
    p = cluster.containers.Exec(
        cpb.ExecRequest(wait=True, container="users", request_id="default", argv=["id"]), timeout=T
    ).process
    assert (p.user_id, p.group_id) == (65534, 65534)
    assert agent.agent.last_start.HasField("user_id")
    assert (agent.agent.last_start.user_id, agent.agent.last_start.group_id) == (65534, 65534)
    root = cluster.containers.Exec(
        cpb.ExecRequest(wait=True, container="users", request_id="root", argv=["id"], user_id=0, group_id=0),
        timeout=T,
    ).process
    assert (root.user_id, root.group_id) == (0, 0)
    assert agent.agent.last_start.HasField("user_id") and agent.agent.last_start.user_id == 0


def test_exec_exit_arrives_through_events(cluster: Cluster) -> None:
    register_all(cluster)
    c = create(cluster, "job")
    p = cluster.containers.Exec(
        cpb.ExecRequest(wait=True, container="job", request_id="e1", argv=["exit", "3"]), timeout=T
    ).process
    assert p.state in (cpb.PROCESS_STATE_RUNNING, cpb.PROCESS_STATE_EXITED)
    assert p.pid > 0
    again = cluster.containers.Exec(
        cpb.ExecRequest(wait=True, container="job", request_id="e1", argv=["exit", "3"]), timeout=T
    )
    assert again.process.uid == p.uid
    assert sum(a.agent.calls["StartProcess"] for a in cluster.agents) == 1
    waited = cluster.containers.WaitProcess(
        cpb.WaitProcessRequest(process_uid=p.uid, timeout=duration_pb2.Duration(seconds=5)), timeout=T
    ).process
    assert waited.state == cpb.PROCESS_STATE_EXITED
    assert waited.exit_code == 3 and waited.signal == 0
    wait_for(
        lambda: (
            cluster.containers.GetContainer(
                cpb.GetContainerRequest(container=c.uid), timeout=T
            ).container.state
            == cpb.CONTAINER_STATE_CREATED
        )
    )
    # Same request_id with another argv.
    with pytest.raises(grpc.RpcError) as err:
        cluster.containers.Exec(
            cpb.ExecRequest(wait=True, container="job", request_id="e1", argv=["exit", "4"]), timeout=T
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_signal_and_wait_timeout(cluster: Cluster) -> None:
    register_all(cluster)
    create(cluster, "svc")
    p = cluster.containers.Exec(
        cpb.ExecRequest(wait=True, container="svc", request_id="s", argv=["sleep", "inf"]), timeout=T
    ).process
    assert p.state == cpb.PROCESS_STATE_RUNNING
    c = cluster.containers.GetContainer(cpb.GetContainerRequest(container="svc"), timeout=T).container
    assert c.state == cpb.CONTAINER_STATE_RUNNING and c.running_processes == 1
    start = time.monotonic()
    still = cluster.containers.WaitProcess(
        cpb.WaitProcessRequest(process_uid=p.uid, timeout=duration_pb2.Duration(nanos=300_000_000)), timeout=T
    ).process
    assert still.state == cpb.PROCESS_STATE_RUNNING
    assert time.monotonic() - start < 3
    cluster.containers.SignalProcess(cpb.SignalProcessRequest(process_uid=p.uid, signal=9), timeout=T)
    done = cluster.containers.WaitProcess(cpb.WaitProcessRequest(process_uid=p.uid), timeout=T).process
    assert done.state == cpb.PROCESS_STATE_EXITED and done.signal == 9 and done.exit_code == -1
    procs = cluster.containers.ListProcesses(cpb.ListProcessesRequest(container="svc"), timeout=T).processes
    assert [x.uid for x in procs] == [p.uid]
    # Signalling an exited process.
    with pytest.raises(grpc.RpcError) as err:
        cluster.containers.SignalProcess(cpb.SignalProcessRequest(process_uid=p.uid, signal=9), timeout=T)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_stop_then_delete(cluster: Cluster) -> None:
    register_all(cluster)
    create(cluster, "tmp")
    p = cluster.containers.Exec(
        cpb.ExecRequest(wait=True, container="tmp", request_id="p", argv=["sleep", "inf"]), timeout=T
    ).process
    with pytest.raises(grpc.RpcError) as err:
        cluster.containers.DeleteContainer(cpb.DeleteContainerRequest(container="tmp"), timeout=T)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    stopping = cluster.containers.StopContainer(
        cpb.StopContainerRequest(container="tmp", grace_period=duration_pb2.Duration(seconds=1)), timeout=T
    ).container
    # The stop is recorded and the call returns; the controller carries it out.
    assert stopping.state == cpb.CONTAINER_STATE_STOPPING and stopping.HasField("stop_deadline_time")
    settled(cluster, stopping.uid, cpb.CONTAINER_STATE_STOPPED)
    proc = cluster.containers.GetProcess(cpb.GetProcessRequest(process_uid=p.uid), timeout=T).process
    assert proc.state == cpb.PROCESS_STATE_EXITED and proc.signal == 15
    # Stop again: same answer; exec into a stopped container: refused.
    again = cluster.containers.StopContainer(cpb.StopContainerRequest(container="tmp"), timeout=T).container
    assert again.state == cpb.CONTAINER_STATE_STOPPED
    with pytest.raises(grpc.RpcError) as err:
        cluster.containers.Exec(
            cpb.ExecRequest(wait=True, container="tmp", request_id="q", argv=["x"]), timeout=T
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    deleted = cluster.containers.DeleteContainer(
        cpb.DeleteContainerRequest(container="tmp"), timeout=T
    ).container
    assert deleted.state == cpb.CONTAINER_STATE_DELETED
    assert cluster.containers.GetContainer(
        cpb.GetContainerRequest(container=deleted.uid), timeout=T
    ).container.state == (cpb.CONTAINER_STATE_DELETED)
    # The name is free again.
    fresh = create(cluster, "tmp", "another-request")
    assert fresh.uid != deleted.uid
    # Force delete of a running container: stopped (no grace), then deleted.
    running = cluster.containers.Exec(
        cpb.ExecRequest(wait=True, container="tmp", request_id="p", argv=["sleep", "inf"]), timeout=T
    ).process
    gone = cluster.containers.DeleteContainer(
        cpb.DeleteContainerRequest(container="tmp", force=True), timeout=T
    ).container
    assert gone.state in (cpb.CONTAINER_STATE_STOPPING, cpb.CONTAINER_STATE_DELETED)
    settled(cluster, gone.uid, cpb.CONTAINER_STATE_DELETED)
    killed = cluster.containers.GetProcess(cpb.GetProcessRequest(process_uid=running.uid), timeout=T).process
    assert killed.state in (cpb.PROCESS_STATE_EXITED, cpb.PROCESS_STATE_LOST)


def test_host_goes_not_ready_when_agent_stops(cluster: Cluster) -> None:
    hosts = register_all(cluster)
    victim = cluster.agents[1]
    victim.stop()
    wait_for(
        lambda: (
            cluster.hosts.GetHost(hpb.GetHostRequest(host=hosts[1].id), timeout=T).host.state
            == hpb.HOST_STATE_NOT_READY
        ),
        timeout=10,
    )
    # (How fast is measured by bench/health_under_load.py, not asserted here.)
    host = cluster.hosts.GetHost(hpb.GetHostRequest(host=hosts[1].id), timeout=T).host
    assert "unavailable" in host.message
    placed = {create(cluster, f"n{i}").host_address for i in range(4)}
    assert victim.address not in placed


def test_pagination(cluster: Cluster) -> None:
    register_all(cluster)
    created = [create(cluster, f"p{i}", labels={"even": str(i % 2 == 0).lower()}) for i in range(5)]
    uids = [c.uid for c in created]
    seen: list[str] = []
    token = ""
    while True:
        page = cluster.containers.ListContainers(
            cpb.ListContainersRequest(page_size=2, page_token=token), timeout=T
        )
        assert len(page.containers) <= 2
        seen += [c.uid for c in page.containers]
        token = page.next_page_token
        if not token:
            break
    assert seen == uids
    even = cluster.containers.ListContainers(cpb.ListContainersRequest(label_selector="even=true"), timeout=T)
    assert [c.uid for c in even.containers] == [uids[0], uids[2], uids[4]]
    on_host = cluster.containers.ListContainers(
        cpb.ListContainersRequest(host=cluster.agents[0].address, state=cpb.CONTAINER_STATE_CREATED),
        timeout=T,
    )
    placed_there = [c.uid for c in created if c.host_address == cluster.agents[0].address]
    assert [c.uid for c in on_host.containers] == placed_there
    assert len(placed_there) in (1, 2)  # 5 containers spread over 3 hosts


def _invalid(call: Callable[[], Any], message: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert message in (err.value.details() or ""), err.value.details()


def test_page_tokens_are_bound_to_the_filter_that_made_them(cluster: Cluster) -> None:
    hosts = register_all(cluster)
    for i in range(4):
        create(cluster, f"b{i}", labels={"team": "a" if i < 3 else "b"})
    containers = cluster.containers

    # ListContainers: the label selector, state and host of the first call go with its token.
    first = containers.ListContainers(
        cpb.ListContainersRequest(page_size=1, label_selector="team=a"), timeout=T
    )
    token = first.next_page_token
    assert token
    rest = containers.ListContainers(
        cpb.ListContainersRequest(page_size=10, label_selector="team=a", page_token=token), timeout=T
    )
    assert [c.name for c in [*first.containers, *rest.containers]] == ["b0", "b1", "b2"]
    for other in (
        cpb.ListContainersRequest(page_token=token),
        cpb.ListContainersRequest(page_token=token, label_selector="team=b"),
        cpb.ListContainersRequest(
            page_token=token, label_selector="team=a", state=cpb.CONTAINER_STATE_CREATED
        ),
        cpb.ListContainersRequest(page_token=token, label_selector="team=a", host=hosts[0].address),
    ):
        _invalid(lambda o=other: containers.ListContainers(o, timeout=T), "different ListContainers request")

    # ListProcesses: bound to the container (a token of one container's list is refused for another).
    for name in ("b0", "b1"):
        for _ in range(2):
            containers.Exec(cpb.ExecRequest(container=name, argv=["sleep", "inf"], wait=True), timeout=T)
    page = containers.ListProcesses(cpb.ListProcessesRequest(container="b0", page_size=1), timeout=T)
    assert page.next_page_token
    _invalid(
        lambda: containers.ListProcesses(
            cpb.ListProcessesRequest(container="b1", page_token=page.next_page_token), timeout=T
        ),
        "different ListProcesses request",
    )
    _invalid(
        lambda: containers.ListProcesses(
            cpb.ListProcessesRequest(page_token=page.next_page_token), timeout=T
        ),
        "different ListProcesses request",
    )
    # The container by name or by uid is the same filter.
    b0 = containers.GetContainer(cpb.GetContainerRequest(container="b0"), timeout=T).container
    more = containers.ListProcesses(
        cpb.ListProcessesRequest(container=b0.uid, page_token=page.next_page_token), timeout=T
    )
    assert len(more.processes) == 1 and not more.next_page_token

    # ListHosts: bound to the state; and a token of another list is refused.
    listed = cluster.hosts.ListHosts(hpb.ListHostsRequest(page_size=1), timeout=T)
    assert listed.next_page_token
    _invalid(
        lambda: cluster.hosts.ListHosts(
            hpb.ListHostsRequest(page_token=listed.next_page_token, state=hpb.HOST_STATE_READY), timeout=T
        ),
        "different ListHosts request",
    )
    _invalid(
        lambda: cluster.hosts.ListHosts(hpb.ListHostsRequest(page_token=token), timeout=T),
        "different ListHosts request",
    )
    ready = cluster.hosts.ListHosts(hpb.ListHostsRequest(page_size=2, state=hpb.HOST_STATE_READY), timeout=T)
    again = cluster.hosts.ListHosts(
        hpb.ListHostsRequest(page_token=ready.next_page_token, state=hpb.HOST_STATE_READY), timeout=T
    )
    assert [h.id for h in [*ready.hosts, *again.hosts]] == [h.id for h in hosts]


def test_watch_heartbeats_say_where_a_live_watch_started(cluster: Cluster) -> None:
    register_all(cluster)
    first = create(cluster, "hb-1")
    request = cpb.WatchRequest(heartbeat_interval=duration_pb2.Duration(seconds=1))
    stream = cluster.containers.Watch(request, timeout=T)
    try:
        start = next(stream)
        assert start.heartbeat and not start.HasField("container")
        assert start.revision >= 1  # the current revision: hb-1's events are before it
        create(cluster, "hb-2")
        event = next(stream)
        assert not event.heartbeat and event.container.name == "hb-2" and event.revision > start.revision
        while (beat := next(stream)).heartbeat is False:  # hb-2 goes PENDING -> CREATED
            assert beat.container.name == "hb-2"
            event = beat
        assert beat.revision >= event.revision
    finally:
        stream.cancel()
    # Resuming from a heartbeat's revision misses and repeats nothing.
    stream = cluster.containers.Watch(cpb.WatchRequest(since_revision=start.revision), timeout=T)
    try:
        assert next(stream).container.name == "hb-2"
    finally:
        stream.cancel()
    # Without heartbeat_interval: no heartbeats (what older clients get). The watch starts from a
    # known revision: a live-only watch (since_revision 0) could start after hb-3's events commit.
    stream = cluster.containers.Watch(cpb.WatchRequest(since_revision=start.revision), timeout=T)
    try:
        create(cluster, "hb-3")
        while (event := next(stream)).container.name != "hb-3":
            assert not event.heartbeat
        assert not event.heartbeat
    finally:
        stream.cancel()
    assert first.name == "hb-1"


def test_logs_and_watch(cluster: Cluster) -> None:
    register_all(cluster)
    create(cluster, "w")
    p = cluster.containers.Exec(
        cpb.ExecRequest(wait=True, container="w", request_id="l", argv=["exit", "0"]), timeout=T
    ).process
    chunks = list(cluster.containers.StreamLogs(cpb.StreamLogsRequest(process_uid=p.uid), timeout=T))
    assert [(c.stream, c.data) for c in chunks] == [
        (cpb.LOG_STREAM_STDOUT, b"hello\n"),
        (cpb.LOG_STREAM_STDERR, b"oops\n"),
    ]
    cluster.containers.WaitProcess(cpb.WaitProcessRequest(process_uid=p.uid), timeout=T)
    stream = cluster.containers.Watch(cpb.WatchRequest(since_revision=1, container="w"), timeout=T)
    events = []
    for ev in stream:
        events.append(ev)
        if ev.type == cpb.EVENT_TYPE_PROCESS_CHANGED and ev.process.state == cpb.PROCESS_STATE_EXITED:
            break
    stream.cancel()
    revisions = [e.revision for e in events]
    assert revisions == sorted(revisions) and revisions[0] > 1
    kinds = [(e.type, e.container.state if e.container.uid else e.process.state) for e in events]
    assert (cpb.EVENT_TYPE_CONTAINER_CHANGED, cpb.CONTAINER_STATE_CREATED) in kinds
    assert (cpb.EVENT_TYPE_PROCESS_CHANGED, cpb.PROCESS_STATE_RUNNING) in kinds


def test_live_watch_sees_new_events(cluster: Cluster) -> None:
    register_all(cluster)
    stream = cluster.containers.Watch(cpb.WatchRequest(), timeout=T)
    time.sleep(0.3)  # let the watch start from the current revision
    created = create(cluster, "live")
    first = next(iter(stream))
    stream.cancel()
    assert first.container.uid == created.uid


def test_drain_and_remove(cluster: Cluster) -> None:
    hosts = register_all(cluster)
    a = create(cluster, "d1", host=hosts[0].id)
    with pytest.raises(grpc.RpcError) as err:
        cluster.hosts.RemoveHost(hpb.RemoveHostRequest(host=hosts[0].id), timeout=T)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    drained = cluster.hosts.DrainHost(hpb.DrainHostRequest(host=hosts[0].id), timeout=T)
    assert drained.stopped_containers == 1 and drained.host.state == hpb.HOST_STATE_DRAINING
    assert drained.host.drain.containers == 1 and drained.host.drain.remaining == 1
    settled(cluster, a.uid, cpb.CONTAINER_STATE_STOPPED)
    drain = cluster.hosts.GetHost(hpb.GetHostRequest(host=hosts[0].id), timeout=T).host.drain
    assert drain.complete and drain.remaining == 0 and drain.containers == 1
    cluster.hosts.RemoveHost(hpb.RemoveHostRequest(host=hosts[0].id, force=True), timeout=T)
    with pytest.raises(grpc.RpcError) as err:
        cluster.hosts.GetHost(hpb.GetHostRequest(host=hosts[0].id), timeout=T)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_and_reflection(cluster: Cluster) -> None:
    health = health_pb2_grpc.HealthStub(cluster.channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(), timeout=T).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    refl = reflection_pb2_grpc.ServerReflectionStub(cluster.channel)
    responses = refl.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=T
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"chital.api.container.v1.ContainerService", "chital.api.host.v1.HostService"} <= names


def test_a_cancelled_reflection_stream_is_cancelled_not_an_error(
    metrics_cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """grpcurl (or any client) going away mid-stream must not feed the error-ratio alert."""
    cluster = metrics_cluster
    caplog.set_level(logging.WARNING)
    requests: queue.Queue[reflection_pb2.ServerReflectionRequest | None] = queue.Queue()
    requests.put(reflection_pb2.ServerReflectionRequest(list_services=""))
    channel = cluster.channel_with()
    call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter(requests.get, None), timeout=T
    )
    assert next(call).list_services_response.service
    # Let the handler go back to reading the request stream (where grpcurl's exit finds it):
    # reading it then raises gRPC's RpcError, which used to become INTERNAL and an ERROR log.
    time.sleep(0.3)
    channel.close()  # as grpcurl exiting: the connection goes, no half-close of the stream first
    url = f"http://127.0.0.1:{cluster.controller.metrics_port}/metrics"
    labels = 'grpc_method="ServerReflectionInfo",grpc_service="grpc.reflection.v1alpha.ServerReflection"'

    def handled() -> str:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.read().decode()

    pattern = re.compile(r'handled_total\{grpc_code="(\w+)",' + re.escape(labels) + r"\} (\S+)")

    def codes() -> dict[str, float]:
        gc.collect()  # a handler ended at a yield is counted when its generator is collected
        return {m[1]: float(m[2]) for m in pattern.finditer(handled())}

    # Counted once, as CANCELLED (waiting at most 10 s: gRPC may report the end late; what must
    # never happen is INTERNAL, or an ERROR in the log).
    with contextlib.suppress(AssertionError):
        wait_for(lambda: bool(codes()), timeout=10)
    # OK: gRPC sometimes hands the cancel to the handler as the end of the request stream (its
    # race between the receive and the cancel), and the handler then ends normally.
    assert set(codes()) <= {"CANCELLED", "OK"}, codes()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    requests.put(None)  # ends the client's request-sending thread


def test_metrics_are_served(metrics_cluster: Cluster) -> None:
    cluster = metrics_cluster
    hosts = register_all(cluster)
    create(cluster, "m1")
    with pytest.raises(grpc.RpcError):
        cluster.containers.GetContainer(cpb.GetContainerRequest(container="missing"), timeout=T)
    url = f"http://127.0.0.1:{cluster.controller.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    assert (
        'chital_controller_grpc_server_handled_total{grpc_code="NOT_FOUND",'
        'grpc_method="GetContainer",grpc_service="chital.api.container.v1.ContainerService"} 1.0'
    ) in text
    assert f'chital_controller_host_state{{host="{hosts[0].id}",state="READY"}} 1.0' in text
    assert 'chital_controller_containers{state="CREATED"} 1.0' in text
    assert "chital_controller_placements_total 1.0" in text
    assert 'chital_controller_health_checks_total{result="ok"}' in text
    assert "chital_controller_agent_call_duration_seconds_bucket" in text


def test_reconciler_resumes_interrupted_work(cluster: Cluster) -> None:
    """A crash after the durable PENDING write (or mid stop / mid exec) is finished by the reconciler."""
    register_all(cluster)
    store = cluster.controller.store
    # As if the controller died right after writing PENDING.
    pending, _ = store.create_container(
        "u-pending", "r-pending", ContainerSpec(name="half"), utc_now(), choose_host
    )
    # As if it died mid stop, and mid exec. The leader's follower of the event feed would hand a new
    # STOPPING container to the operations driver at once; stopped first, the stop is left to the
    # reconciler, as when the controller that recorded it died before any driver saw it.
    cluster.controller.stop_follower.stop()
    running = create(cluster, "stopping")
    store.transition_container(running.uid, ContainerRecordState.STOPPING, now=utc_now())
    target = create(cluster, "execs")
    proc, _, _ = store.create_process("p-starting", target.uid, "e", ProcessSpec(argv=("x",)), utc_now())
    reconciler = cluster.controller.reconciler
    reconciler.min_age = 0.0
    time.sleep(0.01)
    # The stop is handed to the operations driver again (still waiting in this round).
    assert reconciler.run_once() == 1
    assert store.get_container(pending.uid).state is ContainerRecordState.CREATED
    wait_for(lambda: store.get_container(running.uid).state is ContainerRecordState.STOPPED)
    assert store.get_process(proc.uid).state is ProcessRecordState.LOST
    assert sum(a.agent.calls["CreateContainer"] for a in cluster.agents) == 3


def test_reconciler_schedules_from_times_in_the_database(cluster: Cluster) -> None:
    """Rounds are due by the records' persisted times, not by the controller's start: a controller
    restarting more often than the interval still resumes overdue work."""
    register_all(cluster)
    store = cluster.controller.store
    t0 = utc_now() - timedelta(minutes=5)
    now = [t0 + timedelta(seconds=3)]
    reconciler = Reconciler(
        store,
        cluster.controller.pool,
        cluster.controller.containers,
        lambda: now[0],
        metrics=ControllerMetrics(),
        interval=10.0,
        min_age=10.0,
    )
    assert reconciler.next_delay() == 10.0  # nothing waits
    pending, _ = store.create_container("u-late", "r-late", ContainerSpec(name="late"), t0, choose_host)
    assert reconciler.next_delay() == pytest.approx(7.0, abs=0.1)  # due when it is min_age old
    now[0] = t0 + timedelta(seconds=9)
    assert reconciler.next_delay() == pytest.approx(1.0, abs=0.1)
    now[0] = t0 + timedelta(minutes=1)  # overdue: at once, however recently the process started
    assert reconciler.next_delay() == pytest.approx(0.0, abs=0.1)
    assert reconciler.next_delay(backlog=1) == 10.0  # work left waiting: no busy loop
    # A freshly started reconciler whose interval is an hour resumes the overdue create at once.
    reconciler.interval = 3600.0
    reconciler.start()
    try:
        wait_for(lambda: store.get_container(pending.uid).state is ContainerRecordState.CREATED)
    finally:
        reconciler.stop()


def test_exec_on_a_not_ready_host_is_unavailable(cluster: Cluster) -> None:
    hosts = register_all(cluster)
    c = create(cluster, "doomed", host=hosts[2].id)
    cluster.agents[2].stop()
    wait_for(
        lambda: (
            cluster.hosts.GetHost(hpb.GetHostRequest(host=hosts[2].id), timeout=T).host.state
            == hpb.HOST_STATE_NOT_READY
        ),
        timeout=10,
    )
    with pytest.raises(grpc.RpcError) as err:
        cluster.containers.Exec(
            cpb.ExecRequest(wait=True, container=c.uid, request_id="e", argv=["x"]), timeout=T
        )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not cluster.containers.ListProcesses(
        cpb.ListProcessesRequest(container=c.uid), timeout=T
    ).processes
    # Force delete works without the agent.
    gone = cluster.containers.DeleteContainer(
        cpb.DeleteContainerRequest(container=c.uid, force=True), timeout=T
    )
    assert gone.container.state == cpb.CONTAINER_STATE_DELETED
