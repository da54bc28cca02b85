"""RolloutService end to end: a real controller, real ansible-runner and ansible-playbook, small real
playbooks in a temporary playbooks directory, and inventories of ``ansible_connection=local`` hosts
(no SSH here; the guests' SSH rollouts are tested with the devcluster). On SQLite and PostgreSQL.
The controller runs as deployed: TLS and tokens for clients, mutual TLS to the agents it registers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from controller_fake_agent import RunningFakeAgent
from controller_harness import dial

from chital.api.rollout.v1 import rollout_pb2, rollout_pb2_grpc
from chital.client import Client, NotFound, RolloutEventType, RolloutHostStatus
from chital.client import RolloutState as ClientRolloutState
from chital.client.aio import AsyncClient
from chital.controller import db
from chital.controller.rollouts import RolloutRecordState, Rollouts, RolloutSettings, RolloutSpec
from chital.controller.server import ControllerConfig, ControllerServer
from chital.security.pki import PKI
from chital.security.tls import TLSFiles

pytestmark = pytest.mark.timeout(300)

S = rollout_pb2.RolloutState
H = rollout_pb2.RolloutHostStatus
E = rollout_pb2.RolloutEventType

OK_PLAYBOOK = """\
- name: Configure
  hosts: all
  gather_facts: false
  serial: "{{ chital_batch_size | default(0) }}"
  max_fail_percentage: 0
  tasks:
    - name: Change something
      ansible.builtin.command: "true"
    - name: Change nothing
      ansible.builtin.debug:
        msg: "{{ greeting | default('hello') }}"
    - name: Skip this
      ansible.builtin.debug:
        msg: never
      when: false
"""

# The host named in fail_host fails its second task; with serial batches the rollout stops there.
FAIL_PLAYBOOK = """\
- name: Configure in batches
  hosts: all
  gather_facts: false
  serial: "{{ chital_batch_size | default(0) }}"
  max_fail_percentage: 0
  tasks:
    - name: First step
      ansible.builtin.command: "true"
    - name: Break one host
      ansible.builtin.fail:
        msg: "broken on purpose"
      when: inventory_hostname == fail_host
    - name: Last step
      ansible.builtin.command: "true"
"""

# Touches <marker_dir>/<host>.started, then waits for <marker_dir>/release (a cancel or a restart
# comes meanwhile).
WAIT_PLAYBOOK = """\
- name: Wait
  hosts: all
  gather_facts: false
  tasks:
    - name: Say we started
      ansible.builtin.file:
        path: "{{ marker_dir }}/{{ inventory_hostname }}.started"
        state: touch
        mode: "0644"
    - name: Wait to be released
      ansible.builtin.shell: >-
        for i in $(seq 600); do [ -e {{ marker_dir }}/release ] && exit 0; sleep 0.2; done; exit 1
      changed_when: false
