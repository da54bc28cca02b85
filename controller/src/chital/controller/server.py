"""Wiring: the store, the agent pool, the monitor and the gRPC server, started and stopped together.

Transport security (see docs/auth.md):

- ``listen`` serves the API over TLS with the controller's certificate (``tls_dir``); clients are
  not asked for certificates there and authenticate with bearer tokens.
- ``mtls_listen`` (optional) serves the same API and requires a client certificate of the fleet
  CA; the certificate's CN and OU (role) are the caller.
- ``insecure`` serves plaintext, only on a loopback address, and dials agents in plaintext (only
  loopback agents then). Tokens are required all the same.
- The same bundle is the controller's client certificate towards the agents (mutual TLS).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import uuid
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import sqlalchemy as sa
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Gauge

from chital.api.admin.v1 import admin_pb2, admin_pb2_grpc
from chital.api.container.v1 import container_pb2, container_pb2_grpc
from chital.api.host.v1 import host_pb2, host_pb2_grpc
from chital.api.rollout.v1 import rollout_pb2, rollout_pb2_grpc
from chital.controller import db
from chital.controller.agents import AgentPool
from chital.controller.auth import AuthInterceptor
from chital.controller.containers import Containers
from chital.controller.events import ChangeNotifier, EventIngestor
from chital.controller.feed import EventFeed
from chital.controller.health import HealthConfig, HostMonitor
from chital.controller.hosts import Hosts
from chital.controller.hostsync import HostSyncer
from chital.controller.leader import LeaderElector, StopFollower
from chital.controller.metrics import ControllerMetrics
from chital.controller.operations import Operations
from chital.controller.reconcile import Reconciler
from chital.controller.records import HostHealth
from chital.controller.restarts import Restarter
from chital.controller.retention import RetentionJanitor, RetentionPass, RetentionPolicy
from chital.controller.rollout_service import RolloutServicer
from chital.controller.rollouts import Rollouts, RolloutSettings
from chital.controller.rpc_metrics import RpcMetricsInterceptor
from chital.controller.sd import DiscoveryFileUpdater
from chital.controller.service import AdminServicer, ContainerServicer, HostServicer
from chital.controller.store import Store
from chital.controller.tokens import AuditLog, Tokens
from chital.controller.validation import validate_allowed_roots
from chital.daemon.logs import LogContextInterceptor
from chital.daemon.roots import DEFAULT_ALLOWED_ROOT
from chital.daemon.streams import DEFAULT_MAX_STREAMS, StreamLimitInterceptor
from chital.errdefs import FailedPrecondition, InvalidArgument
from chital.errdefs.grpc import ErrorInterceptor
from chital.security.tls import (
    TLSFiles,
    channel_credentials,
    check_listen,
    is_loopback,
    server_credentials,
)

__all__ = ["ControllerConfig", "ControllerServer", "utc_now"]

log = logging.getLogger("chital.controller")

#: The interpreter's thread switch interval while a controller serves (Python's default: 5 ms). A
#: thread that comes back from the database or an agent call waits up to this long for the GIL
#: while others compute; the create committer makes several such round trips per transaction, so
#: the default made every create wait (see "The create path" in docs/architecture.md).
GIL_SWITCH_INTERVAL_SECONDS = 0.0005

#: Unary methods that wait (for a process to exit): they take a stream slot, like the streams.
LONG_UNARY_METHODS = frozenset({"/chital.api.container.v1.ContainerService/WaitProcess"})


def utc_now() -> datetime:
    """The current time as naive UTC (how the store keeps times)."""
    return datetime.now(UTC).replace(tzinfo=None)


def new_uid() -> str:
    """A fresh random id."""
    return uuid.uuid4().hex


def default_state_dir() -> str:
    """``$CHITAL_STATE_DIR``, else /var/lib/chital/controller."""
    return os.environ.get("CHITAL_STATE_DIR", "/var/lib/chital/controller")


@dataclass(frozen=True)
class ControllerConfig:
    """How to run a controller."""

    listen: str = "127.0.0.1:7443"
    database_url: str = ""
    state_dir: str = field(default_factory=default_state_dir)
    migrate: bool = False
    health: HealthConfig = field(default_factory=HealthConfig)
    agent_timeout: float = 5.0
    max_workers: int = 64
    # Streams and waits (Watch, StreamLogs, WaitProcess, ...) served at once, each on a thread of
    # its own beside the max_workers threads of the short calls; more are RESOURCE_EXHAUSTED.
    max_streams: int = DEFAULT_MAX_STREAMS
    port_file: str = ""
    # host:port for /metrics (empty: not served).
    metrics_listen: str = ""
    # Serve /metrics over HTTPS with the controller's certificate (needs tls_dir).
    metrics_tls: bool = False
    # Write the bound /metrics port here (for harnesses, like port_file).
    metrics_port_file: str = ""
    # Keep a Prometheus file_sd file of the agents here (see sd.py; empty: off).
    prometheus_sd_file: str = ""
    # Seconds between reconciler rounds, and how old unfinished work must be to be resumed.
    reconcile_interval: float = 10.0
    reconcile_min_age: float = 10.0
    # Event compaction and pruning of DELETED containers (see retention.py).
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    # The controller's bundle (ca.crt, tls.crt, tls.key from `chital-controller pki`): serves the
    # API over TLS and is the client certificate towards the agents. Required unless insecure.
    tls_dir: str = ""
    # Plaintext API and plaintext agent channels, loopback addresses only.
    insecure: bool = False
    # host:port of a second API port that requires client certificates (empty: none).
    mtls_listen: str = ""
    # Write the bound mTLS port here (like port_file).
    mtls_port_file: str = ""
    # How rollouts run (playbooks directory, workers, caps); None: the defaults, with ansible-runner's
    # files under <state_dir>/rollouts.
    rollouts: RolloutSettings | None = None
    # Client-chosen container roots must lie under one of these (empty: none is accepted).
    allowed_roots: tuple[str, ...] = (DEFAULT_ALLOWED_ROOT,)
    # PostgreSQL: the leader's lease lasts this long without a word from it (idle_session_timeout of
    # its lease session; see leader.py). SQLite: one controller, always the leader.
    lease_timeout: float = 3.0

    def resolved_database_url(self) -> str:
        """The configured URL, else SQLite in the state directory."""
        return self.database_url or db.default_database_url(self.state_dir)

    def tls_files(self) -> TLSFiles | None:
        """The controller's bundle, None without ``tls_dir``."""
        return TLSFiles.from_dir(self.tls_dir) if self.tls_dir else None

    def check_security(self) -> None:
        """FailedPrecondition (or InvalidArgument) unless the transport settings are safe and whole."""
        tls = self.tls_files()
        check_listen(self.listen, insecure=self.insecure, tls=tls)
        if self.mtls_listen:
            if tls is None:
                raise FailedPrecondition("--mtls-listen needs the controller's TLS files (--tls-dir)")
            check_listen(self.mtls_listen, insecure=False, tls=tls)
        if self.metrics_tls and tls is None:
            raise FailedPrecondition("--metrics-tls needs the controller's TLS files (--tls-dir)")
        if self.metrics_listen and not self.metrics_tls and not is_loopback(self.metrics_listen):
            raise FailedPrecondition(
                f"/metrics on {self.metrics_listen} would be plaintext beyond loopback: "
                "add --metrics-tls (HTTPS with the --tls-dir bundle) or listen on loopback"
            )
        if self.max_workers < 1 or self.max_streams < 1:
            raise InvalidArgument("max_workers and max_streams must be at least 1")
        if self.lease_timeout < 1.5:
            raise InvalidArgument("lease_timeout must be at least 1.5 s")
        try:
            validate_allowed_roots(self.allowed_roots)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None


