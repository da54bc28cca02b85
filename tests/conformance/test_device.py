"""Device-level conformance cases: each one runs against FakeDevice and against the real module."""

from __future__ import annotations

import errno
import os
import select
import signal
import time
from pathlib import Path

import pytest

from chital.agent.device.base import PID_MAX, READ_BATCH, Device, EventKind, KernelContainerSpec, KernelLimits
from chital.errdefs import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)

from .conftest import Driver, linux_only, make_device

NR_GETPPID = 110
NR_GETPID = 39
NR_CHROOT = 161
NR_MOUNT = 165
NR_UNSHARE = 272
NR_PTRACE = 101
NR_KILL = 62
NR_SETNS = 308
NR_BPF = 321
NR_INIT_MODULE = 175
NR_OPEN_BY_HANDLE_AT = 304
NR_IO_URING_SETUP = 425
NR_CLONE3 = 435
NR_OUT_OF_RANGE = 600
NR_SOCKET = 41
NR_FCNTL = 72
NR_PRLIMIT64 = 302
NR_GETPRIORITY = 140
NR_SETPRIORITY = 141
NR_SCHED_GETSCHEDULER = 145
NR_IOPRIO_GET = 252
NR_GETSID = 124
NR_GETPGID = 121
AF_INET = 2
AF_PACKET = 17
SOCK_DGRAM = 2
SOCK_RAW = 3
ETH_P_ALL_BE = 0x0300  # htons(ETH_P_ALL)
IPPROTO_ICMP = 1
F_SETOWN = 8
RLIMIT_NOFILE = 7
PRIO_PROCESS = 0
IOPRIO_WHO_PROCESS = 1
I386_GETPID = 20
COMPAT_SYSCALL = 0x80000000
PTRACE_ATTACH = 16
CLONE_NEWNS = 0x00020000
UNKNOWN_ID = 0xFFFFFFF0
PF_KTHREAD = 0x00200000


def _kernel_thread() -> int:
    """The pid of a kernel thread (kthreadd is 2 in the initial pid namespace, where the suite runs)."""
    for entry in sorted(os.listdir("/proc"), key=lambda e: (len(e), e)):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    flags = int(f.read().rsplit(b")", 1)[1].split()[6])
            except (OSError, ValueError, IndexError):
                continue
            if flags & PF_KTHREAD:
                return int(entry)
    raise AssertionError("no kernel thread visible in /proc: run the suite in the initial pid namespace")


def _readable(dev: Device) -> bool:
    return bool(select.select([dev.fileno()], [], [], 0)[0])


def test_version(device: Device) -> None:
    v = device.version()
    assert (v.abi_major, v.abi_minor) >= (2, 0)
    assert v.kernel_release


def test_device_has_one_owner(device: Device) -> None:
    """While the device is open, a second open fails (EBUSY); closing frees it."""
    with pytest.raises(FailedPrecondition):
        make_device()
    device.version()  # the owner is not disturbed
    device.close()
    again = make_device()
    again.close()


def test_policy_flags_round_trip(driver: Driver) -> None:
    dev = driver.device
    cid = driver.create(deny_raw_sockets=True)
    assert dev.info(cid).deny_raw_sockets
    assert not dev.info(driver.create()).deny_raw_sockets
    dev.set_policy(cid, frozenset({NR_MOUNT}))  # the whole policy: the flag goes
    info = dev.info(cid)
    assert (info.deny_syscalls, info.deny_raw_sockets) == ({NR_MOUNT}, False)
    dev.set_policy(cid, frozenset(), deny_raw_sockets=True)
    assert dev.info(cid).deny_raw_sockets


