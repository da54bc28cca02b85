"""What each SDK method sends and what it makes of the answer, shared by
[`Client`][chital.client.Client] and [`AsyncClient`][chital.client.aio.AsyncClient]: both build a
`Call` here and differ only in how they run it (blocking, or awaited)."""

from __future__ import annotations

import datetime as _dt
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from chital.api.admin.v1 import admin_pb2 as apb
from chital.api.container.v1 import container_pb2 as cpb
from chital.api.host.v1 import host_pb2 as hpb

from . import _convert as conv
from ._types import (
    AuditEntry,
    Container,
    ContainerState,
    ContainerStats,
    DrainResult,
    Host,
    HostState,
    Identity,
    Limits,
    LogChunk,
    NewToken,
    Page,
    Process,
    ProcessState,
    RetryPolicy,
    Sandbox,
    ServerInfo,
    Token,
    WatchEvent,
)

_T = TypeVar("_T")

CONTAINERS = "containers"
HOSTS = "hosts"
ADMIN = "admin"

# The server's grace period when a stop or drain names none (seconds).
DEFAULT_GRACE = 10.0

# How often a client-side wait (a stop, a delete, a drain) asks again: starting at the first,
# doubling up to the second (seconds).
SETTLE_POLL_FIRST = 0.05
SETTLE_POLL_MAX = 1.0

# A wait is split into server-side waits of at most this long, so no single call outlives a load
# balancer's idle timeout and a lost connection costs at most one chunk.
WAIT_CHUNK_SECONDS = 60.0


@dataclass(frozen=True)
class Call(Generic[_T]):
    """One unary RPC: the stub (``service``), the method, the request, and the conversion of the
    answer. ``extra_timeout`` is added to the client's default deadline (a stop's grace period)."""

    service: str
    method: str
    request: Any
    convert: Callable[[Any], _T]
    extra_timeout: float = 0.0


@dataclass(frozen=True)
class StreamCall(Generic[_T]):
    """One server-streaming RPC; ``convert`` applies to each message."""

    service: str
    method: str
    request: Any
    convert: Callable[[Any], _T]


def selector_string(selector: str | Mapping[str, str] | None) -> str:
    """``"k=v,k2=v2"`` for a mapping (sorted), the string itself for a string."""
    if selector is None:
        return ""
    if isinstance(selector, str):
        return selector
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def _container(response: Any) -> Container:
    return conv.container_from_pb(response.container)


def _process(response: Any) -> Process:
    return conv.process_from_pb(response.process)


def _host(response: Any) -> Host:
    return conv.host_from_pb(response.host)


# -- containers ------------------------------------------------------------------------------------


def create_container(
    name: str,
    *,
    request_id: str | None,
    labels: Mapping[str, str] | None,
    limits: Limits | None,
    root: str,
    deny_syscalls: Sequence[str],
    host: str,
    sandbox: Sandbox | None,
    wait: bool = True,
    restart_policy: str = "never",
    max_restarts: int = 0,
) -> Call[Container]:
    """CreateContainer, with a fresh uuid4 request id unless one is given (so the SDK's own
    retries are safe); ``wait``: the call returns once the host created it."""
    request = cpb.CreateContainerRequest(
        wait=wait,
        request_id=request_id or str(uuid.uuid4()),
        name=name,
        labels=dict(labels or {}),
        limits=conv.limits_to_pb(limits or Limits()),
        root=root,
        deny_syscalls=list(deny_syscalls),
        host=host,
        sandbox=conv.sandbox_to_pb(sandbox or Sandbox()),
        restart_policy=conv.restart_policy_to_pb(restart_policy),
        max_restarts=max_restarts,
    )
    return Call(CONTAINERS, "CreateContainer", request, _container)


def get_container(container: str) -> Call[Container]:
    """GetContainer."""
    return Call(CONTAINERS, "GetContainer", cpb.GetContainerRequest(container=container), _container)