class ControllerServer:
    """A running controller: call :meth:`start`, then :meth:`stop`."""

    def __init__(
        self,
        config: ControllerConfig,
        clock: Callable[[], datetime] = utc_now,
        new_id: Callable[[], str] = new_uid,
    ) -> None:
        config.check_security()
        self.config = config
        tls = config.tls_files()
        url = config.resolved_database_url()
        if config.migrate:
            db.upgrade(url)
        self.engine = db.make_engine(url)
        inspector = sa.inspect(self.engine)
        if not inspector.has_table("events"):
            raise FailedPrecondition(
                "the database has no chital schema: "
                "run `chital-controller db upgrade` or serve with --migrate"
            )
        if not inspector.has_table("tokens"):
            raise FailedPrecondition(
                "the database schema is older than this controller (no tokens table): "
                "run `chital-controller db upgrade` or serve with --migrate"
            )
        self.store = Store(self.engine)
        self.notifier = ChangeNotifier()
        self.store.add_listener(self.notifier)
        self.metrics = ControllerMetrics()
        self.store.observe = self.metrics.observe_db
        self.pool = AgentPool(
            timeout=config.agent_timeout,
            metrics=self.metrics,
            credentials=None if tls is None else channel_credentials(tls),
        )
        self.tokens = Tokens(self.engine, clock)
        self.audit = AuditLog(self.engine, clock)
        self.ingestor = EventIngestor(self.store, self.pool, clock, metrics=self.metrics)
        self.monitor = HostMonitor(
            self.store, self.pool, self.ingestor, clock, config=config.health, metrics=self.metrics
        )
        # Per-host reconcilers: each agent's Sync compared with the database (see hostsync.py).
        self.syncer = HostSyncer(self.store, self.pool, clock, metrics=self.metrics)
        self.monitor.syncer = self.ingestor.syncer = self.syncer

        def state_source() -> tuple[list[Any], dict[str, int], dict[str, int], dict[str, float]]:
            hosts, containers, processes = self.store.count_by_state()
            return hosts, containers, processes, self.monitor.ages()

        self.metrics.add_state_source(state_source, self.ingestor.active_streams)
        # One reader of the events table for every Watch and WaitProcess (see feed.py).
        self.feed = EventFeed(self.store, self.notifier)
        # Carries out what the RPCs record (stops, deletes, drains; creates and execs that do not
        # wait), so that no RPC thread waits for a host.
        self.operations = Operations(self.store, self.pool, clock)
        self.containers = Containers(
            self.store,
            self.pool,
            self.notifier,
            clock,
            new_id,
            metrics=self.metrics,
            allowed_roots=validate_allowed_roots(config.allowed_roots),
            feed=self.feed,
            operations=self.operations,
        )
        self.reconciler = Reconciler(
            self.store,
            self.pool,
            self.containers,
            clock,
            metrics=self.metrics,
            interval=config.reconcile_interval,
            min_age=config.reconcile_min_age,
        )
        # Restart policies: LOST containers placed again on a ready host (see restarts.py).
        self.restarter = Restarter(
            self.store, self.containers, clock, metrics=self.metrics, lost_hooks=self.syncer.on_lost
        )
        self.retention = RetentionJanitor(self.store, config.retention, clock, on_pass=self._retention_done)
        self.hosts = Hosts(self.store, self.pool, self.monitor, self.containers, clock=clock, new_id=new_id)
        self.rollouts = self._make_rollouts(config, clock, new_id)
        self.health = health.HealthServicer()
        # Calls that stay open (streams, WaitProcess) take one of max_streams slots, so at least
        # max_workers threads always remain for the short calls (see chital.daemon.streams).
        self.streams = StreamLimitInterceptor(config.max_streams, long_unary=LONG_UNARY_METHODS)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=config.max_workers + config.max_streams, thread_name_prefix="rpc"
            ),
            # Metrics first: it must see the final status, the auth interceptor's denials included.
            # Auth before errors: the audit log records the status an exception is mapped to.
            interceptors=[
                # First: every record logged while serving an RPC carries its request id and container.
                LogContextInterceptor(),
                RpcMetricsInterceptor(self.metrics),
                AuthInterceptor(self.tokens, self.audit),
                self.streams,
                ErrorInterceptor(),
            ],
            options=[
                ("grpc.so_reuseport", 0),
                # Clients (the SDK) ping every 10 s while a call is open, to notice a frozen
                # controller; gRPC's default would answer pings sooner than 5 min apart without
                # data (an idle Watch) with GOAWAY too_many_pings.
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
            ],
        )
        container_pb2_grpc.add_ContainerServiceServicer_to_server(
            ContainerServicer(self.containers), self.server
        )
        host_pb2_grpc.add_HostServiceServicer_to_server(HostServicer(self.hosts), self.server)
        self.admin = admin = AdminServicer(
            self.tokens,
            self.audit,
            database=self.engine.dialect.name,
            api_versions=(m.DESCRIPTOR.package for m in (container_pb2, host_pb2, admin_pb2, rollout_pb2)),
            is_leader=lambda: self.is_leader,
        )
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, self.server)
        rollout_pb2_grpc.add_RolloutServiceServicer_to_server(RolloutServicer(self.rollouts), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (
            container_pb2.DESCRIPTOR.services_by_name["ContainerService"].full_name,
            host_pb2.DESCRIPTOR.services_by_name["HostService"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
            rollout_pb2.DESCRIPTOR.services_by_name["RolloutService"].full_name,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, self.server)
        self._init_run_state()

    def _init_run_state(self) -> None:
        """What start() fills in: the bound ports, the discovery file writer, and leadership.

        Leadership (see leader.py and docs/ha.md). On PostgreSQL every controller serves the API
        and one of them, elected by a lease, runs the background work; on SQLite the one controller
        is always the leader. Until elected, this controller neither consumes the agents' event
        streams nor syncs hosts (a RegisterHost it serves only checks the host)."""
        self.port = 0
        self.mtls_port = 0
        self.metrics_port = 0
        self.discovery: DiscoveryFileUpdater | None = None
        self.leader_gauge = Gauge(
            "chital_controller_leader",
            "1 while this controller is the leader (runs the health monitor, reconcilers, "
            "operations, restarts, retention and rollouts), else 0.",
            registry=self.metrics.registry,
        )
        self.elected_total = Counter(
            "chital_controller_leader_elections",
            "How many times this controller became the leader.",
            registry=self.metrics.registry,
        )
        self.elector: LeaderElector | None = None
        self.leadership_lost = threading.Event()
        self.lost_reason = ""
        self._lead_lock = threading.Lock()
        self._leading = False
        self._stopped = False
        self._led = False  # whether this process ever led (its rollouts are then its own to end)
        self._leading_event = threading.Event()  # set once the leader's work has started
        self.stop_follower = StopFollower(self.feed, self.operations.kick, self._rescan_stops)
        if self.engine.dialect.name == "postgresql":
            self.ingestor.active = self.syncer.active = False

    @property
    def is_leader(self) -> bool:
        """Whether this controller runs the background work now."""
        with self._lead_lock:
            return self._leading

    def wait_leader(self, timeout: float) -> bool:
        """Wait until this controller has started the leader's work (tests, harnesses)."""
        return self._leading_event.wait(timeout)

    def _rescan_stops(self) -> None:
        for container in self.store.stopping_containers(10_000):
            self.operations.kick(container.uid)

    def _lead(self) -> None:
        """Elected (or SQLite): start the background work. Everything is resumed from the database."""
        with self._lead_lock:
            if self._leading or self._stopped or self.leadership_lost.is_set():
                return
            self._leading = self._led = True
            self.ingestor.active = self.syncer.active = True
            self.monitor.start()
            # Before the driver's start-up scan: a stop recorded between the two is seen twice at
            # worst (harmless), never missed.
            self.stop_follower.start()
            self.operations.start()
            self.reconciler.start()
            self.restarter.start()
            self.rollouts.start()
            self.retention.start()
            self.leader_gauge.set(1)
            self.elected_total.inc()
            self._leading_event.set()
        log.info("this controller is the leader: health monitor, reconcilers, operations, rollouts running")

    def _step_down(self, reason: str) -> None:
        """The lease may be gone: stop every piece of leader work at once (fencing), each stopped in
        parallel, then tell the owner (``leadership_lost``): ``chital-controller serve`` exits, and its
        supervisor starts it again as a follower with none of this term's memory."""
        with self._lead_lock:
            if not self._leading:
                return
            self._leading = False
            self._leading_event.clear()
            self.ingestor.active = self.syncer.active = False
            self.leader_gauge.set(0)
            self.lost_reason = reason
        log.error("this controller is no longer the leader (%s): stopping the leader's work", reason)
        stops = [
            self.operations.stop,
            self.syncer.stop,
            self.ingestor.stop,
            self.monitor.stop,
            self.restarter.stop,
            self.reconciler.stop,
            self.rollouts.stop,
            self.retention.stop,
            self.stop_follower.stop,
        ]
        threads = [threading.Thread(target=fn, name="step-down", daemon=True) for fn in stops]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10.0)
        self.leadership_lost.set()

    def _retention_done(self, result: RetentionPass) -> None:
        self.metrics.retention_removed.labels("event").inc(result.events)
        self.metrics.retention_removed.labels("container").inc(result.containers)
        self.metrics.retention_removed.labels("process").inc(result.processes)
        self.metrics.retention_removed.labels("audit").inc(result.audit)
        self.metrics.retention_compact_revision.set(result.compact_revision)
        self.metrics.retention_last_success.set_to_current_time()

    def start(self) -> int:
        """Bind, start serving and start the monitor; returns the bound port."""
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)
        tls = self.config.tls_files()
        self.metrics.add_stream_slots(self.streams.in_use, self.streams.limit)
        self._bind(tls)
        self.feed.start()
        self.server.start()
        if self.config.metrics_listen:
            self._serve_metrics(tls)
        if self.config.prometheus_sd_file:
            self.discovery = DiscoveryFileUpdater(Path(self.config.prometheus_sd_file), self.store.all_hosts)
            self.discovery.start()
        # A stop waiting for its members ends as soon as the kernel says the last one is gone.
        self.ingestor.on_empty.append(lambda _host_id, uid: self.operations.kick(uid))
        if self.engine.dialect.name == "postgresql":
            self.elector = LeaderElector(
                self.config.resolved_database_url(),
                name=f"{socket.gethostname()}:{self.port} pid {os.getpid()}",
                on_elected=self._lead,
                on_lost=self._step_down,
                lease_timeout=self.config.lease_timeout,
            )
            self.elector.start()
            # Alone (or first), this controller leads before it reports itself serving.
            self.elector.wait_first_attempt(self.config.lease_timeout * 2)
        else:
            self._lead()
        for name in (
            "",
            "chital.api.container.v1.ContainerService",
            "chital.api.host.v1.HostService",
            "chital.api.admin.v1.AdminService",
            "chital.api.rollout.v1.RolloutService",
        ):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.config.mtls_port_file and self.mtls_port:
            _write_atomically(Path(self.config.mtls_port_file), f"{self.mtls_port}\n")
        if self.config.port_file:
            _write_atomically(Path(self.config.port_file), f"{self.port}\n")
        log.info(
            "controller listening on %s (port %d, %s)",
            self.config.listen,
            self.port,
            "plaintext: --insecure" if tls is None else "TLS, bearer tokens",
        )
        if self.mtls_port:
            log.info(
                "controller listening on %s (port %d, TLS, client certificates)",
                self.config.mtls_listen,
                self.mtls_port,
            )
        return self.port

    def _make_rollouts(
        self, config: ControllerConfig, clock: Callable[[], datetime], new_id: Callable[[], str]
    ) -> Rollouts:
        """The rollout worker: registers hosts through :class:`Hosts`, counted on /metrics."""
        settings = config.rollouts or RolloutSettings(work_dir=str(Path(config.state_dir) / "rollouts"))

        def register(address: str) -> tuple[str, bool]:
            host = self.hosts.register(address, {}, 0)
            return host.id, host.health is HostHealth.READY

        def ready(host_id: str) -> bool:
            return self.hosts.get(host_id).health is HostHealth.READY

        def registered() -> list[tuple[str, str, dict[str, str]]]:
            return [(h.id, h.address, dict(h.labels)) for h in self.store.all_hosts()]

        def ended(record: Any) -> None:
            self.metrics.rollouts_ended.labels(record.state.value).inc()
            for host in record.hosts:
                if host.status.value in ("FAILED", "UNREACHABLE"):
                    self.metrics.rollout_host_failures.labels(host.status.value).inc()

        rollouts = Rollouts(
            self.engine,
            settings,
            clock,
            new_id,
            register_host=register,
            host_ready=ready,
            list_hosts=registered,
            on_end=ended,
        )
        self.metrics.add_rollout_source(rollouts.counts)
        return rollouts

    def _bind(self, tls: TLSFiles | None) -> None:
        """The API port (TLS, or plaintext with --insecure) and the optional mTLS port."""
        if tls is None:
            self.port = self.server.add_insecure_port(self.config.listen)
        else:
            creds = server_credentials(tls, require_client_cert=False)
            self.port = self.server.add_secure_port(self.config.listen, creds)
        if not self.port:
            raise FailedPrecondition(f"cannot listen on {self.config.listen}")
        if self.config.mtls_listen and tls is not None:
            creds = server_credentials(tls, require_client_cert=True)
            self.mtls_port = self.server.add_secure_port(self.config.mtls_listen, creds)
            if not self.mtls_port:
                raise FailedPrecondition(f"cannot listen on {self.config.mtls_listen}")

    def _serve_metrics(self, tls: TLSFiles | None) -> None:
        """/metrics over HTTPS with --metrics-tls, else plain HTTP on loopback (check_security)."""
        listen = self.config.metrics_listen
        if self.config.metrics_tls and tls is not None and tls.cert and tls.key:
            self.metrics_port = self.metrics.serve(listen, certfile=str(tls.cert), keyfile=str(tls.key))
        else:
            self.metrics_port = self.metrics.serve(listen)
        if self.config.metrics_port_file:
            _write_atomically(Path(self.config.metrics_port_file), f"{self.metrics_port}\n")

    def stop(self, grace: float = 5.0) -> None:
        """Stop taking calls, finish running ones (up to ``grace`` s), stop the background threads."""
        self.health.enter_graceful_shutdown()
        with self._lead_lock:
            self._stopped = True
        done = self.server.stop(grace)
        if self._led:
            self.rollouts.stop()  # cancels running playbooks: they end INTERRUPTED
        self.stop_follower.stop()
        self.monitor.stop()
        self.syncer.stop()
        self.reconciler.stop()
        self.restarter.stop()
        self.operations.stop()
        self.retention.stop()
        if self.elector is not None:
            self.elector.stop()  # after the leader's work: releases the lease for another controller
        if self.discovery is not None:
            self.discovery.stop()
        self.ingestor.stop()
        done.wait(grace + 1)
        self.containers.close()  # after the last call and the driver: every queued create is written
        self.feed.stop()
        self.audit.close()  # after the last call: every audited call is written
        self.metrics.stop()
        self.pool.close()
        self.engine.dispose()


def _write_atomically(path: Path, text: str) -> None:
    """Readers never see a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
