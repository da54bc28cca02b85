"""Test harness: three in-process fake agents and a controller on 127.0.0.1 with SQLite in a dir.

(A module of its own, not conftest.py: test modules import Cluster, and every test directory
has a conftest module of that same name.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from controller_fake_agent import RunningFakeAgent

from chital.api.container.v1 import container_pb2_grpc
from chital.api.host.v1 import host_pb2_grpc
from chital.controller.health import HealthConfig
from chital.controller.server import ControllerConfig, ControllerServer


@dataclass
class Cluster:
    controller: ControllerServer
    agents: list[RunningFakeAgent]
    channel: grpc.Channel
    containers: container_pb2_grpc.ContainerServiceStub
    hosts: host_pb2_grpc.HostServiceStub


@contextmanager
def running_cluster(state_dir: Path, *, metrics: bool = False, database_url: str = "") -> Iterator[Cluster]:
    agents = [RunningFakeAgent(f"agent{i}") for i in range(3)]
    config = ControllerConfig(
        listen="127.0.0.1:0",
        state_dir=str(state_dir),
        database_url=database_url,
        migrate=True,
        port_file=str(state_dir / "port"),
        health=HealthConfig(interval=0.2, not_ready_after=1.0, lost_after=30.0),
        agent_timeout=2.0,
        metrics_listen="127.0.0.1:0" if metrics else "",
    )
    controller = ControllerServer(config)
    port = controller.start()
    assert (state_dir / "port").read_text().strip() == str(port)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Cluster(
            controller,
            agents,
            channel,
            container_pb2_grpc.ContainerServiceStub(channel),
            host_pb2_grpc.HostServiceStub(channel),
        )
    finally:
        channel.close()
        controller.stop(grace=1.0)
        for agent in agents:
            agent.stop()
