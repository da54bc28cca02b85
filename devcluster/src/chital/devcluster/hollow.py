"""A hollow fleet: one controller and N agents with FakeDevice on free loopback ports.

Hollow agents run the real agent code (gRPC service, runtime, process runner) over the in-memory
``FakeDevice``, so a whole control plane fits on one machine for tests, benchmarks and
development. Processes they start are real, but NOT sandboxed (there is no kernel module).

The fleet runs as a deployment does (see :mod:`chital.devcluster.security`): its own PKI under the
work directory, agents with ``--tls-dir`` (mutual TLS, only the controller's certificate passes),
the controller with ``--tls-dir`` and a bootstrap admin token. ``--insecure`` runs it in plaintext
on loopback instead (a token is still required).

    python -m chital.devcluster.hollow --agents 3
    # prints the controller address and the client config; Ctrl-C stops everything

Every process is started by this module, tracked by pid and stopped by pid.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from chital.security.tls import TLSFiles

from .security import ClientConfig, FleetPKI, create_token

if TYPE_CHECKING:
    from chital.client import Client

__all__ = ["HollowFleet", "ServiceProcess", "start_agent", "start_controller", "transport_args"]

BIN = Path(sys.executable).parent


@dataclass
class ServiceProcess:
    """A server started by the fleet: its process, its address and its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    address: str
    log_path: Path
    #: ``127.0.0.1:PORT`` of its /metrics when started with ``metrics=True``.
    metrics_address: str | None = None
    #: ``https`` when /metrics is served with the server's certificate (a TLS server), else ``http``.
    metrics_scheme: str = "http"

    @property
    def metrics_url(self) -> str | None:
        """``<scheme>://127.0.0.1:PORT/metrics``, or None without metrics."""
        return f"{self.metrics_scheme}://{self.metrics_address}/metrics" if self.metrics_address else None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; always reaps the process."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """SIGKILL (a crash, for failure tests)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _wait_for_port(proc: subprocess.Popen[bytes], port_file: Path, log_path: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.exists():
            text = port_file.read_text().strip()
            if text:
                return int(text)
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"exited with {proc.returncode} before serving; log tail:\n{tail}")
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise TimeoutError(f"not serving after {timeout:.0f} s (log: {log_path})")


