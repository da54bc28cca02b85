"""The closed set of chital error classes, and their translations.

This package does not import gRPC: any code (the agent's device layer, its process launcher, a CLI) can
raise and map errors without it. Each class carries a `Code`, the canonical status code it
travels as. Errors are translated at three seams only:

- errno -> errdefs in the agent's device layer: `from_errno`;
- errdefs -> gRPC status in one server interceptor: `chital.errdefs.grpc`;
- gRPC status -> typed exception in the SDK: `chital.errdefs.grpc.from_grpc_code`.

Any other exception that reaches a server is reported as ``INTERNAL`` (never ``UNKNOWN``).
"""

from __future__ import annotations

import enum
import errno as _errno
import importlib
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the old import paths, resolved lazily by __getattr__ below
    from chital.errdefs.grpc import from_grpc_code as from_grpc_code
    from chital.errdefs.grpc import to_grpc_code as to_grpc_code

__all__ = [
    "COMPACT_REVISION_KEY",
    "ERROR_CLASSES",
    "AlreadyExists",
    "ChitalError",
    "Code",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "code_of",
    "from_code",
    "from_errno",
]


class Code(enum.Enum):
    """The canonical status codes (google.rpc.Code: the same names and numbers as gRPC's)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class ChitalError(Exception):
    """Base of every chital error. ``code`` is the status code it travels as."""

    code: Code = Code.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def metadata(self) -> dict[str, str]:
        """Machine-readable details as string pairs (they travel as gRPC trailing metadata);
        empty for most classes."""
        return {}

    @classmethod
    def from_metadata(cls, message: str, metadata: Mapping[str, str]) -> ChitalError:
        """The error again from its message and [`metadata`][chital.errdefs.ChitalError.metadata]
        (what a client received)."""
        return cls(message)


class NotFound(ChitalError):
    """The named resource does not exist."""

    code = Code.NOT_FOUND


class AlreadyExists(ChitalError):
    """A resource with that name or id exists already."""

    code = Code.ALREADY_EXISTS


class InvalidArgument(ChitalError):
    """The request is malformed, whatever the state of the system."""

    code = Code.INVALID_ARGUMENT


#: The metadata key of `OutOfRange.compact_revision`.
COMPACT_REVISION_KEY = "chital-compact-revision"


class OutOfRange(InvalidArgument):
    """A position outside what the server keeps: a Watch from a revision that has been compacted
    (etcd's contract). ``compact_revision`` is the compacted revision: every event at or below it is
    gone, the oldest one kept is above it. A client lists the current state again and watches from a
    newer revision. An [`InvalidArgument`][chital.errdefs.InvalidArgument], so code that catches
    that keeps working."""

    code = Code.OUT_OF_RANGE

    def __init__(self, message: str, compact_revision: int = 0) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision

    def metadata(self) -> dict[str, str]:
        return {COMPACT_REVISION_KEY: str(self.compact_revision)} if self.compact_revision else {}

    @classmethod
    def from_metadata(cls, message: str, metadata: Mapping[str, str]) -> OutOfRange:
        raw = metadata.get(COMPACT_REVISION_KEY, "")
        return cls(message, int(raw) if raw.isdigit() else 0)


class FailedPrecondition(ChitalError):
    """The system is not in a state the request needs (for example, a container still runs)."""

    code = Code.FAILED_PRECONDITION


class PermissionDenied(ChitalError):
    """The caller may not do this."""

    code = Code.PERMISSION_DENIED


class Unauthenticated(PermissionDenied):
    """The server does not know who is calling: no token or client certificate, or one it does not
    accept (the message says which, e.g. "token expired"). A
    [`PermissionDenied`][chital.errdefs.PermissionDenied], so code that catches that also catches
    this."""

    code = Code.UNAUTHENTICATED


class ResourceExhausted(ChitalError):
    """A limit or a capacity is exhausted (no host has room, queue full, out of memory)."""

    code = Code.RESOURCE_EXHAUSTED


class Unavailable(ChitalError):
    """A dependency cannot be reached now; retrying later may succeed."""

    code = Code.UNAVAILABLE


class Unimplemented(ChitalError):
    """The operation is not supported here (for example, by this kernel module version)."""

    code = Code.UNIMPLEMENTED


class DeadlineExceeded(ChitalError):
    """The operation did not finish before its deadline."""

    code = Code.DEADLINE_EXCEEDED


class Internal(ChitalError):
    """A bug or an unexpected condition; details are in the server's log."""

    code = Code.INTERNAL


ERROR_CLASSES: tuple[type[ChitalError], ...] = (
    NotFound,
    AlreadyExists,
    InvalidArgument,
    FailedPrecondition,
    PermissionDenied,
    Unauthenticated,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
    DeadlineExceeded,
    OutOfRange,
    Internal,
)

_BY_CODE: dict[Code, type[ChitalError]] = {cls.code: cls for cls in ERROR_CLASSES}
# Codes that no chital server sends on purpose but a transport or proxy may produce.
_BY_CODE.update(
    {
        Code.CANCELLED: Unavailable,
        Code.ABORTED: FailedPrecondition,
        Code.DATA_LOSS: Internal,
        Code.UNKNOWN: Internal,
    }
)

_BY_ERRNO: dict[int, type[ChitalError]] = {
    _errno.EINVAL: InvalidArgument,
    _errno.E2BIG: InvalidArgument,
    _errno.EFAULT: InvalidArgument,
    _errno.ENAMETOOLONG: InvalidArgument,
    _errno.ENOTDIR: InvalidArgument,
    _errno.EISDIR: InvalidArgument,
    _errno.ENOEXEC: InvalidArgument,  # not a program the kernel runs (no #! line, wrong format)
    _errno.ELOOP: InvalidArgument,  # too many levels of symbolic links
    _errno.ENOENT: NotFound,
    _errno.ESRCH: NotFound,
    _errno.EEXIST: AlreadyExists,
    _errno.EBUSY: FailedPrecondition,
    _errno.ENOTEMPTY: FailedPrecondition,
    _errno.EALREADY: FailedPrecondition,
    _errno.ETXTBSY: FailedPrecondition,  # a program file open for writing
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


def code_of(exc: BaseException) -> Code:
    """The status code an exception travels as: its class's code, or INTERNAL for anything else."""
    if isinstance(exc, ChitalError):
        return exc.code
    return Code.INTERNAL


def from_code(code: Code, message: str, metadata: Mapping[str, str] | None = None) -> ChitalError:
    """The typed exception for a status code (and the error's `ChitalError.metadata`, when
    received); codes no chital server sends on purpose map to the nearest class (CANCELLED ->
    Unavailable, UNKNOWN -> Internal, ...). ``OK`` is Internal: it is no error."""
    cls = _BY_CODE.get(code, Internal)
    return cls.from_metadata(message or code.name, metadata or {})


_MOVED = {"to_grpc_code", "from_grpc_code"}


def __getattr__(name: str) -> object:
    # chital.errdefs.to_grpc_code/from_grpc_code moved to chital.errdefs.grpc; the old names still
    # resolve (importing gRPC only then) so existing code keeps working.
    if name in _MOVED:
        warnings.warn(
            f"chital.errdefs.{name} moved to chital.errdefs.grpc.{name}", DeprecationWarning, stacklevel=2
        )
        return getattr(importlib.import_module("chital.errdefs.grpc"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
