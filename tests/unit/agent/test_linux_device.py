"""LinuxDevice without the module: event decoding and errno mapping, over a FIFO standing in for
/dev/chital (the real module is exercised by tests/conformance with CHITAL_DEVICE=linux in a guest)."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from chital.agent.device import abi
from chital.agent.device.base import EventKind, KernelContainerSpec
from chital.agent.device.linux import LinuxDevice
from chital.errdefs import InvalidArgument, NotFound, Unimplemented


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[tuple[LinuxDevice, int]]:
    path = tmp_path / "chital"
    os.mkfifo(path)
    dev = LinuxDevice(str(path), check_version=False)
    writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    yield dev, writer
    os.close(writer)
    dev.close()


def _record(**fields: int) -> bytes:
    return bytes(abi.Event(**fields))


def test_events_are_decoded(fifo: tuple[LinuxDevice, int]) -> None:
    dev, writer = fifo
    os.write(
        writer,
        _record(seq=1, kind=abi.EVENT_FORK, container_id=3, pid=11, ppid=10)
        + _record(seq=2, kind=abi.EVENT_EXIT, container_id=3, pid=11, status=7 << 8)
        + _record(seq=5, kind=abi.EVENT_DENIED, container_id=3, pid=10, syscall_nr=110, count=4, dropped=2)
        + _record(seq=6, kind=abi.EVENT_EMPTY, container_id=3, dropped=2),
    )
    batch = dev.read_events(timeout=1.0)
    assert [e.kind for e in batch.events] == [
        EventKind.FORK,
        EventKind.EXIT,
        EventKind.DENIED,
        EventKind.EMPTY,
    ]
    fork, exit_, denied, _ = batch.events
    assert (fork.pid, fork.ppid, fork.syscall_nr) == (11, 10, -1)
    assert exit_.status == 7 << 8
    assert (denied.syscall_nr, denied.count, denied.seq) == (110, 4, 5)
    assert batch.dropped == 2
    os.write(writer, _record(seq=7, kind=abi.EVENT_EMPTY, container_id=3, dropped=2))
    assert dev.read_events(timeout=1.0).dropped == 0  # a delta since the previous read


def test_read_times_out_empty(fifo: tuple[LinuxDevice, int]) -> None:
    dev, _ = fifo
    batch = dev.read_events(timeout=0.05)
    assert list(batch.events) == [] and batch.dropped == 0


def test_errno_is_mapped(fifo: tuple[LinuxDevice, int]) -> None:
    dev, _ = fifo
    with pytest.raises(Unimplemented):  # ioctl on a FIFO: ENOTTY
        dev.list()
    with pytest.raises(InvalidArgument):
        dev.create(KernelContainerSpec(name="x" * 64, root="/"))
    with pytest.raises(InvalidArgument):
        dev.set_policy(1, frozenset({512}))
    with pytest.raises(InvalidArgument):
        dev.add_proc(1, 0)


def test_missing_device(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        LinuxDevice(str(tmp_path / "nope"))


def test_event_record_size() -> None:
    assert ctypes.sizeof(abi.Event) == 48
