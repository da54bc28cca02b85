"""The SDK against an in-process fake controller: conversions, retries, error mapping, exports."""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
import itertools
import threading

import grpc
import pytest
from fake_chital_controller import FakeController

import chital.client
import chital.errdefs
from chital.api.admin.v1 import admin_pb2
from chital.api.container.v1 import container_pb2
from chital.api.host.v1 import host_pb2
from chital.client import (
    NO_RETRY,
    ChitalError,
    Client,
    Container,
    ContainerState,
    EventType,
    HostState,
    Limits,
    LogStream,
    ProcessState,
    RetryPolicy,
    _convert,
    _ops,
)
from chital.client.aio import AsyncClient

FAST = RetryPolicy(max_attempts=4, initial_backoff=0.001, max_backoff=0.002)


@pytest.fixture
def client(target: str):
    with Client(target, insecure=True, timeout=5, retries=FAST) as c:
        yield c


# -- public surface -----------------------------------------------------------------------------

EXPECTED_ALL = {
    "NO_RETRY",
    "AgentInfo",
    "AlreadyExists",
    "AuditEntry",
    "ChitalError",
    "Client",
    "Container",
    "ContainerState",
    "ContainerStats",
    "DeadlineExceeded",
    "Drain",
    "DrainResult",
    "EventType",
    "FailedPrecondition",
    "Host",
    "HostState",
    "Identity",
    "Internal",
    "InvalidArgument",
    "Limits",
    "LogChunk",
    "LogStream",
    "NewToken",
    "NotFound",
    "OutOfRange",
    "Page",
    "PermissionDenied",
    "Process",
    "ProcessState",
    "ResourceExhausted",
    "RetryPolicy",
    "Rollout",
    "RolloutEvent",
    "RolloutEventType",
    "RolloutHost",
    "RolloutHostStatus",
    "RolloutState",
    "Sandbox",
    "ServerInfo",
    "SyscallCount",
    "TLSFiles",
    "Token",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "WatchEvent",
    "__version__",
}


def test_all_is_guarded() -> None:
    assert set(chital.client.__all__) == EXPECTED_ALL
    assert len(chital.client.__all__) == len(EXPECTED_ALL)
    for name in chital.client.__all__:
        assert hasattr(chital.client, name), name


def test_every_errdefs_class_is_reexported_as_the_same_object() -> None:
    for cls in chital.errdefs.ERROR_CLASSES:
        assert getattr(chital.client, cls.__name__) is cls
    assert chital.client.ChitalError is chital.errdefs.ChitalError


