"""Fixtures: an in-process fake controller on 127.0.0.1 (see fake_chital_controller.py), and an
environment without the caller's CHITAL_* variables or config file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from fake_chital_controller import FakeController

from chital.api.container.v1 import container_pb2_grpc as cpb_grpc
from chital.api.host.v1 import host_pb2_grpc as hpb_grpc


@pytest.fixture(autouse=True)
def _no_user_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No test reads the settings of whoever runs it: CHITAL_* unset, the config file in tmp_path."""
    for name in list(os.environ):
        if name.startswith("CHITAL_"):
            monkeypatch.delenv(name)
    config = tmp_path / "chital-config" / "config.toml"
    monkeypatch.setenv("CHITAL_CONFIG", str(config))
    return config


@pytest.fixture
def fake() -> Iterator[FakeController]:
    yield FakeController()


@pytest.fixture
def target(fake: FakeController) -> Iterator[str]:
    """Address of a gRPC server on 127.0.0.1 serving ``fake``."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    cpb_grpc.add_ContainerServiceServicer_to_server(fake, server)
    hpb_grpc.add_HostServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)
