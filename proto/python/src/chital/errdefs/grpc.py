"""errdefs -> gRPC status: the one server-side translation, as an interceptor.

Every handler of every chital server runs inside :class:`ErrorInterceptor`: a ``ChitalError``
becomes its status code and message; any other exception is logged with its traceback and
becomes ``INTERNAL`` (so nothing ever reaches a client as ``UNKNOWN``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from chital.errdefs import ChitalError

log = logging.getLogger("chital.errdefs")

__all__ = ["ErrorInterceptor", "abort_with", "rewrap_handler"]


def abort_with(context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
    """Abort the RPC with the status ``exc`` maps to. Never returns normally."""
    if isinstance(exc, ChitalError):
        context.abort(exc.code, exc.message)
    log.error("internal error in %s", method, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(exc).__name__}")


def rewrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any],
    wrap_unary: Callable[[Callable[..., Any]], Callable[..., Any]],
    wrap_stream: Callable[[Callable[..., Iterator[Any]]], Callable[..., Any]],
) -> grpc.RpcMethodHandler[Any, Any]:
    """The same handler with its behaviour wrapped: ``wrap_unary`` for handlers that return one
    response, ``wrap_stream`` for those that yield responses. Shared by every server interceptor."""
    kinds = (
        (handler.unary_unary, grpc.unary_unary_rpc_method_handler, wrap_unary),
        (handler.unary_stream, grpc.unary_stream_rpc_method_handler, wrap_stream),
        (handler.stream_unary, grpc.stream_unary_rpc_method_handler, wrap_unary),
        (handler.stream_stream, grpc.stream_stream_rpc_method_handler, wrap_stream),
    )
    for behaviour, make, wrap in kinds:
        if behaviour:
            return make(
                wrap(behaviour),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


def _is_abort(context: grpc.ServicerContext, exc: BaseException) -> bool:
    # context.abort() raises a plain Exception after setting the code; let it through.
    return type(exc) is Exception and context.code() is not None  # type: ignore[attr-defined]


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps exceptions raised by handlers (unary and streaming) to gRPC statuses."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def wrap_unary(fn: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    return fn(request, context)
                except BaseException as exc:
                    if _is_abort(context, exc) or not isinstance(exc, Exception):
                        raise
                    abort_with(context, exc, method)
                    raise  # unreachable: abort raises

            return call

        def wrap_stream(fn: Callable[[Any, grpc.ServicerContext], Iterator[Any]]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                try:
                    yield from fn(request, context)
                except BaseException as exc:
                    if _is_abort(context, exc) or not isinstance(exc, Exception):
                        raise
                    abort_with(context, exc, method)
                    raise

            return call

        return rewrap_handler(handler, wrap_unary, wrap_stream)
