"""Calls to agents: one gRPC channel per host address, a deadline on every unary call, and the one
place where an agent's gRPC status becomes an errdefs exception.

UNAVAILABLE, DEADLINE_EXCEEDED and CANCELLED become :class:`~chital.errdefs.Unavailable` naming the
host; other codes keep their class (an agent's InvalidArgument is the client's InvalidArgument).

Transport: with channel credentials (the controller's bundle: the fleet CA and the controller's
client certificate) every agent is dialled over mutual TLS, and gRPC checks the agent's certificate
against the host part of its registered address (an IP SAN for an IP, a DNS SAN for a name), so a
host that presents another host's certificate fails the handshake. Without credentials (the
controller's ``--insecure``) agents are dialled in plaintext, and only on loopback addresses.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc

from chital.api.agent.v1 import agent_pb2, agent_pb2_grpc
from chital.controller.metrics import ControllerMetrics
from chital.controller.records import AgentEventRecord, AgentInfoRecord, ContainerRecord, ProcessRecord
from chital.daemon.logs import RequestIdClientInterceptor
from chital.errdefs import ChitalError, FailedPrecondition, Unavailable
from chital.errdefs.grpc import from_grpc_code
from chital.security.tls import is_loopback

__all__ = [
    "AgentClient",
    "AgentPool",
    "AgentProcessView",
    "AgentSyncRecord",
    "LogChunkRecord",
    "map_agent_error",
]

T = TypeVar("T")

DEFAULT_TIMEOUT = 5.0
_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
_EVENT_KINDS = {
    agent_pb2.EVENT_KIND_PROCESS_STARTED: "PROCESS_STARTED",
    agent_pb2.EVENT_KIND_PROCESS_EXITED: "PROCESS_EXITED",
    agent_pb2.EVENT_KIND_SYSCALL_DENIED: "SYSCALL_DENIED",
    agent_pb2.EVENT_KIND_CONTAINER_EMPTY: "CONTAINER_EMPTY",
    agent_pb2.EVENT_KIND_EVENTS_DROPPED: "EVENTS_DROPPED",
}


def map_agent_error(address: str, exc: grpc.RpcError) -> ChitalError:
    """The errdefs exception for a failed call to the agent at ``address``."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    if code in _TRANSIENT:
        return Unavailable(f"agent {address} unavailable: {code.name.lower()}: {details}".rstrip(": "))
    return from_grpc_code(code, f"agent {address}: {details or code.name}")


def _time(ts: Any) -> datetime | None:
    if not ts.seconds and not ts.nanos:
        return None
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class LogChunkRecord:
    """One chunk of a process's output; stream is "stdout" or "stderr"."""

    stream: str
    data: bytes


@dataclass(frozen=True)
class StartedProcess:
    """What an agent reported after starting a process."""

    pid: int
    start_time: datetime | None
    exited: bool
    exit_code: int
    signal: int
    oom_killed: bool
    exit_time: datetime | None


@dataclass(frozen=True)
class AgentProcessView:
    """A process as an agent's Sync reports it."""

    uid: str
    container_uid: str
    pid: int
    exited: bool
    exit_code: int
    signal: int
    oom_killed: bool
    start_time: datetime | None
    exit_time: datetime | None


@dataclass(frozen=True)
class AgentSyncRecord:
    """Everything an agent has: its containers (uid -> member pids) and processes (by uid)."""

    containers: dict[str, tuple[int, ...]]
    processes: dict[str, AgentProcessView]
    last_event_seq: int


