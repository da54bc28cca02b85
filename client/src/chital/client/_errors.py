"""The SDK's exception tree: the closed set of ``chital.errdefs`` classes, and the one place where a
gRPC status becomes one of them."""

from __future__ import annotations

import grpc

from chital.errdefs import (
    AlreadyExists,
    ChitalError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
    from_grpc_code,
)

__all__ = [
    "AlreadyExists",
    "ChitalError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unavailable",
    "Unimplemented",
    "error_from_rpc",
    "status_code",
]


def status_code(exc: grpc.RpcError) -> grpc.StatusCode:
    """The status code of a failed call (UNKNOWN when the error carries none)."""
    code = getattr(exc, "code", None)
    if callable(code):
        value = code()
        if isinstance(value, grpc.StatusCode):
            return value
    return grpc.StatusCode.UNKNOWN


def error_from_rpc(exc: grpc.RpcError) -> ChitalError:
    """The typed exception for a failed call; the caller raises it ``from exc``."""
    details = getattr(exc, "details", None)
    message = details() if callable(details) else ""
    # Transport errors carry multi-line details; keep one line so CLIs print one line.
    message = " ".join(str(message or "").split())
    return from_grpc_code(status_code(exc), message)
