"""The RPC metrics interceptor (on a real loopback gRPC server) and file-based service discovery."""

from __future__ import annotations

import gc
import json
import logging
import queue
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from chital.controller.metrics import ControllerMetrics
from chital.controller.rpc_metrics import RpcMetricsInterceptor, split_method
from chital.controller.sd import FileSDWriter, render_targets, targets_from_hosts
from chital.errdefs import NotFound
from chital.errdefs.grpc import ErrorInterceptor

SERVICE = "chital.test.v1.EchoService"


def _ok(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def _not_found(request: bytes, context: grpc.ServicerContext) -> bytes:
    raise NotFound("no such thing")


def _bug(request: bytes, context: grpc.ServicerContext) -> bytes:
    raise RuntimeError("a bug")


def _stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    yield from (request, request)


@pytest.fixture
def served() -> Iterator[tuple[ControllerMetrics, grpc.Channel]]:
    metrics = ControllerMetrics()
    server = grpc.server(
        futures.ThreadPoolExecutor(4), interceptors=[RpcMetricsInterceptor(metrics), ErrorInterceptor()]
    )
    handlers = {
        "Ok": grpc.unary_unary_rpc_method_handler(_ok),
        "NotFound": grpc.unary_unary_rpc_method_handler(_not_found),
        "Bug": grpc.unary_unary_rpc_method_handler(_bug),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    reflection.enable_server_reflection((SERVICE, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield metrics, channel
    finally:
        channel.close()
        server.stop(None)


def _samples(metrics: ControllerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import generate_latest  # noqa: PLC0415

    out = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _handled(method: str, code: str, service: str = SERVICE) -> tuple[str, tuple[tuple[str, str], ...]]:
    labels = {"grpc_service": service, "grpc_method": method, "grpc_code": code}
    return ("chital_controller_grpc_server_handled_total", tuple(sorted(labels.items())))


def test_rpcs_are_counted_by_method_and_final_code(served: tuple[ControllerMetrics, grpc.Channel]) -> None:
    metrics, channel = served
    assert channel.unary_unary(f"/{SERVICE}/Ok")(b"x") == b"x"
    with pytest.raises(grpc.RpcError) as nf:
        channel.unary_unary(f"/{SERVICE}/NotFound")(b"x")
    assert nf.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as bug:
        channel.unary_unary(f"/{SERVICE}/Bug")(b"x")
    assert bug.value.code() is grpc.StatusCode.INTERNAL
    assert list(channel.unary_stream(f"/{SERVICE}/Stream")(b"y")) == [b"y", b"y"]
    s = _samples(metrics)
    assert s[_handled("Ok", "OK")] == 1
    assert s[_handled("NotFound", "NOT_FOUND")] == 1
    assert s[_handled("Bug", "INTERNAL")] == 1
    assert s[_handled("Stream", "OK")] == 1
    count = (
        "chital_controller_grpc_server_handling_seconds_count",
        (("grpc_method", "Ok"), ("grpc_service", SERVICE)),
    )
    assert s[count] == 1
    in_flight = ("chital_controller_grpc_server_in_flight_requests", (("grpc_service", SERVICE),))
    assert s[in_flight] == 0


def test_a_cancelled_stream_is_cancelled_not_an_internal_error(
    served: tuple[ControllerMetrics, grpc.Channel], caplog: pytest.LogCaptureFixture
) -> None:
    """A client that goes away mid-stream (grpcurl's reflection stream, a watcher's Ctrl-C) is
    counted as CANCELLED and logged as no error: it must not feed the error-ratio alert."""
    metrics, channel = served
    requests: queue.Queue[reflection_pb2.ServerReflectionRequest | None] = queue.Queue()
    requests.put(reflection_pb2.ServerReflectionRequest(list_services=""))

    def request_iterator() -> Iterator[reflection_pb2.ServerReflectionRequest]:
        while (req := requests.get()) is not None:
            yield req

    caplog.set_level(logging.WARNING)
    call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(request_iterator())
    first = next(call)
    assert SERVICE in [s.name for s in first.list_services_response.service]
    time.sleep(0.3)  # the handler goes back to reading the request stream, where the cancel finds it
    call.cancel()

    # The request stream stays open (no half-close that could race with the cancel).
    def codes() -> set[str]:
        gc.collect()  # a handler ended at a yield is counted when its generator is collected
        return {
            dict(labels)["grpc_code"]
            for (name, labels), value in _samples(metrics).items()
            if name == "chital_controller_grpc_server_handled_total"
            and dict(labels)["grpc_method"] == "ServerReflectionInfo"
            and value
        }

    # Counted as CANCELLED (waiting at most 10 s: gRPC may report the end late); never INTERNAL,
    # never an ERROR in the log.
    deadline = time.monotonic() + 10
    while not codes() and time.monotonic() < deadline:
        time.sleep(0.02)
    # OK: gRPC sometimes hands the cancel to the handler as the end of the request stream (its
    # race between the receive and the cancel), and the handler then ends normally.
    assert codes() <= {"CANCELLED", "OK"}, codes()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    requests.put(None)  # ends the client's request-sending thread


def test_unknown_methods_never_become_label_values(served: tuple[ControllerMetrics, grpc.Channel]) -> None:
    metrics, channel = served
    for junk in ("/x.Y/Z", f"/{SERVICE}/Nope", "/no-slash"):
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary(junk)(b"")
        assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED
    labels = {v for key in _samples(metrics) for _, v in key[1]}
    assert "Nope" not in labels and "x.Y" not in labels and "Z" not in labels


def test_split_method() -> None:
    assert split_method("/chital.api.host.v1.HostService/ListHosts") == (
        "chital.api.host.v1.HostService",
        "ListHosts",
    )
    assert split_method("garbage") == ("unknown", "unknown")


# -- file_sd ---------------------------------------------------------------------------------------


@dataclass
class Host:
    id: str
    address: str
    labels: dict[str, str] = field(default_factory=dict)
    state: Any = "READY"


def test_targets_use_the_label_or_the_default_port() -> None:
    hosts = [
        Host("h2", "10.0.0.2:7444"),
        Host("h1", "127.0.0.1:40001", {"metrics-address": "127.0.0.1:40002"}),
        Host("h3", "[::1]:7444"),
    ]
    targets = targets_from_hosts(hosts, default_port=9472)
    assert [(t.host_id, t.metrics_address) for t in targets] == [
        ("h1", "127.0.0.1:40002"),
        ("h2", "10.0.0.2:9472"),
        ("h3", "[::1]:9472"),
    ]
    doc = json.loads(render_targets(targets))
    assert doc[0] == {"targets": ["127.0.0.1:40002"], "labels": {"host": "h1"}}


def test_writer_is_atomic_and_skips_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "targets" / "agents.json"
    writer = FileSDWriter(path)
    assert writer.update([Host("h1", "a:1")]) is True
    first = path.stat().st_mtime_ns
    assert writer.update([Host("h1", "a:1")]) is False
    assert path.stat().st_mtime_ns == first
    assert writer.update([Host("h1", "a:1"), Host("h2", "b:1")]) is True
    assert len(json.loads(path.read_text())) == 2
    assert writer.update([]) is True
    assert json.loads(path.read_text()) == []
    assert not [p for p in path.parent.iterdir() if p.name != "agents.json"], "temporary files left"


def test_updater_writes_at_start_and_follows_the_host_table(tmp_path: Path) -> None:
    from chital.controller.sd import DiscoveryFileUpdater  # noqa: PLC0415

    hosts = [Host("h1", "a:1")]
    path = tmp_path / "agents.json"
    updater = DiscoveryFileUpdater(path, lambda: list(hosts), interval=0.05).start()
    try:
        assert len(json.loads(path.read_text())) == 1
        hosts.append(Host("h2", "b:1"))
        deadline = time.monotonic() + 5
        while len(json.loads(path.read_text())) != 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        updater.stop()
