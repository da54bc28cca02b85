"""End to end on real kernels: the controller on the host, two QEMU guests each running chital.ko
and an agent from this checkout, driven through the SDK. The fleet is secured as deployed: agents
serve mutual TLS with their own bundle (only the controller's certificate passes; the controller
checks each agent's certificate against the forwarded address it dials), the controller TLS with a
bootstrap admin token.

Needs qemu-system-x86 and a Debian kernel with its build tree (``CHITAL_VM=1 scripts/bootstrap.sh``;
the README's test command installs them). The guests are booted once for the module (~1 min).
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator

import pytest

from chital.client import (
    ChitalError,
    Client,
    ContainerState,
    HostState,
    Limits,
    NotFound,
    PermissionDenied,
    ProcessState,
)
from chital.devcluster.qemu_fleet import AGENT_TLS, BUSYBOX_ROOT, ROOTS_DIR, QemuFleet

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None,
        reason="qemu-system-x86_64 missing: run CHITAL_VM=1 scripts/bootstrap.sh",
    ),
]

# Longer than an agent restart in a guest (~20 s under TCG): the kill -9 test must not see LOST.
LOST_AFTER = 40.0


@pytest.fixture(scope="module")
def fleet() -> Iterator[QemuFleet]:
    f = QemuFleet(
        guests=2,
        controller_args=[
            "--health-interval",
            "0.5",
            "--not-ready-after",
            "3",
            "--lost-after",
            str(LOST_AFTER),
        ],
    )
    with f:
        try:
            yield f
        finally:
            # Shown by pytest when a test failed: what the agents and the controller said.
            for i, guest in enumerate(f.hosts):
                if guest.vm.alive():
                    print(f"--- agent log, host{i} ---\n{f.agent_log(i)[-6000:]}")
            if f.controller is not None:
                print(f"--- controller log ---\n{f.controller.log_path.read_text()[-6000:]}")


@pytest.fixture(scope="module")
def client(fleet: QemuFleet) -> Iterator[Client]:
    with fleet.client(timeout=60.0) as c:
        yield c


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def logs(client: Client, process_uid: str) -> tuple[bytes, bytes]:
    chunks = list(client.stream_logs(process_uid))
    out = b"".join(c.data for c in chunks if c.stream.name == "STDOUT")
    err = b"".join(c.data for c in chunks if c.stream.name == "STDERR")
    return out, err


def run(client: Client, container: str, script: str, **env: str) -> tuple[int, bytes, bytes]:
    proc = client.exec(container, ["sh", "-c", script], env=env)
    done = client.wait_process(proc.uid, timeout=120)
    assert done.state is ProcessState.EXITED, done
    out, err = logs(client, proc.uid)
    return done.exit_code, out, err


def test_hosts_run_the_real_module(client: Client) -> None:
    hosts = list(client.list_hosts())
    assert len(hosts) == 2
    for host in hosts:
        assert host.state is HostState.READY
        assert host.agent is not None
        assert host.agent.device == "linux"
        assert host.agent.sandboxed is True
        assert host.agent.abi_version


def test_agents_serve_mutual_tls_with_private_keys(fleet: QemuFleet) -> None:
    script = (
        f"stat -c '%a %U %n' {AGENT_TLS} {AGENT_TLS}/tls.key; "
        "tr '\\0' ' ' < /proc/$(cat /tmp/chital-agent.pid)/cmdline"
    )
    for i in range(len(fleet.hosts)):
        rc, out = fleet.run(i, script)
        assert rc == 0, out
        lines = out.splitlines()
        assert lines[0] == f"700 root {AGENT_TLS}"
        assert lines[1] == f"600 root {AGENT_TLS}/tls.key"
        assert f"--tls-dir {AGENT_TLS}" in lines[2] and "--insecure" not in lines[2]


def test_container_roots_are_policy_on_both_sides(client: Client, fleet: QemuFleet) -> None:
    # The controller refuses the host's root outright (only an admin's allow_host_root lifts it).
    with pytest.raises(PermissionDenied):
        client.create_container(unique("hostroot"), root="/")
    # A root outside the fleet's allowed root (ROOTS_DIR): the controller refuses it, records nothing.
    name = unique("outside")
    with pytest.raises(
        PermissionDenied, match=f"is not under an allowed root of the controller \\({ROOTS_DIR};"
    ):
        client.create_container(name, root="/var/tmp", host=fleet.hosts[0].address)
    with pytest.raises(NotFound):
        client.get_container(name)
    # A link under ROOTS_DIR that leads out passes the controller's lexical check; the agent
    # resolves it and refuses.
    rc, out = fleet.run(0, f"ln -sfn /var/tmp {ROOTS_DIR}/escape")
    assert rc == 0, out
    name = unique("escape")
    with pytest.raises(ChitalError, match="not under an allowed root of this host"):
        client.create_container(name, root=f"{ROOTS_DIR}/escape", host=fleet.hosts[0].address)
    c = client.get_container(name)
    assert c.state is ContainerState.FAILED, c
    assert "not under an allowed root of this host" in c.message
    client.delete_container(c.uid, force=True)


def test_lifecycle_on_both_hosts(client: Client) -> None:
    containers = [client.create_container(unique("life"), root=BUSYBOX_ROOT) for _ in range(2)]
    assert len({c.host_id for c in containers}) == 2, "one container on each host"
    for c in containers:
        assert c.state is ContainerState.CREATED, c.message
        code, out, err = run(
            client,
            c.uid,
            'echo "$GREETING" | tr a-z A-Z | sed "s/$/!/"; ls /bin/busybox; exit 3',
            GREETING="hi",
        )
        assert (code, out, err) == (3, b"HI!\n/bin/busybox\n", b"")
        stats = client.get_container_stats(c.uid)
        assert stats.sandboxed
        assert stats.syscalls_total > 0
        assert any(s.name == "execve" and s.calls >= 1 for s in stats.syscalls)
        long = client.exec(c.uid, ["sleep", "600"])
        stopped = client.stop_container(c.uid, grace=2.0)
        assert stopped.state is ContainerState.STOPPED
        assert client.wait_process(long.uid, timeout=60).state is ProcessState.EXITED
        assert client.delete_container(c.uid).state is ContainerState.DELETED


def test_escape_attempts_are_refused_and_counted(client: Client) -> None:
    c = client.create_container(unique("esc"), root=BUSYBOX_ROOT, deny_syscalls=["uname"])
    code, _out, err = run(client, c.uid, "chroot / /bin/true")
    assert code != 0
    assert b"Operation not permitted" in err
    code, _out, err = run(client, c.uid, "mount -t tmpfs none /tmp")
    assert code != 0
    assert b"permission denied" in err  # busybox's words for EPERM from mount(2)
    # Outside the root nothing is reachable, however spelled.
    code, out, _err = run(client, c.uid, "cat /../../../etc/hostname /proc/1/root/etc/hostname")
    assert code != 0
    assert out == b""
    stats = client.get_container_stats(c.uid)
    assert stats.denied_total >= 2
    denied = {s.name for s in stats.syscalls if s.denied}
    assert {"chroot", "mount"} <= denied
    client.delete_container(c.uid, force=True)


def test_memory_limit_oom_kills_and_is_reported(client: Client) -> None:
    c = client.create_container(unique("oom"), root=BUSYBOX_ROOT, limits=Limits(memory_max_bytes=32 << 20))
    # busybox tail keeps the whole newline-free line in memory: it grows until the OOM killer.
    proc = client.exec(c.uid, ["tail", "/dev/zero"])
    done = client.wait_process(proc.uid, timeout=180)
    assert done.state is ProcessState.EXITED
    assert done.signal == 9
    assert done.oom_killed is True
    assert client.get_container_stats(c.uid).oom_kills >= 1
    client.delete_container(c.uid, force=True)


def test_pids_limit_stops_a_fork_bomb(client: Client) -> None:
    c = client.create_container(unique("pids"), root=BUSYBOX_ROOT, limits=Limits(pids_max=16))
    script = "i=0; while [ $i -lt 64 ]; do sleep 30 & i=$((i+1)); done; echo started; sleep 2; exit 0"
    proc = client.exec(c.uid, ["sh", "-c", script])
    time.sleep(6)
    stats = client.get_container_stats(c.uid)
    assert 0 < stats.pids_current <= 16
    client.stop_container(c.uid, grace=1.0)
    client.wait_process(proc.uid, timeout=60)
    _out, err = logs(client, proc.uid)
    assert b"can't fork" in err or b"Resource temporarily unavailable" in err
    client.delete_container(c.uid, force=True)


def test_agent_kill9_loses_no_exit_and_duplicates_nothing(client: Client, fleet: QemuFleet) -> None:
    c = client.create_container(unique("k9"), root=BUSYBOX_ROOT, host=fleet.hosts[0].address)
    quick = [client.exec(c.uid, ["sh", "-c", f"sleep {4 + i}; exit {10 + i}"]) for i in range(3)]
    term = client.exec(c.uid, ["sleep", "600"])
    long = client.exec(c.uid, ["sleep", "600"])
    fleet.kill_agent(0)
    # While no agent runs: the quick ones exit, one is killed by a signal; only the kernel sees it.
    rc, out = fleet.run(0, f"kill -TERM {term.pid}")
    assert rc == 0, out

    def gone(pid: int) -> bool:
        return fleet.run(0, f"test -d /proc/{pid}")[0] != 0

    deadline = time.monotonic() + 120
    while not all(gone(p.pid) for p in [*quick, term]):
        assert time.monotonic() < deadline, "the quick programs did not end"
        time.sleep(0.5)
    fleet.restart_agent(0)
    for i, p in enumerate(quick):
        done = client.wait_process(p.uid, timeout=120)
        assert done.state is ProcessState.EXITED, done
        assert done.exit_code == 10 + i
    done = client.wait_process(term.uid, timeout=120)
    assert (done.state, done.signal) == (ProcessState.EXITED, 15), done
    still = client.get_process(long.uid)
    assert still.state is ProcessState.RUNNING
    procs = list(client.list_processes(c.uid))
    assert sorted(p.uid for p in procs) == sorted([*(p.uid for p in quick), term.uid, long.uid])
    # Nothing RUNNING that is not, and nothing left in the guest after the delete.
    assert [p.uid for p in procs if p.state is ProcessState.RUNNING] == [long.uid]
    assert not gone(long.pid)
    client.delete_container(c.uid, force=True)
    deadline = time.monotonic() + 120
    while not gone(long.pid):
        assert time.monotonic() < deadline, "the container's last program still runs after the delete"
        time.sleep(0.5)


def test_powered_off_host_goes_not_ready_then_lost(client: Client, fleet: QemuFleet) -> None:
    victim = fleet.hosts[1]
    c = client.create_container(unique("gone"), root=BUSYBOX_ROOT, host=victim.address)
    fleet.power_off(1)
    t0 = time.monotonic()
    deadline = t0 + 30
    while time.monotonic() < deadline:
        if client.get_host(victim.address).state is HostState.NOT_READY:
            break
        time.sleep(0.1)
    detected = time.monotonic() - t0
    assert client.get_host(victim.address).state is HostState.NOT_READY
    print(f"\nhost powered off -> NOT_READY seen by the client after {detected:.1f} s")
    deadline = time.monotonic() + LOST_AFTER + 30
    while time.monotonic() < deadline and client.get_host(victim.address).state is not HostState.LOST:
        time.sleep(0.5)
    assert client.get_host(victim.address).state is HostState.LOST
    assert client.get_container(c.uid).state is ContainerState.LOST
