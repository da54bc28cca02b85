"""A real ``chital-agent serve`` subprocess (FakeDevice, mutual TLS) on 127.0.0.1, exercised through
gRPC stubs that present the controller's certificate."""

from __future__ import annotations

import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from agent_harness import AgentProc, Bundles, secure_channel, start_agent
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from chital.api.agent.v1 import agent_pb2 as pb
from chital.api.agent.v1 import agent_pb2_grpc as pb_grpc

BAD_CODES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


@dataclass
class Agent:
    proc: AgentProc
    channel: grpc.Channel
    stub: pb_grpc.AgentServiceStub
    metrics_port: int
    ca: Path

    @property
    def state_dir(self) -> Path:
        return self.proc.state_dir


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, bundles: Bundles) -> Iterator[Agent]:
    """An agent with its bundle (mutual TLS), called with the controller's certificate."""
    tmp = tmp_path_factory.mktemp("agent")
    proc = start_agent(tmp, ["--tls-dir", str(bundles.agent)], metrics=True)
    try:
        assert proc.stdout_first_line == f"chital-agent listening on 127.0.0.1:{proc.port}"
        channel = secure_channel(proc.port, bundles.controller)
        yield Agent(
            proc, channel, pb_grpc.AgentServiceStub(channel), proc.metrics_port, bundles.agent / "ca.crt"
        )
        channel.close()
    finally:
        rc = proc.stop()
    assert rc == 0, proc.log()
    log = proc.log()
    assert "NOT sandboxed" in log
    assert "Traceback" not in log, log


