"""End to end on the host: SDK and CLI -> controller -> hollow agents (real agent code, FakeDevice).

Everything runs as real processes on 127.0.0.1 with free ports and stops at the end, secured as a
deployment is: the fleet's own PKI, mutual TLS between the controller and the agents, TLS and a
bootstrap admin token for clients (the CLI reads them from the fleet's config file).
"""

from __future__ import annotations

import json
import signal
import stat
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from chital.api.agent.v1 import agent_pb2, agent_pb2_grpc
from chital.cli import main as cli_main
from chital.client import (
    AlreadyExists,
    Client,
    ContainerState,
    FailedPrecondition,
    InvalidArgument,
    Limits,
    NotFound,
    PermissionDenied,
    ProcessState,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
)
from chital.devcluster.hollow import HollowFleet
from chital.security.tls import TLSFiles, channel_credentials

NO_RETRY = RetryPolicy(max_attempts=1)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def fleet() -> Iterator[HollowFleet]:
    with HollowFleet(agents=3) as f:
        yield f


@pytest.fixture
def client(fleet: HollowFleet) -> Iterator[Client]:
    with fleet.client(timeout=20.0) as c:
        yield c


def chital(fleet: HollowFleet, *args: str) -> int:
    """The CLI with the fleet's config file (its context: the controller, the CA, the token)."""
    return cli_main(["--config", str(fleet.config_path), *args])


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_hosts_are_registered_and_ready(client: Client, fleet: HollowFleet) -> None:
    hosts = list(client.list_hosts())
    assert sorted(h.address for h in hosts) == sorted(a.address for a in fleet.agent_procs)
    for host in hosts:
        assert host.state.name == "READY"
        assert host.agent is not None
        assert host.agent.device == "fake"
        assert host.agent.sandboxed is False


def test_containers_are_spread_over_every_host(client: Client, fleet: HollowFleet) -> None:
    before = Counter(c.host_id for c in client.list_containers())
    created = [client.create_container(unique("spread")) for _ in range(6)]
    assert all(c.state is ContainerState.CREATED for c in created)
    after = Counter(c.host_id for c in client.list_containers())
    added = after - before
    # Fewest containers first: six new containers on three hosts land two on each, whatever
    # earlier tests left (they are balanced by the same rule).
    assert len({c.host_id for c in created}) == 3
    assert sum(added.values()) == 6
    for c in created:
        client.delete_container(c.uid, force=True)


def test_exec_runs_with_env_and_reports_output_and_exit_code(client: Client) -> None:
    container = client.create_container(unique("exec"), limits=Limits(memory_max_bytes=64 << 20))
    proc = client.exec(
        container.uid, ["sh", "-c", 'echo "value=$FOO"; echo oops >&2; exit 3'], env={"FOO": "bar-42"}
    )
    done = client.wait_process(proc.uid, timeout=30)
    assert done.state is ProcessState.EXITED
    assert done.exit_code == 3
    assert done.signal == 0
    chunks = list(client.stream_logs(proc.uid))
    stdout = b"".join(c.data for c in chunks if c.stream.name == "STDOUT")
    stderr = b"".join(c.data for c in chunks if c.stream.name == "STDERR")
    assert stdout == b"value=bar-42\n"
    assert stderr == b"oops\n"
    listed = {p.uid: p for p in client.list_processes(container.uid)}
    assert listed[proc.uid].exit_code == 3


def test_signal_kills_a_running_process(client: Client) -> None:
    container = client.create_container(unique("sig"))
    proc = client.exec(container.uid, ["sleep", "60"])
    client.signal_process(proc.uid, signal.SIGKILL)
    done = client.wait_process(proc.uid, timeout=30)
    assert done.state is ProcessState.EXITED
    assert done.signal == signal.SIGKILL


def test_create_retried_with_same_request_id_creates_nothing_new(client: Client) -> None:
    name = unique("idem")
    request_id = uuid.uuid4().hex
    first = client.create_container(name, request_id=request_id)
    count = sum(1 for _ in client.list_containers())
    again = client.create_container(name, request_id=request_id)
    assert again.uid == first.uid
    assert again.host_id == first.host_id
    assert sum(1 for _ in client.list_containers()) == count
    # The same name under another request id is a different request: refused, not merged.
    with pytest.raises(AlreadyExists):
        client.create_container(name, request_id=uuid.uuid4().hex)


