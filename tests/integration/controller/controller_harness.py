"""Test harness: three in-process fake agents and a controller on 127.0.0.1 with SQLite in a dir.

Secure like production: a fleet PKI under the state dir, the agents behind mutual TLS (the
controller's certificate required), the controller's API over TLS with a bootstrap admin token,
and a second API port that requires client certificates. ``Cluster`` holds stubs authenticated as
that admin; :meth:`Cluster.channel` makes channels with other credentials.

(A module of its own, not conftest.py: test modules import Cluster, and every test directory
has a conftest module of that same name.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from controller_fake_agent import RunningFakeAgent

from chital.api.admin.v1 import admin_pb2_grpc
from chital.api.container.v1 import container_pb2_grpc
from chital.api.host.v1 import host_pb2_grpc
from chital.controller.health import HealthConfig
from chital.controller.server import ControllerConfig, ControllerServer
from chital.security.pki import PKI
from chital.security.tls import TLSFiles, channel_credentials


class BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call (works on plaintext channels too,
    where gRPC refuses call credentials)."""

    def __init__(self, token: str) -> None:
        self._metadata = ("authorization", f"Bearer {token}")

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return details._replace(metadata=[*(details.metadata or ()), self._metadata])  # type: ignore[attr-defined, no-any-return]

    def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(client_call_details), request)


def dial(address: str, ca: Path, token: str | None) -> grpc.Channel:
    """A TLS channel that trusts ``ca`` and sends ``token`` (None: no credentials)."""
    channel = grpc.secure_channel(address, channel_credentials(TLSFiles(ca=ca)))
    return channel if token is None else grpc.intercept_channel(channel, BearerToken(token))


@dataclass
class Cluster:
    controller: ControllerServer
    agents: list[RunningFakeAgent]
    pki: PKI
    # The bootstrap admin token, and stubs that use it on the TLS port.
    admin_token: str
    channel: grpc.Channel
    containers: container_pb2_grpc.ContainerServiceStub
    hosts: host_pb2_grpc.HostServiceStub
    admin: admin_pb2_grpc.AdminServiceStub
    _channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.controller.port}"

    @property
    def mtls_address(self) -> str:
        return f"127.0.0.1:{self.controller.mtls_port}"

    def token(self, role: str, name: str | None = None, ttl_seconds: float | None = None) -> str:
        """A new token of ``role``, made in-process (like `chital-controller token create`)."""
        bearer, _ = self.controller.tokens.create(name or role, role, ttl_seconds, "harness")
        return bearer

    def channel_with(
        self, token: str | None = None, *, cert: Path | None = None, ca: Path | None = None
    ) -> grpc.Channel:
        """A channel to the controller: with ``cert`` (a bundle dir) to the mTLS port, else to the
        TLS port with ``token`` (None: no credentials). ``ca``: trust another CA file. Closed with
        the cluster."""
        if cert is not None:
            files = TLSFiles.from_dir(cert)
            if ca is not None:
                files = TLSFiles(ca=ca, cert=files.cert, key=files.key)
            channel = grpc.secure_channel(self.mtls_address, channel_credentials(files))
        else:
            channel = dial(self.address, ca or self.pki.directory / "ca" / "ca.crt", token)
        self._channels.append(channel)
        return channel

    def stubs(
        self, channel: grpc.Channel
    ) -> tuple[
        container_pb2_grpc.ContainerServiceStub,
        host_pb2_grpc.HostServiceStub,
        admin_pb2_grpc.AdminServiceStub,
    ]:
        return (
            container_pb2_grpc.ContainerServiceStub(channel),
            host_pb2_grpc.HostServiceStub(channel),
            admin_pb2_grpc.AdminServiceStub(channel),
        )

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


#: The harness's controller accepts client-chosen roots below this prefix only (set explicitly, like
#: every dev fleet: the controller's default prefix is the production one).
HARNESS_ROOTS: tuple[str, ...] = ("/srv/sandboxes",)


@contextmanager
def running_cluster(
    state_dir: Path,
    *,
    metrics: bool = False,
    database_url: str = "",
    allowed_roots: tuple[str, ...] = HARNESS_ROOTS,
    **settings: Any,
) -> Iterator[Cluster]:
    """A started cluster; ``settings`` are more ControllerConfig fields (max_streams=...).

    ``allowed_roots``: the client-chosen container roots the controller accepts (the fake agents
    check none), :data:`HARNESS_ROOTS` unless a test chooses its own."""
    pki = PKI.init(state_dir / "pki")
    controller_bundle = pki.issue_controller()
    agent_bundle = pki.issue_agent("127.0.0.1")
    agents = [RunningFakeAgent(f"agent{i}", tls_dir=agent_bundle) for i in range(3)]
    config = ControllerConfig(
        listen="127.0.0.1:0",
        mtls_listen="127.0.0.1:0",
        tls_dir=str(controller_bundle),
        state_dir=str(state_dir),
        database_url=database_url,
        migrate=True,
        port_file=str(state_dir / "port"),
        # Quick beats; 2 s of silence before NOT_READY (1.5 s for a host just registered to open its
        # stream): 1 s flagged a host NOT_READY at its registration on a loaded machine.
        health=HealthConfig(interval=0.2, not_ready_after=2.0, lost_after=30.0),
        agent_timeout=2.0,
        metrics_listen="127.0.0.1:0" if metrics else "",
        allowed_roots=allowed_roots,
        **settings,
    )
    controller = ControllerServer(config)
    port = controller.start()
    assert (state_dir / "port").read_text().strip() == str(port)
    admin_token, _ = controller.tokens.create("harness-admin", "admin", None, "harness")
    channel = dial(f"127.0.0.1:{port}", pki.directory / "ca" / "ca.crt", admin_token)
    cluster = Cluster(
        controller,
        agents,
        pki,
        admin_token,
        channel,
        container_pb2_grpc.ContainerServiceStub(channel),
        host_pb2_grpc.HostServiceStub(channel),
        admin_pb2_grpc.AdminServiceStub(channel),
        [channel],
    )
    try:
        yield cluster
    finally:
        cluster.close()
        controller.stop(grace=1.0)
        for agent in agents:
            agent.stop()