def test_raw_sockets_denied_with_the_flag(driver: Driver) -> None:
    dev = driver.device
    cid = driver.create(deny_raw_sockets=True)
    w = driver.worker()
    dev.add_proc(cid, w.pid)
    driver.drain()
    assert driver.syscall(w, NR_SOCKET, AF_PACKET, SOCK_RAW, ETH_P_ALL_BE) == errno.EPERM
    assert driver.syscall(w, NR_SOCKET, AF_INET, SOCK_RAW, IPPROTO_ICMP) == errno.EPERM
    assert driver.syscall(w, NR_SOCKET, AF_INET, SOCK_DGRAM, 0) == 0
    assert dev.stats(cid)[NR_SOCKET] == (3, 2)
    assert dev.info(cid).denied_total == 2
    ev = driver.wait_event(lambda e: e.container_id == cid and e.kind is EventKind.DENIED)
    assert (ev.pid, ev.syscall_nr, ev.count) == (w.pid, NR_SOCKET, 2)
    dev.set_policy(cid, frozenset())
    assert driver.syscall(w, NR_SOCKET, AF_PACKET, SOCK_RAW, ETH_P_ALL_BE) == 0  # root: allowed without


def test_create_list_info_destroy(driver: Driver) -> None:
    dev = driver.device
    name = driver.name()
    cid = driver.create(name=name, root="/tmp", deny_syscalls=frozenset({NR_MOUNT, 500}))
    other = driver.create()
    assert other != cid
    assert {cid, other} <= set(dev.list())
    info = dev.info(cid)
    assert (info.id, info.name, info.root, info.members) == (cid, name, "/tmp", ())
    assert info.deny_syscalls == {NR_MOUNT, 500}
    assert info.limits == KernelLimits()
    assert dict(dev.stats(cid)) == {}
    dev.destroy(cid)
    assert cid not in dev.list()
    with pytest.raises(NotFound):
        dev.info(cid)
    with pytest.raises(NotFound):
        dev.destroy(cid)
    again = driver.create(name=name)
    assert again not in (cid, other)  # ids are never reused


def test_duplicate_name(driver: Driver) -> None:
    name = driver.name()
    driver.create(name=name)
    with pytest.raises(AlreadyExists):
        driver.create(name=name)


@pytest.mark.parametrize("name", ["", "x" * 64, "has space", "a/b", "dot\0nul", "é"])
def test_bad_names(driver: Driver, name: str) -> None:
    with pytest.raises(InvalidArgument):
        driver.device.create(KernelContainerSpec(name=name, root="/"))


def test_longest_name(driver: Driver) -> None:
    cid = driver.create(name=("n" * 55 + driver.name())[-63:])
    assert len(driver.device.info(cid).name) == 63


@pytest.mark.parametrize("root", ["", "relative/path", "/" + "a" * 4095, "/tmp\0x"])
def test_bad_roots(driver: Driver, root: str) -> None:
    with pytest.raises(InvalidArgument):
        driver.device.create(KernelContainerSpec(name=driver.name(), root=root))


