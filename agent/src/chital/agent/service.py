# ruff: noqa: N802 - method names are the RPC names that grpc generated.
"""AgentService: the gRPC adapter over :class:`~chital.agent.runtime.AgentRuntime`.

Protobuf stops here: requests are unpacked into plain values, results packed from dataclasses. Errors
are ``chital.errdefs`` exceptions, mapped to status codes by ``ErrorInterceptor``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from chital.api.agent.v1 import agent_pb2 as pb
from chital.api.agent.v1 import agent_pb2_grpc as pb_grpc

from .metrics import AgentMetrics
from .runtime import (
    AgentEvent,
    AgentEventKind,
    AgentRuntime,
    ContainerView,
    LimitsView,
    ProcessStatus,
    ProcessView,
    SandboxView,
)

__all__ = ["AgentService"]

log = logging.getLogger("chital.agent.service")

_EVENT_KINDS = {
    AgentEventKind.PROCESS_STARTED: pb.EVENT_KIND_PROCESS_STARTED,
    AgentEventKind.PROCESS_EXITED: pb.EVENT_KIND_PROCESS_EXITED,
    AgentEventKind.SYSCALL_DENIED: pb.EVENT_KIND_SYSCALL_DENIED,
    AgentEventKind.CONTAINER_EMPTY: pb.EVENT_KIND_CONTAINER_EMPTY,
    AgentEventKind.EVENTS_DROPPED: pb.EVENT_KIND_EVENTS_DROPPED,
}
_PROCESS_STATES = {
    ProcessStatus.RUNNING: pb.PROCESS_STATE_RUNNING,
    ProcessStatus.EXITED: pb.PROCESS_STATE_EXITED,
}
_LOG_STREAMS = {"stdout": pb.LOG_STREAM_STDOUT, "stderr": pb.LOG_STREAM_STDERR}
#: How long a stream waits for news before it checks that its client is still there.
_STREAM_POLL_S = 0.5
#: Heartbeat intervals: the default when the controller asks for none, and the bounds of a request.
HEARTBEAT_DEFAULT_MS = 1000
HEARTBEAT_MIN_MS = 100
HEARTBEAT_MAX_MS = 60_000


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def container_pb(view: ContainerView) -> pb.Container:
    return pb.Container(
        uid=view.uid,
        name=view.name,
        root=view.root,
        limits=pb.Limits(
            memory_max_bytes=view.limits.memory_max_bytes,
            pids_max=view.limits.pids_max,
            cpu_max_millicores=view.limits.cpu_max_millicores,
        ),
        deny_syscalls=view.deny_syscalls,
        kernel_id=view.kernel_id,
        member_pids=view.member_pids,
        sandbox=pb.Sandbox(
            allow_syscalls=view.sandbox.allow_syscalls,
            allow_raw_sockets=view.sandbox.allow_raw_sockets,
            capabilities=view.sandbox.capabilities,
            host_network=view.sandbox.host_network,
            allow_host_root=view.sandbox.allow_host_root,
        ),
        effective_deny_syscalls=view.effective_deny_syscalls,
    )


def process_pb(view: ProcessView) -> pb.Process:
    return pb.Process(
        uid=view.uid,
        container_uid=view.container_uid,
        pid=view.pid,
        state=_PROCESS_STATES[view.state],
        exit_code=view.exit_code,
        signal=view.signal,
        oom_killed=view.oom_killed,
        start_time=_timestamp(view.start_time),
        exit_time=_timestamp(view.exit_time),
        argv=view.argv,
    )


_I32 = (-(2**31), 2**31 - 1)
_U64 = (0, 2**64 - 1)


def _fit(value: int, bounds: tuple[int, int]) -> int:
    """A kernel value clamped into its proto field: no value may break the event stream."""
    return max(bounds[0], min(bounds[1], int(value)))


def event_pb(event: AgentEvent) -> pb.StreamEventsResponse:
    """One event as a message; values outside their field are clamped (the runtime already moved
    the compat bit of a denied system call into ``compat_syscall``)."""
    return pb.StreamEventsResponse(
        seq=_fit(event.seq, _U64),
        kind=_EVENT_KINDS[event.kind],
        container_uid=event.container_uid,
        process_uid=event.process_uid,
        pid=_fit(event.pid, _I32),
        exit_code=_fit(event.exit_code, _I32),
        signal=_fit(event.signal, _I32),
        oom_killed=event.oom_killed,
        syscall_number=_fit(event.syscall_number, _I32),
        count=_fit(event.count, _U64),
        time=_timestamp(event.time),
        compat_syscall=event.compat_syscall,
    )


class AgentService(pb_grpc.AgentServiceServicer):
    """Thin adapter: one method per RPC, no logic beyond (un)packing."""

    def __init__(self, runtime: AgentRuntime, metrics: AgentMetrics | None = None) -> None:
        self._rt = runtime
        self._metrics = metrics

    def GetInfo(self, request: pb.GetInfoRequest, context: grpc.ServicerContext) -> pb.GetInfoResponse:
        return self._info()

    def _info(self) -> pb.GetInfoResponse:
        i = self._rt.info()
        return pb.GetInfoResponse(
            agent_version=i.agent_version,
            kernel_release=i.kernel_release,
            module_version=i.module_version,
            abi_major=i.abi_major,
            abi_minor=i.abi_minor,
            device=i.device,
            sandboxed=i.sandboxed,
            max_containers=i.max_containers,
            container_count=i.container_count,
            state_hash=i.state_hash,
            boot_id=i.boot_id,
            last_event_seq=i.last_event_seq,
            limits_enforced=i.limits_enforced,
        )

    def Sync(self, request: pb.SyncRequest, context: grpc.ServicerContext) -> pb.SyncResponse:
        state = self._rt.sync()
        return pb.SyncResponse(
            containers=[container_pb(c) for c in state.containers],
            processes=[process_pb(p) for p in state.processes],
            last_event_seq=state.last_event_seq,
        )

    def CreateContainer(
        self, request: pb.CreateContainerRequest, context: grpc.ServicerContext
    ) -> pb.CreateContainerResponse:
        view = self._rt.create_container(
            uid=request.uid,
            name=request.name,
            root=request.root,
            limits=LimitsView(
                memory_max_bytes=request.limits.memory_max_bytes,
                pids_max=request.limits.pids_max,
                cpu_max_millicores=request.limits.cpu_max_millicores,
            ),
            deny_syscalls=list(request.deny_syscalls),
            sandbox=SandboxView(
                allow_syscalls=tuple(request.sandbox.allow_syscalls),
                allow_raw_sockets=request.sandbox.allow_raw_sockets,
                capabilities=tuple(request.sandbox.capabilities),
                host_network=request.sandbox.host_network,
                allow_host_root=request.sandbox.allow_host_root,
            ),
        )
        return pb.CreateContainerResponse(container=container_pb(view))

    def DestroyContainer(
        self, request: pb.DestroyContainerRequest, context: grpc.ServicerContext
    ) -> pb.DestroyContainerResponse:
        self._rt.destroy_container(request.uid, request.grace_period_seconds)
        return pb.DestroyContainerResponse()

    def StartProcess(
        self, request: pb.StartProcessRequest, context: grpc.ServicerContext
    ) -> pb.StartProcessResponse:
        view = self._rt.start_process(
            container_uid=request.container_uid,
            process_uid=request.process_uid,
            argv=list(request.argv),
            env=dict(request.env),
            cwd=request.cwd,
            user_id=request.user_id if request.HasField("user_id") else None,
            group_id=request.group_id if request.HasField("group_id") else None,
        )
        return pb.StartProcessResponse(process=process_pb(view))

    def AdoptProcess(
        self, request: pb.AdoptProcessRequest, context: grpc.ServicerContext
    ) -> pb.AdoptProcessResponse:
        view = self._rt.adopt_process(request.container_uid, request.process_uid, request.pid)
        return pb.AdoptProcessResponse(process=process_pb(view))

    def RemoveProcess(
        self, request: pb.RemoveProcessRequest, context: grpc.ServicerContext
    ) -> pb.RemoveProcessResponse:
        self._rt.remove_process(request.container_uid, request.pid)
        return pb.RemoveProcessResponse()

    def SignalProcess(
        self, request: pb.SignalProcessRequest, context: grpc.ServicerContext
    ) -> pb.SignalProcessResponse:
        self._rt.signal_process(request.process_uid, request.signal)
        return pb.SignalProcessResponse()

    def GetContainerStats(
        self, request: pb.GetContainerStatsRequest, context: grpc.ServicerContext
    ) -> pb.GetContainerStatsResponse:
        stats = self._rt.get_container_stats(request.uid)
        return pb.GetContainerStatsResponse(
            syscalls=[
                pb.SyscallCount(name=s.name, number=s.number, calls=s.calls, denied=s.denied)
                for s in stats.syscalls
            ],
            syscalls_total=stats.syscalls_total,
            denied_total=stats.denied_total,
            members=stats.members,
            memory_current_bytes=stats.memory_current_bytes,
            oom_kills=stats.oom_kills,
            pids_current=stats.pids_current,
            cpu_usage_usec=stats.cpu_usage_usec,
        )

    def StreamEvents(
        self, request: pb.StreamEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamEventsResponse]:
        last = request.after_seq
        if self._metrics is not None:
            self._metrics.event_streams.inc()
        try:
            while context.is_active() and not self._rt.closed:
                for event in self._rt.wait_events(last, _STREAM_POLL_S):
                    if last and event.seq > last + 1 and self._metrics is not None:
                        self._metrics.stream_events_dropped.inc(event.seq - last - 1)
                    last = event.seq
                    try:
                        message = event_pb(event)
                    except Exception:  # one bad event must never end the stream (nor any other)
                        log.exception("cannot convert event %s; skipped", event)
                        if self._metrics is not None:
                            self._metrics.event_conversion_failures.labels("stream").inc()
                        continue
                    yield message
        finally:
            if self._metrics is not None:
                self._metrics.event_streams.dec()

    def StreamLogs(
        self, request: pb.StreamLogsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamLogsResponse]:
        chunks = self._rt.stream_logs(
            request.process_uid, request.follow, request.tail_lines, is_active=context.is_active
        )
        for chunk in chunks:
            yield pb.StreamLogsResponse(stream=_LOG_STREAMS[chunk.stream], data=chunk.data)

    def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.HeartbeatResponse]:
        interval = heartbeat_interval(request.interval_ms)
        # Set when the controller leaves (or the server stops): the wait between beats ends at once.
        gone = threading.Event()
        context.add_callback(gone.set)
        if self._metrics is not None:
            self._metrics.heartbeat_streams.inc()
        sequence = 0
        sent: pb.GetInfoResponse | None = None
        try:
            while context.is_active() and not self._rt.closed:
                sequence += 1
                info = self._info()
                if info == sent:
                    yield pb.HeartbeatResponse(sequence=sequence)
                else:
                    sent = info
                    yield pb.HeartbeatResponse(sequence=sequence, info=info)
                if gone.wait(interval):
                    return
        finally:
            if self._metrics is not None:
                self._metrics.heartbeat_streams.dec()


def heartbeat_interval(interval_ms: int) -> float:
    """Seconds between two beats for a request's ``interval_ms`` (0: the default), within bounds."""
    if interval_ms == 0:
        return HEARTBEAT_DEFAULT_MS / 1000
    return min(max(interval_ms, HEARTBEAT_MIN_MS), HEARTBEAT_MAX_MS) / 1000