def _container_page(response: Any) -> Page[Container]:
    return Page(
        items=tuple(conv.container_from_pb(c) for c in response.containers),
        next_page_token=response.next_page_token,
    )


def list_containers(
    *,
    page_size: int,
    page_token: str,
    label_selector: str | Mapping[str, str] | None,
    state: ContainerState | None,
    host: str,
) -> Call[Page[Container]]:
    """ListContainers (one page)."""
    request = cpb.ListContainersRequest(
        page_size=page_size,
        page_token=page_token,
        label_selector=selector_string(label_selector),
        state=conv.container_state_to_pb(state),  # type: ignore[arg-type]
        host=host,
    )
    return Call(CONTAINERS, "ListContainers", request, _container_page)


def stop_container(container: str, *, grace: float | None) -> Call[Container]:
    """StopContainer (recorded and returned at once: STOPPING, or STOPPED)."""
    request = cpb.StopContainerRequest(container=container)
    if grace is not None:
        request.grace_period.CopyFrom(conv.duration_to_pb(grace))
    return Call(CONTAINERS, "StopContainer", request, _container)


def stop_is_over(container: Container) -> bool:
    """A stop (or the stop half of a delete) is carried out: no longer STOPPING."""
    return container.state is not ContainerState.STOPPING


def drain_is_over(host: Host) -> bool:
    """The host's drain is complete (or the host has none)."""
    return host.drain is None or host.drain.complete


def next_poll(delay: float) -> float:
    """The delay before the next look of a client-side wait."""
    return min(delay * 2, SETTLE_POLL_MAX)


def delete_container(container: str, *, force: bool) -> Call[Container]:
    """DeleteContainer."""
    request = cpb.DeleteContainerRequest(container=container, force=force)
    return Call(CONTAINERS, "DeleteContainer", request, _container)


# -- processes -------------------------------------------------------------------------------------


def exec_(
    container: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None,
    cwd: str,
    user_id: int | None,
    group_id: int | None,
    request_id: str | None,
    wait: bool = True,
) -> Call[Process]:
    """Exec, with a fresh uuid4 request id unless one is given; ``wait``: the call returns once
    the host started the process."""
    if isinstance(argv, str):
        raise TypeError("argv is a sequence of strings, not a string: ['sh', '-c', '...']")
    request = cpb.ExecRequest(
        container=container,
        request_id=request_id or str(uuid.uuid4()),
        wait=wait,
        argv=list(argv),
        env=dict(env or {}),
        cwd=cwd,
        user_id=user_id,
        group_id=group_id,
    )
    return Call(CONTAINERS, "Exec", request, _process)


def get_process(process_uid: str) -> Call[Process]:
    """GetProcess."""
    return Call(CONTAINERS, "GetProcess", cpb.GetProcessRequest(process_uid=process_uid), _process)


def _process_page(response: Any) -> Page[Process]:
    return Page(
        items=tuple(conv.process_from_pb(p) for p in response.processes),
        next_page_token=response.next_page_token,
    )


def list_processes(container: str, *, page_size: int, page_token: str) -> Call[Page[Process]]:
    """ListProcesses (one page)."""
    request = cpb.ListProcessesRequest(container=container, page_size=page_size, page_token=page_token)
    return Call(CONTAINERS, "ListProcesses", request, _process_page)


def wait_process_chunk(process_uid: str, seconds: float) -> Call[Process]:
    """WaitProcess for at most ``seconds`` on the server; the deadline is that plus the default."""
    request = cpb.WaitProcessRequest(process_uid=process_uid, timeout=conv.duration_to_pb(seconds))
    return Call(CONTAINERS, "WaitProcess", request, _process, extra_timeout=seconds)


def wait_is_over(process: Process) -> bool:
    """Whether a waited-for process will not change any more."""
    return process.state in (ProcessState.EXITED, ProcessState.LOST)


