"""chital's Python SDK: containers, processes and hosts of a chital controller.

```python
from chital.client import Client, Limits

# No address: the controller, TLS files and token from the environment (CHITAL_CONTROLLER,
# CHITAL_TLS_DIR or CHITAL_CACERT, CHITAL_TOKEN), else the config file's current context.
with Client() as client:
    c = client.create_container("web", limits=Limits(memory_max_bytes=256 << 20))
    p = client.exec(c.uid, ["echo", "hello"])
    for chunk in client.stream_logs(p.uid, follow=True):
        print(chunk.data.decode(), end="")
    print(client.wait_process(p.uid).exit_code)
```

Or explicitly: ``Client("10.0.0.1:7443", tls=TLSFiles(ca=Path("ca.crt")), token=token)``;
[`Client.from_config`][chital.client.Client.from_config] picks a context or overrides single
settings (see [`chital.client.config`][chital.client.config] for the config file).
[`chital.client.aio.AsyncClient`][chital.client.aio.AsyncClient] is the same client for asyncio.

Values are frozen dataclasses and enums; errors are subclasses of
[`ChitalError`][chital.client.ChitalError]. Retries are gRPC's, configured per method from one
[`RetryPolicy`][chital.client.RetryPolicy]; every method takes ``timeout=``.
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
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from ._rollouts import (
    Rollout,
    RolloutEvent,
    RolloutEventType,
    RolloutHost,
    RolloutHostStatus,
    RolloutState,
)
from ._types import (
    NO_RETRY,
    AgentInfo,
    AuditEntry,
    Container,
    ContainerState,
    ContainerStats,
    Drain,
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
    ServerInfo,
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
    "Drain",
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
    "OutOfRange",
    "Page",
    "PermissionDenied",
    "Process",
    "ProcessState",
    "ResourceExhausted",
    "RetryPolicy",
    "Rollout",
    "RolloutEvent",
    "RolloutEventType",
    "RolloutHost",
    "RolloutHostStatus",
    "RolloutState",
    "Sandbox",
    "ServerInfo",
    "SyscallCount",
    "TLSFiles",
    "Token",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "WatchEvent",
    "__version__",
]
