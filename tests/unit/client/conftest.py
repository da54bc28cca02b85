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

from chital.api.admin.v1 import admin_pb2_grpc as apb_grpc
from chital.api.container.v1 import container_pb2_grpc as cpb_grpc
from chital.api.host.v1 import host_pb2_grpc as hpb_grpc
from chital.security.pki import PKI
from chital.security.tls import TLSFiles, server_credentials


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


def serve(fake: FakeController, credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.Server, str]:
    """A started gRPC server on 127.0.0.1 serving ``fake`` (TLS with ``credentials``) and its address."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    cpb_grpc.add_ContainerServiceServicer_to_server(fake, server)
    hpb_grpc.add_HostServiceServicer_to_server(fake, server)
    apb_grpc.add_AdminServiceServicer_to_server(fake, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def target(fake: FakeController) -> Iterator[str]:
    """Address of a plaintext gRPC server on 127.0.0.1 serving ``fake``."""
    server, address = serve(fake)
    try:
        yield address
    finally:
        server.stop(grace=None)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A fleet PKI with the controller's bundle (SANs 127.0.0.1, localhost), users alice (admin) and
    bob (viewer), and a second, unrelated CA under ``other/``."""
    root = tmp_path_factory.mktemp("pki")
    pki = PKI.init(root / "fleet")
    pki.issue_controller()
    pki.issue_user("alice", "admin")
    pki.issue_user("bob", "viewer")
    PKI.init(root / "other").issue_user("mallory", "admin")
    return pki


@pytest.fixture
def tls_target(fake: FakeController, pki: PKI) -> Iterator[str]:
    """Address of a TLS server (the controller's bundle; no client certificate asked) serving ``fake``."""
    files = TLSFiles.from_dir(pki.directory / "controller")
    server, address = serve(fake, server_credentials(files, require_client_cert=False))
    try:
        yield address
    finally:
        server.stop(grace=None)


@pytest.fixture
def mtls_target(fake: FakeController, pki: PKI) -> Iterator[str]:
    """Address of a TLS server that requires a client certificate of the fleet CA."""
    files = TLSFiles.from_dir(pki.directory / "controller")
    server, address = serve(fake, server_credentials(files, require_client_cert=True))
    try:
        yield address
    finally:
        server.stop(grace=None)
