"""The cgroup v2 manager against a fake cgroupfs in a temporary directory, and the runtime using it.

The fake cgroupfs is plain files: ``cgroup.controllers``/``cgroup.subtree_control`` at the root, the
manager's writes land in files, ``rmdir`` refuses (EBUSY) while ``cgroup.procs`` lists a pid, and
``cgroup.kill`` is honoured by the test's own SIGKILL of the listed pids.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chital.agent.cgroup import (
    CPU_PERIOD_US,
    CgroupManager,
    cpu_max_value,
    find_cgroup2_mount,
    open_cgroups,
)
from chital.agent.device.fake import FakeDevice
from chital.agent.runtime import AgentEventKind, AgentRuntime, LimitsView, ProcessStatus, RuntimeConfig
from chital.errdefs import FailedPrecondition, InvalidArgument, Unavailable


class FakeCgroupManager(CgroupManager):
    """A manager whose groups come with ``cgroup.procs`` and whose ``rmdir`` behaves like the
    cgroupfs one on plain files."""

    def create(self, uid: str, **limits: int) -> Path:
        group = super().create(uid, **limits)
        (group / "cgroup.procs").touch()
        return group

    def _remove_dir(self, group: Path) -> None:
        procs = group / "cgroup.procs"
        pids = [int(p) for p in procs.read_text().split()] if procs.exists() else []
        alive = [p for p in pids if _alive(p)]
        if (group / "cgroup.kill").exists() and (group / "cgroup.kill").read_text().strip() == "1":
            for pid in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if alive:
            raise OSError(errno.EBUSY, "busy", str(group))
        shutil.rmtree(group)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def make_cgroupfs(root: Path, controllers: str = "cpuset cpu io memory hugetlb pids rdma misc") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


@pytest.fixture
def cgfs(tmp_path: Path) -> Path:
    return make_cgroupfs(tmp_path / "cgroup")


@pytest.fixture
def manager(cgfs: Path) -> FakeCgroupManager:
    m = FakeCgroupManager(cgfs, "chital")
    m.setup()
    return m


# -- discovery and values -------------------------------------------------------------------------


def test_find_cgroup2_mount_prefers_sys_fs_cgroup(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "24 31 0:22 / /sys rw,nosuid - sysfs sysfs rw\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    )
    assert find_cgroup2_mount(str(info)) == Path("/sys/fs/cgroup/unified")
    info.write_text(
        "41 31 0:38 / /mnt/my\\040cg rw shared:9 - cgroup2 cgroup2 rw\n"
        "30 24 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
    )
    assert find_cgroup2_mount(str(info)) == Path("/sys/fs/cgroup")
    info.write_text("41 31 0:38 / /mnt/my\\040cg rw shared:9 - cgroup2 cgroup2 rw\n")
    assert find_cgroup2_mount(str(info)) == Path("/mnt/my cg")
    info.write_text("24 31 0:22 / /sys rw,nosuid - sysfs sysfs rw\n")
    assert find_cgroup2_mount(str(info)) is None
    assert find_cgroup2_mount(str(tmp_path / "missing")) is None


@pytest.mark.parametrize(
    ("millicores", "value"),
    [
        (0, f"max {CPU_PERIOD_US}"),
        (1000, "100000 100000"),
        (250, "25000 100000"),
        (1, "1000 100000"),
        (2500, "250000 100000"),
    ],
)
def test_cpu_max_value(millicores: int, value: str) -> None:
    assert cpu_max_value(millicores) == value


# -- setup ---------------------------------------------------------------------------------------


def test_setup_delegates_controllers_down_to_the_parent(cgfs: Path) -> None:
    m = CgroupManager(cgfs, "system.slice/chital")
    m.setup()
    for group in (cgfs, cgfs / "system.slice", cgfs / "system.slice" / "chital"):
        assert set((group / "cgroup.subtree_control").read_text().replace("+", "").split()) == {
            "cpu",
            "memory",
            "pids",
        }
    m.setup()  # idempotent


def test_setup_without_cgroup2_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="no cgroup v2"):
        CgroupManager(tmp_path, "chital").setup()


def test_setup_without_controllers_is_a_failed_precondition(tmp_path: Path) -> None:
    root = make_cgroupfs(tmp_path / "cg", controllers="hugetlb")
    with pytest.raises(FailedPrecondition, match="cpu, memory, pids"):
        CgroupManager(root, "chital").setup()


@pytest.mark.parametrize("parent", ["", "/", "a/../b", ".."])
def test_bad_parent(cgfs: Path, parent: str) -> None:
    with pytest.raises(InvalidArgument):
        CgroupManager(cgfs, parent)


def test_open_cgroups_modes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hybrid = make_cgroupfs(tmp_path / "hybrid", controllers="hugetlb")
    assert open_cgroups("off", root=hybrid) is None
    assert open_cgroups("auto", root=hybrid) is None
    assert "WITHOUT resource limits" in caplog.text
    with pytest.raises(FailedPrecondition):
        open_cgroups("required", root=hybrid)
    good = make_cgroupfs(tmp_path / "good")
    m = open_cgroups("required", root=good, parent="x")
    assert m is not None and m.parent == good / "x"
    with pytest.raises(InvalidArgument):
        open_cgroups("sometimes", root=good)


# -- groups --------------------------------------------------------------------------------------


def test_create_writes_limits(manager: CgroupManager) -> None:
    group = manager.create("c1", memory_max_bytes=32 << 20, pids_max=10, cpu_max_millicores=500)
    assert group == manager.parent / "c1"
    assert (group / "memory.max").read_text() == str(32 << 20)
    assert (group / "pids.max").read_text() == "10"
    assert (group / "cpu.max").read_text() == "50000 100000"
    assert not (group / "memory.swap.max").exists()  # only written where the kernel has it
    (group / "memory.swap.max").write_text("max")
    manager.create("c1", memory_max_bytes=1 << 20)
    assert (group / "memory.swap.max").read_text() == "0"
    manager.create("c1")  # idempotent; zero is unlimited
    assert [(group / f).read_text() for f in ("memory.max", "pids.max", "cpu.max")] == [
        "max",
        "max",
        "max 100000",
    ]
    assert manager.names() == ["c1"]
    with pytest.raises(InvalidArgument):
        manager.path("../escape")


def test_stats_and_oom_kills(manager: CgroupManager) -> None:
    group = manager.create("c1")
    assert manager.oom_kills("c1") == 0
    (group / "memory.current").write_text("123456\n")
    (group / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\noom_group_kill 0\n")
    (group / "pids.current").write_text("3\n")
    (group / "cpu.stat").write_text("usage_usec 9876\nuser_usec 6000\nsystem_usec 3876\n")
    st = manager.stats("c1")
    assert (st.memory_current_bytes, st.oom_kills, st.pids_current, st.cpu_usage_usec) == (123456, 2, 3, 9876)
    assert manager.oom_kills("c1") == 2


def test_remove_kills_waits_and_removes(manager: CgroupManager) -> None:
    group = manager.create("c1")
    (group / "cgroup.kill").write_text("0")
    child = subprocess.Popen(["sleep", "30"])
    try:
        (group / "cgroup.procs").write_text(f"{child.pid}\n")
        reaper = threading.Thread(target=child.wait)
        reaper.start()
        manager.remove("c1", timeout=10)
        reaper.join(10)
        assert child.returncode == -signal.SIGKILL
        assert not group.exists()
        manager.remove("c1")  # idempotent
    finally:
        child.kill()
        child.wait()


# -- the runtime with cgroups --------------------------------------------------------------------


@pytest.fixture
def device() -> Iterator[FakeDevice]:
    d = FakeDevice()
    yield d
    d.close()


@pytest.fixture
def rt(device: FakeDevice, manager: CgroupManager, tmp_path: Path) -> Iterator[AgentRuntime]:
    r = AgentRuntime(device, RuntimeConfig(state_dir=tmp_path / "state"), cgroups=manager)
    yield r
    for c in r.sync().containers:
        r.destroy_container(c.uid, 0)
    r.close()


def _wait_for(cond: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_runtime_makes_and_removes_the_group(rt: AgentRuntime, manager: CgroupManager) -> None:
    assert rt.info().limits_enforced
    rt.create_container(
        "c1", limits=LimitsView(memory_max_bytes=64 << 20, pids_max=20, cpu_max_millicores=1500)
    )
    group = manager.parent / "c1"
    assert (group / "memory.max").read_text() == str(64 << 20)
    assert (group / "pids.max").read_text() == "20"
    assert (group / "cpu.max").read_text() == "150000 100000"
    rt.destroy_container("c1", 0)
    assert not group.exists()


def test_helper_joins_the_group_before_exec(rt: AgentRuntime, manager: CgroupManager) -> None:
    rt.create_container("c1")
    procs = manager.parent / "c1" / "cgroup.procs"
    procs.write_text("")
    parent = manager.parent / "parent"
    # The program reads the file the helper wrote before it exec'd: its own pid is already there.
    # (A hollow agent's launcher stays as the program's parent, its shim: that is the pid the
    # agent tracks, and the shim is not in the group.)
    script = f'test "$(cat {procs})" = "$$" && echo $PPID > {parent}'
    p = rt.start_process("c1", "p1", ["sh", "-c", script])
    assert rt.wait_process("p1", 10).exit_code == 0
    assert parent.read_text().strip() == str(p.pid)


def test_helper_reports_a_cgroup_it_cannot_join(rt: AgentRuntime, manager: CgroupManager) -> None:
    rt.create_container("c1")
    shutil.rmtree(manager.parent / "c1")
    with pytest.raises(Exception, match="cgroup"):
        rt.start_process("c1", "p1", ["true"])


def test_sigkill_after_an_oom_kill_is_reported_as_oom(rt: AgentRuntime, manager: CgroupManager) -> None:
    rt.create_container("c1", limits=LimitsView(memory_max_bytes=32 << 20))
    events = manager.parent / "c1" / "memory.events"
    events.write_text("oom 0\noom_kill 0\n")
    a = rt.start_process("c1", "plain-kill", ["sleep", "30"])
    os.kill(a.pid, signal.SIGKILL)
    assert rt.wait_process("plain-kill", 10).oom_killed is False
    b = rt.start_process("c1", "oom", ["sleep", "30"])
    events.write_text("oom 1\noom_kill 1\n")  # the kernel counts before it sends SIGKILL
    os.kill(b.pid, signal.SIGKILL)
    view = rt.wait_process("oom", 10)
    assert (view.state, view.signal, view.oom_killed) == (ProcessStatus.EXITED, signal.SIGKILL, True)
    exits = [e for e in rt.wait_events(0, 1) if e.kind is AgentEventKind.PROCESS_EXITED]
    assert [(e.process_uid, e.oom_killed) for e in exits] == [("plain-kill", False), ("oom", True)]
    # A later plain exit is not an OOM kill (the count did not rise during its life).
    rt.start_process("c1", "later", ["sh", "-c", "kill -9 $$"])
    assert rt.wait_process("later", 10).oom_killed is False
    st = rt.get_container_stats("c1")
    assert st.oom_kills == 1


# -- restart: truth from the kernel --------------------------------------------------------------


def test_restart_delivers_exits_from_the_kernel_queue_once(
    device: FakeDevice, manager: CgroupManager, tmp_path: Path
) -> None:
    config = RuntimeConfig(state_dir=tmp_path / "state")
    first = AgentRuntime(device, config, cgroups=manager)
    first.create_container("c1")
    running = first.start_process("c1", "running", ["sleep", "30"])
    queued = first.start_process("c1", "queued", ["sleep", "30"])
    lost = first.start_process("c1", "lost", ["sleep", "30"])
    first.start_process("c1", "done", ["sh", "-c", "exit 5"])
    assert first.wait_process("done", 10).exit_code == 5
    first.close()  # as after kill -9: nothing reads the device any more
    kid = device.info(first.sync().containers[0].kernel_id).id
    try:
        # While no agent runs: "queued" exits with 7 (the kernel queues EXIT with its status);
        # "lost" exits and its record is gone (the queue dropped it, or the dead agent had read it).
        os.kill(queued.pid, signal.SIGTERM)
        os.waitpid(queued.pid, 0)
        device.notify_exit(queued.pid, 7 << 8)
        device.remove_proc(kid, lost.pid)
        os.kill(lost.pid, signal.SIGKILL)
        os.waitpid(lost.pid, 0)

        second = AgentRuntime(device, config, cgroups=manager)
        try:
            procs = {p.uid: p for p in second.sync().processes}
            assert procs["running"].state is ProcessStatus.RUNNING
            assert (procs["queued"].state, procs["queued"].exit_code) == (ProcessStatus.EXITED, 7)
            assert (procs["lost"].state, procs["lost"].exit_code) == (ProcessStatus.EXITED, -1)
            assert (procs["done"].state, procs["done"].exit_code) == (ProcessStatus.EXITED, 5)
            exits = [
                e.process_uid for e in second.wait_events(0, 0.5) if e.kind is AgentEventKind.PROCESS_EXITED
            ]
            assert sorted(exits) == ["lost", "queued"]  # "done" was reported by the first agent
            # The recovered running process is followed (a pidfd) and can be signalled.
            second.signal_process("running", signal.SIGKILL)
            os.waitpid(running.pid, 0)
            _wait_for(lambda: second.get_process("running").state is ProcessStatus.EXITED)
            exits = [
                e.process_uid for e in second.wait_events(0, 0.5) if e.kind is AgentEventKind.PROCESS_EXITED
            ]
            assert sorted(exits) == ["lost", "queued", "running"]
            second.destroy_container("c1", 0)
        finally:
            second.close()
    finally:
        for p in (running, queued, lost):
            with contextlib.suppress(OSError):
                os.kill(p.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(p.pid, 0)


def test_helper_sets_no_new_privs_and_closes_fds(rt: AgentRuntime) -> None:
    rt.create_container("c1")
    rt.start_process("c1", "p1", ["sh", "-c", "grep NoNewPrivs /proc/self/status; ls /proc/$$/fd"])
    assert rt.wait_process("p1", 10).exit_code == 0
    out = b"".join(
        c.data for c in rt.stream_logs("p1", False, 0, lambda: True) if c.stream == "stdout"
    ).split()
    assert out[:2] == [b"NoNewPrivs:", b"1"]
    assert sorted(out[2:]) == [b"0", b"1", b"2"]


def test_restart_removes_empty_groups_of_vanished_containers(
    device: FakeDevice, manager: CgroupManager, tmp_path: Path
) -> None:
    manager.create("gone")
    busy = manager.create("busy-orphan")
    (busy / "cgroup.procs").write_text(f"{os.getpid()}\n")  # holds a live pid: left alone
    r = AgentRuntime(device, RuntimeConfig(state_dir=tmp_path / "state"), cgroups=manager)
    try:
        assert manager.names() == ["busy-orphan"]
    finally:
        r.close()
