"""AgentRuntime with FakeDevice: real processes on the host (not sandboxed), real log files."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chital.agent import syscalls
from chital.agent.device.fake import FakeDevice
from chital.agent.runtime import (
    AgentEventKind,
    AgentRuntime,
    EventLog,
    LimitsView,
    ProcessStatus,
    RuntimeConfig,
)
from chital.errdefs import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)


@pytest.fixture
def device() -> Iterator[FakeDevice]:
    d = FakeDevice()
    yield d
    d.close()


@pytest.fixture
def rt(device: FakeDevice, tmp_path: Path) -> Iterator[AgentRuntime]:
    # Client-chosen roots under the test's directory (the default prefix is the production one).
    config = RuntimeConfig(state_dir=tmp_path / "state", max_containers=5, allowed_roots=(str(tmp_path),))
    r = AgentRuntime(device, config)
    yield r
    for c in r.sync().containers:
        r.destroy_container(c.uid, 0)
    r.close()


def logs(rt: AgentRuntime, puid: str, tail: int = 0, follow: bool = True) -> dict[str, bytes]:
    out = {"stdout": b"", "stderr": b""}
    for chunk in rt.stream_logs(puid, follow=follow, tail_lines=tail, is_active=lambda: True):
        out[chunk.stream] += chunk.data
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_create_is_idempotent_and_makes_a_root(rt: AgentRuntime, tmp_path: Path) -> None:
    a = rt.create_container("c1", name="web", deny_syscalls=["ptrace", "mount"])
    b = rt.create_container("c1", name="other")
    assert a == b
    assert a.root == str(tmp_path / "state" / "containers" / "c1" / "rootfs")
    assert os.path.isdir(a.root)
    assert a.deny_syscalls == ("mount", "ptrace")
    assert a.kernel_id > 0
    with pytest.raises(AlreadyExists):
        rt.create_container("c2", name="web")
    (tmp_path / "root").mkdir()
    given = rt.create_container("c3", root=str(tmp_path / "root"))
    assert given.root == str(tmp_path / "root")
    assert rt.info().container_count == 2
    # A root that holds the agent's own state is refused (the second check; see chital.agent.roots).
    with pytest.raises(PermissionDenied, match="agent's state directory"):
        rt.create_container("c4", root=str(tmp_path))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"uid": ""}, InvalidArgument),
        ({"uid": ".."}, InvalidArgument),
        ({"uid": "a/b"}, InvalidArgument),
        ({"uid": "x" * 64}, InvalidArgument),
        ({"uid": "c", "root": "relative"}, InvalidArgument),
        ({"uid": "c", "root": "/tmp/../etc"}, InvalidArgument),
        ({"uid": "c", "root": "/does/not/exist"}, InvalidArgument),
        ({"uid": "c", "deny_syscalls": ["no_such_call"]}, InvalidArgument),
        ({"uid": "c", "limits": LimitsView(pids_max=-1)}, InvalidArgument),
        ({"uid": "c", "name": "bad name"}, InvalidArgument),
    ],
)
def test_create_validation(rt: AgentRuntime, kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        rt.create_container(**kwargs)  # type: ignore[arg-type]


def test_max_containers(rt: AgentRuntime) -> None:
    for i in range(5):
        rt.create_container(f"c{i}")
    with pytest.raises(ResourceExhausted):
        rt.create_container("c5")


def test_start_exit_code_env_logs_and_events(rt: AgentRuntime) -> None:
    c = rt.create_container("c1")
    os.makedirs(os.path.join(c.root, "work"))
    p = rt.start_process(
        "c1", "p1", ["sh", "-c", 'echo "$FOO"; pwd; echo oops >&2; exit 3'], env={"FOO": "bar"}, cwd="/work"
    )
    assert p.pid > 0
    done = rt.wait_process("p1", timeout=10)
    assert (done.state, done.exit_code, done.signal) == (ProcessStatus.EXITED, 3, 0)
    out = logs(rt, "p1")
    assert out["stdout"] == f"bar\n{c.root}/work\n".encode()
    assert out["stderr"] == b"oops\n"
    kinds = [(e.kind, e.process_uid, e.exit_code) for e in rt.wait_events(0, 1.0)]
    assert kinds[:2] == [
        (AgentEventKind.PROCESS_STARTED, "p1", 0),
        (AgentEventKind.PROCESS_EXITED, "p1", 3),
    ]
    # The fake device saw the exit too: the container is empty.
    deadline = time.monotonic() + 5
    while AgentEventKind.CONTAINER_EMPTY not in [e.kind for e in rt.wait_events(0, 0.1)]:
        assert time.monotonic() < deadline
    assert rt.sync().containers[0].member_pids == ()


def test_start_is_idempotent_by_process_uid(rt: AgentRuntime) -> None:
    rt.create_container("c1")
    rt.create_container("c2")
    a = rt.start_process("c1", "p1", ["sleep", "5"])
    b = rt.start_process("c1", "p1", ["sleep", "5"])
    assert a.pid == b.pid
    with pytest.raises(AlreadyExists):
        rt.start_process("c2", "p1", ["true"])
    assert [p.uid for p in rt.sync().processes] == ["p1"]
    rt.signal_process("p1", 9)
    assert rt.wait_process("p1", 10).signal == 9


def test_concurrent_starts_create_once(rt: AgentRuntime) -> None:
    rt.create_container("c1")
    pids: list[int] = []

    def start() -> None:
        pids.append(rt.start_process("c1", "same", ["sleep", "5"]).pid)

    threads = [threading.Thread(target=start) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(pids)) == 1
    rt.signal_process("same", 9)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"container_uid": "nope"}, NotFound),
        ({"argv": []}, InvalidArgument),
        ({"argv": [""]}, InvalidArgument),
        ({"argv": ["a\0b"]}, InvalidArgument),
        ({"env": {"A=B": "x"}}, InvalidArgument),
        ({"env": {"": "x"}}, InvalidArgument),
        ({"cwd": "relative"}, InvalidArgument),
        ({"cwd": "/../../etc"}, InvalidArgument),
        ({"cwd": "/missing"}, InvalidArgument),
        ({"process_uid": "../x"}, InvalidArgument),
        ({"argv": ["/no/such/program"]}, NotFound),
    ],
)
def test_start_validation(rt: AgentRuntime, kwargs: dict[str, object], error: type[Exception]) -> None:
    rt.create_container("c1")
    args: dict[str, object] = {"container_uid": "c1", "process_uid": "p1", "argv": ["true"]}
    args.update(kwargs)
    with pytest.raises(error):
        rt.start_process(**args)  # type: ignore[arg-type]
    assert rt.sync().processes == ()


def test_signal(rt: AgentRuntime) -> None:
    rt.create_container("c1")
    rt.start_process("c1", "p1", ["sleep", "30"])
    for bad in (0, 65, -1):
        with pytest.raises(InvalidArgument):
            rt.signal_process("p1", bad)
    with pytest.raises(NotFound):
        rt.signal_process("nope", 15)
    rt.signal_process("p1", 15)
    p = rt.wait_process("p1", 10)
    assert (p.exit_code, p.signal) == (-1, 15)
    with pytest.raises(FailedPrecondition):
        rt.signal_process("p1", 15)


def test_destroy_terms_then_kills(rt: AgentRuntime) -> None:
    c = rt.create_container("c1")
    rt.start_process("c1", "p1", ["sh", "-c", "trap '' TERM; sleep 30 & echo $!; echo ready; wait"])
    deadline = time.monotonic() + 5
    while b"ready" not in logs(rt, "p1", follow=False)["stdout"] or not rt.sync().containers[0].member_pids:
        assert time.monotonic() < deadline
        rt.wait_process("p1", 0.05)
    t0 = time.monotonic()
    rt.destroy_container("c1", 0.5)
    assert time.monotonic() - t0 >= 0.5
    assert rt.wait_process("p1", 10).signal == 9
    assert rt.sync().containers == ()
    # The fake sees no forks: the agent kills the process group, so the grandchild is gone too.
    grandchild = int(logs(rt, "p1")["stdout"].split()[0])
    deadline = time.monotonic() + 5
    while alive(grandchild):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not os.path.exists(c.root)
    rt.destroy_container("c1", 1)  # unknown: success
    with pytest.raises(InvalidArgument):
        rt.destroy_container("c1", -1)
    with pytest.raises(InvalidArgument):
        rt.destroy_container("c1", float("nan"))


def test_stream_events_replays_then_follows(rt: AgentRuntime) -> None:
    rt.create_container("c1")
    rt.start_process("c1", "p1", ["true"])
    rt.wait_process("p1", 10)
    first = rt.wait_events(0, 1.0)
    assert first and first[0].seq == 1
    last = first[-1].seq
    got: list[int] = []

    def follow() -> None:
        got.extend(e.seq for e in rt.wait_events(last, 10.0))

    t = threading.Thread(target=follow)
    t.start()
    time.sleep(0.1)
    rt.start_process("c1", "p2", ["true"])
    t.join(10)
    assert got and got[0] == last + 1
    assert rt.info().last_event_seq >= last + 1


def test_logs_tail_and_follow(rt: AgentRuntime) -> None:
    rt.create_container("c1")
    rt.start_process("c1", "p1", ["sh", "-c", "for i in 1 2 3 4 5; do echo line$i; done"])
    rt.wait_process("p1", 10)
    assert logs(rt, "p1", tail=2)["stdout"] == b"line4\nline5\n"
    assert logs(rt, "p1", tail=100)["stdout"].count(b"\n") == 5
    with pytest.raises(InvalidArgument):
        rt.stream_logs("p1", False, -1, lambda: True)
    with pytest.raises(NotFound):
        rt.stream_logs("nope", False, 0, lambda: True)
    # Follow a running process: the stream ends after it exits and the files are drained.
    rt.start_process("c1", "p2", ["sh", "-c", "echo a; sleep 0.3; echo b"])
    assert logs(rt, "p2")["stdout"] == b"a\nb\n"


def test_stats_and_denied_events(rt: AgentRuntime, device: FakeDevice) -> None:
    c = rt.create_container("c1", deny_syscalls=["ptrace"])
    p = rt.start_process("c1", "p1", ["sleep", "30"])
    ptrace = syscalls.NUMBERS["ptrace"]
    assert device.record_syscall(p.pid, syscalls.NUMBERS["getpid"])
    assert not device.record_syscall(p.pid, ptrace)
    stats = rt.get_container_stats("c1")
    # With the fake device the runtime counts the execve that starts a member, as the module does.
    assert (stats.syscalls_total, stats.denied_total, stats.members) == (3, 1, 1)
    assert [(s.name, s.calls, s.denied) for s in stats.syscalls] == [
        ("getpid", 1, 0),
        ("execve", 1, 0),
        ("ptrace", 1, 1),
    ]
    deadline = time.monotonic() + 5
    while True:
        denied = [e for e in rt.wait_events(0, 0.1) if e.kind is AgentEventKind.SYSCALL_DENIED]
        if denied:
            break
        assert time.monotonic() < deadline
    assert (denied[0].container_uid, denied[0].syscall_number, denied[0].count) == ("c1", ptrace, 1)
    assert denied[0].process_uid == "p1"
    with pytest.raises(NotFound):
        rt.get_container_stats("nope")
    assert c.kernel_id == rt.sync().containers[0].kernel_id
    rt.signal_process("p1", 9)


def test_adopt_and_remove(rt: AgentRuntime) -> None:
    rt.create_container("c1")
    rt.create_container("c2")
    # A process that is not the runtime's child (its parent is a shell that exits at once).
    out = subprocess.run(["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"], capture_output=True, check=True)
    pid = int(out.stdout)
    try:
        p = rt.adopt_process("c1", "adopted", pid)
        assert p.state is ProcessStatus.RUNNING and p.argv == ("sleep", "30")
        assert rt.adopt_process("c1", "adopted", pid) == p
        with pytest.raises(AlreadyExists):
            rt.adopt_process("c1", "adopted", pid + 1)
        with pytest.raises(FailedPrecondition):
            rt.adopt_process("c2", "other", pid)  # member of another container
        with pytest.raises(NotFound):
            rt.adopt_process("c1", "ghost", 4194304)  # PID_MAX_LIMIT: in range, never a pid
        with pytest.raises(InvalidArgument):
            rt.adopt_process("c1", "ghost", 0x7FFFFFF0)  # above PID_MAX_LIMIT: EINVAL, as the module
        with pytest.raises(InvalidArgument):
            rt.adopt_process("c1", "self", os.getpid())
        rt.remove_process("c1", pid)
        with pytest.raises(NotFound):
            rt.remove_process("c1", pid)
        rt.adopt_process("c2", "other", pid)
        rt.signal_process("adopted", 15)
        assert rt.wait_process("adopted", 10).state is ProcessStatus.EXITED
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)


def test_restart_recovers_containers_from_the_device(device: FakeDevice, tmp_path: Path) -> None:
    config = RuntimeConfig(state_dir=tmp_path / "state")
    first = AgentRuntime(device, config)
    first.create_container("c1", name="web", deny_syscalls=["mount"], limits=LimitsView(pids_max=7))
    p = first.start_process("c1", "p1", ["sleep", "30"])
    first.close()
    second = AgentRuntime(device, config)
    try:
        (c,) = second.sync().containers
        assert (c.uid, c.name, c.deny_syscalls, c.limits.pids_max) == ("c1", "web", ("mount",), 7)
        assert c.member_pids == (p.pid,)
        (proc,) = second.sync().processes
        assert (proc.uid, proc.pid, proc.state) == ("p1", p.pid, ProcessStatus.RUNNING)
        assert second.info().boot_id != first.info().boot_id
        second.destroy_container("c1", 0)
    finally:
        second.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(p.pid, 0)  # the first runtime's reaper stopped; reap the child here


def test_restart_reads_process_records_of_the_previous_version(device: FakeDevice, tmp_path: Path) -> None:
    """Records store the uppercase status; those an older agent wrote in lowercase still load."""
    config = RuntimeConfig(state_dir=tmp_path / "state")
    first = AgentRuntime(device, config)
    first.create_container("c1")
    running = first.start_process("c1", "p1", ["sleep", "30"])
    first.start_process("c1", "p2", ["sh", "-c", "exit 4"])
    assert first.wait_process("p2", 10).exit_code == 4
    first.close()
    records = tmp_path / "state" / "containers" / "c1" / "processes"
    for uid, state in (("p1", "RUNNING"), ("p2", "EXITED")):
        path = records / f"{uid}.json"
        data = json.loads(path.read_text())
        assert data["state"] == state
        data["state"] = state.lower()  # as the previous version wrote it
        path.write_text(json.dumps(data))
    second = AgentRuntime(device, config)
    try:
        procs = {p.uid: p for p in second.sync().processes}
        assert (procs["p1"].pid, procs["p1"].state) == (running.pid, ProcessStatus.RUNNING)
        assert (procs["p2"].state, procs["p2"].exit_code) == (ProcessStatus.EXITED, 4)
        second.signal_process("p1", 9)
        assert second.wait_process("p1", 10).state is ProcessStatus.EXITED
        second.destroy_container("c1", 0)
    finally:
        second.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(running.pid, 0)  # the first runtime's reaper stopped; reap the child here


def test_process_gets_no_agent_fds(rt: AgentRuntime) -> None:
    rt.create_container("c1")
    rt.start_process("c1", "p1", ["sh", "-c", "ls /proc/$$/fd"])
    assert rt.wait_process("p1", 10).exit_code == 0
    assert sorted(logs(rt, "p1")["stdout"].split()) == [b"0", b"1", b"2"]


@pytest.mark.skipif(os.getuid() != 0, reason="changing credentials needs root")
def test_user_and_group(rt: AgentRuntime) -> None:
    rt.create_container("c1")
    rt.start_process("c1", "p1", ["sh", "-c", "id -u; id -g; id -G"], user_id=65534, group_id=65534)
    assert rt.wait_process("p1", 10).exit_code == 0
    assert logs(rt, "p1")["stdout"].split() == [b"65534", b"65534", b"65534"]


def test_event_log_is_bounded_and_replays_in_order() -> None:
    log = EventLog(capacity=100)
    for i in range(250):
        log.append(AgentEventKind.CONTAINER_EMPTY, container_uid=f"c{i}")
    assert log.last_seq == 250
    oldest = log.wait_after(0, 0, limit=5)
    assert [e.seq for e in oldest] == [151, 152, 153, 154, 155]  # older ones were dropped
    assert [e.seq for e in log.wait_after(247, 0)] == [248, 249, 250]
    t0 = time.monotonic()
    assert log.wait_after(250, 0.1) == []
    assert time.monotonic() - t0 >= 0.09


def _wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_a_hollow_agent_killed_with_its_device_recovers_containers_members_and_exits(tmp_path: Path) -> None:
    """A hollow agent's device is in memory: kill -9 takes it along, unlike the kernel module. The
    next agent puts the containers and their live members back from the state directory, and the
    exits that happened meanwhile come, with their codes, from the plain-mode shims' exit files."""
    config = RuntimeConfig(state_dir=tmp_path / "state")
    first_device = FakeDevice()
    first = AgentRuntime(first_device, config)
    first.create_container("c1", name="web")
    long = first.start_process("c1", "long", ["sleep", "60"])
    go = tmp_path / "go"
    quick = first.start_process(
        "c1", "quick", ["sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done; exit 7"]
    )
    term = first.start_process("c1", "term", ["sleep", "60"])
    first.close()
    first_device.close()  # the agent is gone, and its device with it
    records = tmp_path / "state" / "containers" / "c1" / "processes"
    # While no agent runs: one program ends by itself, one is killed by a signal.
    go.touch()
    os.kill(term.pid, signal.SIGTERM)
    _wait_for(lambda: (records / "quick.exit").exists() and (records / "term.exit").exists())
    second_device = FakeDevice()
    second = AgentRuntime(second_device, config)
    try:
        (c,) = second.sync().containers
        assert c.uid == "c1" and c.member_pids == (long.pid,)
        procs = {p.uid: p for p in second.sync().processes}
        assert (procs["quick"].state, procs["quick"].exit_code) == (ProcessStatus.EXITED, 7)
        assert (procs["term"].state, procs["term"].signal) == (ProcessStatus.EXITED, signal.SIGTERM)
        assert procs["long"].state is ProcessStatus.RUNNING
        exits = {
            e.process_uid: e for e in second.wait_events(0, 1.0) if e.kind is AgentEventKind.PROCESS_EXITED
        }
        assert exits["quick"].exit_code == 7 and exits["term"].signal == signal.SIGTERM
        second.signal_process("long", signal.SIGKILL)
        done = second.wait_process("long", 20)
        assert (done.state, done.signal) == (ProcessStatus.EXITED, signal.SIGKILL)
        second.destroy_container("c1", 0)
    finally:
        second.close()
        second_device.close()
        for p in (long, quick, term):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(p.pid, 0)  # the first runtime's reaper stopped; reap its children here
