"""Wiring: device + runtime + gRPC server (AgentService, health, reflection, interceptors).

The port is either mutual TLS (``tls_dir``: the agent's bundle; a client certificate from the fleet
CA is required and only the controller's role is let through) or, with ``insecure``, plaintext on a
loopback address. Neither, or plaintext on any other address, refuses to start. ``/metrics`` follows:
HTTPS with the agent's certificate (Prometheus verifies it with the fleet CA; no client certificate:
the counters are read-only), or plaintext on loopback.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from chital.api.agent.v1 import agent_pb2, agent_pb2_grpc
from chital.daemon.logs import LogContextInterceptor
from chital.daemon.roots import DEFAULT_ALLOWED_ROOT
from chital.daemon.streams import DEFAULT_MAX_STREAMS, StreamLimitInterceptor
from chital.errdefs import FailedPrecondition, Unavailable
from chital.errdefs.grpc import ErrorInterceptor
from chital.security.tls import TLSFiles, check_listen, server_credentials

from . import __version__, cgroup
from .auth import ControllerOnlyInterceptor
from .device.base import Device
from .device.fake import FakeDevice
from .logfiles import LogLimits
from .metrics import AgentMetrics, InstrumentedDevice, MetricsServer, start_metrics_server
from .runtime import AgentRuntime, RuntimeConfig
from .service import AgentService

__all__ = ["AgentServer", "ServerConfig", "open_device", "transport"]

log = logging.getLogger("chital.agent")

DEVICE_PATH = "/dev/chital"
_SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = "127.0.0.1:0"
    state_dir: Path = Path("/var/lib/chital-agent")
    device: str = "auto"  # fake | linux | auto
    device_path: str = DEVICE_PATH
    max_containers: int = 0
    max_workers: int = 64
    # Streams (StreamLogs with follow, StreamEvents) served at once, each on a thread of its own
    # beside the max_workers threads of the short calls; more are RESOURCE_EXHAUSTED.
    max_streams: int = DEFAULT_MAX_STREAMS
    port_file: Path | None = None
    # HOST:PORT of /metrics (HTTPS with the agent's certificate under tls_dir); None: no endpoint
    metrics_listen: str | None = None
    metrics_port_file: Path | None = None
    module_path: str | None = None  # insmod this chital.ko when the device is missing (else modprobe)
    # cgroup v2 limits: "auto" (required with the real device; best effort with the fake) | "off"
    cgroups: str = "auto"
    cgroup_root: Path | None = None  # the cgroup2 mount (None: found in /proc/self/mountinfo)
    cgroup_parent: str = "chital"
    launcher: str | None = None  # chital-launch (None: found as chital.agent.process.find_launcher does)
    #: The agent's bundle (ca.crt, tls.crt, tls.key, as in <pki>/agents/<host>): mutual TLS.
    tls_dir: Path | None = None
    #: Plaintext, allowed on a loopback listen address only (any local user can then call the agent).
    insecure: bool = False
    #: Size cap and rotation of each process's stdout and stderr (see logfiles.py).
    log_limits: LogLimits = field(default_factory=LogLimits)
    #: Exited processes remembered (GetProcess, StreamLogs); a destroyed container's directory
    #: goes when the last of its processes is forgotten (see dirs.py).
    exited_process_limit: int = 10_000
    #: Prefixes for client-chosen container roots (see chital.agent.roots); empty: none is accepted.
    allowed_roots: tuple[str, ...] = (DEFAULT_ALLOWED_ROOT,)


def transport(config: ServerConfig) -> TLSFiles | None:
    """The agent's TLS files, or None for plaintext; FailedPrecondition when the combination of
    ``tls_dir``, ``insecure`` and ``listen`` is not allowed (checked before anything else starts)."""
    if config.tls_dir is not None and config.insecure:
        raise FailedPrecondition("--tls-dir and --insecure exclude each other: choose one")
    if config.tls_dir is None and not config.insecure:
        raise FailedPrecondition(
            "no transport security: pass --tls-dir DIR (the agent's bundle from the fleet PKI: "
            "ca.crt, tls.crt, tls.key) or, for development on loopback only, --insecure"
        )
    tls = TLSFiles.from_dir(config.tls_dir) if config.tls_dir is not None else None
    check_listen(config.listen, insecure=config.insecure, tls=tls)
    if config.metrics_listen:
        # /metrics is HTTPS with the agent's certificate, or plaintext on loopback.
        check_listen(config.metrics_listen, insecure=config.insecure, tls=tls)
    return tls


def open_cgroups(config: ServerConfig, device_kind: str) -> cgroup.CgroupManager | None:
    """Container groups: required with the real device, optional (log once, no limits) with the fake."""
    if config.cgroups not in ("auto", "off", "required"):
        raise ValueError(f"unknown cgroups mode {config.cgroups!r}")
    mode = config.cgroups
    if mode == "auto":
        mode = "required" if device_kind == "linux" else "auto"
    return cgroup.open_cgroups(mode, root=config.cgroup_root, parent=config.cgroup_parent)


def open_device(kind: str, path: str = DEVICE_PATH, module_path: str | None = None) -> tuple[Device, str]:
    """The device to use and its kind ("linux" or "fake"). Loads the module when the device is missing
    (see :mod:`chital.agent.module`); an incompatible module raises ``IncompatibleModule``."""
    if kind not in ("fake", "linux", "auto"):
        raise ValueError(f"unknown device kind {kind!r}")
    if kind == "fake":
        return FakeDevice(), "fake"
    from . import module  # noqa: PLC0415 - the real device's adapter and the module's lifecycle

    if not os.path.exists(path):
        module.ensure_loaded(path, module_path=module_path, required=kind == "linux")
    if kind == "auto" and not os.path.exists(path):
        log.warning("--device auto: %s does not exist (module not loaded): using the fake device", path)
        return FakeDevice(), "fake"
    device: Device = module.open_linux_device(path)
    return device, "linux"


class AgentServer:
    """One agent: its runtime and its gRPC server. ``start()``, then ``stop()``."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._tls = transport(config)
        credentials = server_credentials(self._tls, require_client_cert=True) if self._tls else None
        raw, kind = open_device(config.device, config.device_path, config.module_path)
        try:
            cgroups = open_cgroups(config, kind)
        except BaseException:
            raw.close()
            raise
        self.cgroups = cgroups
        self.metrics = AgentMetrics(version=__version__)
        self.metrics.set_device_kind(kind)
        device: Device = InstrumentedDevice(raw, self.metrics)
        self.device = device
        self.runtime = AgentRuntime(
            device,
            simulated=raw if isinstance(raw, FakeDevice) else None,
            metrics=self.metrics,
            cgroups=cgroups,
            config=RuntimeConfig(
                state_dir=config.state_dir,
                device_kind=kind,
                device_path=config.device_path if kind == "linux" else None,
                max_containers=config.max_containers,
                launcher=config.launcher,
                allowed_roots=config.allowed_roots,
                log_limits=config.log_limits,
                exited_process_limit=config.exited_process_limit,
            ),
        )
        if not self.runtime.sandboxed:
            log.warning(
                "device=fake: processes are NOT sandboxed; they run on this host as the agent's user "
                "(cwd inside the container root dir, no chroot, no kernel policy)"
            )
        if self._tls is None:
            log.warning(
                "--insecure: AgentService is served in plaintext on %s without authentication; "
                "any local user can drive this agent",
                config.listen,
            )
        self._credentials = credentials
        self._health = health.HealthServicer()
        # A stream takes one of max_streams slots, so max_workers threads remain for the rest.
        interceptors: list[grpc.ServerInterceptor] = [
            StreamLimitInterceptor(config.max_streams),
            ErrorInterceptor(),
        ]
        if credentials is not None:
            interceptors.insert(0, ControllerOnlyInterceptor())
        # First: every record logged while serving an RPC carries its request id and container.
        interceptors.insert(0, LogContextInterceptor())
        self._server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=config.max_workers + config.max_streams, thread_name_prefix="chital-rpc"
            ),
            interceptors=interceptors,
            options=[
                ("grpc.so_reuseport", 0),
                # The controller's channels send a keepalive ping every 10 s while a call is open.
                # gRPC's server default takes a ping that comes sooner than 5 min after the last
                # without data sent in between as abuse, and closes the connection after the
                # third (GOAWAY too_many_pings): an event stream with nothing to send, or a
                # heartbeat stream whose beats a starved host could not send, would be cut.
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
            ],
        )
        agent_pb2_grpc.add_AgentServiceServicer_to_server(
            AgentService(self.runtime, self.metrics), self._server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self.port = 0
        self.metrics_server: MetricsServer | None = None
        self._stopped = threading.Event()

    def _cgroup_dir(self, container_uid: str) -> Path | None:
        """The cgroup of a container (the device name is the uid), None without cgroups."""
        if self.cgroups is None or not self.cgroups.exists(container_uid):
            return None
        return self.cgroups.path(container_uid)

    def start(self) -> int:
        if self._credentials is not None:
            self.port = self._server.add_secure_port(self.config.listen, self._credentials)
        else:
            self.port = self._server.add_insecure_port(self.config.listen)
        if self.port == 0:
            raise Unavailable(f"cannot listen on {self.config.listen}")
        self._server.start()
        if self.config.metrics_listen:
            self.metrics.watch_containers(self.device, cgroup_dir_of=self._cgroup_dir)
            self.metrics_server = start_metrics_server(
                self.config.metrics_listen,
                self.metrics.registry,
                port_file=self.config.metrics_port_file,
                certfile=self._tls.cert if self._tls is not None else None,
                keyfile=self._tls.key if self._tls is not None else None,
            )
        for name in ("", _SERVICE_NAME):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        host = self.config.listen.rsplit(":", 1)[0]
        log.info(
            "chital-agent listening on %s:%d (device=%s, %s)",
            host,
            self.port,
            self.runtime.info().device,
            "mutual TLS, controller only" if self._credentials is not None else "plaintext, loopback",
        )
        if self.config.port_file is not None:
            tmp = self.config.port_file.with_name(self.config.port_file.name + ".tmp")
            tmp.write_text(f"{self.port}\n")
            os.replace(tmp, self.config.port_file)
        return self.port

    def stop(self, grace: float = 2.0) -> None:
        """Stop serving and the threads; processes keep running (the kernel is the source of truth)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._health.enter_graceful_shutdown()
        self.runtime.close()  # ends event/log streams
        self._server.stop(grace).wait(grace + 1)
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self.device.close()
