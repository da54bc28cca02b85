"""chital's Python SDK: containers, processes and hosts of a chital controller.

::

    from chital.client import Client, Limits

    # The controller, TLS files and token from the flags' environment variables (CHITAL_CONTROLLER,
    # CHITAL_TLS_DIR or CHITAL_CACERT, CHITAL_TOKEN) or the current context of the config file.
    with Client.from_config() as client:
        c = client.create_container("web", limits=Limits(memory_max_bytes=256 << 20))
        p = client.exec(c.uid, ["echo", "hello"])
        for chunk in client.stream_logs(p.uid, follow=True):
            print(chunk.data.decode(), end="")
        print(client.wait_process(p.uid).exit_code)

Or explicitly: ``Client("10.0.0.1:7443", tls=TLSFiles(ca=Path("ca.crt")), token=token)``; see
:mod:`chital.client.config` for the config file and its contexts.

Values are frozen dataclasses and enums; errors are subclasses of :class:`ChitalError`.
"""

from chital.security.tls import TLSFiles

from ._client import Client
from ._errors import (
    AlreadyExists,
    ChitalError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from ._types import (
    NO_RETRY,
    AgentInfo,
    AuditEntry,
    Container,
    ContainerState,
    ContainerStats,
    DrainResult,
    EventType,
    Host,
    HostState,
    Identity,
    Limits,
    LogChunk,
    LogStream,
    NewToken,
    Page,
    Process,
    ProcessState,
    RetryPolicy,
    Sandbox,
    SyscallCount,
    Token,
    WatchEvent,
)
from ._version import __version__

__all__ = [
    "NO_RETRY",
    "AgentInfo",
    "AlreadyExists",
    "AuditEntry",
    "ChitalError",
    "Client",
    "Container",
    "ContainerState",
    "ContainerStats",
    "DeadlineExceeded",
    "DrainResult",
    "EventType",
    "FailedPrecondition",
    "Host",
    "HostState",
    "Identity",
    "Internal",
    "InvalidArgument",
    "Limits",
    "LogChunk",
    "LogStream",
    "NewToken",
    "NotFound",
    "Page",
    "PermissionDenied",
    "Process",
    "ProcessState",
    "ResourceExhausted",
    "RetryPolicy",
    "Sandbox",
    "SyscallCount",
    "TLSFiles",
    "Token",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "WatchEvent",
    "__version__",
]
