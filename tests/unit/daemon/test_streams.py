"""StreamLimitInterceptor: long-lived calls take a slot of their own budget; short calls never wait
for them; one more than the budget is RESOURCE_EXHAUSTED at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from chital.daemon.streams import StreamLimitInterceptor

T = 10.0


def ident(b: bytes) -> bytes:
    return b


class Service:
    """``Echo`` (unary), ``Wait`` (unary that waits for ``release``), ``Follow`` (stream that
    sends one message, then waits for its client to leave)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    def wait(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.add_callback(self.release.set)
        self.release.wait(T)
        return b"done"

    def follow(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        ended = threading.Event()
        context.add_callback(ended.set)
        yield b"attached"
        ended.wait(T)


def until(predicate: Callable[[], bool], timeout: float = T) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


@pytest.fixture
def served() -> Iterator[tuple[StreamLimitInterceptor, Service, grpc.Channel]]:
    limiter = StreamLimitInterceptor(2, long_unary={"/t.S/Wait"})
    service = Service()
    handler = grpc.method_handlers_generic_handler(
        "t.S",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(service.echo, ident, ident),
            "Wait": grpc.unary_unary_rpc_method_handler(service.wait, ident, ident),
            "Follow": grpc.unary_stream_rpc_method_handler(service.follow, ident, ident),
        },
    )
    # One thread for the short calls, two for the long-lived ones: the layout the daemons use.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1 + 2), interceptors=[limiter])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield limiter, service, channel
    finally:
        channel.close()
        server.stop(grace=None)


def test_streams_beyond_the_budget_are_refused_and_short_calls_still_run(
    served: tuple[StreamLimitInterceptor, Service, grpc.Channel],
) -> None:
    limiter, _, channel = served
    follow = channel.unary_stream("/t.S/Follow")
    echo = channel.unary_unary("/t.S/Echo")
    first, second = follow(b"", timeout=T), follow(b"", timeout=T)
    assert next(first) == b"attached" and next(second) == b"attached"
    assert limiter.in_use() == 2
    third: Any = follow(b"", timeout=T)
    with pytest.raises(grpc.RpcError) as err:
        next(third)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_streams" in err.value.details()
    assert limiter.refused() == 1
    for i in range(20):  # the short calls' thread is free: none waits for the streams
        assert echo(b"%d" % i, timeout=T) == b"%d" % i
    # A client that leaves frees its slot (gRPC's termination callback), and a new stream fits.
    first.cancel()
    until(lambda: limiter.in_use() == 1)
    fourth = follow(b"", timeout=T)
    assert next(fourth) == b"attached"
    second.cancel()
    fourth.cancel()
    until(lambda: limiter.in_use() == 0)


def test_long_unary_methods_take_a_slot(served: tuple[StreamLimitInterceptor, Service, grpc.Channel]) -> None:
    limiter, service, channel = served
    wait = channel.unary_unary("/t.S/Wait")
    follow = channel.unary_stream("/t.S/Follow")
    waiting = wait.future(b"", timeout=T)
    stream = follow(b"", timeout=T)
    assert next(stream) == b"attached"
    until(lambda: limiter.in_use() == 2)
    with pytest.raises(grpc.RpcError) as err:
        wait(b"", timeout=T)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    service.release.set()
    assert waiting.result(timeout=T) == b"done"
    until(lambda: limiter.in_use() == 1)  # a call that returned frees its slot
    stream.cancel()
    until(lambda: limiter.in_use() == 0)


def test_the_budget_must_hold_one_call() -> None:
    with pytest.raises(ValueError, match="max_streams"):
        StreamLimitInterceptor(0)
