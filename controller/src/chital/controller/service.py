"""gRPC adapters: ContainerService, HostService and AdminService over the use cases.

Protobuf types stop here: requests become plain values, records become messages. Errors are raised
as errdefs exceptions and mapped to status codes by :class:`chital.errdefs.grpc.ErrorInterceptor`.
"""

# ruff: noqa: N802 - gRPC servicer methods carry the RPC names from the proto.
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from chital.api.admin.v1 import admin_pb2, admin_pb2_grpc
from chital.api.container.v1 import container_pb2, container_pb2_grpc
from chital.api.host.v1 import host_pb2, host_pb2_grpc
from chital.controller._version import __version__
from chital.controller.auth import Principal, current_principal
from chital.controller.containers import Containers, WatchHeartbeat
from chital.controller.hosts import Hosts
from chital.controller.records import (
    ContainerRecord,
    ContainerRecordState,
    ContainerSpec,
    EventRecord,
    EventRecordType,
    HostRecord,
    HostRecordState,
    LimitsRecord,
    ProcessRecord,
    ProcessSpec,
    SandboxRecord,
)
from chital.controller.tokens import AuditLog, AuditRecord, TokenRecord, Tokens
from chital.errdefs import InvalidArgument, PermissionDenied

__all__ = ["AdminServicer", "ContainerServicer", "HostServicer"]


def _ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def _seconds(request: Any, field: str) -> float | None:
    if not request.HasField(field):
        return None
    duration: duration_pb2.Duration = getattr(request, field)
    if duration.seconds < 0 or duration.nanos < 0:
        raise InvalidArgument(f"{field} must not be negative")
    return float(duration.seconds + duration.nanos / 1e9)


def _enum_name(enum: Any, value: int, field: str, prefix: str) -> str | None:
    """The enum value's short name (None for UNSPECIFIED); unknown numbers are InvalidArgument."""
    try:
        name = str(enum.Name(value))
    except ValueError:
        raise InvalidArgument(f"{field}: unknown value {value}") from None
    short = name.removeprefix(prefix)
    return None if short == "UNSPECIFIED" else short


_RESTART_POLICY_PB = {
    "never": container_pb2.RESTART_POLICY_NEVER,
    "on-failure": container_pb2.RESTART_POLICY_ON_FAILURE,
    "always": container_pb2.RESTART_POLICY_ALWAYS,
}


def restart_policy_from_pb(value: int) -> str:
    """The stored restart policy of a request's RestartPolicy (unspecified: never)."""
    name = _enum_name(container_pb2.RestartPolicy, value, "restart_policy", "RESTART_POLICY_")
    return "never" if name is None else name.lower().replace("_", "-")


def container_to_pb(c: ContainerRecord) -> container_pb2.Container:
    """A record as a message."""
    return container_pb2.Container(
        uid=c.uid,
        name=c.name,
        state=container_pb2.ContainerState.Value(f"CONTAINER_STATE_{c.state.value}"),
        labels=c.labels,
        limits=container_pb2.Limits(
            memory_max_bytes=c.limits.memory_max_bytes,
            pids_max=c.limits.pids_max,
            cpu_max_millicores=c.limits.cpu_max_millicores,
        ),
        root=c.root,
        deny_syscalls=list(c.deny_syscalls),
        host_id=c.host_id,
        host_address=c.host_address,
        message=c.message,
        create_time=_ts(c.created),
        update_time=_ts(c.updated),
        running_processes=c.running_processes,
        sandbox=container_pb2.Sandbox(
            allow_syscalls=list(c.sandbox.allow_syscalls),
            allow_raw_sockets=c.sandbox.allow_raw_sockets,
            capabilities=list(c.sandbox.capabilities),
            host_network=c.sandbox.host_network,
            allow_host_root=c.sandbox.allow_host_root,
        ),
        effective_deny_syscalls=list(c.effective_deny_syscalls),
        stop_deadline_time=_ts(c.stop_deadline) if c.state is ContainerRecordState.STOPPING else None,
        restart_policy=_RESTART_POLICY_PB[c.restart_policy],
        max_restarts=c.max_restarts,
        restart_count=c.restart_count,
    )


def process_to_pb(p: ProcessRecord) -> container_pb2.Process:
    """A record as a message."""
    return container_pb2.Process(
        uid=p.uid,
        container_uid=p.container_uid,
        argv=list(p.argv),
        env=p.env,
        cwd=p.cwd,
        user_id=p.user_id,
        group_id=p.group_id,
        state=container_pb2.ProcessState.Value(f"PROCESS_STATE_{p.state.value}"),
        pid=p.pid,
        exit_code=p.exit_code,
        signal=p.signal,
        oom_killed=p.oom_killed,
        start_time=_ts(p.start_time),
        exit_time=_ts(p.exit_time),
        message=p.message,
    )


