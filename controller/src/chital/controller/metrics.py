"""Every metric of the controller, declared once (``chital_controller_`` prefix, base units).

The names are the ones deploy/prometheus (rules) and deploy/grafana (dashboards) query. Each
controller has its own registry (several controllers can live in one test process). Gauges of hosts,
containers and processes by state are read from the database at scrape time, so they are right with
several replicas too. Label values are closed sets, except ``host`` (a host id: bounded by the fleet).
A ``host`` label goes only on gauges and counters (one or two series per host), never on a histogram:
a per-host histogram of every agent method would be about 100,000 series on 1,000 hosts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily

from chital.controller._version import __version__
from chital.controller.records import ContainerRecordState, HostRecordState, ProcessRecordState

__all__ = ["ControllerMetrics", "StateSource"]

# No ``*_created`` series (prometheus_client emits them unless disabled); same effect as
# PROMETHEUS_DISABLE_CREATED_SERIES=True, whatever the environment says.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

# Returns (hosts, containers by state, processes by state, seconds since last ok per host id).
StateSource = Callable[[], tuple[list[Any], dict[str, int], dict[str, int], dict[str, float]]]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _StateCollector:
    """Hosts, containers and processes by state, from the store, at scrape time."""

    def __init__(self, source: StateSource, streams: Callable[[], int]) -> None:
        self._source = source
        self._streams = streams

    def collect(self) -> Iterator[GaugeMetricFamily]:
        hosts, containers, processes, ages = self._source()
        by_state = GaugeMetricFamily(
            "chital_controller_hosts",
            "Registered hosts by state and admin state.",
            labels=["state", "admin_state"],
        )
        counts: dict[tuple[str, str], int] = {}
        per_host = GaugeMetricFamily(
            "chital_controller_host_state",
            "1 for the state each host is in, else 0.",
            labels=["host", "state"],
        )
        placed = GaugeMetricFamily(
            "chital_controller_host_containers", "Containers placed on each host.", labels=["host"]
        )
        age = GaugeMetricFamily(
            "chital_controller_host_health_check_age_seconds",
            "Seconds since the last successful health check of each host.",
            labels=["host"],
        )
        for host in hosts:
            key = (host.state.value, host.admin_state.value)
            counts[key] = counts.get(key, 0) + 1
            for state in HostRecordState:
                per_host.add_metric([host.id, state.value], 1.0 if host.state is state else 0.0)
            placed.add_metric([host.id], host.container_count)
            if host.id in ages:
                age.add_metric([host.id], ages[host.id])
        for state in HostRecordState:
            for admin in ("ACTIVE", "CORDONED", "DRAINING"):
                by_state.add_metric([state.value, admin], counts.get((state.value, admin), 0))
        yield by_state
        yield per_host
        yield placed
        yield age
        c = GaugeMetricFamily("chital_controller_containers", "Containers by state.", labels=["state"])
        for cstate in ContainerRecordState:
            c.add_metric([cstate.value], containers.get(cstate.value, 0))
        yield c
        p = GaugeMetricFamily("chital_controller_processes", "Processes by state.", labels=["state"])
        for pstate in ProcessRecordState:
            p.add_metric([pstate.value], processes.get(pstate.value, 0))
        yield p
        yield GaugeMetricFamily(
            "chital_controller_agent_event_streams",
            "Agent event streams being consumed.",
            value=self._streams(),
        )


class _StreamSlotsCollector:
    """The long-lived calls (streams and waits) served now, and the most served at once."""

    def __init__(self, in_use: Callable[[], int], limit: int) -> None:
        self._in_use = in_use
        self._limit = limit

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "chital_controller_grpc_streams",
            "Streams and waits (Watch, StreamLogs, WaitProcess, ...) being served.",
            value=self._in_use(),
        )
        yield GaugeMetricFamily(
            "chital_controller_grpc_streams_limit",
            "The most streams and waits served at once (max_streams); more are RESOURCE_EXHAUSTED.",
            value=self._limit,
        )


_ROLLOUT_STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "INTERRUPTED")
_ROLLOUT_END_STATES = _ROLLOUT_STATES[2:]


class _RolloutCollector:
    """Rollouts by state, from the database, at scrape time."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self._counts()
        family = GaugeMetricFamily("chital_controller_rollouts", "Rollouts by state.", labels=["state"])
        for state in _ROLLOUT_STATES:
            family.add_metric([state], counts.get(state, 0))
        yield family


