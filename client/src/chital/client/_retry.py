"""Which calls gRPC retries, and on what: the channel's service config, generated from one
[`RetryPolicy`][chital.client.RetryPolicy].

gRPC retries a call inside the channel (streams included, until their first response arrives),
within the call's deadline, with exponential backoff and full jitter. Each RPC belongs to one class:

- reads are retried on ``UNAVAILABLE`` and ``DEADLINE_EXCEEDED``;
- idempotent writes (creates and exec carry a ``request_id`` that the client reuses on every attempt;
  the others only name their resource) are retried on ``UNAVAILABLE`` only: a write that ran out of
  time may still be running on the server;
- ``SignalProcess`` and ``CreateToken`` are never retried (a repeated signal is not harmless, and a
  lost answer would leave two tokens).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Any

from ._types import RetryPolicy

__all__ = ["GRPC_MAX_ATTEMPTS", "METHOD_CLASSES", "RetryClass", "channel_options", "service_config"]

GRPC_MAX_ATTEMPTS = 5
"""gRPC's upper bound on ``maxAttempts``: a policy that asks for more gets this many."""


class RetryClass(enum.Enum):
    """How an RPC may be retried."""

    READ = ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    IDEMPOTENT_WRITE = ("UNAVAILABLE",)
    NEVER = ()


_CONTAINER = "chital.api.container.v1.ContainerService"
_HOST = "chital.api.host.v1.HostService"
_ADMIN = "chital.api.admin.v1.AdminService"

_R, _W, _N = RetryClass.READ, RetryClass.IDEMPOTENT_WRITE, RetryClass.NEVER

METHOD_CLASSES: Mapping[tuple[str, str], RetryClass] = {
    (_CONTAINER, "CreateContainer"): _W,
    (_CONTAINER, "GetContainer"): _R,
    (_CONTAINER, "ListContainers"): _R,
    (_CONTAINER, "StopContainer"): _W,
    (_CONTAINER, "DeleteContainer"): _W,
    (_CONTAINER, "Exec"): _W,
    (_CONTAINER, "GetProcess"): _R,
    (_CONTAINER, "ListProcesses"): _R,
    (_CONTAINER, "WaitProcess"): _R,
    (_CONTAINER, "SignalProcess"): _N,
    (_CONTAINER, "StreamLogs"): _R,
    (_CONTAINER, "Watch"): _R,
    (_CONTAINER, "GetContainerStats"): _R,
    (_HOST, "RegisterHost"): _W,
    (_HOST, "ListHosts"): _R,
    (_HOST, "GetHost"): _R,
    (_HOST, "CordonHost"): _W,
    (_HOST, "UncordonHost"): _W,
    (_HOST, "DrainHost"): _W,
    (_HOST, "RemoveHost"): _W,
    (_ADMIN, "CreateToken"): _N,
    (_ADMIN, "ListTokens"): _R,
    (_ADMIN, "RevokeToken"): _W,
    (_ADMIN, "ListAuditLog"): _R,
    (_ADMIN, "WhoAmI"): _R,
    (_ADMIN, "GetServerInfo"): _R,
}
"""Every RPC the SDK calls, ``(full service name, method)``, and its retry class."""


MIN_BACKOFF = 0.01
"""The shortest backoff put into the service config, in seconds. gRPC wants a positive one, and
with backoffs of a millisecond its retry timer was seen to lose a call (it then hangs until its
deadline), with grpcio 1.85."""


def _seconds(value: float) -> str:
    # The service config's durations are decimal seconds followed by "s".
    return f"{max(value, MIN_BACKOFF):.3f}s"


def service_config(policy: RetryPolicy) -> dict[str, Any]:
    """The service config (as a dict) that makes gRPC retry as `METHOD_CLASSES` says.

    ``policy.max_attempts`` counts the first try and is capped at `GRPC_MAX_ATTEMPTS`; 1 gives
    no ``retryPolicy`` at all. gRPC sleeps a uniformly random time between 0 and the current backoff
    (``initial_backoff * multiplier ** (n - 1)``, at most ``max_backoff``) before retry ``n``.
    """
    configs: list[dict[str, Any]] = []
    for retry_class in (RetryClass.READ, RetryClass.IDEMPOTENT_WRITE, RetryClass.NEVER):
        names = [
            {"service": service, "method": method}
            for (service, method), cls in METHOD_CLASSES.items()
            if cls is retry_class
        ]
        entry: dict[str, Any] = {"name": names}
        if retry_class.value and policy.max_attempts > 1:
            entry["retryPolicy"] = {
                "maxAttempts": min(policy.max_attempts, GRPC_MAX_ATTEMPTS),
                "initialBackoff": _seconds(policy.initial_backoff),
                "maxBackoff": _seconds(max(policy.max_backoff, policy.initial_backoff)),
                "backoffMultiplier": policy.multiplier,
                "retryableStatusCodes": list(retry_class.value),
            }
        configs.append(entry)
    return {"methodConfig": configs}


#: Keepalive pings of the SDK's channels while a call is open. The controller's server accepts a
#: ping every 5 s without data (it must: gRPC's default answers pings sooner than 5 min apart
#: with GOAWAY too_many_pings).
KEEPALIVE_TIME_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 5_000
#: How long one connection attempt to a controller may take (TCP connect and TLS handshake).
CONNECT_TIMEOUT_MS = 5_000


def channel_options(policy: RetryPolicy, user_agent: str) -> list[tuple[str, Any]]:
    """The channel options of a client: retries on, the service config, the user agent, and
    keepalive pings while a call is open (every 10 s; no answer within 5 s drops the connection)
    and 5 s for a connection attempt, so that a call to a controller that is frozen, or whose
    machine vanished, fails UNAVAILABLE within about 20 s and moves to the next controller,
    instead of waiting for its deadline."""
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(service_config(policy))),
        ("grpc.primary_user_agent", user_agent),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # grpcio 1.85 waits for a ping's ack for grpc.http2.ping_timeout_ms (60 s by default),
        # whatever keepalive_timeout_ms says: measured, a frozen server was noticed after 70 s.
        ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # A connection attempt (TCP and the TLS handshake) may take this long, not gRPC's 20 s: a
        # frozen controller accepts TCP connections (its kernel does) but never completes a handshake.
        ("grpc.min_reconnect_backoff_ms", CONNECT_TIMEOUT_MS),
    ]