def code_of(fn: object, request: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn(request, timeout=10)  # type: ignore[operator]
    code = info.value.code()  # type: ignore[attr-defined]
    assert code not in BAD_CODES, info.value
    return code  # type: ignore[no-any-return]


def test_health_and_info(agent: Agent) -> None:
    health = health_pb2_grpc.HealthStub(agent.channel)
    for service in ("", "chital.api.agent.v1.AgentService"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    info = agent.stub.GetInfo(pb.GetInfoRequest(), timeout=10)
    assert (info.device, info.sandboxed, info.module_version) == ("fake", False, "fake")
    assert info.boot_id and info.state_hash and info.agent_version


def test_reflection_lists_the_service(agent: Agent) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(agent.channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert "chital.api.agent.v1.AgentService" in names


def test_run_a_process_end_to_end(agent: Agent) -> None:
    s = agent.stub
    before = s.GetInfo(pb.GetInfoRequest(), timeout=10)
    created = s.CreateContainer(pb.CreateContainerRequest(uid="ct-1", name="web"), timeout=10).container
    again = s.CreateContainer(pb.CreateContainerRequest(uid="ct-1", name="web"), timeout=10).container
    assert created == again and created.kernel_id > 0
    events: list[pb.StreamEventsResponse] = []
    stream = s.StreamEvents(pb.StreamEventsRequest(after_seq=before.last_event_seq), timeout=30)

    def collect() -> None:
        try:
            for e in stream:
                events.append(e)
                if e.kind == pb.EVENT_KIND_PROCESS_EXITED:
                    return
        except grpc.RpcError:
            pass

    t = threading.Thread(target=collect)
    t.start()
    started = s.StartProcess(
        pb.StartProcessRequest(
            container_uid="ct-1",
            process_uid="pr-1",
            argv=["sh", "-c", "echo $FOO; echo to-stderr >&2; exit 3"],
            env={"FOO": "hello-chital"},
        ),
        timeout=10,
    ).process
    assert started.pid > 0 and started.argv[0] == "sh"
    t.join(20)
    stream.cancel()
    exited = [e for e in events if e.kind == pb.EVENT_KIND_PROCESS_EXITED]
    assert exited and (exited[0].process_uid, exited[0].exit_code, exited[0].signal) == ("pr-1", 3, 0)
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert events[0].kind == pb.EVENT_KIND_PROCESS_STARTED

    chunks = list(s.StreamLogs(pb.StreamLogsRequest(process_uid="pr-1", follow=True), timeout=10))
    out = b"".join(c.data for c in chunks if c.stream == pb.LOG_STREAM_STDOUT)
    err = b"".join(c.data for c in chunks if c.stream == pb.LOG_STREAM_STDERR)
    assert (out, err) == (b"hello-chital\n", b"to-stderr\n")

    sync = s.Sync(pb.SyncRequest(), timeout=10)
    (proc,) = [p for p in sync.processes if p.uid == "pr-1"]
    assert (proc.state, proc.exit_code) == (pb.PROCESS_STATE_EXITED, 3)
    assert sync.last_event_seq >= exited[0].seq
    assert s.GetInfo(pb.GetInfoRequest(), timeout=10).state_hash != before.state_hash

    # Replay from the start returns the same events.
    replay = s.StreamEvents(pb.StreamEventsRequest(after_seq=before.last_event_seq), timeout=5)
    got = []
    for e in replay:
        got.append(e)
        if e.seq == exited[0].seq:
            replay.cancel()
            break
    assert [e.seq for e in got][: len(events)] == [e.seq for e in events]

    stats = s.GetContainerStats(pb.GetContainerStatsRequest(uid="ct-1"), timeout=10)
    assert stats.members == 0
    s.DestroyContainer(pb.DestroyContainerRequest(uid="ct-1", grace_period_seconds=1), timeout=10)
    s.DestroyContainer(pb.DestroyContainerRequest(uid="ct-1", grace_period_seconds=1), timeout=10)


def test_signal_and_destroy(agent: Agent) -> None:
    s = agent.stub
    s.CreateContainer(pb.CreateContainerRequest(uid="ct-2"), timeout=10)
    s.StartProcess(
        pb.StartProcessRequest(container_uid="ct-2", process_uid="pr-2", argv=["sleep", "60"]), timeout=10
    )
    s.SignalProcess(pb.SignalProcessRequest(process_uid="pr-2", signal=15), timeout=10)
    deadline = time.monotonic() + 10
    while True:
        procs = {p.uid: p for p in s.Sync(pb.SyncRequest(), timeout=10).processes}
        if procs["pr-2"].state == pb.PROCESS_STATE_EXITED:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert (procs["pr-2"].exit_code, procs["pr-2"].signal) == (-1, 15)
    assert (
        code_of(s.SignalProcess, pb.SignalProcessRequest(process_uid="pr-2", signal=15))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    s.DestroyContainer(pb.DestroyContainerRequest(uid="ct-2"), timeout=10)


@pytest.mark.parametrize(
    ("method", "request_", "expected"),
    [
        ("CreateContainer", pb.CreateContainerRequest(uid=""), grpc.StatusCode.INVALID_ARGUMENT),
        ("CreateContainer", pb.CreateContainerRequest(uid="../etc"), grpc.StatusCode.INVALID_ARGUMENT),
        ("CreateContainer", pb.CreateContainerRequest(uid="x" * 10000), grpc.StatusCode.INVALID_ARGUMENT),
        ("CreateContainer", pb.CreateContainerRequest(uid="c", root="rel"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            "CreateContainer",
            pb.CreateContainerRequest(uid="c", root="/tmp/../etc"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "CreateContainer",
            pb.CreateContainerRequest(uid="c", deny_syscalls=["nope"]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "CreateContainer",
            pb.CreateContainerRequest(uid="c", limits=pb.Limits(pids_max=-5)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "DestroyContainer",
            pb.DestroyContainerRequest(uid="c", grace_period_seconds=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "StartProcess",
            pb.StartProcessRequest(container_uid="missing", process_uid="p", argv=["true"]),
            grpc.StatusCode.NOT_FOUND,
        ),
        ("StartProcess", pb.StartProcessRequest(container_uid="missing"), grpc.StatusCode.INVALID_ARGUMENT),
        ("AdoptProcess", pb.AdoptProcessRequest(container_uid="x", process_uid="p", pid=-1), None),
        ("RemoveProcess", pb.RemoveProcessRequest(container_uid="missing", pid=1), grpc.StatusCode.NOT_FOUND),
        ("SignalProcess", pb.SignalProcessRequest(process_uid="nope", signal=15), grpc.StatusCode.NOT_FOUND),
        (
            "SignalProcess",
            pb.SignalProcessRequest(process_uid="nope", signal=0),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "SignalProcess",
            pb.SignalProcessRequest(process_uid="x", signal=99),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        ("GetContainerStats", pb.GetContainerStatsRequest(uid="missing"), grpc.StatusCode.NOT_FOUND),
    ],
)
def test_bad_input_codes(
    agent: Agent, method: str, request_: object, expected: grpc.StatusCode | None
) -> None:
    code = code_of(getattr(agent.stub, method), request_)
    if expected is not None:
        assert code == expected
    else:
        assert code in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


def test_bad_process_inputs(agent: Agent) -> None:
    s = agent.stub
    s.CreateContainer(pb.CreateContainerRequest(uid="ct-bad"), timeout=10)
    cases = [
        (pb.StartProcessRequest(container_uid="ct-bad", process_uid="p"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            pb.StartProcessRequest(container_uid="ct-bad", process_uid="p", argv=["/no/such/bin"]),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            pb.StartProcessRequest(container_uid="ct-bad", process_uid="p", argv=["true"], cwd="/../.."),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pb.StartProcessRequest(container_uid="ct-bad", process_uid="p", argv=["true"], env={"A=B": "1"}),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for request, expected in cases:
        assert code_of(s.StartProcess, request) == expected
    logs = s.StreamLogs(pb.StreamLogsRequest(process_uid="nope"), timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        list(logs)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    logs = s.StreamLogs(pb.StreamLogsRequest(process_uid="nope", tail_lines=-1), timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        list(logs)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    s.DestroyContainer(pb.DestroyContainerRequest(uid="ct-bad"), timeout=10)
    # The server is still up.
    assert s.GetInfo(pb.GetInfoRequest(), timeout=10).device == "fake"


def test_metrics_endpoint(agent: Agent) -> None:
    s = agent.stub
    s.CreateContainer(pb.CreateContainerRequest(uid="ct-metrics"), timeout=10)
    s.StartProcess(
        pb.StartProcessRequest(container_uid="ct-metrics", process_uid="pr-m", argv=["true"]), timeout=10
    )
    # HTTPS with the agent's certificate, verified with the fleet CA; plaintext gets nothing.
    tls = ssl.create_default_context(cafile=str(agent.ca))
    url = f"127.0.0.1:{agent.metrics_port}/metrics"
    body = urllib.request.urlopen(f"https://{url}", timeout=10, context=tls).read().decode()
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://{url}", timeout=10)
    assert "chital_agent_processes_started_total" in body
    assert 'chital_agent_device_ioctl_duration_seconds_count{command="CREATE"}' in body
    assert 'device="fake"' in body
    s.DestroyContainer(pb.DestroyContainerRequest(uid="ct-metrics"), timeout=10)
