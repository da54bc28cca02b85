"""Only the controller can drive an agent: the transport flags, the handshake, the role check, the
controller's pool dialling agents (SAN checked) and the agent's second check of container roots."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from agent_harness import AgentProc, Bundles, run_agent, secure_channel
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chital.api.agent.v1 import agent_pb2 as pb
from chital.api.agent.v1 import agent_pb2_grpc as pb_grpc
from chital.controller.agents import AgentPool
from chital.daemon.roots import DEFAULT_ALLOWED_ROOT
from chital.errdefs import FailedPrecondition, Unavailable
from chital.security.pki import PKI
from chital.security.tls import TLSFiles, channel_credentials

AgentFactory = Callable[..., AgentProc]


def _code(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""  # type: ignore[attr-defined]


def _create(stub: pb_grpc.AgentServiceStub, uid: str, root: str = "", **sandbox: bool) -> pb.Container:
    request = pb.CreateContainerRequest(uid=uid, root=root, sandbox=pb.Sandbox(**sandbox))
    return stub.CreateContainer(request, timeout=10).container


def _calls(channel: grpc.Channel) -> list[Callable[[], object]]:
    """A mutation, a read, a stream and the health check over ``channel``."""
    stub = pb_grpc.AgentServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    return [
        lambda: _create(stub, "ct-intruder"),
        lambda: stub.Sync(pb.SyncRequest(), timeout=10),
        lambda: list(stub.StreamEvents(pb.StreamEventsRequest(), timeout=10)),
        lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10),
    ]


# -- starting ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "no transport security: pass --tls-dir"),
        (["--insecure", "--listen", "0.0.0.0:0"], "plaintext is only allowed on loopback"),
        (["--insecure", "--listen", ":0"], "plaintext is only allowed on loopback"),
        (["--insecure", "--metrics-listen", "0.0.0.0:0"], "plaintext is only allowed on loopback"),
        (["--insecure", "--tls-dir", "{agent}"], "exclude each other"),
        (["--tls-dir", "{missing}"], "missing"),
    ],
)
def test_refuses_to_start_without_a_secure_transport(
    tmp_path: Path, bundles: Bundles, flags: list[str], message: str
) -> None:
    flags = [f.format(agent=bundles.agent, missing=tmp_path / "nothing") for f in flags]
    result = run_agent(tmp_path / "agent", flags)
    assert result.returncode == 4, result.stderr  # a configuration error (docs/daemons.md)
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "agent" / "state").exists() or not any(
        (tmp_path / "agent" / "state").rglob("*.json")
    )


def test_insecure_on_loopback_serves_plaintext_and_says_so(agent_factory: AgentFactory) -> None:
    agent = agent_factory("--insecure")
    assert agent.stub(None).GetInfo(pb.GetInfoRequest(), timeout=10).device == "fake"
    assert "any local user can drive this agent" in agent.log()


# -- who may call ----------------------------------------------------------------------------------


def _expired_controller(bundles: Bundles, tmp_path: Path) -> Path:
    """A controller certificate of the fleet CA whose validity ended yesterday."""
    copy = tmp_path / "pki-copy"
    shutil.copytree(bundles.pki.directory, copy)
    issued = PKI(copy).issue_controller(not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3), days=2)
    return issued


def test_only_the_controller_certificate_is_let_through(
    agent_factory: AgentFactory, bundles: Bundles, tmp_path: Path
) -> None:
    agent = agent_factory("--tls-dir", str(bundles.agent))
    port = agent.port

    # The handshake fails: no certificate, a plaintext client, another CA, an expired certificate.
    ca_only_credentials = channel_credentials(TLSFiles(ca=bundles.agent / "ca.crt"))
    ca_only = grpc.secure_channel(f"127.0.0.1:{port}", ca_only_credentials)
    handshake_failures = {
        "no client certificate": ca_only,
        "plaintext": grpc.insecure_channel(f"127.0.0.1:{port}"),
        "another CA": secure_channel(port, bundles.other_ca_controller),
        "expired": secure_channel(port, _expired_controller(bundles, tmp_path)),
    }
    for what, channel in handshake_failures.items():
        codes = {_code(call)[0] for call in _calls(channel)}
        assert codes == {grpc.StatusCode.UNAVAILABLE}, what
        channel.close()

    # A certificate of the fleet CA with another role completes the handshake, then is refused.
    for what, bundle, role in (("an agent", bundles.agent, "agent"), ("a user", bundles.user, "admin")):
        channel = secure_channel(port, bundle)
        for call in _calls(channel):
            code, details = _code(call)
            assert code == grpc.StatusCode.UNAUTHENTICATED, what
            assert f"has role {role!r}: only the controller may call this agent" in details
        channel.close()

    # Nothing was created; the controller's certificate works.
    controller = agent.stub(bundles.controller)
    assert list(controller.Sync(pb.SyncRequest(), timeout=10).containers) == []
    assert not any((agent.state_dir / "containers").iterdir())
    created = _create(controller, "ct-ok")
    assert created.uid == "ct-ok"
    controller.DestroyContainer(pb.DestroyContainerRequest(uid="ct-ok"), timeout=10)
    assert "refused /chital.api.agent.v1.AgentService/CreateContainer" in agent.log()


# -- the controller's side: AgentPool ------------------------------------------------------------


def test_pool_dials_over_mutual_tls_and_checks_the_host(
    agent_factory: AgentFactory, bundles: Bundles, tmp_path: Path
) -> None:
    credentials = channel_credentials(TLSFiles.from_dir(bundles.controller))
    right = agent_factory("--tls-dir", str(bundles.agent))
    # A valid agent certificate of the fleet CA, but for another host than the address dialled.
    other_host = PKI(bundles.pki.directory).issue_agent("10.11.12.13")
    wrong = agent_factory("--tls-dir", str(other_host))
    pool = AgentPool(timeout=5.0, credentials=credentials)
    plain = AgentPool(timeout=5.0)
    try:
        assert pool.secure and not plain.secure
        assert pool.get(f"127.0.0.1:{right.port}").get_info().device == "fake"
        with pytest.raises(Unavailable, match=f"agent 127.0.0.1:{wrong.port} unavailable"):
            pool.get(f"127.0.0.1:{wrong.port}").get_info()
        # Plaintext to a TLS agent fails; plaintext beyond loopback is refused before any dial.
        with pytest.raises(Unavailable):
            plain.get(f"127.0.0.1:{right.port}").get_info()
        with pytest.raises(FailedPrecondition, match="only on loopback"):
            plain.get("10.0.0.1:7700")
        pool.check_address("10.0.0.1:7700")  # a secure pool may dial anywhere
    finally:
        pool.close()
        plain.close()


# -- container roots: the agent's second check ----------------------------------------------------


def test_container_roots_are_policy(agent_factory: AgentFactory, bundles: Bundles, tmp_path: Path) -> None:
    allowed = tmp_path / "roots"
    (allowed / "a").mkdir(parents=True)
    agent = agent_factory("--tls-dir", str(bundles.agent), "--allowed-root", str(allowed))
    stub = agent.stub(bundles.controller)
    (tmp_path / "to-root").symlink_to("/")
    outside = f"is not under an allowed root of this host ({allowed}; --allowed-root)"
    refused = {
        "/": "is the host's root",
        "/etc": outside,
        "/usr/lib": outside,
        "/lib64" if Path("/lib64").is_dir() else "/lib": outside,
        "/var": outside,
        "/proc/1/root": "root '/proc/1/root'",
        str(tmp_path / "to-root"): "resolved to '/'",
        str(agent.state_dir): "is or holds the agent's state directory",
        str(agent.state_dir / "containers"): "is or holds the agent's state directory",
        str(agent.workdir): "is or holds the agent's state directory",
    }
    for root, why in refused.items():
        code, details = _code(lambda r=root: _create(stub, "ct-root", r))  # type: ignore[misc]
        assert code == grpc.StatusCode.PERMISSION_DENIED, (root, details)
        assert why in details, details
    assert list(stub.Sync(pb.SyncRequest(), timeout=10).containers) == []

    # A directory under the allowed root is accepted; the host root only when the sandbox allows
    # it (the controller sets that for admins only).
    assert _create(stub, "ct-a", str(allowed / "a")).root == str(allowed / "a")
    host = _create(stub, "ct-host", "/", allow_host_root=True)
    assert host.root == "/" and host.sandbox.allow_host_root
    for uid in ("ct-a", "ct-host"):
        stub.DestroyContainer(pb.DestroyContainerRequest(uid=uid), timeout=10)
    assert Path("/etc").is_dir()  # nothing of the host's root was removed with the container


def test_without_allowed_root_only_the_default_prefix_is_accepted(
    agent_factory: AgentFactory, bundles: Bundles, tmp_path: Path
) -> None:
    (tmp_path / "elsewhere").mkdir()
    agent = agent_factory("--tls-dir", str(bundles.agent))
    stub = agent.stub(bundles.controller)
    code, details = _code(lambda: _create(stub, "ct-out", str(tmp_path / "elsewhere")))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert f"is not under an allowed root of this host ({DEFAULT_ALLOWED_ROOT}; --allowed-root)" in details
    assert list(stub.Sync(pb.SyncRequest(), timeout=10).containers) == []
    assert _create(stub, "ct-own").root.startswith(str(agent.state_dir))  # the agent's own rootfs
    stub.DestroyContainer(pb.DestroyContainerRequest(uid="ct-own"), timeout=10)


def test_allowed_roots_bound_client_chosen_roots(
    agent_factory: AgentFactory, bundles: Bundles, tmp_path: Path
) -> None:
    allowed = tmp_path / "roots"
    (allowed / "web").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (allowed / "escape").symlink_to(tmp_path / "elsewhere")
    agent = agent_factory("--tls-dir", str(bundles.agent), "--allowed-root", str(allowed))
    stub = agent.stub(bundles.controller)
    assert _create(stub, "ct-web", str(allowed / "web")).root == str(allowed / "web")
    for root in (str(tmp_path / "elsewhere"), str(allowed / "escape"), "/"):
        code, details = _code(lambda r=root: _create(stub, "ct-out", r))  # type: ignore[misc]
        assert code == grpc.StatusCode.PERMISSION_DENIED, (root, details)
    assert "is not under an allowed root of this host" in details or "host's root" in details
    assert _create(stub, "ct-own").root.startswith(str(agent.state_dir))  # the agent's own rootfs
    for uid in ("ct-web", "ct-own"):
        stub.DestroyContainer(pb.DestroyContainerRequest(uid=uid), timeout=10)


def test_allowed_root_must_be_absolute_and_not_the_host_root(tmp_path: Path, bundles: Bundles) -> None:
    for value, message in (
        ("relative", "must be an absolute path"),
        ("/", "cannot be a prefix"),
        ("/var", "holds a system directory (/var/lib/chital*)"),
    ):
        flags = ["--tls-dir", str(bundles.agent), "--allowed-root", value]
        result = run_agent(tmp_path / (value.strip("/") or "root"), flags)
        assert result.returncode == 1
        assert message in result.stderr
