"""FakeDevice: the in-memory model of /dev/chital's contract (error semantics match the module)."""

from __future__ import annotations

import select
from pathlib import Path

import pytest

from chital.agent.device.base import ContainerLimits, ContainerSpec, Device, EventKind
from chital.agent.device.fake import FakeDevice
from chital.errdefs import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
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


def spec(tmp_path: Path, name: str = "c1", **kw: object) -> ContainerSpec:
    return ContainerSpec(name=name, root=str(tmp_path), **kw)  # type: ignore[arg-type]


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
            dev.create(ContainerSpec(name="c", root=root))
    with pytest.raises(NotFound):
        dev.create(ContainerSpec(name="c", root=str(tmp_path / "missing")))
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidArgument):
        dev.create(ContainerSpec(name="c", root=str(tmp_path / "file")))
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
    b = dev.create(spec(tmp_path, "b", limits=ContainerLimits(max_members=1)))
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
    a = dev.create(spec(tmp_path, "a", deny_syscalls=frozenset({101})))
    dev.add_proc(a, 1000)
    assert dev.record_syscall(1000, 39)
    assert dev.record_syscall(1000, 39)
    assert not dev.record_syscall(1000, 101)
    assert not dev.record_syscall(1000, 101)
    assert dev.record_syscall(1050, 101)  # non-members are not counted
    assert dev.stats(a) == {39: (2, 0), 101: (2, 2)}
    info = dev.info(a)
    assert (info.syscalls_total, info.denied_total) == (4, 2)
    events = dev.read_events().events
    assert len(events) == 1  # consecutive identical denials are coalesced
    assert (events[0].kind, events[0].syscall_nr, events[0].count) == (EventKind.DENIED, 101, 2)
    dev.set_policy(a, frozenset())
    assert dev.record_syscall(1000, 101)
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
