"""Authentication, roles, the root policy and the audit log, against the real controller on
127.0.0.1 (TLS port with tokens, mTLS port with client certificates) and three fake agents.

Every refusal is checked twice: the status code (and message) the caller gets, and that nothing
changed: no row in the state tables, no token, no call on any agent that would act, and no audit
row unless the refusal is an authenticated caller's denied mutation (which is what the audit log
is for).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from controller_fake_agent import RunningFakeAgent
from controller_harness import Cluster, running_cluster

import chital.controller
from chital.api.admin.v1 import admin_pb2 as apb
from chital.api.container.v1 import container_pb2 as cpb
from chital.api.host.v1 import host_pb2 as hpb
from chital.security.pki import PKI
from chital.security.tls import TLSFiles, channel_credentials

T = 10.0
CONTAINER_SERVICE = "chital.api.container.v1.ContainerService"
# Reads the controller makes on its own (health, events, the host reconciler's Sync): not side effects.
PASSIVE_AGENT_CALLS = {"GetInfo", "Heartbeat", "StreamEvents", "Sync"}
STATE_TABLES = ("hosts", "containers", "processes", "events", "tokens", "audit_log")


@pytest.fixture
def cluster(tmp_path: Path, fresh_database_url: str) -> Iterator[Cluster]:
    """A cluster with its hosts registered (so that a refused create is refused, not unplaceable),
    once on SQLite and once on PostgreSQL."""
    with running_cluster(tmp_path, database_url=fresh_database_url) as c:
        for agent in c.agents:
            c.hosts.RegisterHost(hpb.RegisterHostRequest(address=agent.address), timeout=T)
        yield c


def snapshot(cluster: Cluster) -> dict[str, Any]:
    """Row counts of every table the API writes, and the acting calls every agent received."""
    assert cluster.controller.audit.flush()  # the audit log is written in batches
    with cluster.controller.engine.connect() as conn:
        counts = {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in STATE_TABLES}
    calls = [{k: v for k, v in a.agent.calls.items() if k not in PASSIVE_AGENT_CALLS} for a in cluster.agents]
    return {"rows": counts, "agent_calls": calls}


def refused(call: Callable[[], Any], code: grpc.StatusCode, *, message: str = "") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == code, err.value
    assert message in (err.value.details() or ""), err.value.details()
    return err.value


def create_request(name: str = "web", **kw: Any) -> cpb.CreateContainerRequest:
    return cpb.CreateContainerRequest(wait=True, request_id=f"req-{name}", name=name, **kw)


def audit_rows(cluster: Cluster, **kw: Any) -> list[Any]:
    return list(cluster.admin.ListAuditLog(apb.ListAuditLogRequest(**kw), timeout=T).entries)


def handled(cluster: Cluster, method: str, code: str) -> float:
    value = cluster.controller.metrics.registry.get_sample_value(
        "chital_controller_grpc_server_handled_total",
        {"grpc_service": CONTAINER_SERVICE, "grpc_method": method, "grpc_code": code},
    )
    return value or 0.0


# -- who: no or bad credentials ---------------------------------------------------------------


def test_no_credentials_is_unauthenticated_and_changes_nothing(cluster: Cluster) -> None:
    containers, hosts, admin = cluster.stubs(cluster.channel_with(None))
    before = snapshot(cluster)
    no_creds = "no credentials: pass a token or a client certificate"
    refused(
        lambda: containers.CreateContainer(create_request(), timeout=T),
        grpc.StatusCode.UNAUTHENTICATED,
        message=no_creds,
    )
    refused(
        lambda: containers.ListContainers(cpb.ListContainersRequest(), timeout=T),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    refused(
        lambda: hosts.RegisterHost(hpb.RegisterHostRequest(address="127.0.0.1:1"), timeout=T),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    refused(
        lambda: admin.CreateToken(apb.CreateTokenRequest(name="x", role="admin"), timeout=T),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    # A header that is not a bearer token, and a string that is not a token.
    for header in (
        "Basic YWxpY2U6cHc=",
        "Bearer",
        "Bearer chital_nope",
        "Bearer chital_0123456789ab_" + "A" * 43,
    ):
        refused(
            lambda h=header: containers.CreateContainer(
                create_request(), metadata=[("authorization", h)], timeout=T
            ),  # type: ignore[misc]
            grpc.StatusCode.UNAUTHENTICATED,
        )
    assert snapshot(cluster) == before
    # The metrics interceptor saw the auth interceptor's final status.
    assert handled(cluster, "CreateContainer", "UNAUTHENTICATED") >= 5


def test_revoked_token_is_unauthenticated_and_changes_nothing(cluster: Cluster) -> None:
    token = cluster.token("operator", "ci")
    containers, _, admin = cluster.stubs(cluster.channel_with(token))
    assert admin.WhoAmI(apb.WhoAmIRequest(), timeout=T).name == "ci"
    token_id = token.split("_")[1]
    revoked = cluster.admin.RevokeToken(apb.RevokeTokenRequest(id=token_id), timeout=T).token
    assert revoked.HasField("revoke_time")
    before = snapshot(cluster)
    refused(
        lambda: containers.CreateContainer(create_request(), timeout=T),
        grpc.StatusCode.UNAUTHENTICATED,
        message="token revoked",
    )
    refused(
        lambda: admin.WhoAmI(apb.WhoAmIRequest(), timeout=T),
        grpc.StatusCode.UNAUTHENTICATED,
        message="token revoked",
    )
    assert snapshot(cluster) == before
    # Revoking again changes nothing (the first revocation time stays).
    again = cluster.admin.RevokeToken(apb.RevokeTokenRequest(id=token_id), timeout=T).token
    assert again.revoke_time == revoked.revoke_time


def test_expired_token_is_unauthenticated_and_changes_nothing(cluster: Cluster) -> None:
    token = cluster.token("admin", "short", ttl_seconds=0.2)
    containers, hosts, _ = cluster.stubs(cluster.channel_with(token))
    time.sleep(0.4)
    before = snapshot(cluster)
    refused(
        lambda: containers.CreateContainer(create_request(), timeout=T),
        grpc.StatusCode.UNAUTHENTICATED,
        message="token expired",
    )
    refused(
        lambda: hosts.RegisterHost(hpb.RegisterHostRequest(address="127.0.0.1:1"), timeout=T),
        grpc.StatusCode.UNAUTHENTICATED,
        message="token expired",
    )
    assert snapshot(cluster) == before


def test_a_wrong_secret_is_refused_like_an_unknown_token(cluster: Cluster) -> None:
    token = cluster.token("admin")
    wrong = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    containers, _, _ = cluster.stubs(cluster.channel_with(wrong))
    before = snapshot(cluster)
    err = refused(
        lambda: containers.CreateContainer(create_request(), timeout=T), grpc.StatusCode.UNAUTHENTICATED
    )
    assert err.details() == "invalid token"
    assert snapshot(cluster) == before


def test_certificate_of_another_ca_fails_the_handshake(cluster: Cluster, tmp_path: Path) -> None:
    other = PKI.init(tmp_path / "other-pki")
    mallory = other.issue_user("mallory", "admin")
    ca = cluster.pki.directory / "ca" / "ca.crt"
    containers, _, _ = cluster.stubs(cluster.channel_with(cert=mallory, ca=ca))
    before = snapshot(cluster)
    refused(lambda: containers.CreateContainer(create_request(), timeout=T), grpc.StatusCode.UNAVAILABLE)
    assert snapshot(cluster) == before


def test_no_certificate_on_the_mtls_port_fails_the_handshake(cluster: Cluster) -> None:
    ca = TLSFiles(ca=cluster.pki.directory / "ca" / "ca.crt")
    with grpc.secure_channel(cluster.mtls_address, channel_credentials(ca)) as channel:
        containers, _, _ = cluster.stubs(channel)
        before = snapshot(cluster)
        refused(lambda: containers.CreateContainer(create_request(), timeout=T), grpc.StatusCode.UNAVAILABLE)
        assert snapshot(cluster) == before


def test_expired_certificate_fails_the_handshake(cluster: Cluster) -> None:
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    old = cluster.pki.issue_user("old", "admin", days=1, not_before=long_ago)
    containers, _, _ = cluster.stubs(cluster.channel_with(cert=old))
    before = snapshot(cluster)
    refused(lambda: containers.CreateContainer(create_request(), timeout=T), grpc.StatusCode.UNAVAILABLE)
    assert snapshot(cluster) == before


@pytest.mark.parametrize("service", ["agent", "controller"])
def test_service_certificate_on_the_mtls_port_is_unauthenticated(cluster: Cluster, service: str) -> None:
    bundle = (
        cluster.pki.directory / "agents" / "127.0.0.1"
        if service == "agent"
        else cluster.pki.directory / "controller"
    )
    containers, hosts, _ = cluster.stubs(cluster.channel_with(cert=bundle))
    before = snapshot(cluster)
    message = f"a certificate of role {service!r}"
    refused(
        lambda: containers.CreateContainer(create_request(), timeout=T),
        grpc.StatusCode.UNAUTHENTICATED,
        message=message,
    )
    refused(
        lambda: hosts.ListHosts(hpb.ListHostsRequest(), timeout=T),
        grpc.StatusCode.UNAUTHENTICATED,
        message=message,
    )
    assert snapshot(cluster) == before


def test_health_and_reflection_stay_open(cluster: Cluster) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc  # noqa: PLC0415

    channel = cluster.channel_with(None)
    status = (
        health_pb2_grpc.HealthStub(channel)
        .Check(health_pb2.HealthCheckRequest(service="chital.api.admin.v1.AdminService"), timeout=T)
        .status
    )
    assert status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=T
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert "chital.api.admin.v1.AdminService" in names


# -- may they: roles --------------------------------------------------------------------------


def test_viewer_reads_but_cannot_mutate(cluster: Cluster) -> None:
    made = cluster.containers.CreateContainer(create_request("existing"), timeout=T).container
    containers, hosts, admin = cluster.stubs(cluster.channel_with(cluster.token("viewer", "dash")))
    assert [c.uid for c in containers.ListContainers(cpb.ListContainersRequest(), timeout=T).containers] == [
        made.uid
    ]
    assert len(hosts.ListHosts(hpb.ListHostsRequest(), timeout=T).hosts) == 3
    before = snapshot(cluster)
    denied = grpc.StatusCode.PERMISSION_DENIED
    refused(
        lambda: containers.CreateContainer(create_request(), timeout=T),
        denied,
        message="role viewer may not call ContainerService/CreateContainer (needs operator)",
    )
    refused(lambda: containers.StopContainer(cpb.StopContainerRequest(container=made.uid), timeout=T), denied)
    refused(
        lambda: containers.DeleteContainer(
            cpb.DeleteContainerRequest(container=made.uid, force=True), timeout=T
        ),
        denied,
    )
    refused(
        lambda: containers.Exec(
            cpb.ExecRequest(container=made.uid, request_id="x", argv=["true"]), timeout=T
        ),
        denied,
    )
    refused(
        lambda: hosts.CordonHost(hpb.CordonHostRequest(host=cluster.agents[0].address), timeout=T), denied
    )
    refused(lambda: admin.ListAuditLog(apb.ListAuditLogRequest(), timeout=T), denied, message="needs admin")
    refused(lambda: admin.CreateToken(apb.CreateTokenRequest(name="x", role="admin"), timeout=T), denied)
    after = snapshot(cluster)
    # Nothing changed but the audit log, which holds one row per denied mutation (not the read).
    assert after["agent_calls"] == before["agent_calls"]
    assert {k: v for k, v in after["rows"].items() if k != "audit_log"} == {
        k: v for k, v in before["rows"].items() if k != "audit_log"
    }
    assert after["rows"]["audit_log"] == before["rows"]["audit_log"] + 6
    entries = audit_rows(cluster, principal="token:dash")
    assert [e.method.rpartition("/")[2] for e in entries] == [
        "CreateToken",
        "CordonHost",
        "Exec",
        "DeleteContainer",
        "StopContainer",
        "CreateContainer",
    ]
    assert {e.code for e in entries} == {"PERMISSION_DENIED"}
    assert {e.role for e in entries} == {"viewer"}
    assert entries[-1].request_id == "req-web" and entries[-1].target == "web"
    assert entries[-2].target == made.uid


def test_a_viewer_reads_the_server_info_and_it_is_not_audited(
    cluster: Cluster, fresh_database_url: str
) -> None:
    _, _, admin = cluster.stubs(cluster.channel_with(cluster.token("viewer", "dash")))
    before = snapshot(cluster)
    info = admin.GetServerInfo(apb.GetServerInfoRequest(), timeout=T)
    # The whole answer: the dialect's name and nothing else of the URL (path, host, password).
    assert info == apb.GetServerInfoResponse(
        version=chital.controller.__version__,
        api_versions=[
            "chital.api.admin.v1",
            "chital.api.container.v1",
            "chital.api.host.v1",
            "chital.api.rollout.v1",
        ],
        database="sqlite" if fresh_database_url.startswith("sqlite") else "postgresql",
        leader=True,  # the cluster's only controller
    )
    assert snapshot(cluster) == before  # a read: no audit row, nothing else
    anonymous = cluster.stubs(cluster.channel_with(None))[2]
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    refused(lambda: anonymous.GetServerInfo(apb.GetServerInfoRequest(), timeout=T), unauthenticated)


def test_operator_cannot_register_a_host(cluster: Cluster) -> None:
    spare = RunningFakeAgent("spare")
    try:
        containers, hosts, _ = cluster.stubs(cluster.channel_with(cluster.token("operator", "ops")))
        before = snapshot(cluster)
        refused(
            lambda: hosts.RegisterHost(hpb.RegisterHostRequest(address=spare.address), timeout=T),
            grpc.StatusCode.PERMISSION_DENIED,
            message="role operator may not call HostService/RegisterHost (needs admin)",
        )
        refused(
            lambda: hosts.RemoveHost(hpb.RemoveHostRequest(host=cluster.agents[0].address), timeout=T),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        refused(
            lambda: hosts.DrainHost(hpb.DrainHostRequest(host=cluster.agents[0].address), timeout=T),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        after = snapshot(cluster)
        assert after["rows"]["hosts"] == before["rows"]["hosts"]
        assert after["agent_calls"] == before["agent_calls"]
        assert after["rows"]["audit_log"] == before["rows"]["audit_log"] + 3
        assert sum(spare.agent.calls.values()) == 0  # never dialled
        # The operator's own work is allowed.
        assert (
            containers.CreateContainer(create_request(), timeout=T).container.state
            == cpb.CONTAINER_STATE_CREATED
        )
    finally:
        spare.stop()


def test_client_certificate_roles_on_the_mtls_port(cluster: Cluster) -> None:
    alice = cluster.pki.issue_user("alice", "operator")
    containers, hosts, admin = cluster.stubs(cluster.channel_with(cert=alice))
    me = admin.WhoAmI(apb.WhoAmIRequest(), timeout=T)
    assert (me.name, me.role, me.auth_method, me.principal, me.token_id) == (
        "alice",
        "operator",
        "certificate",
        "cert:alice",
        "",
    )
    made = containers.CreateContainer(create_request("by-cert"), timeout=T).container
    assert made.state == cpb.CONTAINER_STATE_CREATED
    refused(
        lambda: hosts.RegisterHost(hpb.RegisterHostRequest(address="127.0.0.1:1"), timeout=T),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    codes = [
        (e.method.rpartition("/")[2], e.code, e.target) for e in audit_rows(cluster, principal="cert:alice")
    ]
    assert codes == [
        ("RegisterHost", "PERMISSION_DENIED", "127.0.0.1:1"),
        ("CreateContainer", "OK", "by-cert"),
    ]


# -- the root policy --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "root", ["/", "//", "/etc", "/usr/lib", "/var", "/var/lib/chital-agent/x", "/lib64", "/proc/1/root"]
)
def test_operator_cannot_use_the_hosts_root_or_system_dirs(cluster: Cluster, root: str) -> None:
    containers, _, _ = cluster.stubs(cluster.channel_with(cluster.token("operator")))
    before = snapshot(cluster)
    refused(
        lambda: containers.CreateContainer(create_request(root=root), timeout=T),
        grpc.StatusCode.PERMISSION_DENIED,
        message="sandbox.allow_host_root",
    )
    refused(
        lambda: containers.CreateContainer(
            create_request(root=root, sandbox=cpb.Sandbox(allow_host_root=True)), timeout=T
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        message="only an admin may set sandbox.allow_host_root",
    )
    after = snapshot(cluster)
    assert after["agent_calls"] == before["agent_calls"]
    assert after["rows"]["containers"] == before["rows"]["containers"]
    assert after["rows"]["events"] == before["rows"]["events"]
    codes = [(e.code, e.role) for e in audit_rows(cluster, page_size=2)]
    assert codes == [("PERMISSION_DENIED", "operator")] * 2


def test_only_an_admin_lifts_the_root_policy(cluster: Cluster) -> None:
    refused(
        lambda: cluster.containers.CreateContainer(create_request("host", root="/"), timeout=T),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    made = cluster.containers.CreateContainer(
        create_request("host", root="/", sandbox=cpb.Sandbox(allow_host_root=True)), timeout=T
    ).container
    assert made.state == cpb.CONTAINER_STATE_CREATED
    assert made.root == "/" and made.sandbox.allow_host_root
    # ... and the agent is told, so that its own check of the root lets "/" through too.
    sent = [a.agent.containers[made.uid] for a in cluster.agents if made.uid in a.agent.containers]
    assert len(sent) == 1 and sent[0].sandbox.allow_host_root
    # A root under the controller's allowed prefix is fine for an operator.
    containers, _, _ = cluster.stubs(cluster.channel_with(cluster.token("operator")))
    assert (
        containers.CreateContainer(create_request("srv", root="/srv/sandboxes/a"), timeout=T).container.root
        == "/srv/sandboxes/a"
    )


# -- sandbox relaxations ----------------------------------------------------------------------

#: Each relaxation of the sandbox an operator may not ask for, by the field the refusal names.
RELAXATIONS = {
    "sandbox.allow_syscalls": cpb.Sandbox(allow_syscalls=["syslog"]),
    "sandbox.allow_raw_sockets": cpb.Sandbox(allow_raw_sockets=True),
    "sandbox.capabilities": cpb.Sandbox(capabilities=["CAP_SYS_ADMIN"]),
    "sandbox.host_network": cpb.Sandbox(host_network=True),
}
SANDBOX_FIELDS = ("allow_syscalls", "allow_raw_sockets", "capabilities", "host_network", "allow_host_root")


def _sandbox_fields(sandbox: Any) -> dict[str, Any]:
    """A sandbox of the container API or of the agent API as plain values, to compare them."""
    return {
        f: list(getattr(sandbox, f)) if f in ("allow_syscalls", "capabilities") else getattr(sandbox, f)
        for f in SANDBOX_FIELDS
    }


def test_an_operator_cannot_relax_the_sandbox(cluster: Cluster) -> None:
    by_token, _, _ = cluster.stubs(cluster.channel_with(cluster.token("operator")))
    by_cert, _, _ = cluster.stubs(cluster.channel_with(cert=cluster.pki.issue_user("alice", "operator")))
    before = snapshot(cluster)

    def create(stub: Any, sandbox: cpb.Sandbox) -> Any:
        return stub.CreateContainer(create_request("relaxed", sandbox=sandbox), timeout=T)

    for field, sandbox in RELAXATIONS.items():
        for stub in (by_token, by_cert):
            refused(
                lambda stub=stub, sandbox=sandbox: create(stub, sandbox),
                grpc.StatusCode.PERMISSION_DENIED,
                message=f"only an admin may set {field} (needs the admin role",
            )
    # Asking for all of them at once names every one.
    every = cpb.Sandbox(
        allow_syscalls=["syslog", "acct"],
        allow_raw_sockets=True,
        capabilities=["CAP_NET_ADMIN", "CAP_SYS_ADMIN"],
        host_network=True,
    )
    err = refused(lambda: create(by_token, every), grpc.StatusCode.PERMISSION_DENIED)
    assert f"only an admin may set {', '.join(RELAXATIONS)} (needs the admin role" in (err.details() or "")
    # Nothing was placed, recorded or sent to an agent; each refusal is in the audit log.
    refusals = 2 * len(RELAXATIONS) + 1
    after = snapshot(cluster)
    assert after["agent_calls"] == before["agent_calls"]
    for table in ("hosts", "containers", "processes", "events", "tokens"):
        assert after["rows"][table] == before["rows"][table], table
    assert after["rows"]["audit_log"] == before["rows"]["audit_log"] + refusals
    rows = audit_rows(cluster, page_size=refusals)
    assert {(e.method.rpartition("/")[2], e.code, e.role) for e in rows} == {
        ("CreateContainer", "PERMISSION_DENIED", "operator")
    }
    assert "only an admin may set" in rows[0].detail


def test_an_admin_relaxes_the_sandbox_and_the_agent_is_told(cluster: Cluster) -> None:
    for i, sandbox in enumerate(RELAXATIONS.values()):
        made = cluster.containers.CreateContainer(create_request(f"relaxed-{i}", sandbox=sandbox), timeout=T)
        assert made.container.state == cpb.CONTAINER_STATE_CREATED
        assert made.container.sandbox == sandbox
        sent = [
            a.agent.containers[made.container.uid]
            for a in cluster.agents
            if made.container.uid in a.agent.containers
        ]
        assert len(sent) == 1 and _sandbox_fields(sent[0].sandbox) == _sandbox_fields(sandbox)
    assert [(e.code, e.role) for e in audit_rows(cluster, page_size=len(RELAXATIONS))] == [
        ("OK", "admin")
    ] * len(RELAXATIONS)


def test_allowed_roots_bound_the_roots(tmp_path: Path) -> None:
    with running_cluster(tmp_path, allowed_roots=("/srv/sandboxes", "/data/roots")) as c:
        c.hosts.RegisterHost(hpb.RegisterHostRequest(address=c.agents[0].address), timeout=T)
        for name, root in (("in", "/srv/sandboxes/in"), ("other", "/data/roots/a/b"), ("own", "")):
            assert (
                c.containers.CreateContainer(create_request(name, root=root), timeout=T).container.name
                == name
            )
        before = snapshot(c)
        for name, root in (("out", "/home/out"), ("sib", "/srv/sandboxes-other"), ("up", "/srv")):
            refused(
                lambda name=name, root=root: c.containers.CreateContainer(
                    create_request(name, root=root), timeout=T
                ),
                grpc.StatusCode.PERMISSION_DENIED,
                message=f"root {root!r} is not under an allowed root of the controller "
                "(/srv/sandboxes, /data/roots; --allowed-root)",
            )
        after = snapshot(c)
        assert after["agent_calls"] == before["agent_calls"]
        assert after["rows"]["containers"] == before["rows"]["containers"]


def test_without_allowed_roots_no_client_chosen_root_passes(tmp_path: Path) -> None:
    with running_cluster(tmp_path, allowed_roots=()) as c:
        c.hosts.RegisterHost(hpb.RegisterHostRequest(address=c.agents[0].address), timeout=T)
        refused(
            lambda: c.containers.CreateContainer(create_request("srv", root="/srv/sandboxes/a"), timeout=T),
            grpc.StatusCode.PERMISSION_DENIED,
            message="is not under an allowed root of the controller (none are configured; --allowed-root)",
        )
        # A root the agent makes is still fine.
        assert c.containers.CreateContainer(create_request("own"), timeout=T).container.name == "own"


# -- tokens and the audit log through the API -------------------------------------------------


def test_tokens_through_the_admin_service(cluster: Cluster) -> None:
    made = cluster.admin.CreateToken(
        apb.CreateTokenRequest(name="deploy", role="operator", ttl_seconds=3600), timeout=T
    )
    assert made.bearer_token.startswith(f"chital_{made.token.id}_")
    assert made.token.role == "operator" and made.token.HasField("expire_time")
    assert made.token.created_by == "token:harness-admin/" + cluster.admin_token.split("_")[1]
    listed = cluster.admin.ListTokens(apb.ListTokensRequest(), timeout=T).tokens
    assert [t.name for t in listed] == ["harness-admin", "deploy"]
    assert made.bearer_token not in str(listed)
    me = cluster.stubs(cluster.channel_with(made.bearer_token))[2].WhoAmI(apb.WhoAmIRequest(), timeout=T)
    assert (me.name, me.role, me.auth_method, me.token_id) == ("deploy", "operator", "token", made.token.id)
    bad = grpc.StatusCode.INVALID_ARGUMENT
    refused(lambda: cluster.admin.CreateToken(apb.CreateTokenRequest(name="x", role="root"), timeout=T), bad)
    refused(lambda: cluster.admin.CreateToken(apb.CreateTokenRequest(name="", role="viewer"), timeout=T), bad)
    refused(
        lambda: cluster.admin.CreateToken(
            apb.CreateTokenRequest(name="x", role="viewer", ttl_seconds=-1), timeout=T
        ),
        bad,
    )
    refused(
        lambda: cluster.admin.RevokeToken(apb.RevokeTokenRequest(id="0123456789ab"), timeout=T),
        grpc.StatusCode.NOT_FOUND,
    )


def test_audit_log_shows_who_what_and_outcome(cluster: Cluster) -> None:
    containers, _, _ = cluster.stubs(cluster.channel_with(cluster.token("operator", "ops")))
    made = containers.CreateContainer(
        create_request("audited"), metadata=[("x-request-id", "ignored")], timeout=T
    ).container
    refused(
        lambda: containers.CreateContainer(create_request("audited2", root="/"), timeout=T),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    refused(
        lambda: containers.StopContainer(
            cpb.StopContainerRequest(container="nope"), metadata=[("x-request-id", "trace-1")], timeout=T
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    containers.ListContainers(cpb.ListContainersRequest(), timeout=T)  # reads are not audited
    entries = audit_rows(cluster, principal="token:ops")
    assert [(e.method, e.code, e.target, e.request_id) for e in entries] == [
        (f"/{CONTAINER_SERVICE}/StopContainer", "NOT_FOUND", "nope", "trace-1"),
        (f"/{CONTAINER_SERVICE}/CreateContainer", "PERMISSION_DENIED", "audited2", "req-audited2"),
        (f"/{CONTAINER_SERVICE}/CreateContainer", "OK", "audited", "req-audited"),
    ]
    assert entries[0].detail and "nope" in entries[0].detail
    assert entries[-1].detail == ""
    assert all(
        e.principal.startswith("token:ops/") and e.role == "operator" and e.HasField("time") for e in entries
    )
    assert made.uid
    # The bootstrap admin registered the hosts; every entry of the log, paged newest first.
    everyone = audit_rows(cluster)
    assert [e.method.rpartition("/")[2] for e in everyone[-3:]] == ["RegisterHost"] * 3
    assert [e.id for e in everyone] == sorted((e.id for e in everyone), reverse=True)
    first = cluster.admin.ListAuditLog(apb.ListAuditLogRequest(page_size=2), timeout=T)
    second = cluster.admin.ListAuditLog(
        apb.ListAuditLogRequest(page_size=2, page_token=first.next_page_token), timeout=T
    )
    assert [e.id for e in [*first.entries, *second.entries]] == [e.id for e in everyone[:4]]
    refused(
        lambda: cluster.admin.ListAuditLog(apb.ListAuditLogRequest(page_token="junk"), timeout=T),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    # A token is bound to the filter that made it: reused with another principal it is refused.
    refused(
        lambda: cluster.admin.ListAuditLog(
            apb.ListAuditLogRequest(page_token=first.next_page_token, principal="token:ops"), timeout=T
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    # A name that is a prefix of another does not match it.
    assert audit_rows(cluster, principal="token:op") == []
