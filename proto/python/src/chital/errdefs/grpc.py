"""errdefs <-> gRPC status: the translations that need gRPC, kept out of :mod:`chital.errdefs`.

Every handler of every chital server runs inside :class:`ErrorInterceptor`: a ``ChitalError``
becomes its status code and message; any other exception is logged with its traceback and
becomes ``INTERNAL`` (so nothing ever reaches a client as ``UNKNOWN``). Clients turn a received
status back into a typed exception with :func:`from_grpc_code`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc

from chital.errdefs import ChitalError, Code, code_of, from_code

log = logging.getLogger("chital.errdefs")

__all__ = [
    "ErrorInterceptor",
    "abort_with",
    "client_went_away",
    "from_grpc_code",
    "from_grpc_status",
    "rewrap_handler",
    "to_grpc_code",
    "to_grpc_status",
]

_TO_GRPC: dict[Code, grpc.StatusCode] = {code: grpc.StatusCode[code.name] for code in Code}
_FROM_GRPC: dict[grpc.StatusCode, Code] = {status: code for code, status in _TO_GRPC.items()}


def to_grpc_status(code: Code) -> grpc.StatusCode:
    """The gRPC status code of a :class:`~chital.errdefs.Code` (the same name and number)."""
    return _TO_GRPC[code]


def from_grpc_status(status: grpc.StatusCode) -> Code:
    """The :class:`~chital.errdefs.Code` of a gRPC status code."""
    return _FROM_GRPC[status]


def to_grpc_code(exc: BaseException) -> grpc.StatusCode:
    """The status code an exception travels as: its class's code, or INTERNAL for anything else."""
    return _TO_GRPC[code_of(exc)]


def from_grpc_code(
    code: grpc.StatusCode, message: str, trailing_metadata: Iterable[tuple[str, Any]] | None = None
) -> ChitalError:
    """The typed exception for a gRPC status received by a client; ``trailing_metadata`` (the
    call's) carries the details some classes have (:attr:`chital.errdefs.OutOfRange.compact_revision`)."""
    metadata = {str(k): v if isinstance(v, str) else "" for k, v in trailing_metadata or ()}
    return from_code(_FROM_GRPC.get(code, Code.UNKNOWN), message, metadata)


def abort_with(context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
    """Abort the RPC with the status ``exc`` maps to. Never returns normally."""
    if isinstance(exc, ChitalError):
        details = exc.metadata()
        if details:
            context.set_trailing_metadata(tuple(details.items()))
        context.abort(to_grpc_status(exc.code), exc.message)
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


def client_went_away(context: grpc.ServicerContext, exc: BaseException | None) -> bool:
    """True when ``exc`` is how gRPC tells a handler that its client cancelled (or its deadline
    passed): reading the request stream raises a bare ``grpc.RpcError`` and the RPC is no longer
    active. That is the client's doing: no error to log, and gRPC already knows the status."""
    return isinstance(exc, grpc.RpcError) and not context.is_active()


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
                    if (
                        _is_abort(context, exc)
                        or client_went_away(context, exc)
                        or not isinstance(exc, Exception)
                    ):
                        raise
                    abort_with(context, exc, method)
                    raise  # unreachable: abort raises

            return call

        def wrap_stream(fn: Callable[[Any, grpc.ServicerContext], Iterator[Any]]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                try:
                    yield from fn(request, context)
                except BaseException as exc:
                    if (
                        _is_abort(context, exc)
                        or client_went_away(context, exc)
                        or not isinstance(exc, Exception)
                    ):
                        raise
                    abort_with(context, exc, method)
                    raise

            return call

        return rewrap_handler(handler, wrap_unary, wrap_stream)