@pytest.mark.parametrize(
    "name", ["", "x" * 64, "UPPER", "-lead", "trail-", "sp ace", "a/b", "../etc", "ü", "a\x00b", "f" * 32]
)
def test_bad_names_are_invalid_argument(client: Client, name: str) -> None:
    with pytest.raises(InvalidArgument):
        client.create_container(name)


def test_negative_limits_are_invalid_argument(client: Client) -> None:
    for limits in (Limits(memory_max_bytes=-1), Limits(pids_max=-5), Limits(cpu_max_millicores=-1)):
        with pytest.raises(InvalidArgument):
            client.create_container(unique("neg"), limits=limits)


def test_unknown_things_are_not_found(client: Client) -> None:
    with pytest.raises(NotFound):
        client.create_container(unique("pin"), host="127.0.0.1:1")
    with pytest.raises(NotFound):
        client.get_container("no-such-container")
    with pytest.raises(NotFound):
        client.exec("no-such-container", ["true"])
    with pytest.raises(NotFound):
        client.get_host("no-such-host")
    with pytest.raises(NotFound):
        client.get_process(uuid.uuid4().hex)


def test_cli_run_prints_output_and_exits_with_the_process_code(
    fleet: HollowFleet, capfd: pytest.CaptureFixture[str]
) -> None:
    name = unique("cli")
    rc = chital(fleet, "run", "--name", name, "-e", "WHO=cli", "--", "sh", "-c", 'echo "hi $WHO"; exit 5')
    out = capfd.readouterr().out
    assert rc == 5
    assert "hi cli" in out
    rc = chital(fleet, "ps", name, "-a", "-o", "json")
    procs = json.loads(capfd.readouterr().out)
    assert rc == 0
    assert [p["exit_code"] for p in procs] == [5]


def test_cli_errors_are_one_line(fleet: HollowFleet, capfd: pytest.CaptureFixture[str]) -> None:
    rc = chital(fleet, "stop", "no-such-container")
    err = capfd.readouterr().err
    assert rc == 1
    assert len(err.strip().splitlines()) == 1
    assert "not found" in err.lower()
    assert "Traceback" not in err