def get_container_stats(container: str) -> Call[ContainerStats]:
    """GetContainerStats."""
    request = cpb.GetContainerStatsRequest(container=container)
    return Call(CONTAINERS, "GetContainerStats", request, conv.stats_from_pb)


def signal_process(process_uid: str, signal: int) -> Call[Process]:
    """SignalProcess."""
    request = cpb.SignalProcessRequest(process_uid=process_uid, signal=int(signal))
    return Call(CONTAINERS, "SignalProcess", request, _process)


def stream_logs(process_uid: str, *, follow: bool, tail: int) -> StreamCall[LogChunk]:
    """StreamLogs."""
    request = cpb.StreamLogsRequest(process_uid=process_uid, follow=follow, tail_lines=tail)
    return StreamCall(CONTAINERS, "StreamLogs", request, conv.log_chunk_from_pb)


#: Seconds between the heartbeats a watch asks for (a controller without heartbeats sends none).
WATCH_HEARTBEAT_SECONDS = 10.0


def watch(since_revision: int, container: str) -> StreamCall[WatchEvent]:
    """Watch from a revision, with heartbeats (see `WatchResume.receive`)."""
    request = cpb.WatchRequest(
        since_revision=since_revision,
        container=container,
        heartbeat_interval=conv.duration_to_pb(WATCH_HEARTBEAT_SECONDS),
    )
    return StreamCall(CONTAINERS, "Watch", request, conv.watch_event_from_pb)


class WatchResume:
    """The bookkeeping of a watch that resumes after a broken stream: the last revision delivered
    (the next stream starts after it, so nothing is missed or repeated), and how long to wait before
    the next attempt.

    Consecutive attempts that end in a transient error without delivering an event are counted;
    after ``policy.max_attempts`` of them the error is raised (``NO_RETRY``: no resume at all).
    """

    def __init__(self, since_revision: int, policy: RetryPolicy, *, enabled: bool) -> None:
        if since_revision < 0:
            raise ValueError("since_revision must not be negative")
        self.revision = since_revision
        self._policy = policy
        self._enabled = enabled
        self._failures = 0

    def receive(self, message: Any) -> WatchEvent | None:
        """The event to deliver for a Watch message, or None: a heartbeat (it moves the resume point
        to its revision, so a live-only watch resumes where it started and nothing between is
        missed) or an event delivered already."""
        if message.heartbeat:
            self.revision = max(self.revision, message.revision)
            return None
        event = conv.watch_event_from_pb(message)
        return event if self.accept(event) else None

    def accept(self, event: WatchEvent) -> bool:
        """Whether to deliver ``event`` (False for one at or below the last revision delivered)."""
        if event.revision <= self.revision:
            return False
        self.revision = event.revision
        self._failures = 0
        return True

    def backoff_after(self, transient: bool, rand: float) -> float | None:
        """Seconds to wait before resuming after a failed stream, or None to raise the error."""
        if not (self._enabled and transient):
            return None
        self._failures += 1
        if self._failures >= self._policy.max_attempts:
            return None
        return self._policy.backoff(self._failures, rand)


# -- hosts -----------------------------------------------------------------------------------------


def register_host(address: str, *, labels: Mapping[str, str] | None, max_containers: int) -> Call[Host]:
    """RegisterHost."""
    request = hpb.RegisterHostRequest(
        address=address,
        labels=dict(labels or {}),
        capacity=hpb.Capacity(max_containers=max_containers),
    )
    return Call(HOSTS, "RegisterHost", request, _host)


def _host_page(response: Any) -> Page[Host]:
    return Page(
        items=tuple(conv.host_from_pb(h) for h in response.hosts),
        next_page_token=response.next_page_token,
    )


