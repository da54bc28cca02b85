"""chital's Python SDK: containers, processes and hosts of a chital controller.

::

    from chital.client import Client, Limits

    with Client("127.0.0.1:7443") as client:
        c = client.create_container("web", limits=Limits(memory_max_bytes=256 << 20))
        p = client.exec(c.uid, ["echo", "hello"])
        for chunk in client.stream_logs(p.uid, follow=True):
            print(chunk.data.decode(), end="")
        print(client.wait_process(p.uid).exit_code)

Values are frozen dataclasses and enums; errors are subclasses of :class:`ChitalError`.
"""

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
    Unavailable,
    Unimplemented,
)
from ._types import (
    NO_RETRY,
    AgentInfo,
    Container,
    ContainerState,
    ContainerStats,
    DrainResult,
    EventType,
    Host,
    HostState,
    Limits,
    LogChunk,
    LogStream,
    Page,
    Process,
    ProcessState,
    RetryPolicy,
    Sandbox,
    SyscallCount,
    WatchEvent,
)

__all__ = [
    "NO_RETRY",
    "AgentInfo",
    "AlreadyExists",
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
    "Internal",
    "InvalidArgument",
    "Limits",
    "LogChunk",
    "LogStream",
    "NotFound",
    "Page",
    "PermissionDenied",
    "Process",
    "ProcessState",
    "ResourceExhausted",
    "RetryPolicy",
    "Sandbox",
    "SyscallCount",
    "Unavailable",
    "Unimplemented",
    "WatchEvent",
]