def test_programs_that_cannot_run_are_client_errors(
    client: Client, fleet: HollowFleet, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Not executable (a text file) or a symlink loop: the caller's mistake, never INTERNAL."""
    rc = chital(fleet, "run", "-d", "--", "/etc/hostname")
    err = capfd.readouterr().err
    assert rc == 1
    assert "internal" not in err.lower()
    assert "invalid argument" in err or "permission denied" in err, err
    assert "/etc/hostname" in err
    c = client.create_container(unique("noexec"))
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    tmp_path.chmod(0o755)
    for program in ("/etc/hostname", str(loop)):
        with pytest.raises((InvalidArgument, PermissionDenied)) as bad:
            client.exec(c.uid, [program])
        assert program in str(bad.value)


def test_a_refused_create_is_the_rpc_error_and_cli_run_shows_why(
    client: Client, fleet: HollowFleet, capfd: pytest.CaptureFixture[str]
) -> None:
    name = unique("noroot")
    missing = str(fleet.roots / f"missing-{uuid.uuid4().hex}")  # allowed, but the agent has no such directory
    rc = chital(fleet, "run", "-d", "--name", name, "--root", missing, "--", "true")
    err = capfd.readouterr().err
    assert rc == 1
    assert "not an existing directory" in err and name in err, err
    c = client.get_container(name)
    assert c.state is ContainerState.FAILED
    assert "not an existing directory" in c.message
    with pytest.raises(InvalidArgument, match="not an existing directory"):
        client.create_container(unique("noroot"), root=missing)
    client.delete_container(c.uid)


def test_a_root_outside_the_allowed_roots_is_refused_by_the_controller(
    client: Client, fleet: HollowFleet, tmp_path: Path
) -> None:
    # The fleet's controller and agents accept client-chosen roots under fleet.roots only.
    outside = tmp_path / "outside"
    outside.mkdir()
    before = {c.uid for c in client.list_containers()}
    with pytest.raises(
        PermissionDenied, match=f"is not under an allowed root of the controller \\({fleet.roots};"
    ):
        client.create_container(unique("outside"), root=str(outside))
    assert {c.uid for c in client.list_containers()} == before  # nothing recorded
    (fleet.roots / "inside").mkdir(exist_ok=True)
    c = client.create_container(unique("inside"), root=str(fleet.roots / "inside"))
    assert c.state is ContainerState.CREATED and c.root == str(fleet.roots / "inside")
    client.delete_container(c.uid)


def test_stop_then_delete(client: Client) -> None:
    container = client.create_container(unique("stop"))
    proc = client.exec(container.uid, ["sleep", "60"])
    stopped = client.stop_container(container.uid, grace=2.0)
    assert stopped.state is ContainerState.STOPPED
    assert client.wait_process(proc.uid, timeout=30).state is ProcessState.EXITED
    deleted = client.delete_container(container.uid)
    assert deleted.state is ContainerState.DELETED
    with pytest.raises(NotFound):
        client.get_container(container.name)


def test_stats_on_a_hollow_host_say_nothing_is_counted(
    client: Client, fleet: HollowFleet, capfd: pytest.CaptureFixture[str]
) -> None:
    container = client.create_container(unique("stats"))
    stats = client.get_container_stats(container.name)
    assert stats.container_uid == container.uid
    assert stats.sandboxed is False
    assert stats.syscalls_total == 0
    rc = chital(fleet, "stats", container.name)
    captured = capfd.readouterr()
    assert rc == 0
    assert "without the kernel module" in captured.err
    assert "SYSCALL" in captured.out
    client.delete_container(container.uid)
    with pytest.raises(FailedPrecondition):
        client.get_container_stats(container.uid)


def test_the_fleet_runs_secure_by_default(fleet: HollowFleet) -> None:
    assert fleet.pki is not None and fleet.token is not None
    # Every agent and the controller run with their bundle; keys and the client config are private.
    for service in [fleet.controller, *fleet.agent_procs]:
        assert service is not None
        argv = service.proc.args
        assert isinstance(argv, list) and "--tls-dir" in argv and "--insecure" not in argv
        key = Path(argv[argv.index("--tls-dir") + 1]) / "tls.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(fleet.config_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((fleet.pki.directory / "ca" / "ca.key").stat().st_mode) == 0o600

    # The controller: TLS (a plaintext client fails), and a token is required.
    plain = Client(fleet.target, insecure=True, token=fleet.token, retries=NO_RETRY)
    with plain, pytest.raises(Unavailable):
        list(plain.list_hosts())
    with fleet.client(token=None, retries=NO_RETRY) as anonymous, pytest.raises(Unauthenticated):
        list(anonymous.list_hosts())

    # An agent: only the controller's certificate passes, so a client of the fleet CA cannot call it.
    agent = fleet.agent_procs[0].address
    ca_only = channel_credentials(TLSFiles(ca=fleet.pki.ca))
    for channel in (grpc.insecure_channel(agent), grpc.secure_channel(agent, ca_only)):
        with channel, pytest.raises(grpc.RpcError) as info:
            agent_pb2_grpc.AgentServiceStub(channel).Sync(agent_pb2.SyncRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    admin = TLSFiles.from_dir(fleet.pki.user("someone", "admin"))
    with (
        grpc.secure_channel(agent, channel_credentials(admin)) as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        agent_pb2_grpc.AgentServiceStub(channel).Sync(agent_pb2.SyncRequest(), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_an_insecure_fleet_is_an_explicit_choice(tmp_path: Path) -> None:
    with HollowFleet(agents=1, workdir=tmp_path, insecure=True) as fleet:
        assert fleet.pki is None
        argv = fleet.agent_procs[0].proc.args
        assert isinstance(argv, list) and "--insecure" in argv
        with fleet.client() as client:
            (host,) = client.list_hosts()
            assert host.state.name == "READY"
        assert fleet.client_config.env()["CHITAL_INSECURE"] == "1"
