"""The real agent in a guest, as the guest tests drive it (imported by conftest.py and the tests).

It runs as deployed: a fleet PKI made in the guest (``BASE/pki``, on tmpfs), the agent with its
bundle (``--tls-dir``: mutual TLS, only the controller's certificate passes), and the tests call it
with the controller's bundle, as the controller does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from chital.api.agent.v1 import agent_pb2 as pb
from chital.api.agent.v1 import agent_pb2_grpc as pb_grpc
from chital.security.pki import PKI
from chital.security.tls import TLSFiles, channel_credentials

BASE = Path("/tmp/chital-agent-vm")
CGROUP_PARENT = "chital-vmtest"
APPLETS = (
    "[",
    "test",
    "sh",
    "echo",
    "tr",
    "cat",
    "ls",
    "sleep",
    "true",
    "yes",
    "head",
    "kill",
    "id",
    "pwd",
    "grep",
    "wc",
    "ps",
    "readlink",
    "touch",
    "stat",
    "rm",
)


class AgentProcess:
    """``chital-agent serve`` in the guest, restartable, with a stub."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None
        self.stub: pb_grpc.AgentServiceStub
        self.starts = 0
        self.port = 0
        pki_dir = base / "pki"
        self.pki = PKI(pki_dir) if (pki_dir / "ca" / "ca.key").exists() else PKI.init(pki_dir)
        #: The agent's bundle (SAN 127.0.0.1, the address the tests dial) and the controller's.
        self.tls_dir = self.pki.issue_agent("127.0.0.1")
        self.controller_tls = self.pki.issue_controller()

    def start(self) -> None:
        self.starts += 1
        port_file = self.base / "port"
        port_file.unlink(missing_ok=True)
        log = open(self.base / f"agent-{self.starts}.log", "wb")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chital.agent",
                "serve",
                "--config",
                "/dev/null",  # the guest sees the host's root: never a host's /etc/chital/agent.toml
                "--device",
                "linux",
                "--listen",
                "127.0.0.1:0",
                "--port-file",
                str(port_file),
                "--state-dir",
                str(self.base / "state"),
                "--cgroup-parent",
                CGROUP_PARENT,
                "--tls-dir",
                str(self.tls_dir),
                # The tests' container root (the conftest's ``root``), the only one it accepts.
                "--allowed-root",
                str(self.base / "root"),
            ],
            stdout=log,
            stderr=log,
            env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
        )
        log.close()
        deadline = time.monotonic() + 120
        while not port_file.exists():
            assert self.proc.poll() is None, f"agent exited {self.proc.returncode}:\n{self.log()}"
            assert time.monotonic() < deadline, f"agent did not start:\n{self.log()}"
            time.sleep(0.1)
        self.port = int(port_file.read_text())
        credentials = channel_credentials(TLSFiles.from_dir(self.controller_tls))
        self.channel = grpc.secure_channel(f"127.0.0.1:{self.port}", credentials)
        self.stub = pb_grpc.AgentServiceStub(self.channel)

    def log(self) -> str:
        return (self.base / f"agent-{self.starts}.log").read_text(errors="replace")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        if self.channel is not None:
            self.channel.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.channel is not None:
            self.channel.close()

    # -- helpers over the stub -------------------------------------------------------------------

    def create(self, uid: str, root: Path, **limits: int) -> pb.Container:
        return self.stub.CreateContainer(
            pb.CreateContainerRequest(uid=uid, root=str(root), limits=pb.Limits(**limits)), timeout=60
        ).container

    def start_process(self, cuid: str, puid: str, argv: list[str], **kw: object) -> pb.Process:
        req = pb.StartProcessRequest(container_uid=cuid, process_uid=puid, argv=argv, **kw)  # type: ignore[arg-type]
        return self.stub.StartProcess(req, timeout=120).process

    def processes(self) -> dict[str, pb.Process]:
        procs = self.stub.Sync(pb.SyncRequest(), timeout=60).processes
        uids = [p.uid for p in procs]
        assert len(uids) == len(set(uids)), f"duplicated processes in Sync: {uids}"
        return {p.uid: p for p in procs}

    def events(
        self, wanted: int, timeout: float, kind: int = pb.EVENT_KIND_PROCESS_EXITED
    ) -> list[pb.StreamEventsResponse]:
        """Events of ``kind`` from the start of this agent's log until ``wanted`` of them (or timeout)."""
        out: list[pb.StreamEventsResponse] = []
        stream = self.stub.StreamEvents(pb.StreamEventsRequest(after_seq=0), timeout=timeout)
        with contextlib.suppress(grpc.RpcError):  # DEADLINE_EXCEEDED ends the wait
            for ev in stream:
                if ev.kind == kind:
                    out.append(ev)
                    if len(out) >= wanted:
                        stream.cancel()
                        break
        return out

    def wait_exit(self, puid: str, timeout: float = 120) -> pb.Process:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.processes()[puid]
            if proc.state == pb.PROCESS_STATE_EXITED:
                return proc
            time.sleep(0.2)
        raise AssertionError(f"{puid} did not exit within {timeout} s")

    def logs(self, puid: str) -> tuple[bytes, bytes]:
        out, err = b"", b""
        for chunk in self.stub.StreamLogs(pb.StreamLogsRequest(process_uid=puid, follow=False), timeout=30):
            if chunk.stream == pb.LOG_STREAM_STDOUT:
                out += chunk.data
            else:
                err += chunk.data
        return out, err