def event_to_pb(e: EventRecord) -> container_pb2.WatchResponse:
    """An event as a message."""
    msg = container_pb2.WatchResponse(revision=e.revision, time=_ts(e.time))
    if e.type is EventRecordType.CONTAINER and e.container is not None:
        msg.type = container_pb2.EVENT_TYPE_CONTAINER_CHANGED
        msg.container.CopyFrom(container_to_pb(e.container))
    elif e.process is not None:
        msg.type = container_pb2.EVENT_TYPE_PROCESS_CHANGED
        msg.process.CopyFrom(process_to_pb(e.process))
    return msg


def host_to_pb(h: HostRecord) -> host_pb2.Host:
    """A record as a message."""
    return host_pb2.Host(
        id=h.id,
        address=h.address,
        state=host_pb2.HostState.Value(f"HOST_STATE_{h.state.value}"),
        labels=h.labels,
        capacity=host_pb2.Capacity(max_containers=h.max_containers),
        container_count=h.container_count,
        agent=host_pb2.AgentInfo(
            agent_version=h.agent.agent_version,
            kernel_release=h.agent.kernel_release,
            module_version=h.agent.module_version,
            abi_version=h.agent.abi_version,
            sandboxed=h.agent.sandboxed,
            device=h.agent.device,
        ),
        last_seen_time=_ts(h.last_seen),
        create_time=_ts(h.created),
        message=h.message,
        drain=None
        if h.drain is None
        else host_pb2.Drain(
            start_time=_ts(h.drain.started),
            deadline_time=_ts(h.drain.deadline),
            containers=h.drain.containers,
            remaining=h.drain.remaining,
            complete=h.drain.complete,
        ),
    )


