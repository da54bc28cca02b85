"""chital.devcluster.hollow_many: many agents in one process, each a server on its own port."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc

from chital.api.agent.v1 import agent_pb2, agent_pb2_grpc
from chital.devcluster.hollow_many import HollowHosts, container_uid


def sync(port: int) -> set[str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        return {c.uid for c in stub.Sync(agent_pb2.SyncRequest(), timeout=30).containers}


def test_each_host_serves_its_own_seeded_containers(tmp_path: Path) -> None:
    hosts = HollowHosts(3, tmp_path, first_index=7, workers=2)
    try:
        assert len(set(hosts.ports)) == 3
        effective = hosts.seed(2, "t")
        assert effective  # the default deny list the agents enforce
        hosts.seed(3, "t")  # grows each host to 3, keeping the first 2
        for i, port in enumerate(hosts.ports):
            assert sync(port) == {container_uid("t", 7 + i, n) for n in range(3)}
    finally:
        hosts.stop()


def test_the_process_protocol(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "chital.devcluster.hollow_many", "--hosts", "2", "--workdir", str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        ports = json.loads(proc.stdout.readline())["ports"]
        proc.stdin.write("seed 1 p\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["seeded"] == 1
        proc.stdin.write("bogus\n")
        proc.stdin.flush()
        assert "error" in json.loads(proc.stdout.readline())
        assert sync(ports[1]) == {container_uid("p", 1, 0)}
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
