"""chital.daemon.logs: the three formats, and the request id and container set by the interceptor
of a real gRPC server on 127.0.0.1 (unary and server-streaming calls, metadata and request fields).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from chital.api.container.v1 import container_pb2 as cpb
from chital.daemon.logs import (
    LogContextInterceptor,
    RequestIdClientInterceptor,
    configure_logging,
    container_of,
    current_request_id,
    log_context,
)

log = logging.getLogger("chital.test.logs")


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_carries_the_context(captured: io.StringIO) -> None:
    configure_logging("info", "json", captured)
    with log_context(request_id="r-1", container="c" * 32):
        log.info("placed %s", "web")
    log.info("outside")
    log.debug("not at info")
    first, second = (json.loads(line) for line in lines(captured))
    assert first["level"] == "info" and first["logger"] == "chital.test.logs"
    assert first["msg"] == "placed web"
    assert (first["request_id"], first["container"]) == ("r-1", "c" * 32)
    assert first["time"].endswith("Z")
    assert "request_id" not in second and "container" not in second


def test_logfmt_quotes_what_needs_it(captured: io.StringIO) -> None:
    configure_logging("debug", "logfmt", captured)
    with log_context(request_id="r 2"):
        log.warning('said "hi"\nthen left')
    (line,) = lines(captured)
    assert " level=warning logger=chital.test.logs " in line
    assert 'msg="said \\"hi\\"\\nthen left"' in line
    assert line.endswith('request_id="r 2"')


def test_text_labels_and_tracebacks(captured: io.StringIO) -> None:
    configure_logging("info", "text", captured)
    try:
        raise ValueError("boom")
    except ValueError:
        with log_context(container="abc"):
            log.exception("failed")
    text = captured.getvalue()
    assert " ERROR chital.test.logs: failed [container=abc]\n" in text
    assert "ValueError: boom" in text


def test_json_exception_and_configure_twice(captured: io.StringIO) -> None:
    configure_logging("info", "text", captured)
    configure_logging("info", "json", captured)  # replaces the handler: one line per record
    try:
        raise KeyError("k")
    except KeyError:
        log.error("oops", exc_info=True)
    (line,) = lines(captured)
    assert "KeyError" in json.loads(line)["exc"]


def test_bad_format_or_level() -> None:
    with pytest.raises(ValueError, match="log format 'xml'"):
        configure_logging("info", "xml")
    with pytest.raises(ValueError, match="log level 'loud'"):
        configure_logging("loud", "json")


def test_container_of_requests() -> None:
    assert container_of(cpb.ExecRequest(container="web")) == "web"
    assert container_of(cpb.GetContainerStatsRequest(container="c1")) == "c1"
    assert container_of(cpb.ListContainersRequest()) == ""
    assert container_of(object()) == ""


class _Service:
    """Handlers that log, registered without generated stubs (ExecRequest in, ExecResponse out)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def exec(self, request: cpb.ExecRequest, context: grpc.ServicerContext) -> cpb.ExecResponse:
        log.info("exec")
        self.seen.append(current_request_id())
        return cpb.ExecResponse()

    def stream(self, request: cpb.ExecRequest, context: grpc.ServicerContext) -> Iterator[cpb.ExecResponse]:
        for i in range(2):
            log.info("chunk %d", i)
            yield cpb.ExecResponse()

    def handler(self) -> grpc.GenericRpcHandler:
        kw: dict[str, Any] = {
            "request_deserializer": cpb.ExecRequest.FromString,
            "response_serializer": cpb.ExecResponse.SerializeToString,
        }
        return grpc.method_handlers_generic_handler(
            "test.Logs",
            {
                "Exec": grpc.unary_unary_rpc_method_handler(self.exec, **kw),
                "Stream": grpc.unary_stream_rpc_method_handler(self.stream, **kw),
            },
        )


