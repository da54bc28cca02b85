"""Real ``chital-agent serve`` subprocesses (FakeDevice) on 127.0.0.1, and the fleet PKI they trust.

:func:`make_bundles` makes one fleet CA with the bundles the tests present: the controller's, an
agent's (for 127.0.0.1), a user's, and a controller bundle of another CA. :func:`start_agent` runs an
agent with the given flags (``--tls-dir`` or ``--insecure``), waits for its port and returns it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from chital.api.agent.v1 import agent_pb2_grpc as pb_grpc
from chital.security.pki import PKI
from chital.security.tls import TLSFiles, channel_credentials


@dataclass(frozen=True)
class Bundles:
    """Bundle directories (ca.crt, tls.crt, tls.key) of the test PKI."""

    pki: PKI
    controller: Path
    agent: Path
    user: Path
    other_ca_controller: Path


def make_bundles(directory: Path) -> Bundles:
    pki = PKI.init(directory / "fleet")
    other = PKI.init(directory / "other", common_name="chital fleet CA")  # same name, another key
    return Bundles(
        pki=pki,
        controller=pki.issue_controller(),
        agent=pki.issue_agent("127.0.0.1"),
        user=pki.issue_user("alice", "admin"),
        other_ca_controller=other.issue_controller(),
    )


def secure_channel(port: int, bundle: Path, *, host: str = "127.0.0.1") -> grpc.Channel:
    """A channel presenting ``bundle``'s certificate and trusting its ``ca.crt``."""
    return grpc.secure_channel(f"{host}:{port}", channel_credentials(TLSFiles.from_dir(bundle)))


@dataclass
class AgentProc:
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    stdout_first_line: str
    metrics_port: int = 0
    channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    def log(self) -> str:
        return (self.workdir / "agent.log").read_text(errors="replace")

    def stub(self, bundle: Path | None) -> pb_grpc.AgentServiceStub:
        """A stub presenting ``bundle`` (None: a plaintext channel)."""
        channel = (
            grpc.insecure_channel(f"127.0.0.1:{self.port}")
            if bundle is None
            else secure_channel(self.port, bundle)
        )
        self.channels.append(channel)
        return pb_grpc.AgentServiceStub(channel)

    def stop(self) -> int:
        for channel in self.channels:
            channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.returncode is not None
        return self.proc.returncode


def agent_argv(workdir: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "chital.agent",
        "serve",
        "--state-dir",
        str(workdir / "state"),
        "--device",
        "fake",
        *args,
    ]


def run_agent(workdir: Path, args: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``chital-agent serve`` expecting it to refuse to start (it must exit on its own)."""
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        agent_argv(workdir, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
        check=False,
    )


def start_agent(workdir: Path, args: Sequence[str], *, metrics: bool = False) -> AgentProc:
    """Start an agent listening on a free loopback port with ``args`` (transport flags included)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / "port"
    extra = ["--listen", "127.0.0.1:0", "--port-file", str(port_file)]
    if metrics:
        extra += ["--metrics-listen", "127.0.0.1:0", "--metrics-port-file", str(workdir / "metrics-port")]
    with (workdir / "agent.log").open("ab") as log:
        proc = subprocess.Popen(
            agent_argv(workdir, *extra, *args),
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
        )
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            raise AssertionError(f"agent did not start:\n{(workdir / 'agent.log').read_text()}")
        time.sleep(0.05)
    assert proc.stdout is not None
    first = proc.stdout.readline().decode().strip()
    metrics_port = int((workdir / "metrics-port").read_text()) if metrics else 0
    return AgentProc(proc, int(port_file.read_text()), workdir, first, metrics_port)
