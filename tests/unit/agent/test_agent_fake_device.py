"""FakeDevice: the in-memory model of /dev/chital's contract (error semantics match the module)."""

from __future__ import annotations

import errno
import select
import signal
from pathlib import Path

import pytest

from chital.agent.device.base import PID_MAX, READ_BATCH, Device, EventKind, KernelContainerSpec, KernelLimits
from chital.agent.device.fake import ALWAYS_DENIED, COMPAT_SYSCALL, FakeDevice
from chital.agent.syscalls import NUMBERS
from chital.errdefs import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)

LIVE = set(range(1000, 1100))


@pytest.fixture
def kills() -> list[tuple[int, int]]:
    return []


@pytest.fixture
def dev(kills: list[tuple[int, int]]) -> FakeDevice:
    d = FakeDevice(queue_len=8, pid_exists=lambda pid: pid in LIVE, kill=lambda p, s: kills.append((p, s)))
    yield d
    d.close()


def spec(tmp_path: Path, name: str = "c1", **kw: object) -> KernelContainerSpec:
    return KernelContainerSpec(name=name, root=str(tmp_path), **kw)  # type: ignore[arg-type]


def test_is_a_device(dev: FakeDevice) -> None:
    assert isinstance(dev, Device)
    assert dev.version().module_version == "fake"


def test_ids_are_monotonic_and_never_reused(dev: FakeDevice, tmp_path: Path) -> None:
    a = dev.create(spec(tmp_path, "a"))
    b = dev.create(spec(tmp_path, "b"))
    assert b > a
    dev.destroy(b)
    c = dev.create(spec(tmp_path, "b"))
    assert c > b
    assert dev.list() == [a, c]
    info = dev.info(c)
    assert (info.name, info.root, info.members) == ("b", str(tmp_path), ())


@pytest.mark.parametrize("name", ["", "x" * 64, "bad name", "é", "a/b", "a\0b"])
def test_bad_names(dev: FakeDevice, tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidArgument):
        dev.create(spec(tmp_path, name))


def test_name_limits_and_duplicates(dev: FakeDevice, tmp_path: Path) -> None:
    dev.create(spec(tmp_path, "x" * 63))
    with pytest.raises(AlreadyExists):
        dev.create(spec(tmp_path, "x" * 63))


def test_root_validation(dev: FakeDevice, tmp_path: Path) -> None:
    for root in ["", "relative", "/" + "a" * 4095, "/tmp/\0x"]:
        with pytest.raises(InvalidArgument):
            dev.create(KernelContainerSpec(name="c", root=root))
    with pytest.raises(NotFound):
        dev.create(KernelContainerSpec(name="c", root=str(tmp_path / "missing")))
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidArgument):
        dev.create(KernelContainerSpec(name="c", root=str(tmp_path / "file")))
    with pytest.raises(InvalidArgument):
        dev.create(spec(tmp_path, deny_syscalls=frozenset({512})))


def test_max_containers(tmp_path: Path) -> None:
    d = FakeDevice(max_containers=1)
    d.create(spec(tmp_path, "a"))
    with pytest.raises(ResourceExhausted):
        d.create(spec(tmp_path, "b"))
    d.close()


def test_membership(dev: FakeDevice, tmp_path: Path) -> None:
    a = dev.create(spec(tmp_path, "a"))
    b = dev.create(spec(tmp_path, "b", limits=KernelLimits(max_members=1)))
    with pytest.raises(NotFound):
        dev.add_proc(a, 5)  # no such process
    with pytest.raises(NotFound):
        dev.add_proc(999, 1000)  # no such container
    with pytest.raises(InvalidArgument):
        dev.add_proc(a, 0)
    dev.add_proc(a, 1000)
    dev.add_proc(a, 1000)  # already a member of the same container: success, as the module
    with pytest.raises(FailedPrecondition):
        dev.add_proc(b, 1000)  # member of another container (EBUSY)
    dev.add_proc(b, 1001)
    with pytest.raises(ResourceExhausted):
        dev.add_proc(b, 1002)
    assert dev.info(a).members == (1000,)
    with pytest.raises(NotFound):
        dev.remove_proc(a, 1001)
    dev.remove_proc(b, 1001)
    batch = dev.read_events()
    assert [e.kind for e in batch.events] == [EventKind.EMPTY]