class ControllerMetrics:
    """The controller's metrics and their registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # process_* (CPU, resident memory, fds of the controller itself) and python_info.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        # chital_controller_build_info{version="..."} 1: the release every controller replica runs.
        self.build_info = Info("chital_controller_build", "The controller's version.", registry=r)
        self.build_info.info({"version": __version__})
        self.rpc_started = Counter(
            "chital_controller_grpc_server_started_total",
            "RPCs started.",
            ["grpc_service", "grpc_method"],
            registry=r,
        )
        self.rpc_handled = Counter(
            "chital_controller_grpc_server_handled_total",
            "RPCs completed, by status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=r,
        )
        self.rpc_in_flight = _gauge(
            "chital_controller_grpc_server_in_flight_requests", "RPCs running now.", ["grpc_service"], r
        )
        self.rpc_duration = Histogram(
            "chital_controller_grpc_server_handling_seconds",
            "Time to complete an RPC.",
            ["grpc_service", "grpc_method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.health_checks = Counter(
            "chital_controller_health_checks_total",
            "Health checks of agents, by result (ok: a heartbeat or a GetInfo answer; failed: a "
            "heartbeat stream that could not open or broke, or a GetInfo that failed).",
            ["result"],
            registry=r,
        )
        self.heartbeat_streams = Gauge(
            "chital_controller_heartbeat_streams",
            "Agents' heartbeat streams open now (one per watched host, on the controller that runs "
            "the health monitor).",
            registry=r,
        )
        self.host_transitions = Counter(
            "chital_controller_host_state_transitions_total",
            "Host health changes, by the new state.",
            ["state"],
            registry=r,
        )
        self.agent_events = Counter(
            "chital_controller_agent_events_total",
            "Events received from agents, by kind.",
            ["kind"],
            registry=r,
        )
        self.agent_call_duration = Histogram(
            "chital_controller_agent_call_duration_seconds",
            "Time of unary calls to agents, by method (all hosts together).",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.agent_calls = Counter(
            "chital_controller_agent_calls_total",
            "Unary calls to agents, by host (any method, any result).",
            ["host"],
            registry=r,
        )
        self.agent_call_seconds = Counter(
            "chital_controller_agent_call_seconds_total",
            "Time spent in unary calls to agents, by host (divided by chital_controller_agent_calls_total: "
            "the host's mean call time).",
            ["host"],
            registry=r,
        )
        self.agent_call_failures = Counter(
            "chital_controller_agent_call_failures_total",
            "Failed calls to agents, by status code (heartbeat streams that cannot open or break included).",
            ["host", "grpc_code"],
            registry=r,
        )
        self.placements = Counter(
            "chital_controller_placements_total", "Containers placed on a host.", registry=r
        )
        self.placement_failures = Counter(
            "chital_controller_placement_failures_total",
            "Placements refused, by error (ResourceExhausted, FailedPrecondition).",
            ["reason"],
            registry=r,
        )
        self.container_creates = Counter(
            "chital_controller_container_creates_total",
            "Creates on a host, by result (created, failed).",
            ["result"],
            registry=r,
        )
        for result in ("ok", "failed"):
            self.health_checks.labels(result)
        for state in ("READY", "NOT_READY", "LOST"):
            self.host_transitions.labels(state)
        for result in ("created", "failed"):
            self.container_creates.labels(result)
        for reason in ("ResourceExhausted", "FailedPrecondition"):
            self.placement_failures.labels(reason)
        self.reconcile_runs = Counter(
            "chital_controller_reconcile_runs_total", "Reconciler rounds, by result.", ["result"], registry=r
        )
        self.reconcile_duration = Histogram(
            "chital_controller_reconcile_duration_seconds", "Time of a reconciler round.", registry=r
        )
        self.reconcile_backlog = _gauge(
            "chital_controller_reconcile_backlog",
            "Records the last reconciler round could not finish.",
            [],
            r,
        )
        self.reconcile_last_success = _gauge(
            "chital_controller_reconcile_last_success_timestamp_seconds",
            "When a reconciler round last succeeded (Unix time).",
            [],
            r,
        )
        for result in ("ok", "failed"):
            self.reconcile_runs.labels(result)
        self.host_syncs = Counter(
            "chital_controller_host_syncs_total",
            "Syncs of an agent's state with the database (chital.controller.hostsync), by result.",
            ["result"],
            registry=r,
        )
        self.host_sync_duration = Histogram(
            "chital_controller_host_sync_duration_seconds", "Time of one host's sync.", registry=r
        )
        self.sync_repairs = Counter(
            "chital_controller_sync_repairs_total",
            "Differences host syncs repaired, by action.",
            ["action"],
            registry=r,
        )
        self.denied_syscalls = Counter(
            "chital_controller_denied_syscalls_total",
            "System calls of members that hosts' kernel modules denied (from SYSCALL_DENIED events).",
            registry=r,
        )
        for result in ("ok", "failed"):
            self.host_syncs.labels(result)
        for action in (
            "exit_recorded",
            "start_recorded",
            "orphan_destroyed",
            "container_lost",
            "process_lost",
            "process_killed",
            "restarted",
        ):
            self.sync_repairs.labels(action)
        self.retention_removed = Counter(
            "chital_controller_retention_removed_total",
            "Rows the retention janitor deleted, by kind (event, container, process, audit).",
            ["kind"],
            registry=r,
        )
        for kind in ("event", "container", "process", "audit"):
            self.retention_removed.labels(kind)
        self.retention_compact_revision = _gauge(
            "chital_controller_events_compact_revision",
            "The compacted event revision: a Watch from below it is OUT_OF_RANGE.",
            [],
            r,
        )
        self.retention_last_success = _gauge(
            "chital_controller_retention_last_success_timestamp_seconds",
            "When a retention pass last succeeded (Unix time).",
            [],
            r,
        )
        self.db_duration = Histogram(
            "chital_controller_db_transaction_duration_seconds",
            "Time of database transactions, by operation (read, write).",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.db_failures = Counter(
            "chital_controller_db_transaction_failures_total",
            "Database transactions that failed, by operation.",
            ["operation"],
            registry=r,
        )
        for operation in ("read", "write"):
            self.db_failures.labels(operation)
        self._httpd: Any = None

    def observe_db(self, operation: str, seconds: float, ok: bool) -> None:
        """Record one database transaction (the store's ``observe`` hook)."""
        self.db_duration.labels(operation).observe(seconds)
        if not ok:
            self.db_failures.labels(operation).inc()

    def add_state_source(self, source: StateSource, streams: Callable[[], int]) -> None:
        """Read gauges by state from ``source`` at scrape time."""
        self.registry.register(_StateCollector(source, streams))

    def add_stream_slots(self, in_use: Callable[[], int], limit: int) -> None:
        """Streams and waits being served (``in_use``, read at scrape time) and ``limit``."""
        self.registry.register(_StreamSlotsCollector(in_use, limit))

    def add_rollout_source(self, counts: Callable[[], dict[str, int]]) -> None:
        """Rollouts by state (``counts``, read from the database at scrape time), and the counters
        of ended rollouts and failed rollout hosts."""
        self.registry.register(_RolloutCollector(counts))
        self.rollouts_ended = Counter(
            "chital_controller_rollouts_ended_total",
            "Rollouts this controller ended, by final state.",
            ["state"],
            registry=self.registry,
        )
        for state in _ROLLOUT_END_STATES:
            self.rollouts_ended.labels(state)
        self.rollout_host_failures = Counter(
            "chital_controller_rollout_host_failures_total",
            "Hosts that ended a rollout failed or unreachable, by status.",
            ["status"],
            registry=self.registry,
        )
        for status in ("FAILED", "UNREACHABLE"):
            self.rollout_host_failures.labels(status)

    def time_agent_call(self, host: str, method: str) -> Callable[[str], None]:
        """Start timing a call to an agent; call the result with the final code ("OK" or an error)."""
        start = time.perf_counter()

        def done(code: str) -> None:
            seconds = time.perf_counter() - start
            self.agent_call_duration.labels(method).observe(seconds)
            self.agent_calls.labels(host).inc()
            self.agent_call_seconds.labels(host).inc(seconds)
            if code != "OK":
                self.agent_call_failures.labels(host, code).inc()

        return done

    def serve(self, listen: str, *, certfile: str | None = None, keyfile: str | None = None) -> int:
        """Serve /metrics on ``host:port`` (port 0: any), over HTTPS with ``certfile`` and
        ``keyfile`` (no client certificate asked for); returns the port."""
        host, _, port = listen.rpartition(":")
        self._httpd, _thread = start_http_server(
            int(port),
            addr=host.strip("[]") or "127.0.0.1",
            registry=self.registry,
            certfile=certfile,
            keyfile=keyfile,
        )
        return int(self._httpd.server_port)

    def stop(self) -> None:
        """Stop serving /metrics."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


def _gauge(name: str, doc: str, labels: list[str], registry: CollectorRegistry) -> Gauge:
    return Gauge(name, doc, labels, registry=registry)