def _spawn(
    name: str,
    argv: Sequence[str],
    workdir: Path,
    env: dict[str, str] | None,
    timeout: float,
    *,
    metrics: bool = False,
) -> ServiceProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / "port"
    port_file.unlink(missing_ok=True)
    metrics_port_file = workdir / "metrics-port"
    metrics_port_file.unlink(missing_ok=True)
    if metrics:
        argv = [*argv, "--metrics-listen", "127.0.0.1:0", "--metrics-port-file", str(metrics_port_file)]
    log_path = workdir / f"{name}.log"
    full_env = {**os.environ, "GRPC_VERBOSITY": "ERROR", **(env or {})}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [*argv, "--port-file", str(port_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            start_new_session=True,  # a Ctrl-C in the terminal reaches the fleet, not each server
        )
    try:
        port = _wait_for_port(proc, port_file, log_path, timeout)
        metrics_port = _wait_for_port(proc, metrics_port_file, log_path, timeout) if metrics else None
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    metrics_address = f"127.0.0.1:{metrics_port}" if metrics_port is not None else None
    return ServiceProcess(name, proc, f"127.0.0.1:{port}", log_path, metrics_address)


def transport_args(tls_dir: Path | None, insecure: bool) -> list[str]:
    """``--tls-dir DIR`` or ``--insecure``: a server is started with exactly one of them."""
    if (tls_dir is None) == (not insecure):
        raise ValueError("give a server either tls_dir (its bundle) or insecure=True")
    return ["--insecure"] if insecure else ["--tls-dir", str(tls_dir)]


def start_agent(
    workdir: Path,
    *,
    name: str = "agent",
    device: str = "fake",
    tls_dir: Path | None = None,
    insecure: bool = False,
    extra_args: Sequence[str] = (),
    timeout: float = 30.0,
    metrics: bool = False,
    listen: str = "127.0.0.1:0",
) -> ServiceProcess:
    """Start one agent on a free loopback port (or ``listen``); its state lives in ``workdir/state``.

    ``tls_dir``: its bundle (mutual TLS, only the controller's certificate passes); or ``insecure``.
    With ``metrics``, it also serves /metrics on a free loopback port (``metrics_url``: HTTPS with
    its certificate under ``tls_dir``)."""
    argv = [
        str(BIN / "chital-agent"),
        "serve",
        # Never the host's /etc/chital/agent.toml: a dev fleet's settings are its flags.
        "--config",
        os.devnull,
        "--listen",
        listen,
        "--state-dir",
        str(workdir / "state"),
        "--device",
        device,
        *transport_args(tls_dir, insecure),
        *extra_args,
    ]
    agent = _spawn(name, argv, workdir, None, timeout, metrics=metrics)
    agent.metrics_scheme = "https" if tls_dir is not None else "http"  # the agent's certificate
    return agent


def start_controller(
    workdir: Path,
    *,
    database_url: str | None = None,
    tls_dir: Path | None = None,
    insecure: bool = False,
    extra_args: Sequence[str] = (),
    timeout: float = 30.0,
    metrics: bool = False,
    listen: str = "127.0.0.1:0",
) -> ServiceProcess:
    """Start a controller on a free loopback port (or ``listen``), migrating its database first.

    ``tls_dir``: its bundle (the API's server certificate and the client certificate it dials
    agents with; /metrics is HTTPS with it too); or ``insecure``."""
    argv = [
        str(BIN / "chital-controller"),
        "serve",
        # Never the host's /etc/chital/controller.toml: a dev fleet's settings are its flags.
        "--config",
        os.devnull,
        "--listen",
        listen,
        "--state-dir",
        str(workdir / "state"),
        "--migrate",
        *transport_args(tls_dir, insecure),
    ]
    if database_url:
        argv += ["--database-url", database_url]
    if metrics and tls_dir is not None:
        argv.append("--metrics-tls")  # /metrics over HTTPS with the controller's certificate
    controller = _spawn("controller", [*argv, *extra_args], workdir, None, timeout, metrics=metrics)
    controller.metrics_scheme = "https" if metrics and tls_dir is not None else "http"
    return controller


def bootstrap_token(controller_workdir: Path, database_url: str | None, name: str) -> str:
    """An admin token for the fleet, written into the controller's database."""
    return create_token(
        name=name, role="admin", state_dir=controller_workdir / "state", database_url=database_url
    )


@dataclass
class HollowFleet:
    """A controller and ``agents`` hollow agents, registered with it. Use as a context manager."""

    agents: int = 3
    workdir: Path | None = None
    database_url: str | None = None
    register: bool = True
    controller_args: Sequence[str] = ()
    #: Extra flags of every agent (``chital-agent serve``).
    agent_args: Sequence[str] = ()
    #: Serve /metrics on free loopback ports (``ServiceProcess.metrics_address``); agents are
    #: registered with a ``metrics-address`` label, which Prometheus discovery uses.
    metrics: bool = False
    #: Plaintext on loopback, no PKI (the controller still requires a token). Off by default: the
    #: fleet runs with mutual TLS to agents and TLS plus a token to the controller.
    insecure: bool = False
    controller: ServiceProcess | None = field(default=None, init=False)
    agent_procs: list[ServiceProcess] = field(default_factory=list, init=False)
    #: The fleet's PKI (``<workdir>/pki``); None with ``insecure``.
    pki: FleetPKI | None = field(default=None, init=False)
    #: The bootstrap admin token (``chital-controller token create``).
    token: str | None = field(default=None, init=False, repr=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False)

    @property
    def target(self) -> str:
        """The controller's address, for ``chital.client.Client`` or ``chital --controller``."""
        assert self.controller is not None, "fleet not started"
        return self.controller.address

    @property
    def client_config(self) -> ClientConfig:
        """The controller's address, the CA to verify it with and the admin token."""
        assert self.token is not None, "fleet not started"
        tls = None if self.pki is None else TLSFiles(ca=self.pki.ca)
        return ClientConfig(self.target, self.token, tls=tls, insecure=self.insecure)

    @property
    def config_path(self) -> Path:
        """A ``chital`` config file for this fleet (context "hollow"): ``CHITAL_CONFIG=<it>``."""
        assert self.workdir is not None, "fleet not started"
        return self.workdir / "client" / "config.toml"

    def client(self, **kw: Any) -> Client:
        """A ``chital.client.Client`` of the fleet's admin (``kw``: ``timeout=``, ``token=``...)."""
        return self.client_config.client(**kw)

    @property
    def roots(self) -> Path:
        """``<workdir>/roots``: the only client-chosen container roots the controller and the agents
        accept (``--allowed-root``; the daemons' default prefix is the production one)."""
        assert self.workdir is not None, "fleet not started"
        return self.workdir / "roots"

    def _root_args(self) -> list[str]:
        return ["--allowed-root", str(self.roots)]

    def start(self) -> HollowFleet:
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="chital-hollow-")
            self.workdir = Path(self._tmp.name)
        try:
            self.roots.mkdir(parents=True, exist_ok=True)
            controller_tls = None
            if not self.insecure:
                self.pki = FleetPKI(self.workdir / "pki")
                controller_tls = self.pki.controller()
            self.controller = start_controller(
                self.workdir / "controller",
                database_url=self.database_url,
                tls_dir=controller_tls,
                insecure=self.insecure,
                extra_args=[*self._root_args(), *self.controller_args],
                metrics=self.metrics,
            )
            self.token = bootstrap_token(self.workdir / "controller", self.database_url, "hollow-admin")
            self.client_config.write(self.config_path, context="hollow")
            for i in range(self.agents):
                self.add_agent(name=f"agent-{i}")
        except BaseException:
            self.stop()
            raise
        return self

    def add_agent(self, *, name: str | None = None) -> ServiceProcess:
        """Start one more hollow agent and register it with the controller."""
        assert self.workdir is not None
        name = name or f"agent-{len(self.agent_procs)}"
        tls_dir = None if self.pki is None else self.pki.agent(name, "127.0.0.1")
        agent = start_agent(
            self.workdir / name,
            name=name,
            tls_dir=tls_dir,
            insecure=self.insecure,
            metrics=self.metrics,
            extra_args=[*self._root_args(), *self.agent_args],
        )
        self.agent_procs.append(agent)
        if self.register:
            labels = {"fleet": "hollow", "name": name}
            if agent.metrics_address:
                labels["metrics-address"] = agent.metrics_address
            with self.client() as client:
                client.register_host(agent.address, labels=labels)
        return agent

    def kill_controller(self) -> None:
        """SIGKILL the controller (a crash): its database and the agents stay."""
        assert self.controller is not None, "fleet not started"
        self.controller.kill()

    def restart_controller(self) -> ServiceProcess:
        """Start the controller again on its address, with its database and its bundle."""
        assert self.workdir is not None and self.controller is not None, "fleet not started"
        old = self.controller
        old.stop()
        argv = old.proc.args if isinstance(old.proc.args, list) else []
        tls_dir = Path(argv[argv.index("--tls-dir") + 1]) if "--tls-dir" in argv else None
        self.controller = start_controller(
            self.workdir / "controller",
            database_url=self.database_url,
            tls_dir=tls_dir,
            insecure=self.insecure,
            extra_args=[*self._root_args(), *self.controller_args],
            metrics=self.metrics,
            listen=old.address,
        )
        return self.controller

    def kill_agent(self, index: int) -> None:
        """SIGKILL agent ``index`` (a crash): the processes it started keep running."""
        self.agent_procs[index].kill()

    def restart_agent(self, index: int) -> ServiceProcess:
        """Start agent ``index`` again on its address, with its state directory and bundle."""
        assert self.workdir is not None
        old = self.agent_procs[index]
        old.stop()
        tls_dir = None if self.pki is None else self.pki.agent(old.name, "127.0.0.1")
        agent = start_agent(
            self.workdir / old.name,
            name=old.name,
            tls_dir=tls_dir,
            insecure=self.insecure,
            metrics=self.metrics,
            extra_args=[*self._root_args(), *self.agent_args],
            listen=old.address,
        )
        self.agent_procs[index] = agent
        return agent

    def stop(self) -> None:
        """Stop every agent, then the controller; remove the temporary directory."""
        for agent in self.agent_procs:
            agent.stop()
        if self.controller is not None:
            self.controller.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> HollowFleet:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def describe_access(config: ClientConfig, config_path: Path, pki: FleetPKI | None) -> str:
    """What a person needs to use the fleet from a shell: the config file to export."""
    lines = [""]
    if pki is not None:
        lines.append(f"fleet PKI    {pki.directory} (CA {pki.ca}; keep it private)")
    else:
        lines.append("transport    plaintext on loopback (--insecure); the controller still wants the token")
    lines += [
        f"client       {config_path} (context with the CA and an admin token, mode 0600)",
        "",
        f"export CHITAL_CONFIG={config_path}",
    ]
    return "\n".join(lines)


