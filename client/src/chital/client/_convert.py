"""Protobuf <-> SDK value conversions. The only module that touches generated message types."""

from __future__ import annotations

import datetime as _dt
import enum
from typing import TypeVar

from google.protobuf import duration_pb2, timestamp_pb2

from chital.api.admin.v1 import admin_pb2 as apb
from chital.api.container.v1 import container_pb2 as cpb
from chital.api.host.v1 import host_pb2 as hpb

from ._types import (
    AgentInfo,
    AuditEntry,
    Container,
    ContainerState,
    ContainerStats,
    Drain,
    EventType,
    Host,
    HostState,
    Identity,
    Limits,
    LogChunk,
    LogStream,
    Process,
    ProcessState,
    Sandbox,
    ServerInfo,
    SyscallCount,
    Token,
    WatchEvent,
)

_E = TypeVar("_E", bound=enum.Enum)


def _enum(cls: type[_E], prefix: str, name: str) -> _E:
    """Map a proto enum value name (``CONTAINER_STATE_RUNNING``) to the SDK enum; unknown -> UNSPECIFIED."""
    short = name.removeprefix(prefix)
    try:
        return cls[short]
    except KeyError:
        return cls["UNSPECIFIED"]


def _enum_name(descriptor_name: str, value: int, wrapper: object) -> str:
    try:
        return str(wrapper.Name(value))  # type: ignore[attr-defined]
    except ValueError:
        return f"{descriptor_name}_UNSPECIFIED"


def container_state_from_pb(value: int) -> ContainerState:
    """SDK container state for a proto enum number."""
    return _enum(
        ContainerState,
        "CONTAINER_STATE_",
        _enum_name("CONTAINER_STATE", value, cpb.ContainerState),
    )


def container_state_to_pb(state: ContainerState | None) -> int:
    """Proto enum number for an SDK container state (None -> UNSPECIFIED)."""
    if state is None:
        return 0
    return int(cpb.ContainerState.Value(f"CONTAINER_STATE_{state.name}"))


def host_state_to_pb(state: HostState | None) -> int:
    """Proto enum number for an SDK host state (None -> UNSPECIFIED)."""
    if state is None:
        return 0
    return int(hpb.HostState.Value(f"HOST_STATE_{state.name}"))


def time_from_pb(ts: timestamp_pb2.Timestamp, present: bool) -> _dt.datetime | None:
    """An aware UTC datetime, or None when the field is unset."""
    if not present:
        return None
    return ts.ToDatetime(tzinfo=_dt.UTC)


def duration_to_pb(seconds: float) -> duration_pb2.Duration:
    """A Duration message for a number of seconds."""
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def limits_from_pb(m: cpb.Limits) -> Limits:
    """SDK limits from the message."""
    return Limits(
        memory_max_bytes=m.memory_max_bytes,
        pids_max=m.pids_max,
        cpu_max_millicores=m.cpu_max_millicores,
    )


def limits_to_pb(limits: Limits) -> cpb.Limits:
    """The message for SDK limits."""
    return cpb.Limits(
        memory_max_bytes=limits.memory_max_bytes,
        pids_max=limits.pids_max,
        cpu_max_millicores=limits.cpu_max_millicores,
    )


def container_from_pb(m: cpb.Container) -> Container:
    """SDK container from the message."""
    return Container(
        uid=m.uid,
        name=m.name,
        state=container_state_from_pb(m.state),
        labels=dict(m.labels),
        limits=limits_from_pb(m.limits),
        root=m.root,
        deny_syscalls=tuple(m.deny_syscalls),
        host_id=m.host_id,
        host_address=m.host_address,
        message=m.message,
        create_time=time_from_pb(m.create_time, m.HasField("create_time")),
        update_time=time_from_pb(m.update_time, m.HasField("update_time")),
        running_processes=m.running_processes,
        sandbox=Sandbox(
            allow_syscalls=tuple(m.sandbox.allow_syscalls),
            allow_raw_sockets=m.sandbox.allow_raw_sockets,
            capabilities=tuple(m.sandbox.capabilities),
            host_network=m.sandbox.host_network,
        ),
        effective_deny_syscalls=tuple(m.effective_deny_syscalls),
        stop_deadline_time=time_from_pb(m.stop_deadline_time, m.HasField("stop_deadline_time")),
        restart_policy=restart_policy_from_pb(m.restart_policy),
        max_restarts=m.max_restarts,
        restart_count=m.restart_count,
    )


def sandbox_to_pb(s: Sandbox) -> cpb.Sandbox:
    """Message from the SDK sandbox."""
    return cpb.Sandbox(
        allow_syscalls=list(s.allow_syscalls),
        allow_raw_sockets=s.allow_raw_sockets,
        capabilities=list(s.capabilities),
        host_network=s.host_network,
    )


def process_from_pb(m: cpb.Process) -> Process:
    """SDK process from the message."""
    return Process(
        uid=m.uid,
        container_uid=m.container_uid,
        argv=tuple(m.argv),
        state=_enum(ProcessState, "PROCESS_STATE_", _enum_name("PROCESS_STATE", m.state, cpb.ProcessState)),
        env=dict(m.env),
        cwd=m.cwd,
        user_id=m.user_id,
        group_id=m.group_id,
        pid=m.pid,
        exit_code=m.exit_code,
        signal=m.signal,
        oom_killed=m.oom_killed,
        start_time=time_from_pb(m.start_time, m.HasField("start_time")),
        exit_time=time_from_pb(m.exit_time, m.HasField("exit_time")),
        message=m.message,
    )