class EventMessages:
    """The message of each recent event, made once for all the watchers that send it (converting
    costs far more than serializing: with many watchers, once per watcher was most of the work).
    The messages are shared: nothing may change them after :meth:`get` returns them."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._messages: OrderedDict[int, container_pb2.WatchResponse] = OrderedDict()

    def get(self, event: EventRecord) -> container_pb2.WatchResponse:
        """The message of ``event`` (revisions are unique: one message per revision)."""
        with self._lock:
            message = self._messages.get(event.revision)
        if message is not None:
            return message
        message = event_to_pb(event)
        with self._lock:
            self._messages[event.revision] = message
            while len(self._messages) > self._size:
                self._messages.popitem(last=False)
        return message


class ContainerServicer(container_pb2_grpc.ContainerServiceServicer):
    """chital.api.container.v1.ContainerService."""

    def __init__(self, containers: Containers) -> None:
        self._containers = containers
        self._event_messages = EventMessages()

    def CreateContainer(self, request: Any, context: grpc.ServicerContext) -> Any:
        spec = ContainerSpec(
            name=request.name,
            labels=dict(request.labels),
            limits=LimitsRecord(
                memory_max_bytes=request.limits.memory_max_bytes,
                pids_max=request.limits.pids_max,
                cpu_max_millicores=request.limits.cpu_max_millicores,
            ),
            root=request.root,
            deny_syscalls=tuple(request.deny_syscalls),
            host=request.host,
            sandbox=SandboxRecord(
                allow_syscalls=tuple(request.sandbox.allow_syscalls),
                allow_raw_sockets=request.sandbox.allow_raw_sockets,
                capabilities=tuple(request.sandbox.capabilities),
                host_network=request.sandbox.host_network,
                allow_host_root=request.sandbox.allow_host_root,
            ),
            restart_policy=restart_policy_from_pb(request.restart_policy),
            max_restarts=request.max_restarts,
        )
        principal = current_principal()
        admin = principal is not None and principal.role == "admin"
        record = self._containers.create(request.request_id, spec, admin=admin, wait=request.wait)
        return container_pb2.CreateContainerResponse(container=container_to_pb(record))

    def GetContainer(self, request: Any, context: grpc.ServicerContext) -> Any:
        return container_pb2.GetContainerResponse(
            container=container_to_pb(self._containers.get(request.container))
        )

    def ListContainers(self, request: Any, context: grpc.ServicerContext) -> Any:
        state = _enum_name(container_pb2.ContainerState, request.state, "state", "CONTAINER_STATE_")
        page = self._containers.list_containers(
            request.page_size,
            request.page_token,
            request.label_selector,
            None if state is None else ContainerRecordState(state),
            request.host,
        )
        return container_pb2.ListContainersResponse(
            containers=[container_to_pb(c) for c in page.items], next_page_token=page.next_page_token
        )

    def StopContainer(self, request: Any, context: grpc.ServicerContext) -> Any:
        record = self._containers.stop(request.container, _seconds(request, "grace_period"))
        return container_pb2.StopContainerResponse(container=container_to_pb(record))

    def DeleteContainer(self, request: Any, context: grpc.ServicerContext) -> Any:
        record = self._containers.delete(request.container, request.force)
        return container_pb2.DeleteContainerResponse(container=container_to_pb(record))

    def GetContainerStats(self, request: Any, context: grpc.ServicerContext) -> Any:
        stats = self._containers.stats(request.container)
        return container_pb2.GetContainerStatsResponse(
            container_uid=stats.container_uid,
            syscalls=[
                container_pb2.SyscallCount(name=s.name, number=s.number, calls=s.calls, denied=s.denied)
                for s in stats.syscalls
            ],
            syscalls_total=stats.syscalls_total,
            denied_total=stats.denied_total,
            members=stats.members,
            memory_current_bytes=stats.memory_current_bytes,
            oom_kills=stats.oom_kills,
            pids_current=stats.pids_current,
            cpu_usage_usec=stats.cpu_usage_usec,
            sandboxed=stats.sandboxed,
        )

    def Exec(self, request: Any, context: grpc.ServicerContext) -> Any:
        spec = ProcessSpec(
            argv=tuple(request.argv),
            env=dict(request.env),
            cwd=request.cwd,
            user_id=request.user_id if request.HasField("user_id") else None,
            group_id=request.group_id if request.HasField("group_id") else None,
        )
        process = self._containers.exec(request.container, request.request_id, spec, wait=request.wait)
        return container_pb2.ExecResponse(process=process_to_pb(process))

    def GetProcess(self, request: Any, context: grpc.ServicerContext) -> Any:
        return container_pb2.GetProcessResponse(
            process=process_to_pb(self._containers.get_process(request.process_uid))
        )

    def ListProcesses(self, request: Any, context: grpc.ServicerContext) -> Any:
        page = self._containers.list_processes(request.container, request.page_size, request.page_token)
        return container_pb2.ListProcessesResponse(
            processes=[process_to_pb(p) for p in page.items], next_page_token=page.next_page_token
        )

    def WaitProcess(self, request: Any, context: grpc.ServicerContext) -> Any:
        timeout = _seconds(request, "timeout")
        if timeout is None:
            remaining = context.time_remaining()
            # Answer a little before the caller's deadline, so it gets the process, not an error.
            timeout = None if remaining is None else max(0.0, remaining - 0.2)
        process = self._containers.wait_process(
            request.process_uid, timeout, context.is_active, context.add_callback
        )
        return container_pb2.WaitProcessResponse(process=process_to_pb(process))

    def SignalProcess(self, request: Any, context: grpc.ServicerContext) -> Any:
        process = self._containers.signal_process(request.process_uid, request.signal)
        return container_pb2.SignalProcessResponse(process=process_to_pb(process))

    def StreamLogs(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        cancel, chunks = self._containers.stream_logs(request.process_uid, request.follow, request.tail_lines)
        context.add_callback(cancel)
        for chunk in chunks:
            stream = (
                container_pb2.LOG_STREAM_STDERR
                if chunk.stream == "stderr"
                else container_pb2.LOG_STREAM_STDOUT
            )
            yield container_pb2.StreamLogsResponse(stream=stream, data=chunk.data)

    def Watch(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        heartbeat = request.heartbeat_interval.ToTimedelta().total_seconds()
        for item in self._containers.watch(
            request.since_revision, request.container, context.is_active, heartbeat, context.add_callback
        ):
            if isinstance(item, WatchHeartbeat):
                yield container_pb2.WatchResponse(revision=item.revision, heartbeat=True)
            else:
                yield self._event_messages.get(item)


class HostServicer(host_pb2_grpc.HostServiceServicer):
    """chital.api.host.v1.HostService."""

    def __init__(self, hosts: Hosts) -> None:
        self._hosts = hosts

    def RegisterHost(self, request: Any, context: grpc.ServicerContext) -> Any:
        host = self._hosts.register(request.address, dict(request.labels), request.capacity.max_containers)
        return host_pb2.RegisterHostResponse(host=host_to_pb(host))

    def ListHosts(self, request: Any, context: grpc.ServicerContext) -> Any:
        state = _enum_name(host_pb2.HostState, request.state, "state", "HOST_STATE_")
        page = self._hosts.list_hosts(
            request.page_size, request.page_token, None if state is None else HostRecordState(state)
        )
        return host_pb2.ListHostsResponse(
            hosts=[host_to_pb(h) for h in page.items], next_page_token=page.next_page_token
        )

    def GetHost(self, request: Any, context: grpc.ServicerContext) -> Any:
        return host_pb2.GetHostResponse(host=host_to_pb(self._hosts.get(request.host)))

    def CordonHost(self, request: Any, context: grpc.ServicerContext) -> Any:
        return host_pb2.CordonHostResponse(host=host_to_pb(self._hosts.cordon(request.host)))

    def UncordonHost(self, request: Any, context: grpc.ServicerContext) -> Any:
        return host_pb2.UncordonHostResponse(host=host_to_pb(self._hosts.uncordon(request.host)))

    def DrainHost(self, request: Any, context: grpc.ServicerContext) -> Any:
        host, stopped = self._hosts.drain(
            request.host, _seconds(request, "grace_period"), _seconds(request, "deadline")
        )
        return host_pb2.DrainHostResponse(host=host_to_pb(host), stopped_containers=stopped)

    def RemoveHost(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._hosts.remove(request.host, request.force)
        return host_pb2.RemoveHostResponse()


def token_to_pb(t: TokenRecord) -> admin_pb2.Token:
    """A record as a message."""
    return admin_pb2.Token(
        id=t.id,
        name=t.name,
        role=t.role,
        create_time=_ts(t.created_at),
        expire_time=_ts(t.expires_at),
        revoke_time=_ts(t.revoked_at),
        created_by=t.created_by,
        last_used_time=_ts(t.last_used_at),
    )


def audit_to_pb(a: AuditRecord) -> admin_pb2.AuditEntry:
    """A record as a message."""
    return admin_pb2.AuditEntry(
        id=a.id,
        time=_ts(a.at),
        principal=a.principal,
        role=a.role,
        method=a.method,
        request_id=a.request_id,
        target=a.target,
        code=a.code,
        detail=a.detail,
    )


def _caller() -> Principal:
    principal = current_principal()
    if principal is None:  # only without the auth interceptor, which the server always installs
        raise PermissionDenied("no authenticated caller")
    return principal


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """chital.api.admin.v1.AdminService.

    ``database`` is the SQLAlchemy dialect name of the controller's database (never its URL) and
    ``api_versions`` the API packages the server serves; GetServerInfo reports both.
    """

    def __init__(
        self,
        tokens: Tokens,
        audit: AuditLog,
        *,
        database: str,
        api_versions: Iterable[str],
        is_leader: Callable[[], bool] = lambda: True,
    ) -> None:
        self._tokens = tokens
        self._audit = audit
        self._is_leader = is_leader
        self._server_info = admin_pb2.GetServerInfoResponse(
            version=__version__, api_versions=sorted(set(api_versions)), database=database
        )

    def CreateToken(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.ttl_seconds < 0:
            raise InvalidArgument("ttl_seconds must not be negative (0: no expiry)")
        ttl = float(request.ttl_seconds) if request.ttl_seconds else None
        bearer, record = self._tokens.create(request.name, request.role, ttl, _caller().id)
        return admin_pb2.CreateTokenResponse(bearer_token=bearer, token=token_to_pb(record))

    def ListTokens(self, request: Any, context: grpc.ServicerContext) -> Any:
        return admin_pb2.ListTokensResponse(tokens=[token_to_pb(t) for t in self._tokens.list()])

    def RevokeToken(self, request: Any, context: grpc.ServicerContext) -> Any:
        return admin_pb2.RevokeTokenResponse(token=token_to_pb(self._tokens.revoke(request.id)))

    def ListAuditLog(self, request: Any, context: grpc.ServicerContext) -> Any:
        if len(request.principal) > 255:
            raise InvalidArgument("principal is longer than 255 characters")
        page = self._audit.list(request.page_size, request.page_token, request.principal)
        return admin_pb2.ListAuditLogResponse(
            entries=[audit_to_pb(a) for a in page.items], next_page_token=page.next_page_token
        )

    def WhoAmI(self, request: Any, context: grpc.ServicerContext) -> Any:
        caller = _caller()
        return admin_pb2.WhoAmIResponse(
            name=caller.name,
            role=caller.role,
            auth_method=caller.auth_method,
            principal=caller.id,
            token_id=caller.token_id,
        )

    def GetServerInfo(self, request: Any, context: grpc.ServicerContext) -> Any:
        response = admin_pb2.GetServerInfoResponse()
        response.CopyFrom(self._server_info)
        response.leader = self._is_leader()
        return response