def test_every_public_name_and_method_has_a_docstring() -> None:
    for name in chital.client.__all__:
        obj = getattr(chital.client, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, name
    for name, member in inspect.getmembers(Client, inspect.isfunction):
        if not name.startswith("_") or name in ("__init__", "__enter__", "__exit__"):
            assert member.__doc__, name


def test_every_call_takes_a_timeout() -> None:
    """``timeout=`` (default ``None``: the client's) on every method that calls the controller, in
    both clients; ``close`` is the only public method without one."""
    for cls in (Client, AsyncClient):
        without = []
        for name, member in inspect.getmembers(cls, inspect.isfunction):
            if name.startswith("_"):
                continue
            param = inspect.signature(member).parameters.get("timeout")
            if param is None:
                without.append(name)
            else:
                assert param.default is None, (cls, name)
        assert without == ["close"], cls


def test_every_rpc_has_a_method() -> None:
    names = {
        "CreateContainer": "create_container",
        "GetContainer": "get_container",
        "ListContainers": "list_containers_page",
        "StopContainer": "stop_container",
        "DeleteContainer": "delete_container",
        "Exec": "exec",
        "GetProcess": "get_process",
        "ListProcesses": "list_processes_page",
        "WaitProcess": "wait_process",
        "SignalProcess": "signal_process",
        "StreamLogs": "stream_logs",
        "Watch": "watch",
        "GetContainerStats": "get_container_stats",
        "RegisterHost": "register_host",
        "ListHosts": "list_hosts_page",
        "GetHost": "get_host",
        "CordonHost": "cordon_host",
        "UncordonHost": "uncordon_host",
        "DrainHost": "drain_host",
        "RemoveHost": "remove_host",
        "CreateToken": "create_token",
        "ListTokens": "list_tokens",
        "RevokeToken": "revoke_token",
        "ListAuditLog": "list_audit_log_page",
        "WhoAmI": "whoami",
        "GetServerInfo": "server_info",
    }
    rpcs = [m.name for m in container_pb2.DESCRIPTOR.services_by_name["ContainerService"].methods]
    rpcs += [m.name for m in host_pb2.DESCRIPTOR.services_by_name["HostService"].methods]
    rpcs += [m.name for m in admin_pb2.DESCRIPTOR.services_by_name["AdminService"].methods]
    assert sorted(rpcs) == sorted(names)
    for method in names.values():
        assert callable(getattr(Client, method))


# -- conversions --------------------------------------------------------------------------------


def test_create_and_get_container_return_plain_values(client: Client, fake: FakeController) -> None:
    c = client.create_container(
        "web",
        labels={"team": "a"},
        limits=Limits(memory_max_bytes=256 << 20, pids_max=10, cpu_max_millicores=500),
        root="/srv/web",
        deny_syscalls=["mount", "ptrace"],
    )
    assert isinstance(c, Container)
    assert c.name == "web"
    assert c.state is ContainerState.CREATED
    assert c.labels == {"team": "a"}
    assert c.limits == Limits(memory_max_bytes=256 << 20, pids_max=10, cpu_max_millicores=500)
    assert c.deny_syscalls == ("mount", "ptrace")
    assert c.create_time is not None and c.create_time.tzinfo is dt.UTC
    assert c.update_time is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.name = "x"  # type: ignore[misc]
    assert client.get_container("web") == c
    request = fake.requests["CreateContainer"][0]
    assert len(request.request_id) == 36  # a uuid4


def test_unknown_enum_values_become_unspecified() -> None:
    assert _convert.container_state_from_pb(99) is ContainerState.UNSPECIFIED
    p = _convert.process_from_pb(container_pb2.Process(uid="p", state=42))
    assert p.state is ProcessState.UNSPECIFIED
    for state in ContainerState:
        if state is not ContainerState.UNSPECIFIED:
            assert _convert.container_state_from_pb(_convert.container_state_to_pb(state)) is state


def test_list_containers_pages_and_filters(client: Client, fake: FakeController) -> None:
    for i in range(7):
        client.create_container(f"c{i}", labels={"team": "a" if i % 2 else "b"})
    assert [c.name for c in client.list_containers(page_size=3)] == [f"c{i}" for i in range(7)]
    assert fake.calls["ListContainers"] == 3
    page = client.list_containers_page(page_size=2)
    assert len(page.items) == 2 and page.next_page_token
    assert [c.name for c in client.list_containers(label_selector={"team": "a"})] == ["c1", "c3", "c5"]
    assert fake.requests["ListContainers"][-1].label_selector == "team=a"
    assert list(client.list_containers(state=ContainerState.RUNNING)) == []


def test_exec_wait_logs_signal(client: Client, fake: FakeController) -> None:
    client.create_container("box")
    p = client.exec("box", ["echo", "hi"], env={"A": "1"}, cwd="/tmp")
    assert p.argv == ("echo", "hi") and p.env == {"A": "1"} and p.cwd == "/tmp"
    done = client.wait_process(p.uid)
    assert done.state is ProcessState.EXITED and done.exit_code == 0 and done.exited
    chunks = list(client.stream_logs(p.uid, follow=True, tail=5))
    assert [(c.stream, c.data) for c in chunks] == [(LogStream.STDOUT, b"hi\n")]
    assert fake.requests["StreamLogs"][0].tail_lines == 5

    sleeper = client.exec("box", ["sleep"])
    assert sleeper.state is ProcessState.RUNNING
    still = client.wait_process(sleeper.uid, timeout=0.05)
    assert still.state is ProcessState.RUNNING
    killed = client.signal_process(sleeper.uid, 9)
    assert killed.signal == 9 and killed.shell_exit_status == 137
    assert [p.uid for p in client.list_processes("box")] == [p.uid, sleeper.uid]


def test_wait_request_carries_timeout_and_deadline(client: Client, fake: FakeController) -> None:
    client.create_container("box")
    p = client.exec("box", ["sleep"])
    client.wait_process(p.uid, timeout=0.2)
    request = fake.requests["WaitProcess"][0]
    assert 0 < request.timeout.ToNanoseconds() <= 200_000_000


def test_watch(client: Client, fake: FakeController) -> None:
    client.create_container("a")
    client.create_container("b")
    events = list(itertools.islice(client.watch(since_revision=1), 1))
    assert [(e.revision, e.type, e.container and e.container.name) for e in events] == [
        (2, EventType.CONTAINER_CHANGED, "b")
    ]
    request = fake.requests["Watch"][-1]
    assert request.heartbeat_interval.ToTimedelta().total_seconds() == _ops.WATCH_HEARTBEAT_SECONDS


def test_a_live_watch_sees_only_new_events_and_skips_heartbeats(client: Client, fake: FakeController) -> None:
    client.create_container("old")
    fake.min_heartbeat = 0.01
    _ops.WATCH_HEARTBEAT_SECONDS, saved = 0.01, _ops.WATCH_HEARTBEAT_SECONDS
    try:
        watch = client.watch()
        threading.Timer(0.2, lambda: client.create_container("new")).start()
        event = next(watch)  # heartbeats came first: none is delivered as an event
        watch.close()
    finally:
        _ops.WATCH_HEARTBEAT_SECONDS = saved
    assert (event.revision, event.container and event.container.name) == (2, "new")


def test_watch_resumes_from_the_revision_a_heartbeat_gave() -> None:
    """A live-only watch that breaks before its first event resumes where the heartbeat said it
    started, not live-only again (which would miss what happened during the break)."""
    state = _ops.WatchResume(0, FAST, enabled=True)
    assert state.receive(container_pb2.WatchResponse(revision=7, heartbeat=True)) is None
    assert state.revision == 7
    assert _ops.watch(state.revision, "").request.since_revision == 7
    event = state.receive(
        container_pb2.WatchResponse(revision=8, type=container_pb2.EVENT_TYPE_CONTAINER_CHANGED)
    )
    assert event is not None and event.revision == 8
    assert state.receive(container_pb2.WatchResponse(revision=5, heartbeat=True)) is None
    assert state.revision == 8  # never backwards


def test_hosts(client: Client) -> None:
    h = client.register_host("10.0.0.5:7444", labels={"zone": "a"}, max_containers=5)
    assert h.state is HostState.READY and h.max_containers == 5 and h.agent and h.agent.device == "fake"
    assert client.get_host("10.0.0.5:7444") == h
    assert client.cordon_host(h.id).state is HostState.CORDONED
    assert client.uncordon_host(h.id).state is HostState.READY
    drained = client.drain_host(h.id, grace=1)
    assert drained.host.state is HostState.DRAINING and drained.stopped_containers == 2
    assert [x.id for x in client.list_hosts()] == [h.id]
    client.remove_host(h.id)
    assert list(client.list_hosts()) == []


# -- retries ------------------------------------------------------------------------------------


def test_reads_retry_unavailable_and_deadline(client: Client, fake: FakeController) -> None:
    client.create_container("box")
    fake.fail("GetContainer", 2, grpc.StatusCode.UNAVAILABLE)
    fake.fail("GetContainer", 1, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert client.get_container("box").name == "box"
    assert fake.calls["GetContainer"] == 4


def test_retries_give_up_after_max_attempts(client: Client, fake: FakeController) -> None:
    fake.fail("ListHosts", 10, grpc.StatusCode.UNAVAILABLE, "controller restarting")
    with pytest.raises(chital.client.Unavailable, match="controller restarting") as info:
        list(client.list_hosts())
    assert fake.calls["ListHosts"] == FAST.max_attempts
    assert isinstance(info.value.__cause__, grpc.RpcError)


def test_create_retries_reuse_the_request_id(client: Client, fake: FakeController) -> None:
    fake.fail("CreateContainer", 2, grpc.StatusCode.UNAVAILABLE)
    c = client.create_container("web")
    ids = {r.request_id for r in fake.requests["CreateContainer"]}
    assert len(ids) == 1 and fake.calls["CreateContainer"] == 3
    assert len(fake.containers) == 1
    again = client.create_container("web", request_id=ids.pop())
    assert again == c


def test_exec_retries_reuse_the_request_id(client: Client, fake: FakeController) -> None:
    client.create_container("box")
    fake.fail("Exec", 1, grpc.StatusCode.UNAVAILABLE)
    client.exec("box", ["echo"], request_id="r-1")
    assert [r.request_id for r in fake.requests["Exec"]] == ["r-1", "r-1"]
    assert len(fake.processes) == 1


def test_writes_do_not_retry_deadline_exceeded(client: Client, fake: FakeController) -> None:
    fake.fail("CreateContainer", 1, grpc.StatusCode.DEADLINE_EXCEEDED)
    with pytest.raises(chital.client.DeadlineExceeded):
        client.create_container("web")
    assert fake.calls["CreateContainer"] == 1


def test_signal_is_never_retried(client: Client, fake: FakeController) -> None:
    client.create_container("box")
    p = client.exec("box", ["sleep"])
    fake.fail("SignalProcess", 1, grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(chital.client.Unavailable):
        client.signal_process(p.uid, 15)
    assert fake.calls["SignalProcess"] == 1


def test_no_retry_policy(target: str, fake: FakeController) -> None:
    fake.fail("ListHosts", 1, grpc.StatusCode.UNAVAILABLE)
    with Client(target, insecure=True, retries=NO_RETRY) as c, pytest.raises(chital.client.Unavailable):
        c.list_hosts_page()
    assert fake.calls["ListHosts"] == 1


def test_streams_retry_only_before_the_first_message(client: Client, fake: FakeController) -> None:
    client.create_container("box")
    p = client.exec("box", ["echo", "x"])
    fake.fail("StreamLogs", 2, grpc.StatusCode.UNAVAILABLE)
    assert [c.data for c in client.stream_logs(p.uid)] == [b"x\n"]
    assert fake.calls["StreamLogs"] == 3


def test_backoff_grows_and_is_jittered() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=0.5, multiplier=2, jitter=0.5)
    assert [policy.backoff(n, 0.0) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.5]
    assert policy.backoff(1, 0.999) == pytest.approx(0.05, rel=0.01)
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_unreachable_controller_is_unavailable() -> None:
    with (
        Client("127.0.0.1:1", insecure=True, timeout=2, retries=FAST) as c,
        pytest.raises(chital.client.Unavailable),
    ):
        c.get_container("x")


# -- error mapping ------------------------------------------------------------------------------

CODES = [
    (grpc.StatusCode.NOT_FOUND, chital.client.NotFound),
    (grpc.StatusCode.ALREADY_EXISTS, chital.client.AlreadyExists),
    (grpc.StatusCode.INVALID_ARGUMENT, chital.client.InvalidArgument),
    (grpc.StatusCode.FAILED_PRECONDITION, chital.client.FailedPrecondition),
    (grpc.StatusCode.PERMISSION_DENIED, chital.client.PermissionDenied),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, chital.client.ResourceExhausted),
    (grpc.StatusCode.UNAVAILABLE, chital.client.Unavailable),
    (grpc.StatusCode.UNIMPLEMENTED, chital.client.Unimplemented),
    (grpc.StatusCode.DEADLINE_EXCEEDED, chital.client.DeadlineExceeded),
    (grpc.StatusCode.INTERNAL, chital.client.Internal),
    (grpc.StatusCode.UNKNOWN, chital.client.Internal),
    (grpc.StatusCode.CANCELLED, chital.client.Unavailable),
    (grpc.StatusCode.ABORTED, chital.client.FailedPrecondition),
    (grpc.StatusCode.OUT_OF_RANGE, chital.client.OutOfRange),
    (grpc.StatusCode.UNAUTHENTICATED, chital.client.Unauthenticated),
    (grpc.StatusCode.DATA_LOSS, chital.client.Internal),
]


def test_mapping_covers_every_status_code() -> None:
    assert {code for code, _ in CODES} == set(grpc.StatusCode) - {grpc.StatusCode.OK}


@pytest.mark.parametrize(("code", "cls"), CODES, ids=[c.name for c, _ in CODES])
def test_every_code_maps_to_its_class(target: str, fake: FakeController, code, cls) -> None:
    fake.fail("SignalProcess", 1, code, f"boom {code.name}")
    with Client(target, insecure=True, retries=NO_RETRY) as c, pytest.raises(cls) as info:
        c.signal_process("p", 9)
    assert isinstance(info.value, ChitalError)
    assert str(info.value) == f"boom {code.name}"
    assert isinstance(info.value.__cause__, grpc.RpcError)


def test_not_found_from_the_server(client: Client) -> None:
    with pytest.raises(chital.client.NotFound, match='container "nope"'):
        client.get_container("nope")


def test_stream_errors_are_mapped(client: Client) -> None:
    with pytest.raises(chital.client.NotFound):
        list(client.stream_logs("nope"))


def test_closed_client(target: str) -> None:
    c = Client(target, insecure=True)
    c.close()
    c.close()  # idempotent
    assert "closed" in repr(c)
    with pytest.raises(ValueError, match="timeout"):
        Client(target, insecure=True, timeout=0)