def test_the_interceptor_labels_records_of_each_rpc(captured: io.StringIO) -> None:
    configure_logging("info", "json", captured)
    service = _Service()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[LogContextInterceptor()])
    server.add_generic_rpc_handlers((service.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            kw: dict[str, Any] = {
                "request_serializer": cpb.ExecRequest.SerializeToString,
                "response_deserializer": cpb.ExecResponse.FromString,
            }
            unary = channel.unary_unary("/test.Logs/Exec", **kw)
            stream = channel.unary_stream("/test.Logs/Stream", **kw)
            # The request's field wins over the metadata.
            unary(cpb.ExecRequest(container="c1", request_id="field-id"), metadata=[("x-request-id", "md")])
            unary(cpb.ExecRequest(container="c2"), metadata=[("x-request-id", "md-2")])
            unary(cpb.ExecRequest())
            assert len(list(stream(cpb.ExecRequest(container="c3"), metadata=[("x-request-id", "s")]))) == 2
    finally:
        server.stop(None).wait()
    records = [json.loads(line) for line in lines(captured)]
    labels = [(r["msg"], r.get("request_id"), r.get("container")) for r in records]
    assert labels == [
        ("exec", "field-id", "c1"),
        ("exec", "md-2", "c2"),
        ("exec", None, None),
        ("chunk 0", "s", "c3"),
        ("chunk 1", "s", "c3"),
    ]
    # Nothing leaks out of an RPC into the worker thread's later work.
    assert service.seen == ["field-id", "md-2", ""]
    assert current_request_id() == ""


def test_the_request_id_goes_on_to_the_calls_made_while_serving(captured: io.StringIO) -> None:
    """A front server relays to a back server through an intercepted channel (the controller's calls
    to agents): the back server's records carry the front request's id."""
    configure_logging("info", "json", captured)
    back_service = _Service()
    kw: dict[str, Any] = {
        "request_serializer": cpb.ExecRequest.SerializeToString,
        "response_deserializer": cpb.ExecResponse.FromString,
    }
    servers = []
    try:
        back = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[LogContextInterceptor()])
        back.add_generic_rpc_handlers((back_service.handler(),))
        back_port = back.add_insecure_port("127.0.0.1:0")
        back.start()
        servers.append(back)
        back_channel = grpc.intercept_channel(
            grpc.insecure_channel(f"127.0.0.1:{back_port}"), RequestIdClientInterceptor()
        )
        relay_exec = back_channel.unary_unary("/test.Logs/Exec", **kw)
        relay_stream = back_channel.unary_stream("/test.Logs/Stream", **kw)

        def front_exec(request: cpb.ExecRequest, context: grpc.ServicerContext) -> cpb.ExecResponse:
            relay_exec(cpb.ExecRequest(container=request.container), timeout=10)
            list(relay_stream(cpb.ExecRequest(), timeout=10))
            # A call that sets its own id keeps it.
            relay_exec(cpb.ExecRequest(), metadata=[("x-request-id", "own")], timeout=10)
            return cpb.ExecResponse()

        front = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[LogContextInterceptor()])
        front.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "test.Front",
                    {
                        "Exec": grpc.unary_unary_rpc_method_handler(
                            front_exec,
                            request_deserializer=cpb.ExecRequest.FromString,
                            response_serializer=cpb.ExecResponse.SerializeToString,
                        )
                    },
                ),
            )
        )
        front_port = front.add_insecure_port("127.0.0.1:0")
        front.start()
        servers.append(front)
        with grpc.insecure_channel(f"127.0.0.1:{front_port}") as channel:
            channel.unary_unary("/test.Front/Exec", **kw)(
                cpb.ExecRequest(container="c7", request_id="front-1"), timeout=20
            )
        # Outside any RPC, nothing is added.
        relay_exec(cpb.ExecRequest(), timeout=10)
        back_channel.close()
    finally:
        for server in servers:
            server.stop(None).wait()
    labels = [(r["msg"], r.get("request_id"), r.get("container")) for r in map(json.loads, lines(captured))]
    assert labels == [
        ("exec", "front-1", "c7"),
        ("chunk 0", "front-1", None),
        ("chunk 1", "front-1", None),
        ("exec", "own", None),
        ("exec", None, None),
    ]