def stats_from_pb(m: cpb.GetContainerStatsResponse) -> ContainerStats:
    """SDK container stats from the message."""
    return ContainerStats(
        container_uid=m.container_uid,
        syscalls=tuple(SyscallCount(s.name, s.number, s.calls, s.denied) for s in m.syscalls),
        syscalls_total=m.syscalls_total,
        denied_total=m.denied_total,
        members=m.members,
        memory_current_bytes=m.memory_current_bytes,
        oom_kills=m.oom_kills,
        pids_current=m.pids_current,
        cpu_usage_usec=m.cpu_usage_usec,
        sandboxed=m.sandboxed,
    )


def host_from_pb(m: hpb.Host) -> Host:
    """SDK host from the message."""
    agent = None
    if m.HasField("agent"):
        a = m.agent
        agent = AgentInfo(
            agent_version=a.agent_version,
            kernel_release=a.kernel_release,
            module_version=a.module_version,
            abi_version=a.abi_version,
            sandboxed=a.sandboxed,
            device=a.device,
        )
    return Host(
        id=m.id,
        address=m.address,
        state=_enum(HostState, "HOST_STATE_", _enum_name("HOST_STATE", m.state, hpb.HostState)),
        labels=dict(m.labels),
        max_containers=m.capacity.max_containers,
        container_count=m.container_count,
        agent=agent,
        last_seen_time=time_from_pb(m.last_seen_time, m.HasField("last_seen_time")),
        create_time=time_from_pb(m.create_time, m.HasField("create_time")),
        message=m.message,
        drain=_drain_from_pb(m.drain) if m.HasField("drain") else None,
    )


def _drain_from_pb(m: hpb.Drain) -> Drain:
    return Drain(
        start_time=time_from_pb(m.start_time, m.HasField("start_time")),
        deadline_time=time_from_pb(m.deadline_time, m.HasField("deadline_time")),
        containers=m.containers,
        remaining=m.remaining,
        complete=m.complete,
    )


def log_chunk_from_pb(m: cpb.StreamLogsResponse) -> LogChunk:
    """SDK log chunk from the message."""
    stream = _enum(LogStream, "LOG_STREAM_", _enum_name("LOG_STREAM", m.stream, cpb.LogStream))
    return LogChunk(stream=stream, data=bytes(m.data))


def watch_event_from_pb(m: cpb.WatchResponse) -> WatchEvent:
    """SDK watch event from the message."""
    return WatchEvent(
        revision=m.revision,
        type=_enum(EventType, "EVENT_TYPE_", _enum_name("EVENT_TYPE", m.type, cpb.EventType)),
        container=container_from_pb(m.container) if m.HasField("container") else None,
        process=process_from_pb(m.process) if m.HasField("process") else None,
        time=time_from_pb(m.time, m.HasField("time")),
    )


def token_from_pb(m: apb.Token) -> Token:
    """SDK token description from the message."""
    return Token(
        id=m.id,
        name=m.name,
        role=m.role,
        create_time=time_from_pb(m.create_time, m.HasField("create_time")),
        expire_time=time_from_pb(m.expire_time, m.HasField("expire_time")),
        revoke_time=time_from_pb(m.revoke_time, m.HasField("revoke_time")),
        created_by=m.created_by,
        last_used_time=time_from_pb(m.last_used_time, m.HasField("last_used_time")),
    )


def audit_entry_from_pb(m: apb.AuditEntry) -> AuditEntry:
    """SDK audit entry from the message."""
    return AuditEntry(
        id=m.id,
        time=time_from_pb(m.time, m.HasField("time")),
        principal=m.principal,
        role=m.role,
        method=m.method,
        request_id=m.request_id,
        target=m.target,
        code=m.code,
        detail=m.detail,
    )


def server_info_from_pb(m: apb.GetServerInfoResponse) -> ServerInfo:
    """SDK server description from the GetServerInfo answer."""
    return ServerInfo(
        version=m.version, api_versions=tuple(m.api_versions), database=m.database, leader=m.leader
    )


def identity_from_pb(m: apb.WhoAmIResponse) -> Identity:
    """SDK identity from the WhoAmI answer."""
    return Identity(
        name=m.name, role=m.role, auth_method=m.auth_method, principal=m.principal, token_id=m.token_id
    )


_RESTART_POLICIES = {
    "never": cpb.RESTART_POLICY_NEVER,
    "on-failure": cpb.RESTART_POLICY_ON_FAILURE,
    "always": cpb.RESTART_POLICY_ALWAYS,
}


def restart_policy_to_pb(policy: str) -> cpb.RestartPolicy.ValueType:
    """RestartPolicy for "never", "on-failure" or "always"; anything else is a ValueError."""
    try:
        return _RESTART_POLICIES[policy]
    except KeyError:
        raise ValueError(
            f"restart_policy must be one of {', '.join(_RESTART_POLICIES)}, not {policy!r}"
        ) from None


def restart_policy_from_pb(value: int) -> str:
    """The name of a RestartPolicy (unspecified: "never")."""
    for name, number in _RESTART_POLICIES.items():
        if number == value:
            return name
    return "never"
