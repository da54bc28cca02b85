"""A gRPC server interceptor that counts and times every RPC (``chital_controller_grpc_server_*``).

Put it first in the server's interceptor list, before ``chital.errdefs.grpc.ErrorInterceptor``, so
it sees the final status: the error interceptor turns exceptions into ``context.abort(...)`` and this
one reads the code the context was left with.

Label values stay bounded: a method the server does not serve (any string a client sends) is counted
as ``grpc_service="unknown", grpc_method="unknown"`` and never by its name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from chital.errdefs import code_of
from chital.errdefs.grpc import client_went_away, rewrap_handler

from .metrics import ControllerMetrics

__all__ = ["RpcMetricsInterceptor", "split_method"]

UNKNOWN = "unknown"


def split_method(full_method: str) -> tuple[str, str]:
    """``"/pkg.HostService/ListHosts"`` -> ``("pkg.HostService", "ListHosts")``; junk -> unknown."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    if not service or not method:
        return UNKNOWN, UNKNOWN
    return service, method


def _final_code(context: grpc.ServicerContext, exc: BaseException | None) -> str:
    code = context.code()  # type: ignore[attr-defined]  # set by set_code() or abort()
    if isinstance(code, grpc.StatusCode):
        return code.name
    # The client left (cancelled, or its deadline passed): that is the status it saw, whether the
    # handler then raised gRPC's RpcError from the request stream or saw that stream end (gRPC
    # may report a cancelled request stream as a plain end).
    if (exc is None or client_went_away(context, exc)) and not context.is_active():
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED.name
        return grpc.StatusCode.CANCELLED.name
    if exc is None:
        return "OK"
    if isinstance(exc, GeneratorExit):
        return grpc.StatusCode.CANCELLED.name  # the client went away mid-stream
    # Not mapped yet: the error interceptor inside will map it exactly like this.
    return code_of(exc).name


class RpcMetricsInterceptor(grpc.ServerInterceptor):
    """Counts started and handled RPCs, times them, tracks the ones in flight."""

    def __init__(self, metrics: ControllerMetrics) -> None:
        self._m = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            # Unknown method: grpc answers UNIMPLEMENTED; count it without the client's string.
            self._m.rpc_handled.labels(UNKNOWN, UNKNOWN, grpc.StatusCode.UNIMPLEMENTED.name).inc()
            return None
        service, method = split_method(handler_call_details.method)
        m = self._m

        def begin() -> float:
            m.rpc_started.labels(service, method).inc()
            m.rpc_in_flight.labels(service).inc()
            return time.perf_counter()

        def end(start: float, context: grpc.ServicerContext, exc: BaseException | None) -> None:
            m.rpc_in_flight.labels(service).dec()
            m.rpc_duration.labels(service, method).observe(time.perf_counter() - start)
            m.rpc_handled.labels(service, method, _final_code(context, exc)).inc()

        def wrap_unary(fn: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                start = begin()
                try:
                    response = fn(request, context)
                except BaseException as exc:
                    end(start, context, exc)
                    raise
                end(start, context, None)
                return response

            return call

        def wrap_stream(fn: Callable[[Any, grpc.ServicerContext], Iterator[Any]]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                start = begin()
                lock = threading.Lock()
                counted = False

                def finish(exc: BaseException | None) -> None:
                    nonlocal counted
                    with lock:
                        if counted:
                            return
                        counted = True
                    end(start, context, exc)

                # A client that goes away while the handler waits at a yield ends the RPC without
                # resuming it: count it then (CANCELLED), not whenever the generator is collected.
                context.add_callback(lambda: finish(None))
                try:
                    yield from fn(request, context)
                except BaseException as exc:
                    finish(exc)
                    raise
                finish(None)

            return call

        return rewrap_handler(handler, wrap_unary, wrap_stream)