class StopSignals:
    """Turns SIGINT and SIGTERM into a flag, so a foreground fleet stops cleanly (by pid) on Ctrl-C."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.requested = True

    def serve(self, target: str, ready_file: Path | None, stopped: Callable[[], str | None]) -> int:
        """Announce ``target`` in ``ready_file`` (atomically), then wait for a stop signal (0) or
        for ``stopped()`` to name a service that died (1)."""
        if ready_file is not None:
            tmp = ready_file.with_suffix(".tmp")
            tmp.write_text(target + "\n")
            tmp.rename(ready_file)
        while not self.requested:
            dead = stopped()
            if dead:
                print(dead, file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chital.devcluster.hollow", description=__doc__)
    parser.add_argument("--agents", type=int, default=3, help="number of hollow agents (default 3)")
    parser.add_argument("--workdir", type=Path, help="state and logs (default: a temporary directory)")
    parser.add_argument("--database-url", help="controller database (default: SQLite in the workdir)")
    parser.add_argument(
        "--ready-file",
        type=Path,
        help="write the controller address here once everything serves (the client config file, "
        "<workdir>/client/config.toml, exists by then)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext on loopback, no PKI (default: mutual TLS to agents, TLS + token to the controller)",
    )
    args = parser.parse_args(argv)
    if args.agents < 1:
        parser.error("--agents must be at least 1")

    signals = StopSignals()
    fleet = HollowFleet(
        agents=args.agents, workdir=args.workdir, database_url=args.database_url, insecure=args.insecure
    )
    try:
        fleet.start()
    except (RuntimeError, TimeoutError) as exc:
        print(f"hollow: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"controller  {fleet.target}  (log {fleet.controller.log_path})")  # type: ignore[union-attr]
        for agent in fleet.agent_procs:
            print(f"{agent.name:<11} {agent.address}  (log {agent.log_path})")
        print(describe_access(fleet.client_config, fleet.config_path, fleet.pki), flush=True)
        print("Ctrl-C stops the fleet.", flush=True)

        def stopped() -> str | None:
            for service in [fleet.controller, *fleet.agent_procs]:
                if service is not None and service.proc.poll() is not None:
                    return f"hollow: {service.name} exited with {service.proc.returncode}"
            return None

        return signals.serve(fleet.target, args.ready_file, stopped)
    finally:
        fleet.stop()


if __name__ == "__main__":
    sys.exit(main())