def test_destroy(dev: FakeDevice, tmp_path: Path, kills: list[tuple[int, int]]) -> None:
    a = dev.create(spec(tmp_path, "a"))
    dev.add_proc(a, 1000)
    with pytest.raises(FailedPrecondition):
        dev.destroy(a)
    dev.destroy(a, kill_members=True)
    assert kills == [(1000, 9)]
    assert dev.container_of(1000) is None
    events = dev.read_events().events
    assert [(e.kind, e.container_id, e.pid, e.status) for e in events] == [
        (EventKind.EXIT, a, 1000, signal.SIGKILL),
        (EventKind.EMPTY, a, 0, 0),
    ]
    with pytest.raises(NotFound):
        dev.destroy(a)
    with pytest.raises(NotFound):
        dev.info(a)


def test_fork_exit_events(dev: FakeDevice, tmp_path: Path) -> None:
    a = dev.create(spec(tmp_path, "a"))
    dev.add_proc(a, 1000)
    assert dev.notify_fork(1000, 1001)
    assert not dev.notify_fork(1050, 1051)  # not a member
    assert dev.info(a).members == (1000, 1001)
    assert dev.notify_exit(1001, 3 << 8)
    assert not dev.notify_exit(1001, 0)
    assert dev.notify_exit(1000, 9)
    batch = dev.read_events()
    kinds = [(e.kind, e.pid) for e in batch.events]
    assert kinds == [
        (EventKind.FORK, 1001),
        (EventKind.EXIT, 1001),
        (EventKind.EXIT, 1000),
        (EventKind.EMPTY, 0),
    ]
    assert batch.events[0].ppid == 1000
    assert batch.events[1].status == 3 << 8
    seqs = [e.seq for e in batch.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4


def test_syscall_counting_and_deny(dev: FakeDevice, tmp_path: Path) -> None:
    a = dev.create(spec(tmp_path, "a", deny_syscalls=frozenset({102})))
    dev.add_proc(a, 1000)
    assert dev.record_syscall(1000, 39)
    assert dev.record_syscall(1000, 39)
    assert not dev.record_syscall(1000, 102)
    assert not dev.record_syscall(1000, 102)
    assert dev.record_syscall(1050, 102)  # non-members are not counted
    assert dev.stats(a) == {39: (2, 0), 102: (2, 2)}
    info = dev.info(a)
    assert (info.syscalls_total, info.denied_total) == (4, 2)
    events = dev.read_events().events
    assert len(events) == 1  # consecutive identical denials are coalesced
    assert (events[0].kind, events[0].syscall_nr, events[0].count) == (EventKind.DENIED, 102, 2)
    dev.set_policy(a, frozenset())
    assert dev.record_syscall(1000, 102)
    with pytest.raises(InvalidArgument):
        dev.set_policy(a, frozenset({-1}))


def test_bounded_queue_counts_drops_and_polls(dev: FakeDevice, tmp_path: Path) -> None:
    assert select.select([dev.fileno()], [], [], 0)[0] == []
    a = dev.create(spec(tmp_path, "a"))
    dev.add_proc(a, 1000)
    for child in range(1001, 1011):
        dev.notify_fork(1000, child)
    assert select.select([dev.fileno()], [], [], 0)[0] == [dev.fileno()]
    first = dev.read_events(max_events=3)
    assert len(first.events) == 3 and first.dropped == 2
    rest = dev.read_events()
    assert len(rest.events) == 5 and rest.dropped == 0
    assert select.select([dev.fileno()], [], [], 0)[0] == []
    assert dev.events_dropped_total == 2


def test_read_events_timeout(dev: FakeDevice) -> None:
    batch = dev.read_events(timeout=0.05)
    assert list(batch.events) == [] and batch.dropped == 0


def test_closed_device_is_unavailable(tmp_path: Path) -> None:
    d = FakeDevice()
    d.close()
    with pytest.raises(Unavailable):
        d.list()
    with pytest.raises(Unavailable):
        d.read_events(timeout=0)


def test_destroy_kill_is_busy_until_the_members_are_gone(tmp_path: Path) -> None:
    """While DESTROY kills, ADD_PROC and DESTROY are EBUSY; exits and forks meanwhile are reported."""
    seen: list[object] = []

    def kill(pid: int, sig: int) -> None:
        if pid == 1000:  # while the module waits for the members to die
            for call in (lambda: d.add_proc(a, 1003), lambda: d.destroy(a, kill_members=True)):
                with pytest.raises(FailedPrecondition):
                    call()
            seen.append(d.notify_fork(1001, 1002))  # a fork meanwhile is killed, no FORK event
            seen.append(d.notify_exit(1001, 3 << 8))  # a member that exits by itself keeps its status
        seen.append((pid, sig))

    d = FakeDevice(pid_exists=lambda pid: pid in LIVE, kill=kill)
    a = d.create(spec(tmp_path, "a"))
    d.add_proc(a, 1000)
    d.add_proc(a, 1001)
    d.destroy(a, kill_members=True)
    assert seen == [(1002, 9), False, True, (1000, 9), (1001, 9)]
    events = d.read_events().events
    assert [(e.kind, e.pid, e.status) for e in events] == [
        (EventKind.EXIT, 1001, 3 << 8),
        (EventKind.EXIT, 1000, signal.SIGKILL),
        (EventKind.EXIT, 1002, signal.SIGKILL),
        (EventKind.EMPTY, 0, 0),
    ]
    assert d.list() == []
    d.close()


def test_add_and_remove_proc_pid_checks(dev: FakeDevice, tmp_path: Path) -> None:
    a = dev.create(spec(tmp_path, "a"))
    for pid in (0, -1, PID_MAX + 1):
        with pytest.raises(InvalidArgument):
            dev.add_proc(a, pid)
        with pytest.raises(InvalidArgument):
            dev.remove_proc(a, pid)
    with pytest.raises(NotFound):
        dev.add_proc(999, 5)  # no such process: ESRCH comes before the container's ENOENT
    real = FakeDevice()
    b = real.create(spec(tmp_path, "b"))
    with pytest.raises(PermissionDenied):
        real.add_proc(b, 1)
    real.close()


def test_containment_is_policy_independent(dev: FakeDevice, tmp_path: Path) -> None:
    a = dev.create(spec(tmp_path, "a"))
    dev.add_proc(a, 1000)
    dev.add_proc(a, 1001)
    for nr in sorted(ALWAYS_DENIED):
        assert dev.syscall_errno(1000, nr) == errno.EPERM
    assert dev.syscall_errno(1000, NUMBERS["unshare"], 0x10000000) == errno.EPERM  # CLONE_NEWUSER
    assert dev.syscall_errno(1000, NUMBERS["clone"], 0x00000080) == errno.EPERM  # CLONE_NEWTIME
    assert dev.syscall_errno(1000, NUMBERS["clone"], 0x11) == 0  # SIGCHLD only: a plain fork
    assert dev.syscall_errno(1000, NUMBERS["clone3"]) == errno.ENOSYS
    assert not dev.record_syscall(1000, NUMBERS["clone3"])
    stats = dev.stats(a)
    assert all(stats[nr] == (1, 1) for nr in ALWAYS_DENIED)
    assert stats[NUMBERS["clone3"]] == (2, 0)
    info = dev.info(a)
    assert info.denied_total == len(ALWAYS_DENIED) + 2
    assert info.syscalls_total == len(ALWAYS_DENIED) + 5
    # The hooks: other processes must be members of the same container; refusals are denials too.
    assert dev.syscall_errno(1000, NUMBERS["kill"], 1001, 0) == 0
    assert dev.syscall_errno(1000, NUMBERS["kill"], 1050, 0) == errno.ESRCH  # as if it did not exist
    assert dev.syscall_errno(1000, NUMBERS["kill"], -1, 9) == errno.EPERM  # a group: stricter
    assert dev.syscall_errno(1000, NUMBERS["ptrace"], 16, 1050) == errno.ESRCH
    assert dev.syscall_errno(1000, NUMBERS["ptrace"], 16, 1001) == 0
    assert dev.stats(a)[NUMBERS["kill"]] == (3, 2)
    assert dev.stats(a)[NUMBERS["ptrace"]] == (2, 1)
    assert dev.syscall_errno(1050, NUMBERS["mount"]) == 0  # not a member: not the module's business


def test_other_tasks_answer_esrch_and_count(dev: FakeDevice, tmp_path: Path) -> None:
    a = dev.create(spec(tmp_path, "a"))
    dev.add_proc(a, 1000)
    dev.add_proc(a, 1001)
    dev.read_events()
    for name, args in [
        ("prlimit64", (1050, 7, 0, 0)),
        ("getpriority", (0, 1050)),
        ("setpriority", (0, 1050, 5)),
        ("sched_setaffinity", (1050, 8, 0)),
        ("sched_setscheduler", (1050, 0, 0)),
        ("ioprio_set", (1, 1050, 0)),
        ("getsid", (1050,)),
        ("fcntl", (3, 8, 1050)),  # F_SETOWN
    ]:
        assert dev.syscall_errno(1000, NUMBERS[name], *args) == errno.ESRCH, name
        assert dev.stats(a)[NUMBERS[name]][1] >= 1, name
    assert dev.syscall_errno(1000, NUMBERS["prlimit64"], 1001, 7, 0, 0) == 0
    assert dev.syscall_errno(1000, NUMBERS["prlimit64"], 0, 7, 0, 0) == 0
    assert dev.syscall_errno(1000, NUMBERS["fcntl"], 3, 8, 1001) == 0
    assert dev.syscall_errno(1000, NUMBERS["fcntl"], 3, 8, -1001) == errno.EPERM  # a process group
    kinds = {e.syscall_nr for e in dev.read_events().events if e.kind is EventKind.DENIED}
    assert {NUMBERS["prlimit64"], NUMBERS["fcntl"], NUMBERS["getsid"]} <= kinds


def test_raw_sockets_flag(dev: FakeDevice, tmp_path: Path) -> None:
    a = dev.create(KernelContainerSpec(name="raw", root=str(tmp_path), deny_raw_sockets=True))
    assert dev.info(a).deny_raw_sockets
    dev.add_proc(a, 1000)
    socket_nr = NUMBERS["socket"]
    assert dev.syscall_errno(1000, socket_nr, 17, 3, 0) == errno.EPERM  # AF_PACKET
    assert dev.syscall_errno(1000, socket_nr, 2, 3 | 0o2000000, 1) == errno.EPERM  # SOCK_RAW|CLOEXEC
    assert dev.syscall_errno(1000, socket_nr, 2, 10, 0) == errno.EPERM  # SOCK_PACKET
    assert dev.syscall_errno(1000, NUMBERS["socketpair"], 1, 3, 0, 0) == errno.EPERM
    assert dev.syscall_errno(1000, socket_nr, 2, 1, 0) == 0  # TCP
    assert dev.stats(a)[socket_nr] == (4, 3)
    dev.set_policy(a, frozenset())
    assert not dev.info(a).deny_raw_sockets
    assert dev.syscall_errno(1000, socket_nr, 17, 3, 0) == 0


def test_one_open_per_node(tmp_path: Path) -> None:
    first = FakeDevice(node="unit-node")
    with pytest.raises(FailedPrecondition):
        FakeDevice(node="unit-node")
    other = FakeDevice(node="another-node")
    FakeDevice().close()  # no node: a device of its own
    first.close()
    FakeDevice(node="unit-node").close()
    other.close()


def test_compat_and_out_of_range_calls(tmp_path: Path) -> None:
    d = FakeDevice(pid_exists=lambda pid: pid in LIVE)
    a = d.create(spec(tmp_path, "a"))
    d.add_proc(a, 1000)
    assert d.syscall_errno(1000, 20, compat=True) == errno.EPERM
    assert d.syscall_errno(1000, 512) == errno.EPERM
    assert d.syscall_errno(1000, -1) == errno.EPERM
    assert d.stats(a) == {}  # no per-number counters for them
    info = d.info(a)
    assert (info.syscalls_total, info.denied_total) == (3, 3)
    events = d.read_events().events
    assert [(e.kind, e.syscall_nr) for e in events] == [
        (EventKind.DENIED, 20 | COMPAT_SYSCALL),
        (EventKind.DENIED, 512),
        (EventKind.DENIED, 0xFFFFFFFF),
    ]
    d.close()


def test_reads_are_batched_and_drops_ride_on_records(tmp_path: Path) -> None:
    d = FakeDevice(queue_len=100, pid_exists=lambda pid: pid in LIVE)
    a = d.create(spec(tmp_path, "a", deny_syscalls=frozenset({39, 110})))
    d.add_proc(a, 1000)
    for i in range(100):  # alternating: no coalescing, one record each
        d.record_syscall(1000, 39 if i % 2 else 110)
    for child in (1001, 1002, 1003):  # the queue is full: dropped (a denial could still coalesce)
        d.notify_fork(1000, child)
    assert select.select([d.fileno()], [], [], 0)[0] == [d.fileno()]
    first = d.read_events(max_events=1000)
    assert (len(first.events), first.dropped) == (READ_BATCH, 3)
    rest = d.read_events(max_events=1000)
    assert (len(rest.events), rest.dropped) == (100 - READ_BATCH, 0)
    assert rest.events[-1].seq == 100
    d.notify_exit(1000, 0)
    assert [e.seq for e in d.read_events().events] == [104]  # the 3 dropped ones left a gap
    assert select.select([d.fileno()], [], [], 0)[0] == []  # drops alone never make it readable
    assert d.events_dropped_total == 3
    with pytest.raises(ValueError):
        FakeDevice(queue_len=0)
    d.close()