class AgentClient:
    """Typed calls to one agent."""

    def __init__(
        self,
        address: str,
        channel: grpc.Channel,
        timeout: float = DEFAULT_TIMEOUT,
        metrics: ControllerMetrics | None = None,
        host_label: str = "",
    ) -> None:
        self.address = address
        # The request id of the RPC being served goes on to the agent (x-request-id): both logs show it.
        self._stub = agent_pb2_grpc.AgentServiceStub(
            grpc.intercept_channel(channel, RequestIdClientInterceptor())
        )
        self.timeout = timeout
        self._metrics = metrics
        self._host_label = host_label or address

    def _call(self, fn: Callable[[], T], method: str = "") -> T:
        done = self._metrics.time_agent_call(self._host_label, method) if self._metrics else None
        try:
            result = fn()
        except grpc.RpcError as exc:
            if done is not None:
                done(exc.code().name if hasattr(exc, "code") else "UNKNOWN")
            raise map_agent_error(self.address, exc) from exc
        if done is not None:
            done("OK")
        return result

    def get_info(self, timeout: float | None = None) -> AgentInfoRecord:
        """The agent's versions and state (the health check)."""
        resp = self._call(
            lambda: self._stub.GetInfo(agent_pb2.GetInfoRequest(), timeout=timeout or self.timeout), "GetInfo"
        )
        return info_from_pb(resp)

    def sync(self) -> AgentSyncRecord:
        """The agent's full state, rebuilt from the kernel (containers, processes, exits kept)."""
        resp = self._call(lambda: self._stub.Sync(agent_pb2.SyncRequest(), timeout=self.timeout), "Sync")
        return AgentSyncRecord(
            containers={c.uid: tuple(c.member_pids) for c in resp.containers},
            processes={
                p.uid: AgentProcessView(
                    uid=p.uid,
                    container_uid=p.container_uid,
                    pid=p.pid,
                    exited=p.state == agent_pb2.PROCESS_STATE_EXITED,
                    exit_code=p.exit_code,
                    signal=p.signal,
                    oom_killed=p.oom_killed,
                    start_time=_time(p.start_time),
                    exit_time=_time(p.exit_time),
                )
                for p in resp.processes
            },
            last_event_seq=resp.last_event_seq,
        )

    def create_container(self, container: ContainerRecord) -> tuple[str, ...]:
        """Create the container on the host (idempotent by uid); returns the deny list it enforces."""
        req = agent_pb2.CreateContainerRequest(
            uid=container.uid,
            name=container.name,
            root=container.root,
            limits=agent_pb2.Limits(
                memory_max_bytes=container.limits.memory_max_bytes,
                pids_max=container.limits.pids_max,
                cpu_max_millicores=container.limits.cpu_max_millicores,
            ),
            deny_syscalls=list(container.deny_syscalls),
            sandbox=agent_pb2.Sandbox(
                allow_syscalls=list(container.sandbox.allow_syscalls),
                allow_raw_sockets=container.sandbox.allow_raw_sockets,
                capabilities=list(container.sandbox.capabilities),
                host_network=container.sandbox.host_network,
                allow_host_root=container.sandbox.allow_host_root,
            ),
        )
        resp = self._call(lambda: self._stub.CreateContainer(req, timeout=self.timeout), "CreateContainer")
        return tuple(resp.container.effective_deny_syscalls)

    def get_container_stats(self, uid: str) -> agent_pb2.GetContainerStatsResponse:
        """The kernel's per-syscall counters and the cgroup usage of a container."""
        req = agent_pb2.GetContainerStatsRequest(uid=uid)
        return self._call(
            lambda: self._stub.GetContainerStats(req, timeout=self.timeout), "GetContainerStats"
        )

    def destroy_container(self, uid: str, grace_seconds: float) -> None:
        """Signal the members (TERM, KILL after the grace period) and remove the container."""
        req = agent_pb2.DestroyContainerRequest(uid=uid, grace_period_seconds=grace_seconds)
        self._call(
            lambda: self._stub.DestroyContainer(req, timeout=self.timeout + grace_seconds), "DestroyContainer"
        )

    def start_process(self, process: ProcessRecord) -> StartedProcess:
        """Start a process (idempotent by process uid)."""
        req = agent_pb2.StartProcessRequest(
            container_uid=process.container_uid,
            process_uid=process.uid,
            argv=list(process.argv),
            env=dict(process.env),
            cwd=process.cwd,
            user_id=process.user_id,
            group_id=process.group_id,
        )
        resp = self._call(lambda: self._stub.StartProcess(req, timeout=self.timeout), "StartProcess")
        p = resp.process
        return StartedProcess(
            pid=p.pid,
            start_time=_time(p.start_time),
            exited=p.state == agent_pb2.PROCESS_STATE_EXITED,
            exit_code=p.exit_code,
            signal=p.signal,
            oom_killed=p.oom_killed,
            exit_time=_time(p.exit_time),
        )

    def signal_process(self, process_uid: str, signal: int) -> None:
        """Send a signal to a process."""
        req = agent_pb2.SignalProcessRequest(process_uid=process_uid, signal=signal)
        self._call(lambda: self._stub.SignalProcess(req, timeout=self.timeout), "SignalProcess")

    def stream_events(self, after_seq: int) -> Any:
        """The agent's event stream after ``after_seq`` (a call object: iterate it, cancel it)."""
        return self._stub.StreamEvents(agent_pb2.StreamEventsRequest(after_seq=after_seq))

    def stream_logs(
        self, process_uid: str, follow: bool, tail_lines: int, timeout: float | None
    ) -> tuple[Any, Iterator[LogChunkRecord]]:
        """The agent's log stream: the call (to cancel) and the chunks."""
        call = self._stub.StreamLogs(
            agent_pb2.StreamLogsRequest(process_uid=process_uid, follow=follow, tail_lines=tail_lines),
            timeout=timeout,
        )

        def chunks() -> Iterator[LogChunkRecord]:
            try:
                for msg in call:
                    stream = "stderr" if msg.stream == agent_pb2.LOG_STREAM_STDERR else "stdout"
                    yield LogChunkRecord(stream, bytes(msg.data))
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.CANCELLED:
                    return
                raise map_agent_error(self.address, exc) from exc

        return call, chunks()


