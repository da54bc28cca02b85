"""Fixtures: an in-process fake controller on 127.0.0.1 (see fake_chital_controller.py)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from fake_chital_controller import FakeController

from chital.api.container.v1 import container_pb2_grpc as cpb_grpc
from chital.api.host.v1 import host_pb2_grpc as hpb_grpc


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
