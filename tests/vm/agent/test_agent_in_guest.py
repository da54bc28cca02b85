"""A real agent (``chital-agent serve --device linux``) with the real module and cgroup v2, in a guest.

Run by ``python -m chital.devcluster.vmtest tests/vm/agent`` (or ``make test-vm``); skipped on the
host (``tests/vm/conftest.py``). Each test talks to the agent over gRPC on the guest's loopback, with a
busybox tree as the container root: the process really runs in the container's namespaces with the
root pivoted, is a member of the kernel container and in its cgroup; the memory limit really
OOM-kills; the pids limit really stops a fork bomb; and a ``kill -9`` of the agent really loses
nothing (processes and namespace holders keep running; the new agent finds both).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from chital.api.agent.v1 import agent_pb2 as pb

from .guest_agent import CGROUP_PARENT, AgentProcess


def test_agent_serves_the_real_device_with_limits(agent: AgentProcess) -> None:
    info = agent.stub.GetInfo(pb.GetInfoRequest(), timeout=30)
    assert (info.device, info.sandboxed, info.limits_enforced) == ("linux", True, True)
    assert info.abi_major >= 1 and info.module_version
    controllers = Path(f"/sys/fs/cgroup/{CGROUP_PARENT}/cgroup.subtree_control").read_text().split()
    assert {"cpu", "memory", "pids"} <= set(controllers)


def test_a_real_container_runs_a_program(agent: AgentProcess, root: Path) -> None:
    c = agent.create("hello", root, memory_max_bytes=64 << 20, pids_max=50, cpu_max_millicores=500)
    assert c.kernel_id > 0
    group = Path(f"/sys/fs/cgroup/{CGROUP_PARENT}/hello")
    assert (group / "memory.max").read_text().strip() == str(64 << 20)
    assert (group / "cpu.max").read_text().split() == ["50000", "100000"]
    script = "echo $FOO | tr a-z A-Z; pwd; ls /; cat /etc/inside; exit 3"
    p = agent.start_process("hello", "p-hello", ["/bin/sh", "-c", script], env={"FOO": "hello"}, cwd="/tmp")
    assert p.pid > 0
    done = agent.wait_exit("p-hello")
    assert (done.exit_code, done.signal, done.oom_killed) == (3, 0, False)
    out, err = agent.logs("p-hello")
    assert out.decode().splitlines() == [
        "HELLO",
        "/tmp",
        "bin",
        "dev",
        "etc",
        "proc",
        "tmp",
        "inside the root",
    ], err

    (ev,) = [e for e in agent.events(10, 5) if e.process_uid == "p-hello"]
    assert (ev.exit_code, ev.signal, ev.oom_killed) == (3, 0, False)


def test_the_process_is_a_member_in_its_cgroup_before_it_runs(agent: AgentProcess, root: Path) -> None:
    agent.create("member", root, pids_max=20)
    p = agent.start_process("member", "p-member", ["/bin/sleep", "60"])
    try:
        procs = Path(f"/sys/fs/cgroup/{CGROUP_PARENT}/member/cgroup.procs").read_text().split()
        assert str(p.pid) in procs
        (c,) = [c for c in agent.stub.Sync(pb.SyncRequest(), timeout=30).containers if c.uid == "member"]
        assert p.pid in c.member_pids
        # Its root is the container's (pivot_root in its own mount namespace: the path reads "/").
        assert Path(f"/proc/{p.pid}/root/etc/inside").read_text() == "inside the root\n"
        assert os.stat(f"/proc/{p.pid}/root").st_ino == os.stat(root).st_ino
        assert os.readlink(f"/proc/{p.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        status = Path(f"/proc/{p.pid}/status").read_text()
        assert "NoNewPrivs:\t1" in status
        assert sorted(os.listdir(f"/proc/{p.pid}/fd")) == ["0", "1", "2"]
    finally:
        agent.stub.DestroyContainer(
            pb.DestroyContainerRequest(uid="member", grace_period_seconds=0), timeout=60
        )
    assert not Path(f"/sys/fs/cgroup/{CGROUP_PARENT}/member").exists()


def test_memory_limit_oom_kills_and_the_exit_says_so(agent: AgentProcess, root: Path) -> None:
    agent.create("oom", root, memory_max_bytes=32 << 20)
    # The shell keeps the whole command substitution in memory: it grows until the OOM killer
    # (the biggest process of the group) kills it.
    agent.start_process("oom", "p-oom", ["/bin/sh", "-c", 'x=$(yes | tr -d "\\n"); echo survived'])
    done = agent.wait_exit("p-oom", timeout=300)
    out, err = agent.logs("p-oom")
    assert (done.signal, done.oom_killed) == (signal.SIGKILL, True), (done, out[-200:], err[-500:])
    assert b"survived" not in out
    (ev,) = [e for e in agent.events(20, 5) if e.process_uid == "p-oom"]
    assert (ev.signal, ev.oom_killed) == (signal.SIGKILL, True)
    stats = agent.stub.GetContainerStats(pb.GetContainerStatsRequest(uid="oom"), timeout=30)
    assert stats.oom_kills >= 1
    agent.stub.DestroyContainer(pb.DestroyContainerRequest(uid="oom", grace_period_seconds=0), timeout=60)


def test_pids_limit_stops_a_fork_bomb(agent: AgentProcess, root: Path) -> None:
    agent.create("bomb", root, pids_max=16)
    agent.start_process("bomb", "p-bomb", ["/bin/sh", "-c", "b() { b | b & }; b; sleep 30"])
    peak = 0
    end = time.monotonic() + 8
    while time.monotonic() < end:
        stats = agent.stub.GetContainerStats(pb.GetContainerStatsRequest(uid="bomb"), timeout=30)
        peak = max(peak, stats.pids_current)
        assert stats.pids_current <= 16
        time.sleep(0.5)
    assert peak > 1, "the bomb never forked: the test proves nothing"
    t0 = time.monotonic()
    agent.stub.DestroyContainer(pb.DestroyContainerRequest(uid="bomb", grace_period_seconds=0), timeout=120)
    assert time.monotonic() - t0 < 60
    assert "bomb" not in [c.uid for c in agent.stub.Sync(pb.SyncRequest(), timeout=30).containers]
    # The guest is still responsive, and the agent too.
    assert subprocess.run(["true"], check=False, timeout=30).returncode == 0


def test_kill9_of_the_agent_loses_and_duplicates_nothing(agent: AgentProcess, root: Path) -> None:
    agent.create("restart", root, pids_max=50)
    agent.start_process("restart", "early", ["/bin/sh", "-c", "exit 4"])
    assert agent.wait_exit("early").exit_code == 4
    agent.start_process("restart", "long", ["/bin/sleep", "1000"])
    go = root / "tmp" / "go"  # "during" exits with 7 once this exists: only after the kill -9
    go.unlink(missing_ok=True)
    during = agent.start_process(
        "restart", "during", ["/bin/sh", "-c", "while [ ! -e /tmp/go ]; do sleep 0.2; done; exit 7"]
    )
    killed = agent.start_process("restart", "killed", ["/bin/sleep", "1000"])
    agent.start_process("restart", "forks", ["/bin/sh", "-c", "sleep 1000 & sleep 1000 & wait"])
    before = agent.processes()
    assert all(before[u].state == pb.PROCESS_STATE_RUNNING for u in ("long", "during", "killed", "forks"))
    agent.kill9()
    # While no agent runs: "during" exits with 7, "killed" gets SIGKILL from someone else.
    go.touch()
    os.kill(killed.pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{during.pid}").exists() and _state(during.pid) != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    agent.start()
    procs = agent.processes()
    assert (procs["early"].state, procs["early"].exit_code) == (pb.PROCESS_STATE_EXITED, 4)
    assert (procs["during"].state, procs["during"].exit_code) == (pb.PROCESS_STATE_EXITED, 7)
    assert (procs["killed"].state, procs["killed"].signal) == (pb.PROCESS_STATE_EXITED, signal.SIGKILL)
    assert procs["long"].state == pb.PROCESS_STATE_RUNNING
    assert procs["forks"].state == pb.PROCESS_STATE_RUNNING, (procs["forks"], agent.logs("forks"))
    # The new agent reports the exits it learned from the kernel's queue, once each.
    exits = [e.process_uid for e in agent.events(10, 5)]
    assert sorted(exits) == ["during", "killed"], exits
    # A process from before the restart is followed: signal it, its exit comes from the kernel.
    agent.stub.SignalProcess(pb.SignalProcessRequest(process_uid="long", signal=signal.SIGTERM), timeout=30)
    done = agent.wait_exit("long")
    assert (done.exit_code, done.signal) == (-1, signal.SIGTERM)
    exits = [e.process_uid for e in agent.events(10, 5)]
    assert sorted(exits) == ["during", "killed", "long"], exits
    # The container's namespace holder survived the agent and was found again: new processes start
    # in the same namespaces (the sibling "forks" is visible in the container's /proc).
    agent.start_process("restart", "after", ["/bin/sh", "-c", "ls /proc | grep -c '^[0-9]'"])
    assert agent.wait_exit("after").exit_code == 0
    out, _ = agent.logs("after")
    assert int(out) >= 5, out  # the holder, "forks" and its two sleeps, and this shell at least
    agent.stub.DestroyContainer(
        pb.DestroyContainerRequest(uid="restart", grace_period_seconds=1), timeout=120
    )
    procs = agent.processes()
    assert procs["forks"].state == pb.PROCESS_STATE_EXITED
    assert not Path(f"/sys/fs/cgroup/{CGROUP_PARENT}/restart").exists()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"
