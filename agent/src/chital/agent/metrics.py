"""The agent's Prometheus metrics: every one is declared here, once.

Prometheus conventions: the ``chital_agent_`` prefix, base units, ``_total`` on counters, no
unbounded labels. Label values come from closed sets (ioctl command names, errdefs class names, exit
reasons, event kinds, x86_64 system call names: at most 512) except ``container``, the container's
name on this host's device: its cardinality is bounded by the containers alive on the host (the
module's ``max_containers``), and a container's series disappear with it because they are read from
the device at scrape time. Never pids, process ids or request ids.

Three sources:

- :class:`AgentMetrics` holds the counters and histograms the agent's code updates, in a dedicated
  ``CollectorRegistry`` (never the global one); ``*_created`` series are disabled.
- :class:`InstrumentedDevice` wraps any ``Device`` (the port) and times every ioctl, counts its errors
  by errdefs class, and counts events read and dropped by the module's bounded queue.
- :class:`ContainerCollector` reads, at scrape time, every container's members and system call
  counters from the device (INFO and STATS) and its resource usage from its cgroup v2 directory
  (``memory.current``, ``cpu.stat``, ``pids.current``). Missing cgroup files are tolerated: without a
  cgroup (hollow agents, cgroup v1 hosts) usage is summed from ``/proc/<pid>`` of the members, and a
  container whose numbers cannot be read at all is left out rather than reported as zero.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from chital.errdefs import ChitalError

from ._version import __version__
from .device.base import ContainerInfo, Device, DeviceVersion, EventBatch, KernelContainerSpec
from .syscalls import name_of

__all__ = [
    "AgentMetrics",
    "ContainerCollector",
    "ContainerUsage",
    "InstrumentedDevice",
    "MetricsServer",
    "exit_reason",
    "parse_listen",
    "read_cgroup_usage",
    "read_proc_usage",
    "start_metrics_server",
]

log = logging.getLogger("chital.agent.metrics")

# No ``*_created`` series; same effect as PROMETHEUS_DISABLE_CREATED_SERIES=True.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

IOCTL_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1, 1.0)
EXIT_REASONS = ("exited", "failed", "signaled", "oom_killed")
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

T = TypeVar("T")


def exit_reason(exit_code: int, signal: int, oom_killed: bool = False) -> str:
    """``exited`` (code 0), ``failed`` (another code), ``signaled`` or ``oom_killed``."""
    if oom_killed:
        return "oom_killed"
    if signal:
        return "signaled"
    return "exited" if exit_code == 0 else "failed"


class AgentMetrics:
    """Every metric the agent's code updates, in its own registry."""

    def __init__(self, *, version: str = __version__, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        # process_* (CPU, resident memory, open fds of the agent itself) and python_info.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self._version = version
        self.build_info = Info(
            "chital_agent_build", "Version of the running agent and its device.", registry=r
        )
        self.build_info.info({"version": version, "device": "unknown"})

        self.ioctl_duration = Histogram(
            "chital_agent_device_ioctl_duration_seconds",
            "Latency of device calls (ioctl and read on /dev/chital), by command.",
            ["command"],
            buckets=IOCTL_BUCKETS,
            registry=r,
        )
        self.ioctl_errors = Counter(
            "chital_agent_device_ioctl_errors",
            "Device calls that failed, by command and errdefs class.",
            ["command", "error"],
            registry=r,
        )
        self.device_events = Counter(
            "chital_agent_device_events",
            "Event records read from the device, by kind (EXIT | FORK | DENIED | EMPTY).",
            ["kind"],
            registry=r,
        )
        self.device_events_dropped = Counter(
            "chital_agent_device_events_dropped",
            "Event records the module's bounded queue dropped before the agent read them.",
            registry=r,
        )
        self.stream_events_dropped = Counter(
            "chital_agent_stream_events_dropped",
            "Events the agent dropped because a StreamEvents subscriber fell behind.",
            registry=r,
        )
        self.event_conversion_failures = Counter(
            "chital_agent_event_conversion_failures",
            "Events skipped because a value did not convert (device: a kernel record; stream: a "
            "StreamEvents message); the stream carries on.",
            ["stage"],
            registry=r,
        )
        for stage in ("device", "stream"):
            self.event_conversion_failures.labels(stage)
        self.processes_started = Counter(
            "chital_agent_processes_started", "Processes started in containers.", registry=r
        )
        self.process_start_failures = Counter(
            "chital_agent_process_start_failures",
            "Process starts that failed, by errdefs class.",
            ["error"],
            registry=r,
        )
        self.process_exits = Counter(
            "chital_agent_process_exits",
            "Processes that exited, by reason (exited: code 0 | failed: other code | signaled | oom_killed).",
            ["reason"],
            registry=r,
        )
        for reason in EXIT_REASONS:
            self.process_exits.labels(reason)  # every reason from the start: rate() works at once
        self.event_streams = Gauge(
            "chital_agent_event_streams", "StreamEvents subscribers connected now.", registry=r
        )
        self.heartbeat_streams = Gauge(
            "chital_agent_heartbeat_streams",
            "Heartbeat streams open now (a controller's health stream of this agent: 1 when watched).",
            registry=r,
        )
        self._container_collector: ContainerCollector | None = None

    def set_device_kind(self, device_kind: str) -> None:
        """``fake`` or ``linux``: which adapter serves this agent (a label of ``chital_agent_build_info``)."""
        self.build_info.info({"version": self._version, "device": device_kind})

    def record_exit(self, exit_code: int, signal: int, oom_killed: bool = False) -> None:
        self.process_exits.labels(exit_reason(exit_code, signal, oom_killed)).inc()

    def watch_containers(
        self,
        device: Device,
        *,
        cgroup_dir_of: Callable[[str], Path | None] | None = None,
    ) -> ContainerCollector:
        """Export the device's containers (and their cgroups) at scrape time. Call once."""
        if self._container_collector is not None:
            self.registry.unregister(self._container_collector)
        self._container_collector = ContainerCollector(device, cgroup_dir_of=cgroup_dir_of)
        self.registry.register(self._container_collector)
        return self._container_collector

    def exposition(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


class InstrumentedDevice:
    """A ``Device`` that times every call on the wrapped one and counts its errors and events."""

    def __init__(self, inner: Device, metrics: AgentMetrics) -> None:
        self.inner = inner
        self._m = metrics

    def _call(self, command: str, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return fn()
        except ChitalError as exc:
            self._m.ioctl_errors.labels(command, type(exc).__name__).inc()
            raise
        except Exception:
            self._m.ioctl_errors.labels(command, "Internal").inc()
            raise
        finally:
            self._m.ioctl_duration.labels(command).observe(time.perf_counter() - start)

    def version(self) -> DeviceVersion:
        return self._call("VERSION", self.inner.version)

    def create(self, spec: KernelContainerSpec) -> int:
        return self._call("CREATE", lambda: self.inner.create(spec))

    def destroy(self, container_id: int, *, kill_members: bool = False) -> None:
        self._call("DESTROY", lambda: self.inner.destroy(container_id, kill_members=kill_members))

    def add_proc(self, container_id: int, pid: int, *, descendants: bool = False) -> None:
        self._call("ADD_PROC", lambda: self.inner.add_proc(container_id, pid, descendants=descendants))

    def remove_proc(self, container_id: int, pid: int) -> None:
        self._call("REMOVE_PROC", lambda: self.inner.remove_proc(container_id, pid))

    def list(self) -> list[int]:
        return self._call("LIST", self.inner.list)

    def info(self, container_id: int) -> ContainerInfo:
        return self._call("INFO", lambda: self.inner.info(container_id))

    def stats(self, container_id: int) -> Mapping[int, tuple[int, int]]:
        return self._call("STATS", lambda: self.inner.stats(container_id))

    def set_policy(
        self, container_id: int, deny_syscalls: frozenset[int], *, deny_raw_sockets: bool = False
    ) -> None:
        self._call(
            "SET_POLICY",
            lambda: self.inner.set_policy(container_id, deny_syscalls, deny_raw_sockets=deny_raw_sockets),
        )

    def read_events(self, max_events: int = 256, timeout: float | None = 0.0) -> EventBatch:
        # Not timed: a read waits for events by design, its latency would be idle time.
        try:
            batch = self.inner.read_events(max_events, timeout)
        except ChitalError as exc:
            self._m.ioctl_errors.labels("READ", type(exc).__name__).inc()
            raise
        for event in batch.events:
            self._m.device_events.labels(event.kind.name).inc()
        if batch.dropped:
            self._m.device_events_dropped.inc(batch.dropped)
        return batch

    def fileno(self) -> int:
        return self.inner.fileno()

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        # Adapter-specific extras (FakeDevice's test hooks) pass through untouched.
        return getattr(self.inner, name)


# -- resource usage ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContainerUsage:
    """Resource usage of one container; None where it could not be read."""

    memory_bytes: int | None = None
    cpu_seconds: float | None = None
    pids: int | None = None
    source: str = "cgroup"  # cgroup | proc


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def read_cgroup_usage(cgroup_dir: Path) -> ContainerUsage | None:
    """Usage from a cgroup v2 directory; None if the directory is gone. Absent files give None fields."""
    if not cgroup_dir.is_dir():
        return None
    cpu: float | None = None
    with contextlib.suppress(OSError, ValueError):
        for line in (cgroup_dir / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                cpu = int(value) / 1e6
                break
    return ContainerUsage(
        memory_bytes=_read_int(cgroup_dir / "memory.current"),
        cpu_seconds=cpu,
        pids=_read_int(cgroup_dir / "pids.current"),
        source="cgroup",
    )


def read_proc_usage(pids: Iterable[int], proc: Path = Path("/proc")) -> ContainerUsage:
    """Usage summed over ``pids`` from ``/proc`` (resident memory, user+system CPU, task count).

    Processes that exit meanwhile are skipped. Less exact than a cgroup (no page cache, exited children's
    CPU is lost), which is why it is only the fallback.
    """
    rss = 0
    cpu_ticks = 0
    tasks = 0
    for pid in pids:
        try:
            statm = (proc / str(pid) / "statm").read_text().split()
            stat = (proc / str(pid) / "stat").read_text()
        except OSError:
            continue
        # comm may contain spaces and parentheses: fields start after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        try:
            rss += int(statm[1]) * _PAGE_SIZE
            cpu_ticks += int(fields[11]) + int(fields[12])  # utime, stime
            tasks += int(fields[17])  # num_threads
        except (IndexError, ValueError):
            continue
    return ContainerUsage(memory_bytes=rss, cpu_seconds=cpu_ticks / _CLK_TCK, pids=tasks, source="proc")


class ContainerCollector(Collector):
    """Reads every container's membership, system call counters and usage at scrape time."""

    def __init__(self, device: Device, *, cgroup_dir_of: Callable[[str], Path | None] | None = None) -> None:
        self._device = device
        self._cgroup_dir_of = cgroup_dir_of or (lambda _name: None)
        self._lock = threading.Lock()  # one scrape at a time reads the device

    def describe(self) -> Iterable[Any]:
        return []  # registration must not read the device

    def _infos(self) -> list[ContainerInfo]:
        infos = []
        for cid in self._device.list():
            with contextlib.suppress(ChitalError):  # destroyed between LIST and INFO
                infos.append(self._device.info(cid))
        return infos

    def collect(self) -> Iterator[Any]:
        with self._lock:
            try:
                infos = self._infos()
            except ChitalError:
                log.warning("reading containers for /metrics failed", exc_info=True)
                return
            yield from self._families(infos)

    def _families(self, infos: list[ContainerInfo]) -> Iterator[Any]:
        containers = GaugeMetricFamily("chital_agent_containers", "Containers on this host's device.")
        containers.add_metric([], len(infos))
        processes = GaugeMetricFamily(
            "chital_agent_processes", "Member processes of all containers on this host's device."
        )
        processes.add_metric([], sum(len(i.members) for i in infos))
        members = GaugeMetricFamily(
            "chital_agent_container_processes", "Member processes of each container.", labels=["container"]
        )
        syscalls = CounterMetricFamily(
            "chital_agent_container_syscalls",
            "System calls made by members of each container.",
            labels=["container"],
        )
        denied = CounterMetricFamily(
            "chital_agent_container_denied_syscalls",
            "System calls of members that the container's policy denied.",
            labels=["container"],
        )
        by_call = CounterMetricFamily(
            "chital_agent_syscall_calls",
            "System calls by container and system call name (only calls made at least once).",
            labels=["container", "syscall"],
        )
        by_call_denied = CounterMetricFamily(
            "chital_agent_syscall_denials",
            "Denied system calls by container and system call name (only calls denied at least once).",
            labels=["container", "syscall"],
        )
        memory = GaugeMetricFamily(
            "chital_agent_container_memory_usage_bytes",
            "Memory used by each container (cgroup memory.current; RSS of members without a cgroup).",
            labels=["container"],
        )
        cpu = CounterMetricFamily(
            "chital_agent_container_cpu_usage_seconds",
            "CPU time used by each container (cgroup cpu.stat usage_usec; members' utime+stime without one).",
            labels=["container"],
        )
        pids = GaugeMetricFamily(
            "chital_agent_container_pids",
            "Tasks in each container (cgroup pids.current; members' threads without a cgroup).",
            labels=["container"],
        )
        for info in infos:
            name = info.name
            members.add_metric([name], len(info.members))
            syscalls.add_metric([name], info.syscalls_total)
            denied.add_metric([name], info.denied_total)
            with contextlib.suppress(ChitalError):
                for nr, (calls, denials) in sorted(self._device.stats(info.id).items()):
                    syscall = name_of(nr)
                    if calls:
                        by_call.add_metric([name, syscall], calls)
                    if denials:
                        by_call_denied.add_metric([name, syscall], denials)
            usage = self._usage(info)
            if usage.memory_bytes is not None:
                memory.add_metric([name], usage.memory_bytes)
            if usage.cpu_seconds is not None:
                cpu.add_metric([name], usage.cpu_seconds)
            if usage.pids is not None:
                pids.add_metric([name], usage.pids)
        yield from (containers, processes, members, syscalls, denied, by_call, by_call_denied)
        yield from (memory, cpu, pids)

    def _usage(self, info: ContainerInfo) -> ContainerUsage:
        cgroup_dir = None
        with contextlib.suppress(Exception):
            cgroup_dir = self._cgroup_dir_of(info.name)
        if cgroup_dir is not None:
            usage = read_cgroup_usage(cgroup_dir)
            if usage is not None:
                return usage
        return read_proc_usage(info.members)


# -- the /metrics HTTP server ------------------------------------------------------------------------


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9472"`` -> ``("127.0.0.1", 9472)``; ``"[::1]:0"`` -> ``("::1", 0)``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"metrics address {listen!r} is not HOST:PORT")
    host = host.removeprefix("[").removesuffix("]") or "0.0.0.0"
    return host, int(port)


@dataclass
class MetricsServer:
    """A running /metrics endpoint; ``port`` is the bound port (useful with port 0)."""

    host: str
    port: int
    _server: Any
    _thread: threading.Thread

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


def start_metrics_server(
    listen: str,
    registry: CollectorRegistry,
    *,
    port_file: Path | None = None,
    certfile: Path | None = None,
    keyfile: Path | None = None,
) -> MetricsServer:
    """Serve ``registry`` at ``http://listen/metrics`` (daemon thread), or ``https://`` with
    ``certfile`` and ``keyfile`` (no client certificate asked for); bound port -> ``port_file``."""
    host, port = parse_listen(listen)
    tls = certfile is not None and keyfile is not None
    server, thread = prometheus_client.start_http_server(
        port,
        addr=host,
        registry=registry,
        certfile=str(certfile) if tls else None,
        keyfile=str(keyfile) if tls else None,
    )
    bound = int(server.server_port)
    if port_file is not None:
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(f"{bound}\n")
        tmp.replace(port_file)
    log.info("serving /metrics on %s://%s:%d", "https" if tls else "http", host, bound)
    return MetricsServer(host, bound, server, thread)