"""


def local_inventory(*names: str) -> str:
    """YAML inventory: local hosts run by this Python."""
    lines = ["all:", "  hosts:"]
    for name in names:
        lines.append(
            f"    {name}: {{ansible_connection: local, ansible_python_interpreter: {sys.executable}}}"
        )
    return "\n".join(lines) + "\n"


@pytest.fixture
def playbooks(tmp_path: Path) -> Path:
    d = tmp_path / "playbooks"
    d.mkdir()
    (d / "ok.yml").write_text(OK_PLAYBOOK)
    (d / "fail.yml").write_text(FAIL_PLAYBOOK)
    (d / "wait.yml").write_text(WAIT_PLAYBOOK)
    (tmp_path / "outside.yml").write_text(OK_PLAYBOOK)
    (d / "escape.yml").symlink_to(tmp_path / "outside.yml")
    return d


class Api:
    """The controller and RolloutService stubs for several roles."""

    def __init__(self, controller: ControllerServer) -> None:
        self.controller = controller
        assert controller.config.tls_dir is not None
        self.ca = TLSFiles.from_dir(controller.config.tls_dir).ca
        #: The bundle of an agent on 127.0.0.1, of the controller's fleet CA.
        self.agent_tls = Path(controller.config.tls_dir).parent / "agents" / "127.0.0.1"
        self._channels: list[grpc.Channel] = []
        self.admin = self.stub("admin")

    def stub(self, role: str) -> rollout_pb2_grpc.RolloutServiceStub:
        token, _ = self.controller.tokens.create(f"t-{role}-{len(self._channels)}", role, None, "test")
        channel = dial(f"127.0.0.1:{self.controller.port}", self.ca, token)
        self._channels.append(channel)
        return rollout_pb2_grpc.RolloutServiceStub(channel)

    def start(self, playbook: str, inventory: str, **kw: object) -> rollout_pb2.Rollout:
        request = rollout_pb2.StartRolloutRequest(
            request_id=uuid.uuid4().hex, playbook=playbook, inventory=inventory, **kw
        )
        return self.admin.StartRollout(request, timeout=60).rollout

    def events(self, rollout_id: str, after: int = 0) -> list[rollout_pb2.RolloutEvent]:
        """Every event from ``after`` until the rollout ends (the stream ends by itself)."""
        stream = self.admin.WatchRollout(
            rollout_pb2.WatchRolloutRequest(id=rollout_id, after_sequence=after), timeout=240
        )
        return [r.event for r in stream]

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


def _pki(tmp_path: Path) -> Path:
    """The fleet PKI of a test (the controller's bundle and one of an agent on 127.0.0.1); returns
    the controller's bundle."""
    pki = PKI.init(tmp_path / "pki")
    pki.issue_agent("127.0.0.1")
    return pki.issue_controller()


def _config(tmp_path: Path, database_url: str, playbooks: Path) -> ControllerConfig:
    return ControllerConfig(
        listen="127.0.0.1:0",
        tls_dir=str(_pki(tmp_path)),
        state_dir=str(tmp_path / "state"),
        database_url=database_url,
        migrate=True,
        rollouts=RolloutSettings(playbooks_dir=str(playbooks), work_dir=str(tmp_path / "state" / "rollouts")),
    )


@pytest.fixture
def api(tmp_path: Path, fresh_database_url: str, playbooks: Path) -> Iterator[Api]:
    controller = ControllerServer(_config(tmp_path, fresh_database_url, playbooks))
    controller.start()
    api = Api(controller)
    try:
        yield api
    finally:
        api.close()
        controller.stop(grace=1)


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _hosts(rollout: rollout_pb2.Rollout) -> dict[str, rollout_pb2.RolloutHost]:
    return {h.name: h for h in rollout.hosts}


def test_success_reports_per_host_counts_and_events(api: Api) -> None:
    started = api.start(
        "ok.yml", local_inventory("web1", "web2"), batch_size=1, extra_vars={"greeting": "hi"}
    )
    assert started.state == S.ROLLOUT_STATE_PENDING
    assert [h.name for h in started.hosts] == ["web1", "web2"]
    events = api.events(started.id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].type == E.ROLLOUT_EVENT_TYPE_STATE and events[-1].state == S.ROLLOUT_STATE_SUCCEEDED
    states = [e.state for e in events if e.type == E.ROLLOUT_EVENT_TYPE_STATE]
    assert states == [S.ROLLOUT_STATE_PENDING, S.ROLLOUT_STATE_RUNNING, S.ROLLOUT_STATE_SUCCEEDED]
    # Batches of one: web1 runs every task before web2 starts.
    oks = [e.host for e in events if e.type == E.ROLLOUT_EVENT_TYPE_HOST_OK]
    assert oks == ["web1", "web1", "web2", "web2"]
    changed = {(e.host, e.task): e.changed for e in events if e.type == E.ROLLOUT_EVENT_TYPE_HOST_OK}
    assert changed[("web1", "Change something")] and not changed[("web1", "Change nothing")]
    rollout = api.admin.GetRollout(rollout_pb2.GetRolloutRequest(id=started.id)).rollout
    assert rollout.state == S.ROLLOUT_STATE_SUCCEEDED and rollout.return_code == 0
    assert rollout.extra_vars == {"greeting": "hi"} and rollout.batch_size == 1
    assert rollout.created_by.startswith("token:") and rollout.HasField("end_time")
    for host in rollout.hosts:
        assert host.status == H.ROLLOUT_HOST_STATUS_SUCCEEDED
        # As Ansible counts: ok includes changed.
        assert (host.ok, host.changed, host.failed, host.unreachable, host.skipped) == (2, 1, 0, 0, 1)
    # A retry with the same request id is the same rollout, not a second run.
    again = api.admin.StartRollout(
        rollout_pb2.StartRolloutRequest(
            request_id=rollout.request_id, playbook="ok.yml", inventory=local_inventory("web1")
        )
    ).rollout
    assert again.id == rollout.id
    listed = api.admin.ListRollouts(rollout_pb2.ListRolloutsRequest()).rollouts
    assert [r.id for r in listed] == [rollout.id]


def test_a_failing_host_stops_the_batches_and_is_reported(api: Api) -> None:
    started = api.start(
        "fail.yml", local_inventory("a1", "a2", "a3"), batch_size=1, extra_vars={"fail_host": "a2"}
    )
    events = api.events(started.id)
    assert events[-1].state == S.ROLLOUT_STATE_FAILED
    failed = [e for e in events if e.type == E.ROLLOUT_EVENT_TYPE_HOST_FAILED]
    assert [(e.host, e.task, e.message) for e in failed] == [("a2", "Break one host", "broken on purpose")]
    rollout = api.admin.GetRollout(rollout_pb2.GetRolloutRequest(id=started.id)).rollout
    assert rollout.state == S.ROLLOUT_STATE_FAILED and rollout.return_code != 0
    assert "a2" in rollout.message
    hosts = _hosts(rollout)
    assert hosts["a1"].status == H.ROLLOUT_HOST_STATUS_SUCCEEDED
    assert (hosts["a1"].ok, hosts["a1"].skipped, hosts["a1"].failed) == (2, 1, 0)
    assert hosts["a2"].status == H.ROLLOUT_HOST_STATUS_FAILED and hosts["a2"].failed == 1
    assert hosts["a2"].message == "Break one host: broken on purpose"
    # max_fail_percentage stopped the play: the third batch never ran.
    assert hosts["a3"].status == H.ROLLOUT_HOST_STATUS_SKIPPED and hosts["a3"].ok == 0
    assert not any(e.host == "a3" for e in events)


def test_cancel_stops_the_playbook(api: Api, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    started = api.start("wait.yml", local_inventory("c1"), extra_vars={"marker_dir": str(markers)})
    stream = api.admin.WatchRollout(rollout_pb2.WatchRolloutRequest(id=started.id), timeout=240)
    seen = []
    for response in stream:
        seen.append(response.event)
        if response.event.type == E.ROLLOUT_EVENT_TYPE_HOST_OK:  # "Say we started" is done
            api.admin.CancelRollout(rollout_pb2.CancelRolloutRequest(id=started.id))
    assert seen[-1].state == S.ROLLOUT_STATE_CANCELLED
    assert (markers / "c1.started").exists() and not (markers / "release").exists()
    # Nothing of the playbook is left running: not ansible-playbook, nor its worker (a session of
    # its own), nor the waiting shell the worker's module started. The helper reaped them all.
    assert _processes_mentioning(str(markers)) == []
    rollout = api.admin.GetRollout(rollout_pb2.GetRolloutRequest(id=started.id)).rollout
    assert rollout.state == S.ROLLOUT_STATE_CANCELLED
    assert _hosts(rollout)["c1"].status == H.ROLLOUT_HOST_STATUS_SKIPPED
    # Cancelling an ended rollout changes nothing.
    again = api.admin.CancelRollout(rollout_pb2.CancelRolloutRequest(id=started.id)).rollout
    assert again.state == S.ROLLOUT_STATE_CANCELLED and again.last_sequence == rollout.last_sequence


def test_overlapping_rollouts_are_refused(api: Api, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    first = api.start("wait.yml", local_inventory("o1", "o2"), extra_vars={"marker_dir": str(markers)})
    with pytest.raises(grpc.RpcError) as err:
        api.start("ok.yml", local_inventory("o2", "o3"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert first.id in (err.value.details() or "") and "o2" in (err.value.details() or "")
    # Other machines may roll out meanwhile.
    other = api.start("ok.yml", local_inventory("o4"))
    assert api.events(other.id)[-1].state == S.ROLLOUT_STATE_SUCCEEDED
    (markers / "release").touch()
    assert api.events(first.id)[-1].state == S.ROLLOUT_STATE_SUCCEEDED


def test_watch_resumes_after_a_sequence(api: Api) -> None:
    started = api.start("ok.yml", local_inventory("w1"))
    events = api.events(started.id)
    middle = events[len(events) // 2].sequence
    rest = api.events(started.id, after=middle)
    assert [e.sequence for e in rest] == [e.sequence for e in events if e.sequence > middle]
    assert rest[-1].state == S.ROLLOUT_STATE_SUCCEEDED
    assert api.events(started.id, after=events[-1].sequence) == []


@pytest.mark.parametrize(
    ("playbook", "inventory", "words"),
    [
        ("missing.yml", local_inventory("x"), "not one of the controller's playbooks"),
        ("../outside.yml", local_inventory("x"), "no directories"),
        ("sub/ok.yml", local_inventory("x"), "no directories"),
        ("escape.yml", local_inventory("x"), "not one of the controller's playbooks"),
        ("ok.sh", local_inventory("x"), "not a playbook file name"),
        ("", local_inventory("x"), "not a playbook file name"),
        ("ok.yml", "all:\n  hosts: [unclosed\n", "does not parse"),
        ("ok.yml", "[group\nhost1\n", "does not parse"),
        ("ok.yml", "all:\n  hosts: {}\n", "no hosts"),
        ("ok.yml", "plugin: ansible.builtin.script\n", "does not parse"),
        ("ok.yml", "   \n", "inventory or a host selector is required"),
    ],
)
def test_bad_playbooks_and_inventories_are_invalid_and_run_nothing(
    api: Api, tmp_path: Path, playbook: str, inventory: str, words: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        api.start(playbook, inventory)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in (err.value.details() or "")
    assert api.admin.ListRollouts(rollout_pb2.ListRolloutsRequest()).rollouts == []
    assert not (tmp_path / "state" / "rollouts" / "runner").exists()
    inventories = tmp_path / "state" / "rollouts" / "inventories"
    assert not inventories.exists() or list(inventories.iterdir()) == []


def test_roles_operator_and_viewer_cannot_start_or_read(api: Api) -> None:
    for role in ("operator", "viewer"):
        stub = api.stub(role)
        for call, request in (
            (
                stub.StartRollout,
                rollout_pb2.StartRolloutRequest(request_id="r", playbook="ok.yml", inventory="x"),
            ),
            (stub.ListRollouts, rollout_pb2.ListRolloutsRequest()),
            (stub.CancelRollout, rollout_pb2.CancelRolloutRequest(id="x")),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call(request)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert api.admin.ListRollouts(rollout_pb2.ListRolloutsRequest()).rollouts == []


def test_unknown_rollout_is_not_found(api: Api) -> None:
    for call, request in (
        (api.admin.GetRollout, rollout_pb2.GetRolloutRequest(id="nope")),
        (api.admin.CancelRollout, rollout_pb2.CancelRolloutRequest(id="nope")),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call(request)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        api.events("nope")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_restart_during_a_rollout_marks_it_interrupted(
    tmp_path: Path, fresh_database_url: str, playbooks: Path
) -> None:
    """The first Rollouts is abandoned while its playbook runs, as a killed controller would be;
    the next one to start on the database marks the rollout INTERRUPTED, and what the abandoned
    worker reports later does not change that."""
    db.upgrade(fresh_database_url)
    engine = db.make_engine(fresh_database_url)
    markers = tmp_path / "markers"
    markers.mkdir()

    def rollouts() -> Rollouts:
        settings = RolloutSettings(playbooks_dir=str(playbooks), work_dir=str(tmp_path / "work"))
        return Rollouts(
            engine, settings, lambda: datetime.now(UTC).replace(tzinfo=None), lambda: uuid.uuid4().hex
        )

    first = rollouts()
    first.start()
    record = first.start_rollout(
        RolloutSpec(
            request_id="restart",
            playbook="wait.yml",
            inventory=local_inventory("r1"),
            extra_vars={"marker_dir": str(markers)},
        ),
        "test",
    )
    for event in first.watch(record.id, 0, lambda: True):
        if event.host == "r1":
            break
    assert first.get(record.id).state is RolloutRecordState.RUNNING
    second = rollouts()
    second.start()
    after = second.get(record.id)
    assert after.state is RolloutRecordState.INTERRUPTED and "restarted" in after.message
    assert after.hosts[0].status.value == "SKIPPED"
    # The abandoned playbook ends: its worker's end state does not overwrite INTERRUPTED.
    (markers / "release").touch()
    first.stop()
    assert second.get(record.id).state is RolloutRecordState.INTERRUPTED
    assert [e.state for e in second.watch(record.id, 0, lambda: True) if e.state is not None][-1] is (
        RolloutRecordState.INTERRUPTED
    )
    second.stop()
    engine.dispose()


def test_register_hosts_registers_the_agents_that_end_ok(api: Api) -> None:
    """The playbook "installs" an agent (a fake agent already listening stands in for it); the
    controller registers each chital_agents host that ended ok at its agent address and waits
    until it is READY. Hosts outside chital_agents are not registered."""
    agent = RunningFakeAgent("installed", tls_dir=api.agent_tls)
    try:
        inventory = (
            "all:\n"
            "  hosts:\n"
            f"    tools: {{ansible_connection: local, ansible_python_interpreter: {sys.executable}}}\n"
            "  children:\n"
            "    chital_agents:\n"
            "      hosts:\n"
            f"        node1: {{ansible_connection: local, ansible_python_interpreter: {sys.executable},"
            f" chital_agent_address: 127.0.0.1, chital_agent_port: {agent.port}}}\n"
        )
        started = api.start("ok.yml", inventory, register_hosts=True)
        events = api.events(started.id)
        assert events[-1].state == S.ROLLOUT_STATE_SUCCEEDED, events[-1].message
        registered = [e for e in events if e.type == E.ROLLOUT_EVENT_TYPE_HOST_REGISTERED]
        assert [e.host for e in registered] == ["node1"]
        hosts = _hosts(api.admin.GetRollout(rollout_pb2.GetRolloutRequest(id=started.id)).rollout)
        host = api.controller.hosts.get(hosts["node1"].registered_host_id)
        assert host.address == agent.address and host.health.value == "READY"
        assert (
            hosts["tools"].registered_host_id == ""
            and hosts["tools"].status == H.ROLLOUT_HOST_STATUS_SUCCEEDED
        )
        assert [h.address for h in api.controller.store.all_hosts()] == [agent.address]
    finally:
        agent.stop()


def test_register_hosts_fails_the_host_whose_agent_does_not_answer(api: Api) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    api.controller.rollouts.settings = dataclasses.replace(
        api.controller.rollouts.settings, register_timeout=2.0
    )
    inventory = (
        "[chital_agents]\n"
        f"dead ansible_connection=local ansible_python_interpreter={sys.executable} "
        f"chital_agent_address=127.0.0.1 chital_agent_port={port}\n"
    )
    started = api.start("ok.yml", inventory, register_hosts=True)
    events = api.events(started.id)
    assert events[-1].state == S.ROLLOUT_STATE_FAILED
    rollout = api.admin.GetRollout(rollout_pb2.GetRolloutRequest(id=started.id)).rollout
    dead = _hosts(rollout)["dead"]
    assert dead.status == H.ROLLOUT_HOST_STATUS_FAILED and "not READY" in dead.message
    assert "registration failed on dead" in rollout.message


def test_a_killed_controller_leaves_its_rollout_interrupted(
    tmp_path: Path, fresh_database_url: str, playbooks: Path
) -> None:
    """kill -9 of a controller process while its playbook runs: the next controller on the same
    database reports the rollout INTERRUPTED (never RUNNING for ever)."""
    markers = tmp_path / "markers"
    markers.mkdir()
    tls_dir = _pki(tmp_path)
    ca = tls_dir / "ca.crt"
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "CHITAL_CONTROLLER_CONFIG": "/dev/null"}

    def serve(name: str) -> tuple[subprocess.Popen[bytes], int]:
        port_file = tmp_path / f"{name}.port"
        proc = subprocess.Popen(
            [
                *(
                    sys.executable,
                    "-m",
                    "chital.controller",
                    "serve",
                    "--tls-dir",
                    str(tls_dir),
                    "--listen",
                    "127.0.0.1:0",
                ),
                *("--port-file", str(port_file), "--database-url", fresh_database_url, "--migrate"),
                *("--state-dir", str(tmp_path / "state"), "--playbooks-dir", str(playbooks)),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / f"{name}.log").open("wb"),
        )
        for _ in range(600):  # the port file appears once the controller serves
            if port_file.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()
        return proc, int(port_file.read_text())

    first, port = serve("first")
    try:
        token = subprocess.run(
            [
                *(sys.executable, "-m", "chital.controller", "token", "create"),
                *("--database-url", fresh_database_url, "--name", "killer", "--role", "admin"),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert token.returncode == 0, token.stderr
        bearer = token.stdout.split()[0]
        channel = dial(f"127.0.0.1:{port}", ca, bearer)
        stub = rollout_pb2_grpc.RolloutServiceStub(channel)
        rollout = stub.StartRollout(
            rollout_pb2.StartRolloutRequest(
                request_id="killed",
                playbook="wait.yml",
                inventory=local_inventory("k1"),
                extra_vars={"marker_dir": str(markers)},
            ),
            timeout=60,
        ).rollout
        for response in stub.WatchRollout(rollout_pb2.WatchRolloutRequest(id=rollout.id), timeout=240):
            if response.event.type == E.ROLLOUT_EVENT_TYPE_HOST_OK:  # "Say we started" is done
                break
        channel.close()
    finally:
        first.kill()
        first.wait()
    second, port = serve("second")
    try:
        channel = dial(f"127.0.0.1:{port}", ca, bearer)
        stub = rollout_pb2_grpc.RolloutServiceStub(channel)
        after = stub.GetRollout(rollout_pb2.GetRolloutRequest(id=rollout.id), timeout=60).rollout
        assert after.state == S.ROLLOUT_STATE_INTERRUPTED and "restarted" in after.message
        assert after.hosts[0].status == H.ROLLOUT_HOST_STATUS_SKIPPED
        channel.close()
    finally:
        (markers / "release").touch()  # the orphaned playbook ends by itself
        second.terminate()
        second.wait(60)


# -- the SDK -------------------------------------------------------------------------------------


def test_sdk_clients_start_watch_get_list_and_cancel(api: Api, tmp_path: Path) -> None:
    token, _ = api.controller.tokens.create("sdk", "admin", None, "test")
    target = f"127.0.0.1:{api.controller.port}"
    with Client(target, tls=TLSFiles(ca=api.ca), token=token, timeout=60) as client:
        rollout = client.start_rollout(
            "fail.yml", inventory=local_inventory("s1", "s2"), batch_size=1, extra_vars={"fail_host": "s1"}
        )
        assert rollout.state is ClientRolloutState.PENDING and [h.name for h in rollout.hosts] == ["s1", "s2"]
        events = list(client.watch_rollout(rollout.id))
        assert events[-1].state is ClientRolloutState.FAILED
        assert [(e.host, e.message) for e in events if e.type is RolloutEventType.HOST_FAILED] == [
            ("s1", "broken on purpose")
        ]
        final = client.get_rollout(rollout.id)
        assert {h.name: h.status for h in final.hosts} == {
            "s1": RolloutHostStatus.FAILED,
            "s2": RolloutHostStatus.SKIPPED,
        }
        assert [r.id for r in client.list_rollouts_page(state=ClientRolloutState.FAILED).items] == [
            rollout.id
        ]
        assert client.list_rollouts_page(state=ClientRolloutState.SUCCEEDED).items == []
        assert [r.id for r in client.iter_rollouts(page_size=1)] == [rollout.id]
        with pytest.raises(NotFound):
            client.get_rollout("nope")
        first = rollout.id

    async def with_async_client() -> None:
        markers = tmp_path / "markers"
        markers.mkdir()
        async with AsyncClient(target, tls=TLSFiles(ca=api.ca), token=token, timeout=60) as client:
            rollout = await client.start_rollout(
                "wait.yml", inventory=local_inventory("s3"), extra_vars={"marker_dir": str(markers)}
            )
            seen = []
            async for event in client.watch_rollout(rollout.id):
                seen.append(event)
                if event.type is RolloutEventType.HOST_OK:
                    await client.cancel_rollout(rollout.id)
            assert seen[-1].state is ClientRolloutState.CANCELLED
            resumed = [e async for e in client.watch_rollout(rollout.id, after_sequence=seen[-2].sequence)]
            assert resumed == seen[-1:]
            assert (await client.get_rollout(rollout.id)).state is ClientRolloutState.CANCELLED
            # Newest first, one page at a time.
            assert [r.id async for r in client.iter_rollouts(page_size=1)] == [rollout.id, first]
            cancelled = client.iter_rollouts(state=ClientRolloutState.CANCELLED)
            assert [r.id async for r in cancelled] == [rollout.id]

    asyncio.run(with_async_client())


# -- the chital CLI ----------------------------------------------------------------------------

CHITAL = str(Path(sys.executable).with_name("chital"))


def chital(api: Api, *args: str, role: str = "admin", stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The real `chital` command (not a terminal: plain output) against the controller."""
    token, _ = api.controller.tokens.create(f"cli-{role}-{uuid.uuid4().hex[:8]}", role, None, "test")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHITAL_")}
    env.update(
        CHITAL_CONFIG="/dev/null",
        CHITAL_CONTROLLER=f"127.0.0.1:{api.controller.port}",
        CHITAL_CACERT=str(api.ca),
        CHITAL_TOKEN=token,
        GRPC_VERBOSITY="ERROR",
        NO_COLOR="1",
    )
    return subprocess.run(
        [CHITAL, "--timeout", "60", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )


def test_cli_start_follows_a_failing_rollout_and_reports_the_host(api: Api, tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(local_inventory("b1", "b2"))
    result = chital(
        api, "rollout", "start", "fail.yml", "-i", str(inventory), "-b", "1", "-e", "fail_host=b2"
    )
    assert result.returncode == 1, result.stderr
    assert "failed: [b2] Break one host: broken on purpose" in result.stdout
    assert "rollout FAILED" in result.stdout
    lines = result.stdout.splitlines()
    b2 = next(line for line in lines if line.startswith("b2 "))
    assert b2.split()[1] == "FAILED" and "broken on purpose" in b2
    rollout_id = next(r.id for r in api.admin.ListRollouts(rollout_pb2.ListRolloutsRequest()).rollouts)
    got = chital(api, "-o", "json", "rollout", "get", rollout_id)
    assert got.returncode == 0, got.stderr
    data = json.loads(got.stdout)
    assert data["state"] == "FAILED"
    assert {h["name"]: (h["status"], h["failed"]) for h in data["hosts"]} == {
        "b1": ("SUCCEEDED", 0),
        "b2": ("FAILED", 1),
    }
    listed = chital(api, "rollout", "ls")
    assert listed.returncode == 0 and rollout_id in listed.stdout and "FAILED" in listed.stdout
    # A unique prefix of the id names the rollout, like a container's uid prefix.
    by_prefix = chital(api, "-o", "json", "rollout", "get", rollout_id[:6])
    assert by_prefix.returncode == 0 and json.loads(by_prefix.stdout) == data
    cancelled = chital(api, "-o", "json", "rollout", "cancel", rollout_id[:6])
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["id"] == rollout_id


def test_cli_json_prints_the_event_stream_and_watch_resumes(api: Api) -> None:
    result = chital(api, "-o", "json", "rollout", "start", "ok.yml", "-i", "-", stdin=local_inventory("j1"))
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "STATE" and events[-1]["state"] == "SUCCEEDED"
    assert {e["host"] for e in events if e["type"] == "HOST_OK"} == {"j1"}
    rollout_id = api.admin.ListRollouts(rollout_pb2.ListRolloutsRequest()).rollouts[0].id
    watched = chital(
        api, "-o", "json", "rollout", "watch", rollout_id[:8], "--after", str(events[-3]["sequence"])
    )
    assert watched.returncode == 0, watched.stderr
    assert [json.loads(line) for line in watched.stdout.splitlines()] == events[-2:]


def test_cli_refusals(api: Api, tmp_path: Path) -> None:
    bad = chital(api, "rollout", "start", "../etc/passwd", "-i", "-", stdin=local_inventory("z"))
    assert bad.returncode == 1 and "no directories" in bad.stderr
    viewer = chital(api, "rollout", "ls", role="viewer")
    assert viewer.returncode != 0 and "permission" in viewer.stderr.lower()
    both = chital(api, "rollout", "start", "ok.yml", "-i", "-", "--host", "h1", stdin="x")
    assert both.returncode == 2
    assert api.admin.ListRollouts(rollout_pb2.ListRolloutsRequest()).rollouts == []
