"""Wiring: the store, the agent pool, the monitor and the gRPC server, started and stopped together."""

from __future__ import annotations

import logging
import os
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

from chital.api.container.v1 import container_pb2, container_pb2_grpc
from chital.api.host.v1 import host_pb2, host_pb2_grpc
from chital.controller import db
from chital.controller.agents import AgentPool
from chital.controller.containers import Containers
from chital.controller.events import ChangeNotifier, EventIngestor
from chital.controller.health import HealthConfig, HostMonitor
from chital.controller.hosts import Hosts
from chital.controller.metrics import ControllerMetrics
from chital.controller.reconcile import Reconciler
from chital.controller.rpc_metrics import RpcMetricsInterceptor
from chital.controller.sd import DiscoveryFileUpdater
from chital.controller.service import ContainerServicer, HostServicer
from chital.controller.store import Store
from chital.errdefs import FailedPrecondition
from chital.errdefs.grpc import ErrorInterceptor

__all__ = ["ControllerConfig", "ControllerServer", "utc_now"]

log = logging.getLogger("chital.controller")


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
    port_file: str = ""
    # host:port for /metrics (empty: not served).
    metrics_listen: str = ""
    # Write the bound /metrics port here (for harnesses, like port_file).
    metrics_port_file: str = ""
    # Keep a Prometheus file_sd file of the agents here (see sd.py; empty: off).
    prometheus_sd_file: str = ""
    # Seconds between reconciler rounds, and how old unfinished work must be to be resumed.
    reconcile_interval: float = 10.0
    reconcile_min_age: float = 10.0

    def resolved_database_url(self) -> str:
        """The configured URL, else SQLite in the state directory."""
        return self.database_url or db.default_database_url(self.state_dir)


class ControllerServer:
    """A running controller: call :meth:`start`, then :meth:`stop`."""

    def __init__(
        self,
        config: ControllerConfig,
        clock: Callable[[], datetime] = utc_now,
        new_id: Callable[[], str] = new_uid,
    ) -> None:
        self.config = config
        url = config.resolved_database_url()
        if config.migrate:
            db.upgrade(url)
        self.engine = db.make_engine(url)
        if not sa.inspect(self.engine).has_table("events"):
            raise FailedPrecondition(
                "the database has no chital schema: "
                "run `chital-controller db upgrade` or serve with --migrate"
            )
        self.store = Store(self.engine)
        self.notifier = ChangeNotifier()
        self.store.add_listener(self.notifier)
        self.metrics = ControllerMetrics()
        self.store.observe = self.metrics.observe_db
        self.pool = AgentPool(timeout=config.agent_timeout, metrics=self.metrics)
        self.ingestor = EventIngestor(self.store, self.pool, clock, metrics=self.metrics)
        self.monitor = HostMonitor(
            self.store, self.pool, self.ingestor, clock, config=config.health, metrics=self.metrics
        )

        def state_source() -> tuple[list[Any], dict[str, int], dict[str, int], dict[str, float]]:
            hosts, containers, processes = self.store.count_by_state()
            return hosts, containers, processes, self.monitor.ages()

        self.metrics.add_state_source(state_source, self.ingestor.active_streams)
        self.containers = Containers(
            self.store, self.pool, self.notifier, clock, new_id, metrics=self.metrics
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
        self.hosts = Hosts(self.store, self.pool, self.monitor, self.containers, clock=clock, new_id=new_id)
        self.health = health.HealthServicer()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="rpc"),
            # Metrics first: it must see the status the error interceptor settles on.
            interceptors=[RpcMetricsInterceptor(self.metrics), ErrorInterceptor()],
            options=[("grpc.so_reuseport", 0)],
        )
        container_pb2_grpc.add_ContainerServiceServicer_to_server(
            ContainerServicer(self.containers), self.server
        )
        host_pb2_grpc.add_HostServiceServicer_to_server(HostServicer(self.hosts), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (
            container_pb2.DESCRIPTOR.services_by_name["ContainerService"].full_name,
            host_pb2.DESCRIPTOR.services_by_name["HostService"].full_name,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, self.server)
        self.port = 0
        self.metrics_port = 0
        self.discovery: DiscoveryFileUpdater | None = None

    def start(self) -> int:
        """Bind, start serving and start the monitor; returns the bound port."""
        self.port = self.server.add_insecure_port(self.config.listen)
        if not self.port:
            raise FailedPrecondition(f"cannot listen on {self.config.listen}")
        self.server.start()
        if self.config.metrics_listen:
            self.metrics_port = self.metrics.serve(self.config.metrics_listen)
            if self.config.metrics_port_file:
                _write_atomically(Path(self.config.metrics_port_file), f"{self.metrics_port}\n")
        if self.config.prometheus_sd_file:
            self.discovery = DiscoveryFileUpdater(Path(self.config.prometheus_sd_file), self.store.all_hosts)
            self.discovery.start()
        self.monitor.start()
        self.reconciler.start()
        for name in ("", "chital.api.container.v1.ContainerService", "chital.api.host.v1.HostService"):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.config.port_file:
            _write_atomically(Path(self.config.port_file), f"{self.port}\n")
        log.info("controller listening on %s (port %d)", self.config.listen, self.port)
        return self.port

    def stop(self, grace: float = 5.0) -> None:
        """Stop taking calls, finish running ones (up to ``grace`` s), stop the background threads."""
        self.health.enter_graceful_shutdown()
        done = self.server.stop(grace)
        self.monitor.stop()
        self.reconciler.stop()
        if self.discovery is not None:
            self.discovery.stop()
        self.ingestor.stop()
        done.wait(grace + 1)
        self.metrics.stop()
        self.pool.close()
        self.engine.dispose()


def _write_atomically(path: Path, text: str) -> None:
    """Readers never see a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
