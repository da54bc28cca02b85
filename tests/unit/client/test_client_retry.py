"""Retries are gRPC's: the service config made from a RetryPolicy, checked on its own, on a bare
channel, and through both clients against a fake controller that fails the first calls."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from fake_chital_controller import FakeController

import chital.client
from chital.api.admin.v1 import admin_pb2
from chital.api.container.v1 import container_pb2, container_pb2_grpc
from chital.api.host.v1 import host_pb2
from chital.client import NO_RETRY, Client, RetryPolicy, _retry
from chital.client.aio import AsyncClient

FAST = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.02)


def test_every_rpc_has_a_retry_class() -> None:
    rpcs = {
        (service.full_name, method.name)
        for module in (container_pb2, host_pb2, admin_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert set(_retry.METHOD_CLASSES) == rpcs
    never = {m for (_, m), c in _retry.METHOD_CLASSES.items() if c is _retry.RetryClass.NEVER}
    assert never == {"SignalProcess", "CreateToken"}
    container = "chital.api.container.v1.ContainerService"
    assert _retry.METHOD_CLASSES[(container, "Exec")] is _retry.RetryClass.IDEMPOTENT_WRITE
    assert _retry.METHOD_CLASSES[(container, "Watch")] is _retry.RetryClass.READ


def test_the_service_config_follows_the_policy() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.2, max_backoff=2.0, multiplier=3.0)
    configs = _retry.service_config(policy)["methodConfig"]
    by_method = {(n["service"], n["method"]): c for c in configs for n in c["name"]}
    get = by_method[("chital.api.container.v1.ContainerService", "GetContainer")]["retryPolicy"]
    assert get == {
        "maxAttempts": 3,
        "initialBackoff": "0.200s",
        "maxBackoff": "2.000s",
        "backoffMultiplier": 3.0,
        "retryableStatusCodes": ["UNAVAILABLE", "DEADLINE_EXCEEDED"],
    }
    create = by_method[("chital.api.container.v1.ContainerService", "CreateContainer")]["retryPolicy"]
    assert create["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert "retryPolicy" not in by_method[("chital.api.container.v1.ContainerService", "SignalProcess")]
    assert all("retryPolicy" not in c for c in _retry.service_config(NO_RETRY)["methodConfig"])
    many = _retry.service_config(RetryPolicy(max_attempts=9, initial_backoff=0))["methodConfig"]
    assert {c["retryPolicy"]["maxAttempts"] for c in many if "retryPolicy" in c} == {5}
    assert {c["retryPolicy"]["initialBackoff"] for c in many if "retryPolicy" in c} == {"0.010s"}
    options = dict(_retry.channel_options(policy, "ua/1"))
    assert json.loads(options["grpc.service_config"]) == _retry.service_config(policy)


@pytest.mark.parametrize("with_config", [True, False])
def test_the_channel_retries_by_itself(target: str, fake: FakeController, with_config: bool) -> None:
    """A bare stub on a channel with only the options: what retries is gRPC, not SDK code."""
    fake.fail("ListContainers", 1, grpc.StatusCode.UNAVAILABLE, "first call fails")
    options = _retry.channel_options(FAST, "test") if with_config else []
    with grpc.insecure_channel(target, options=options) as channel:
        stub = container_pb2_grpc.ContainerServiceStub(channel)
        if with_config:
            stub.ListContainers(container_pb2.ListContainersRequest(), timeout=5)
        else:
            with pytest.raises(grpc.RpcError) as info:
                stub.ListContainers(container_pb2.ListContainersRequest(), timeout=5)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert fake.calls["ListContainers"] == (2 if with_config else 1)


# -- both clients ---------------------------------------------------------------------------------


def run(kind: str, target: str, body: Callable[[Any], Any], **kwargs: Any) -> Any:
    """``body(client)`` with a sync Client, or ``await body(client)`` with an AsyncClient."""
    if kind == "sync":
        with Client(target, insecure=True, timeout=5, **kwargs) as c:
            result = body(c)
            return list(result) if hasattr(result, "__next__") else result

    async def main() -> Any:
        async with AsyncClient(target, insecure=True, timeout=5, **kwargs) as c:
            result = body(c)
            if hasattr(result, "__anext__"):
                return [item async for item in result]
            return await result

    return asyncio.run(main())


KINDS = pytest.mark.parametrize("kind", ["sync", "async"])


@KINDS
def test_reads_retry_unavailable_and_deadline(kind: str, target: str, fake: FakeController) -> None:
    run(kind, target, lambda c: c.create_container("box"))
    fake.fail("GetContainer", 2, grpc.StatusCode.UNAVAILABLE)
    fake.fail("GetContainer", 1, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert run(kind, target, lambda c: c.get_container("box"), retries=FAST).name == "box"
    assert fake.calls["GetContainer"] == 4


@KINDS
def test_server_info_is_a_read(kind: str, target: str, fake: FakeController) -> None:
    fake.fail("GetServerInfo", 1, grpc.StatusCode.UNAVAILABLE)
    fake.fail("GetServerInfo", 1, grpc.StatusCode.DEADLINE_EXCEEDED)
    info = run(kind, target, lambda c: c.server_info(), retries=FAST)
    assert info == chital.client.ServerInfo(
        version="9.8.7",
        api_versions=("chital.api.admin.v1", "chital.api.container.v1", "chital.api.host.v1"),
        database="sqlite",
        leader=True,
    )
    assert fake.calls["GetServerInfo"] == 3
    # An older controller: the SDK's own error, not a raw grpc one.
    fake.fail("GetServerInfo", 1, grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
    with pytest.raises(chital.client.Unimplemented):
        run(kind, target, lambda c: c.server_info(), retries=FAST)


@KINDS
def test_retries_give_up_with_the_last_error(kind: str, target: str, fake: FakeController) -> None:
    fake.fail("ListHosts", 10, grpc.StatusCode.UNAVAILABLE, "controller restarting")
    with pytest.raises(chital.client.Unavailable, match="controller restarting"):
        (run(kind, target, lambda c: c.iter_hosts(), retries=FAST))
    assert fake.calls["ListHosts"] == FAST.max_attempts


@KINDS
def test_writes_retry_with_the_same_request_id(kind: str, target: str, fake: FakeController) -> None:
    fake.fail("CreateContainer", 2, grpc.StatusCode.UNAVAILABLE)
    run(kind, target, lambda c: c.create_container("web"), retries=FAST)
    assert fake.calls["CreateContainer"] == 3
    assert len({r.request_id for r in fake.requests["CreateContainer"]}) == 1
    fake.fail("CreateContainer", 1, grpc.StatusCode.DEADLINE_EXCEEDED)
    with pytest.raises(chital.client.DeadlineExceeded):
        run(kind, target, lambda c: c.create_container("db"), retries=FAST)
    assert fake.calls["CreateContainer"] == 4


@KINDS
def test_signal_and_create_token_are_never_retried(kind: str, target: str, fake: FakeController) -> None:
    run(kind, target, lambda c: c.create_container("box"))
    p = run(kind, target, lambda c: c.exec("box", ["sleep"]))
    fake.fail("SignalProcess", 1, grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(chital.client.Unavailable):
        run(kind, target, lambda c: c.signal_process(p.uid, 15), retries=FAST)
    assert fake.calls["SignalProcess"] == 1
    fake.fail("CreateToken", 1, grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(chital.client.Unavailable):
        run(kind, target, lambda c: c.create_token("ci", "viewer"), retries=FAST)
    assert fake.calls["CreateToken"] == 1


@KINDS
def test_streams_are_retried_before_their_first_message(kind: str, target: str, fake: FakeController) -> None:
    run(kind, target, lambda c: c.create_container("box"))
    p = run(kind, target, lambda c: c.exec("box", ["echo", "x"]))
    fake.fail("StreamLogs", 2, grpc.StatusCode.UNAVAILABLE)
    chunks = run(kind, target, lambda c: c.stream_logs(p.uid), retries=FAST)
    assert [c.data for c in chunks] == [b"x\n"]
    assert fake.calls["StreamLogs"] == 3


@KINDS
def test_no_retry_policy(kind: str, target: str, fake: FakeController) -> None:
    fake.fail("ListHosts", 1, grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(chital.client.Unavailable):
        run(kind, target, lambda c: c.list_hosts_page(), retries=NO_RETRY)
    assert fake.calls["ListHosts"] == 1


@KINDS
def test_a_timeout_must_be_positive(kind: str, target: str) -> None:
    with pytest.raises(ValueError, match="timeout must be positive"):
        run(kind, target, lambda c: c.get_container("x", timeout=0))