def info_from_pb(resp: Any) -> AgentInfoRecord:
    """AgentInfoRecord from a GetInfoResponse."""
    abi = f"{resp.abi_major}.{resp.abi_minor}" if resp.abi_major or resp.abi_minor else ""
    return AgentInfoRecord(
        agent_version=resp.agent_version,
        kernel_release=resp.kernel_release,
        module_version=resp.module_version,
        abi_version=abi,
        device=resp.device,
        sandboxed=resp.sandboxed,
        boot_id=resp.boot_id,
        last_event_seq=resp.last_event_seq,
        state_hash=resp.state_hash,
    )


def event_from_pb(msg: Any) -> AgentEventRecord:
    """AgentEventRecord from a StreamEventsResponse."""
    return AgentEventRecord(
        seq=msg.seq,
        kind=_EVENT_KINDS.get(msg.kind, "UNSPECIFIED"),
        container_uid=msg.container_uid,
        process_uid=msg.process_uid,
        pid=msg.pid,
        exit_code=msg.exit_code,
        signal=msg.signal,
        oom_killed=msg.oom_killed,
        time=_time(msg.time),
        count=msg.count,
    )


_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    # The wait for a ping's ack is this one in grpcio 1.85 (60 s by default), not the keepalive
    # timeout: without it a call to a frozen agent waits for its deadline.
    ("grpc.http2.ping_timeout_ms", 5_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # Fail fast instead of waiting for the reconnect backoff (up to 120 s)
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]


class AgentPool:
    """One channel per agent address, opened on first use and kept (one TLS handshake per
    connection, not per call).

    ``credentials``: the controller's channel credentials (mutual TLS); None dials in plaintext and
    refuses every address that is not loopback with FailedPrecondition."""

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT,
        metrics: ControllerMetrics | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.timeout = timeout
        self._metrics = metrics
        self._credentials = credentials
        self._host_ids: dict[str, str] = {}
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        # One client per address, made with its channel: a create calls its agent once, and making
        # the stub and its interceptor chain on every call cost about as much as the call's own
        # client side. Dropped with the channel, and when the host ids (metric labels) change.
        self._clients: dict[str, AgentClient] = {}
        self._closed = False

    @property
    def secure(self) -> bool:
        """Agents are dialled over mutual TLS."""
        return self._credentials is not None

    def check_address(self, address: str) -> None:
        """FailedPrecondition when ``address`` cannot be dialled: plaintext beyond loopback."""
        if self._credentials is None and not is_loopback(address):
            raise FailedPrecondition(
                f"agent {address}: the controller runs with --insecure, which dials agents in plaintext "
                "and only on loopback; give the controller --tls-dir to reach agents on other addresses"
            )

    def get(self, address: str) -> AgentClient:
        """The client for the agent at ``address`` (clients are thread-safe and shared)."""
        self.check_address(address)
        with self._lock:
            if self._closed:
                raise Unavailable("controller is shutting down")
            client = self._clients.get(address)
            if client is not None:
                return client
            channel = self._channels.get(address)
            if channel is None:
                if self._credentials is not None:
                    channel = grpc.secure_channel(address, self._credentials, options=_CHANNEL_OPTIONS)
                else:
                    channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
                self._channels[address] = channel
            label = self._host_ids.get(address, "")
            client = AgentClient(address, channel, self.timeout, self._metrics, label)
            self._clients[address] = client
            return client

    def aio_channel(self, address: str) -> grpc.aio.Channel:
        """A new asyncio channel to the agent at ``address``, with the pool's credentials and
        options, for streams read on an event loop (the health monitor's heartbeats). Call it on
        that loop; the caller closes it."""
        self.check_address(address)
        with self._lock:
            if self._closed:
                raise Unavailable("controller is shutting down")
        if self._credentials is not None:
            return grpc.aio.secure_channel(address, self._credentials, options=_CHANNEL_OPTIONS)
        return grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)

    def set_host_ids(self, host_ids: dict[str, str]) -> None:
        """Address -> host id, for the ``host`` label of agent call metrics."""
        with self._lock:
            if host_ids != self._host_ids:
                self._host_ids = dict(host_ids)
                self._clients.clear()  # made again with their new labels

    def forget(self, address: str) -> None:
        """Close the channel to a removed host."""
        with self._lock:
            channel = self._channels.pop(address, None)
            self._clients.pop(address, None)
        if channel is not None:
            channel.close()

    def close(self) -> None:
        """Close every channel."""
        with self._lock:
            self._closed = True
            channels = list(self._channels.values())
            self._channels.clear()
            self._clients.clear()
        for channel in channels:
            channel.close()
