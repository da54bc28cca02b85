"""The closed set of chital error classes, and their translations.

Errors are translated at three seams only:

- errno -> errdefs in the agent's device layer: :func:`from_errno`;
- errdefs -> gRPC status in one server interceptor: :mod:`chital.errdefs.grpc`;
- gRPC status -> typed exception in the SDK: :func:`from_grpc_code`.

Any other exception that reaches a server is reported as ``INTERNAL`` (never ``UNKNOWN``).
"""

from __future__ import annotations

import errno as _errno

# Only the enum: the submodule chital.errdefs.grpc would shadow a plain `import grpc` here.
from grpc import StatusCode

__all__ = [
    "ERROR_CLASSES",
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
    "from_errno",
    "from_grpc_code",
    "to_grpc_code",
]


class ChitalError(Exception):
    """Base of every chital error. ``code`` is the gRPC status code it travels as."""

    code: StatusCode = StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NotFound(ChitalError):
    """The named resource does not exist."""

    code = StatusCode.NOT_FOUND


class AlreadyExists(ChitalError):
    """A resource with that name or id exists already."""

    code = StatusCode.ALREADY_EXISTS


class InvalidArgument(ChitalError):
    """The request is malformed, whatever the state of the system."""

    code = StatusCode.INVALID_ARGUMENT


class FailedPrecondition(ChitalError):
    """The system is not in a state the request needs (for example, a container still runs)."""

    code = StatusCode.FAILED_PRECONDITION


class PermissionDenied(ChitalError):
    """The caller may not do this."""

    code = StatusCode.PERMISSION_DENIED


class ResourceExhausted(ChitalError):
    """A limit or a capacity is exhausted (no host has room, queue full, out of memory)."""

    code = StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ChitalError):
    """A dependency cannot be reached now; retrying later may succeed."""

    code = StatusCode.UNAVAILABLE


class Unimplemented(ChitalError):
    """The operation is not supported here (for example, by this kernel module version)."""

    code = StatusCode.UNIMPLEMENTED


class DeadlineExceeded(ChitalError):
    """The operation did not finish before its deadline."""

    code = StatusCode.DEADLINE_EXCEEDED


class Internal(ChitalError):
    """A bug or an unexpected condition; details are in the server's log."""

    code = StatusCode.INTERNAL


ERROR_CLASSES: tuple[type[ChitalError], ...] = (
    NotFound,
    AlreadyExists,
    InvalidArgument,
    FailedPrecondition,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
    DeadlineExceeded,
    Internal,
)

_BY_CODE: dict[StatusCode, type[ChitalError]] = {cls.code: cls for cls in ERROR_CLASSES}
# Codes that no chital server sends on purpose but a transport or proxy may produce.
_BY_CODE.update(
    {
        StatusCode.CANCELLED: Unavailable,
        StatusCode.ABORTED: FailedPrecondition,
        StatusCode.OUT_OF_RANGE: InvalidArgument,
        StatusCode.UNAUTHENTICATED: PermissionDenied,
        StatusCode.DATA_LOSS: Internal,
        StatusCode.UNKNOWN: Internal,
    }
)

_BY_ERRNO: dict[int, type[ChitalError]] = {
    _errno.EINVAL: InvalidArgument,
    _errno.E2BIG: InvalidArgument,
    _errno.EFAULT: InvalidArgument,
    _errno.ENAMETOOLONG: InvalidArgument,
    _errno.ENOTDIR: InvalidArgument,
    _errno.ENOENT: NotFound,
    _errno.ESRCH: NotFound,
    _errno.EEXIST: AlreadyExists,
    _errno.EBUSY: FailedPrecondition,
    _errno.ENOTEMPTY: FailedPrecondition,
    _errno.EALREADY: FailedPrecondition,
    _errno.EPERM: PermissionDenied,
    _errno.EACCES: PermissionDenied,
    _errno.ENOSPC: ResourceExhausted,
    _errno.ENOMEM: ResourceExhausted,
    _errno.EMFILE: ResourceExhausted,
    _errno.ENFILE: ResourceExhausted,
    _errno.EAGAIN: Unavailable,
    _errno.ENODEV: Unavailable,
    _errno.ENXIO: Unavailable,
    _errno.ENOTTY: Unimplemented,
    _errno.ENOSYS: Unimplemented,
    _errno.EOPNOTSUPP: Unimplemented,
    _errno.ETIMEDOUT: DeadlineExceeded,
}


def from_errno(err: int, message: str) -> ChitalError:
    """Map an errno from the kernel module (or the OS) to an error class; unknown ones are Internal."""
    cls = _BY_ERRNO.get(err, Internal)
    name = _errno.errorcode.get(err, str(err))
    return cls(f"{message}: {name}")


def to_grpc_code(exc: BaseException) -> StatusCode:
    """The status code an exception travels as: its class's code, or INTERNAL for anything else."""
    if isinstance(exc, ChitalError):
        return exc.code
    return StatusCode.INTERNAL


def from_grpc_code(code: StatusCode, message: str) -> ChitalError:
    """The typed exception for a gRPC status received by a client."""
    cls = _BY_CODE.get(code, Internal)
    return cls(message or code.name)