def list_hosts(*, page_size: int, page_token: str, state: HostState | None) -> Call[Page[Host]]:
    """ListHosts (one page)."""
    request = hpb.ListHostsRequest(
        page_size=page_size,
        page_token=page_token,
        state=conv.host_state_to_pb(state),  # type: ignore[arg-type]
    )
    return Call(HOSTS, "ListHosts", request, _host_page)


def get_host(host: str) -> Call[Host]:
    """GetHost."""
    return Call(HOSTS, "GetHost", hpb.GetHostRequest(host=host), _host)


def cordon_host(host: str) -> Call[Host]:
    """CordonHost."""
    return Call(HOSTS, "CordonHost", hpb.CordonHostRequest(host=host), _host)


def uncordon_host(host: str) -> Call[Host]:
    """UncordonHost."""
    return Call(HOSTS, "UncordonHost", hpb.UncordonHostRequest(host=host), _host)


def _drain_result(response: Any) -> DrainResult:
    return DrainResult(host=conv.host_from_pb(response.host), stopped_containers=response.stopped_containers)


def drain_host(host: str, *, grace: float | None, deadline: float | None = None) -> Call[DrainResult]:
    """DrainHost (started and returned at once; GetHost shows its progress)."""
    request = hpb.DrainHostRequest(host=host)
    if grace is not None:
        request.grace_period.CopyFrom(conv.duration_to_pb(grace))
    if deadline is not None:
        request.deadline.CopyFrom(conv.duration_to_pb(deadline))
    return Call(HOSTS, "DrainHost", request, _drain_result)


def _nothing(response: Any) -> None:
    return None


def remove_host(host: str, *, force: bool) -> Call[None]:
    """RemoveHost."""
    return Call(HOSTS, "RemoveHost", hpb.RemoveHostRequest(host=host, force=force), _nothing)


# -- identity, tokens and the audit log -------------------------------------------------------------


def whoami() -> Call[Identity]:
    """WhoAmI."""
    return Call(ADMIN, "WhoAmI", apb.WhoAmIRequest(), conv.identity_from_pb)


def server_info() -> Call[ServerInfo]:
    """GetServerInfo."""
    return Call(ADMIN, "GetServerInfo", apb.GetServerInfoRequest(), conv.server_info_from_pb)


def _new_token(response: Any) -> NewToken:
    return NewToken(bearer_token=response.bearer_token, token=conv.token_from_pb(response.token))


def create_token(name: str, role: str, *, ttl: float | _dt.timedelta | None) -> Call[NewToken]:
    """CreateToken; a ttl below one second is a ValueError."""
    seconds = ttl.total_seconds() if isinstance(ttl, _dt.timedelta) else ttl
    if seconds is not None and seconds < 1:
        raise ValueError("ttl must be at least one second (None: no expiry)")
    request = apb.CreateTokenRequest(name=name, role=role, ttl_seconds=round(seconds or 0))
    return Call(ADMIN, "CreateToken", request, _new_token)


def _tokens(response: Any) -> list[Token]:
    return [conv.token_from_pb(t) for t in response.tokens]


def list_tokens() -> Call[list[Token]]:
    """ListTokens."""
    return Call(ADMIN, "ListTokens", apb.ListTokensRequest(), _tokens)


def revoke_token(token_id: str) -> Call[Token]:
    """RevokeToken."""
    return Call(
        ADMIN, "RevokeToken", apb.RevokeTokenRequest(id=token_id), lambda r: conv.token_from_pb(r.token)
    )


def _audit_page(response: Any) -> Page[AuditEntry]:
    return Page(
        items=tuple(conv.audit_entry_from_pb(e) for e in response.entries),
        next_page_token=response.next_page_token,
    )


def list_audit_log(*, page_size: int, page_token: str, principal: str) -> Call[Page[AuditEntry]]:
    """ListAuditLog (one page)."""
    request = apb.ListAuditLogRequest(page_size=page_size, page_token=page_token, principal=principal)
    return Call(ADMIN, "ListAuditLog", request, _audit_page)