def test_root_missing_or_not_a_directory(driver: Driver, tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(NotFound):
        driver.device.create(KernelContainerSpec(name=driver.name(), root=f"{tmp_path}/missing"))
    afile = f"{tmp_path}/file"
    open(afile, "w").close()
    with pytest.raises(InvalidArgument):
        driver.device.create(KernelContainerSpec(name=driver.name(), root=afile))


@pytest.mark.parametrize("deny", [{-1}, {512}, {1 << 40}])
def test_bad_policy(driver: Driver, deny: set[int]) -> None:
    cid = driver.create()
    with pytest.raises(InvalidArgument):
        driver.device.create(KernelContainerSpec(name=driver.name(), root="/", deny_syscalls=frozenset(deny)))
    with pytest.raises(InvalidArgument):
        driver.device.set_policy(cid, frozenset(deny))


def test_unknown_container(driver: Driver) -> None:
    dev = driver.device
    w = driver.worker()
    for call in (
        lambda: dev.info(UNKNOWN_ID),
        lambda: dev.stats(UNKNOWN_ID),
        lambda: dev.set_policy(UNKNOWN_ID, frozenset()),
        lambda: dev.destroy(UNKNOWN_ID),
        lambda: dev.add_proc(UNKNOWN_ID, w.pid),
        lambda: dev.remove_proc(UNKNOWN_ID, w.pid),
    ):
        with pytest.raises(NotFound):
            call()


def test_add_proc(driver: Driver) -> None:
    dev = driver.device
    cid = driver.create()
    other = driver.create()
    w = driver.worker()
    dev.add_proc(cid, w.pid)
    dev.add_proc(cid, w.pid)  # idempotent
    assert dev.info(cid).members == (w.pid,)
    with pytest.raises(FailedPrecondition):
        dev.add_proc(other, w.pid)
    assert dev.info(other).members == ()


def test_add_proc_bad_pids(driver: Driver) -> None:
    dev = driver.device
    cid = driver.create()
    for pid in (0, -1):
        with pytest.raises(InvalidArgument):
            dev.add_proc(cid, pid)
    with pytest.raises(InvalidArgument):
        dev.add_proc(cid, PID_MAX + 1)
    with pytest.raises(InvalidArgument):
        dev.remove_proc(cid, PID_MAX + 1)
    with pytest.raises(NotFound):
        dev.add_proc(cid, PID_MAX)  # in range, but pids stay below pid_max
    with pytest.raises(PermissionDenied):
        dev.add_proc(cid, 1)  # init
    with pytest.raises(PermissionDenied):
        dev.add_proc(UNKNOWN_ID, 1)  # the process is checked before the container
    with pytest.raises(NotFound):
        dev.add_proc(cid, _kernel_thread())
    w = driver.worker()
    tid = int(w.ask("thread"))
    with pytest.raises(NotFound):
        dev.add_proc(cid, tid)  # a thread that does not lead its group
    zombie = int(w.ask("fork"))
    w.ask(f"release {zombie} 0")
    deadline = time.monotonic() + 30
    while Path(f"/proc/{zombie}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(NotFound):
        dev.add_proc(cid, zombie)  # exited, not yet reaped
    w.ask(f"wait {zombie}")
    with pytest.raises(NotFound):
        dev.add_proc(cid, zombie)  # reaped: no such process
    assert dev.info(cid).members == ()


def test_max_members(driver: Driver) -> None:
    dev = driver.device
    cid = driver.create(limits=KernelLimits(max_members=1))
    a, b = driver.worker(), driver.worker()
    for _ in range(2):
        a.ask("thread")  # threads are not counted
    dev.add_proc(cid, a.pid)
    with pytest.raises(ResourceExhausted):
        dev.add_proc(cid, b.pid)
    info = dev.info(cid)
    assert info.limits.max_members == 1
    assert info.members == (a.pid,)


def test_fork_over_max_members_is_killed(driver: Driver) -> None:
    dev = driver.device
    cid = driver.create(limits=KernelLimits(max_members=1))
    w = driver.worker()
    dev.add_proc(cid, w.pid)
    driver.drain()
    child = driver.fork(w)
    status = int(w.ask(f"wait {child}"))
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert dev.info(cid).members == (w.pid,)
    assert [e for e in driver.events_of(cid, timeout=1.0) if e.pid == child] == []


def test_info_members_sorted(driver: Driver) -> None:
    dev = driver.device
    cid = driver.create()
    workers = sorted((driver.worker() for _ in range(3)), key=lambda w: -w.pid)
    for w in workers:
        dev.add_proc(cid, w.pid)
    assert dev.info(cid).members == tuple(sorted(w.pid for w in workers))


def test_exit_once_per_process(driver: Driver) -> None:
    """A process with threads is one member and exits once; a thread that ends reports nothing."""
    dev = driver.device
    cid = driver.create()
    w = driver.worker()
    tids = [int(w.ask("thread")) for _ in range(3)]
    dev.add_proc(cid, w.pid)
    assert dev.info(cid).members == (w.pid,)
    driver.drain()
    assert w.ask(f"endthread {tids[0]}") == "ok"
    assert driver.events_of(cid, timeout=1.0) == []
    assert dev.info(cid).members == (w.pid,)
    status = driver.exit(w, 5)
    events = driver.events_of(cid, timeout=1.0)
    assert [(e.kind, e.pid, e.status) for e in events] == [
        (EventKind.EXIT, w.pid, status),
        (EventKind.EMPTY, 0, 0),
    ]


def test_fork_inheritance_and_exit_status(driver: Driver) -> None:
    dev = driver.device
    cid = driver.create()
    w = driver.worker()
    dev.add_proc(cid, w.pid)
    child = driver.fork(w)
    assert set(dev.info(cid).members) == {w.pid, child}
    fork = driver.wait_event(lambda e: e.container_id == cid and e.kind is EventKind.FORK)
    assert (fork.pid, fork.ppid) == (child, w.pid)

    status = driver.child_exit(w, child, 3)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3
    ev = driver.wait_event(lambda e: e.container_id == cid and e.kind is EventKind.EXIT)
    assert (ev.pid, ev.status) == (child, status)
    assert dev.info(cid).members == (w.pid,)

    status = driver.exit(w, 7)
    ev = driver.wait_event(lambda e: e.container_id == cid and e.kind is EventKind.EXIT)
    assert (ev.pid, ev.status) == (w.pid, 7 << 8)
    driver.wait_event(lambda e: e.container_id == cid and e.kind is EventKind.EMPTY)
    assert dev.info(cid).members == ()


def test_exit_by_signal(driver: Driver) -> None:
    cid = driver.create()
    w = driver.worker()
    driver.device.add_proc(cid, w.pid)
    status = driver.kill(w, signal.SIGTERM)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
    ev = driver.wait_event(lambda e: e.container_id == cid and e.kind is EventKind.EXIT)
    assert (ev.pid, ev.status) == (w.pid, signal.SIGTERM)


def test_event_sequence_numbers_increase(driver: Driver) -> None:
    cid = driver.create()
    w = driver.worker()
    driver.device.add_proc(cid, w.pid)
    for _ in range(3):
        child = driver.fork(w)
        driver.child_exit(w, child, 0)
    events = driver.events_of(cid)
    kinds = [e.kind for e in events]
    assert kinds == [EventKind.FORK, EventKind.EXIT] * 3
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_descendants(driver: Driver) -> None:
    dev = driver.device
    cid = driver.create()
    w = driver.worker()
    child = int(w.ask("fork"))  # forked before w is a member: not inherited
    dev.add_proc(cid, w.pid)
    assert dev.info(cid).members == (w.pid,)
    other = driver.create()
    w2 = driver.worker()
    child2 = int(w2.ask("fork"))
    dev.add_proc(other, w2.pid, descendants=True)
    assert set(dev.info(other).members) == {w2.pid, child2}
    assert child not in dev.info(other).members


def test_remove_proc(driver: Driver) -> None:
    dev = driver.device
    cid = driver.create()
    w = driver.worker()
    with pytest.raises(NotFound):
        dev.remove_proc(cid, w.pid)
    dev.add_proc(cid, w.pid)
    driver.drain()
    dev.remove_proc(cid, w.pid)
    assert dev.info(cid).members == ()
    driver.wait_event(lambda e: e.container_id == cid and e.kind is EventKind.EMPTY)
    with pytest.raises(NotFound):
        dev.remove_proc(cid, w.pid)
    # No longer a member: its exit is not reported.
    driver.exit(w, 0)
    assert [e for e in driver.events_of(cid, timeout=1.0) if e.kind is EventKind.EXIT] == []


def test_destroy_busy_then_kill(driver: Driver) -> None:
    dev = driver.device
    cid = driver.create()
    w = driver.worker()
    dev.add_proc(cid, w.pid)
    with pytest.raises(FailedPrecondition):
        dev.destroy(cid)
    assert cid in dev.list()
    dev.destroy(cid, kill_members=True)
    assert cid not in dev.list()
    status = w.wait_status()
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_destroy_kill_reports_exits(driver: Driver) -> None:
    """Killed members stay members until they are gone, so their exits are reported."""
    dev = driver.device
    cid = driver.create()
    w = driver.worker()
    dev.add_proc(cid, w.pid)
    child = driver.fork(w)
    driver.drain()
    dev.destroy(cid, kill_members=True)
    events = driver.events_of(cid, timeout=1.0)
    exits = {e.pid: e.status for e in events if e.kind is EventKind.EXIT}
    assert exits == {w.pid: signal.SIGKILL, child: signal.SIGKILL}
    assert [e.kind for e in events].count(EventKind.EXIT) == 2
    assert events[-1].kind is EventKind.EMPTY
    assert [e.kind for e in events].count(EventKind.EMPTY) == 1


def test_stats_count_member_syscalls(driver: Driver) -> None:
    dev = driver.device
    cid = driver.create()
    w = driver.worker()
    assert driver.syscall(w, NR_GETPPID) == 0  # not a member yet: not counted
    dev.add_proc(cid, w.pid)
    for _ in range(5):
        assert driver.syscall(w, NR_GETPPID) == 0
    calls, denied = dev.stats(cid)[NR_GETPPID]
    assert calls >= 5 and denied == 0
    info = dev.info(cid)
    assert info.syscalls_total >= 5 and info.denied_total == 0


def test_syscalls_total_is_every_counted_call(driver: Driver) -> None:
    """The total counts every system call of the members: those counted per number, plus the compat
    (int $0x80) and out-of-range ones, which have no per-number counter."""
    dev = driver.device
    cid = driver.create()
    w = driver.worker()
    dev.add_proc(cid, w.pid)
    assert driver.syscall(w, NR_OUT_OF_RANGE) == errno.EPERM
    assert driver.compat_syscall(w, I386_GETPID) == -errno.EPERM
    # The worker keeps making calls until it blocks for its next command: read the counters
    # between two equal totals, so that none moved in between.
    for _ in range(100):
        before = dev.info(cid).syscalls_total
        per_number = sum(calls for calls, _ in dev.stats(cid).values())
        if dev.info(cid).syscalls_total == before:
            break
    else:
        pytest.fail("the member's counters never settled")
    assert before == per_number + 2


def test_policy_denies_and_counts(driver: Driver) -> None:
    dev = driver.device
    cid = driver.create(deny_syscalls=frozenset({NR_GETPPID}))
    w = driver.worker()
    dev.add_proc(cid, w.pid)
    driver.drain()
    for _ in range(3):
        assert driver.syscall(w, NR_GETPPID) == errno.EPERM
    assert driver.syscall(w, NR_GETPID) == 0
    calls, denied = dev.stats(cid)[NR_GETPPID]
    assert calls >= 3 and denied == 3
    assert dev.info(cid).denied_total == 3
    ev = driver.wait_event(lambda e: e.container_id == cid and e.kind is EventKind.DENIED)
    assert (ev.pid, ev.syscall_nr, ev.count) == (w.pid, NR_GETPPID, 3)

    dev.set_policy(cid, frozenset({NR_GETPID}))
    assert dev.info(cid).deny_syscalls == {NR_GETPID}
    assert driver.syscall(w, NR_GETPPID) == 0
    assert driver.syscall(w, NR_GETPID) == errno.EPERM
    dev.set_policy(cid, frozenset())
    assert driver.syscall(w, NR_GETPID) == 0


def test_non_members_are_not_denied(driver: Driver) -> None:
    cid = driver.create(deny_syscalls=frozenset({NR_GETPPID}))
    w = driver.worker()
    assert driver.syscall(w, NR_GETPPID) == 0
    assert driver.device.stats(cid) == {}


def test_read_events_timeout(driver: Driver) -> None:
    batch = driver.device.read_events(timeout=0.05)
    assert list(batch.events) == [] and batch.dropped == 0


def test_read_batch_and_readability(driver: Driver) -> None:
    """One read returns at most READ_BATCH records; the fd polls readable exactly while some are queued."""
    dev = driver.device
    cid = driver.create(deny_syscalls=frozenset({NR_GETPPID, NR_GETPID}))
    w = driver.worker()
    dev.add_proc(cid, w.pid)
    driver.drain()
    assert not _readable(dev)
    n = READ_BATCH + 6
    for i in range(n):  # alternating numbers: no coalescing, one record each
        assert driver.syscall(w, NR_GETPPID if i % 2 else NR_GETPID) == errno.EPERM
    assert _readable(dev)
    first = dev.read_events(max_events=4 * READ_BATCH)
    assert len(first.events) == READ_BATCH and first.dropped == 0
    assert _readable(dev)
    rest = dev.read_events(max_events=4 * READ_BATCH)
    assert len(rest.events) == n - READ_BATCH
    assert all(e.kind is EventKind.DENIED and e.count == 1 for e in (*first.events, *rest.events))
    assert not _readable(dev)
    assert list(dev.read_events(timeout=0).events) == []


# -- containment: what the module forbids every member, whatever its policy --------------------


@pytest.mark.parametrize(
    ("nr", "args"),
    [
        (NR_CHROOT, (0,)),
        (NR_MOUNT, (0, 0, 0, 0, 0)),
        (NR_UNSHARE, (CLONE_NEWNS,)),
        (NR_SETNS, (-1, 0)),
        (NR_BPF, (-1, 0, 0)),
        (NR_INIT_MODULE, (0, 0, 0)),
        (NR_OPEN_BY_HANDLE_AT, (-1, 0, 0)),
        (NR_IO_URING_SETUP, (0, 0)),
    ],
    ids=["chroot", "mount", "unshare-newns", "setns", "bpf", "init_module", "open_by_handle_at", "io_uring"],
)
def test_containment_syscalls(driver: Driver, nr: int, args: tuple[int, ...]) -> None:
    cid = driver.create()
    w = driver.worker()
    driver.device.add_proc(cid, w.pid)
    driver.drain()
    assert driver.syscall(w, nr, *args) == errno.EPERM
    assert driver.device.stats(cid)[nr] == (1, 1)
    assert driver.device.info(cid).denied_total == 1
    ev = driver.wait_event(lambda e: e.container_id == cid and e.kind is EventKind.DENIED)
    assert (ev.pid, ev.syscall_nr, ev.count) == (w.pid, nr, 1)


def test_unshare_without_new_namespaces_is_not_containment(driver: Driver) -> None:
    cid = driver.create()
    w = driver.worker()
    driver.device.add_proc(cid, w.pid)
    assert driver.syscall(w, NR_UNSHARE, 0) == 0
    assert driver.device.stats(cid)[NR_UNSHARE] == (1, 0)


def test_clone3_is_enosys_and_not_a_denial(driver: Driver) -> None:
    cid = driver.create()
    w = driver.worker()
    driver.device.add_proc(cid, w.pid)
    driver.drain()
    assert driver.syscall(w, NR_CLONE3, 0, 0) == errno.ENOSYS
    assert driver.device.stats(cid)[NR_CLONE3] == (1, 0)
    assert driver.device.info(cid).denied_total == 0
    assert [e for e in driver.events_of(cid, timeout=1.0) if e.kind is EventKind.DENIED] == []


def test_out_of_range_syscalls_denied(driver: Driver) -> None:
    cid = driver.create()
    w = driver.worker()
    driver.device.add_proc(cid, w.pid)
    driver.drain()
    assert driver.syscall(w, NR_OUT_OF_RANGE) == errno.EPERM
    info = driver.device.info(cid)
    assert info.denied_total == 1 and info.syscalls_total >= 1
    assert all(denied == 0 for _, denied in driver.device.stats(cid).values())  # no per-number counter
    ev = driver.wait_event(lambda e: e.container_id == cid and e.kind is EventKind.DENIED)
    assert (ev.pid, ev.syscall_nr, ev.count) == (w.pid, NR_OUT_OF_RANGE, 1)


def test_compat_syscalls_denied(driver: Driver) -> None:
    cid = driver.create()
    w = driver.worker()
    assert driver.compat_syscall(w, I386_GETPID) == w.pid  # i386 getpid works for a non-member
    driver.device.add_proc(cid, w.pid)
    driver.drain()
    assert driver.compat_syscall(w, I386_GETPID) == -errno.EPERM
    assert driver.device.info(cid).denied_total == 1
    assert all(denied == 0 for _, denied in driver.device.stats(cid).values())
    ev = driver.wait_event(lambda e: e.container_id == cid and e.kind is EventKind.DENIED)
    assert (ev.pid, ev.syscall_nr, ev.count) == (w.pid, I386_GETPID | COMPAT_SYSCALL, 1)


def test_containment_ignores_the_policy(driver: Driver) -> None:
    """An empty policy still denies containment calls; SET_POLICY cannot lift them."""
    cid = driver.create(deny_syscalls=frozenset({NR_CHROOT}))
    w = driver.worker()
    driver.device.add_proc(cid, w.pid)
    driver.device.set_policy(cid, frozenset())
    assert driver.syscall(w, NR_CHROOT, 0) == errno.EPERM
    assert driver.syscall(w, NR_MOUNT, 0, 0, 0, 0, 0) == errno.EPERM


@linux_only
def test_member_cannot_use_the_device(driver: Driver) -> None:
    cid = driver.create()
    w = driver.worker()
    driver.device.add_proc(cid, w.pid)
    assert w.ask("open /dev/chital") == str(errno.EPERM)


@linux_only
def test_path_confinement(driver: Driver, tmp_path: os.PathLike[str]) -> None:
    root = os.path.join(tmp_path, "root")
    os.makedirs(root)
    inside = os.path.join(root, "inside")
    open(inside, "w").close()
    cid = driver.create(root=root)
    w = driver.worker()
    assert w.ask("open /etc/hostname") == "0"
    driver.device.add_proc(cid, w.pid)
    assert w.ask(f"open {inside}") == "0"
    assert w.ask("open /etc/hostname") == str(errno.EACCES)
    assert w.ask(f"open {root}{'/..' * 32}/etc/hostname") == str(errno.EACCES)
    os.symlink("/etc/hostname", os.path.join(root, "link"))
    assert w.ask(f"open {root}/link") == str(errno.EACCES)
    outsider = driver.worker()
    assert w.ask(f"open /proc/{outsider.pid}/root/etc/hostname") == str(errno.EACCES)
    assert w.ask(f"mkdir {root}/newdir") == "0"
    assert w.ask(f"mkdir {tmp_path}/escaped") == str(errno.EACCES)
    assert not os.path.exists(f"{tmp_path}/escaped")
    outside = os.path.join(tmp_path, "secret")
    open(outside, "w").close()
    assert w.ask(f"link {outside} {root}/stolen") == str(errno.EACCES)  # hard link of an outside file
    assert w.ask(f"link {inside} {root}/alias") == "0"


def test_no_ptrace_of_non_members(driver: Driver) -> None:
    cid = driver.create()
    w, outsider, peer = driver.worker(), driver.worker(), driver.worker()
    driver.device.add_proc(cid, w.pid)
    driver.device.add_proc(cid, peer.pid)
    driver.drain()
    assert driver.syscall(w, NR_PTRACE, PTRACE_ATTACH, outsider.pid, 0, 0) == errno.ESRCH  # as if absent
    assert driver.device.stats(cid)[NR_PTRACE] == (1, 1)
    assert driver.device.info(cid).denied_total == 1
    assert driver.syscall(w, NR_PTRACE, PTRACE_ATTACH, peer.pid, 0, 0) == 0  # same container
    denied = [e for e in driver.events_of(cid, timeout=1.0) if e.kind is EventKind.DENIED]
    assert [(e.pid, e.syscall_nr, e.count) for e in denied] == [(w.pid, NR_PTRACE, 1)]


@linux_only
def test_no_ptrace_access_to_non_members_by_proc(driver: Driver) -> None:
    cid = driver.create()
    w, outsider = driver.worker(), driver.worker()
    driver.device.add_proc(cid, w.pid)
    assert w.ask(f"open /proc/{outsider.pid}/mem") == str(errno.EACCES)


def test_no_signals_to_non_members(driver: Driver) -> None:
    """Outside processes answer ESRCH, as if they did not exist: kill(pid, 0) probes nothing."""
    cid = driver.create()
    w, outsider, peer = driver.worker(), driver.worker(), driver.worker()
    driver.device.add_proc(cid, w.pid)
    driver.device.add_proc(cid, peer.pid)
    driver.drain()
    assert driver.syscall(w, NR_KILL, outsider.pid, signal.SIGTERM) == errno.ESRCH
    assert driver.syscall(w, NR_KILL, outsider.pid, 0) == errno.ESRCH
    assert outsider.proc.poll() is None
    assert driver.syscall(w, NR_KILL, peer.pid, 0) == 0
    assert driver.syscall(outsider, NR_KILL, w.pid, 0) == 0  # the agent's side may signal members
    assert driver.device.stats(cid)[NR_KILL] == (3, 2)
    assert driver.device.info(cid).denied_total == 2
    ev = driver.wait_event(lambda e: e.container_id == cid and e.kind is EventKind.DENIED)
    assert (ev.pid, ev.syscall_nr, ev.count) == (w.pid, NR_KILL, 2)


def _wait_zombie(pid: int) -> None:
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, f"{pid} did not become a zombie"
        time.sleep(0.01)


def test_member_may_signal_its_own_exited_child(driver: Driver) -> None:
    """As on Linux: a parent may signal its exited but unreaped child (subprocess libraries do)."""
    cid = driver.create()
    w = driver.worker()
    driver.device.add_proc(cid, w.pid)
    child = driver.fork(w)
    w.ask(f"release {child} 0")
    _wait_zombie(child)
    assert driver.syscall(w, NR_KILL, child, 0) == 0
    assert driver.syscall(w, NR_KILL, child, signal.SIGTERM) == 0
    assert os.WIFEXITED(int(w.ask(f"wait {child}")))
    assert driver.device.stats(cid)[NR_KILL] == (2, 0)


#: Calls that reach another process, with their arguments for a target pid. Each must answer ESRCH
#: for a process outside the container (as if it did not exist) and work for one inside.
OTHER_TASK_CALLS = {
    "prlimit64": (NR_PRLIMIT64, lambda pid: (pid, RLIMIT_NOFILE, 0, 0)),
    "getpriority": (NR_GETPRIORITY, lambda pid: (PRIO_PROCESS, pid)),
    "setpriority": (NR_SETPRIORITY, lambda pid: (PRIO_PROCESS, pid, 0)),
    "sched_getscheduler": (NR_SCHED_GETSCHEDULER, lambda pid: (pid,)),
    "ioprio_get": (NR_IOPRIO_GET, lambda pid: (IOPRIO_WHO_PROCESS, pid)),
    "getsid": (NR_GETSID, lambda pid: (pid,)),
    "getpgid": (NR_GETPGID, lambda pid: (pid,)),
    "fcntl_setown": (NR_FCNTL, lambda pid: (0, F_SETOWN, pid)),  # SIGIO to pid from the stdin pipe
}


@pytest.mark.parametrize("call", list(OTHER_TASK_CALLS))
def test_other_processes_are_out_of_reach(driver: Driver, call: str) -> None:
    nr, args = OTHER_TASK_CALLS[call]
    cid = driver.create()
    w, outsider, peer = driver.worker(), driver.worker(), driver.worker()
    driver.device.add_proc(cid, w.pid)
    driver.device.add_proc(cid, peer.pid)
    driver.drain()
    assert driver.syscall(outsider, nr, *args(w.pid)) == 0  # control: the call itself works
    assert driver.syscall(w, nr, *args(outsider.pid)) == errno.ESRCH
    assert driver.syscall(w, nr, *args(peer.pid)) == 0
    assert driver.device.stats(cid)[nr] == (2, 1)
    assert driver.device.info(cid).denied_total == 1
    ev = driver.wait_event(lambda e: e.container_id == cid and e.kind is EventKind.DENIED)
    assert (ev.pid, ev.syscall_nr, ev.count) == (w.pid, nr, 1)
