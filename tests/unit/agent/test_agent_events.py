"""Kernel values never break the event stream; the sandbox policy is computed, echoed and persisted."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chital.agent import policy
from chital.agent.device.base import DeviceEvent, EventBatch, EventKind
from chital.agent.device.fake import FakeDevice
from chital.agent.metrics import AgentMetrics
from chital.agent.runtime import (
    AgentEvent,
    AgentEventKind,
    AgentRuntime,
    RuntimeConfig,
    SandboxView,
    denied_syscall,
)
from chital.agent.service import AgentService, event_pb
from chital.api.agent.v1 import agent_pb2 as pb
from chital.errdefs import InvalidArgument


class CraftedDevice(FakeDevice):
    """FakeDevice that also returns hand-made kernel records, as the module could send them."""

    def __init__(self) -> None:
        super().__init__()
        self.crafted: list[DeviceEvent] = []
        self._crafted_lock = threading.Lock()

    def read_events(self, max_events: int = 256, timeout: float | None = 0.0) -> EventBatch:
        with self._crafted_lock:
            crafted, self.crafted = self.crafted, []
        if crafted:
            return EventBatch(events=crafted, dropped=0)
        return super().read_events(max_events, timeout)


@pytest.fixture
def device() -> Iterator[CraftedDevice]:
    d = CraftedDevice()
    yield d
    d.close()


@pytest.fixture
def metrics() -> AgentMetrics:
    return AgentMetrics()


@pytest.fixture
def rt(device: CraftedDevice, metrics: AgentMetrics, tmp_path: Path) -> Iterator[AgentRuntime]:
    r = AgentRuntime(device, RuntimeConfig(state_dir=tmp_path / "state"), metrics=metrics)
    yield r
    for c in r.sync().containers:
        r.destroy_container(c.uid, 0)
    r.close()


def wait_for(rt: AgentRuntime, kind: AgentEventKind, after: int = 0) -> AgentEvent:
    end = time.monotonic() + 10
    while time.monotonic() < end:
        for event in rt.wait_events(after, 0.2):
            if event.kind is kind:
                return event
            after = event.seq
    raise AssertionError(f"no {kind} event")


def test_denied_syscall_splits_the_compat_bit() -> None:
    assert denied_syscall(0x80000000 | 20) == (20, True)
    assert denied_syscall(101) == (101, False)
    assert denied_syscall(2**40) == (0x7FFFFFFF, True)  # clamped to u32 first
    assert denied_syscall(-5) == (0, False)


def test_compat_denial_then_exit_both_reported(rt: AgentRuntime, device: CraftedDevice) -> None:
    """A member's `int $0x80` (nr | 0x80000000) used to end StreamEvents with INTERNAL for good."""
    view = rt.create_container("c1")
    proc = rt.start_process("c1", "p1", ["sleep", "0.3"])
    device.crafted = [
        DeviceEvent(
            EventKind.DENIED, view.kernel_id, seq=1, pid=proc.pid, syscall_nr=0x80000000 | 20, count=3
        )
    ]
    denied = wait_for(rt, AgentEventKind.SYSCALL_DENIED)
    assert (denied.syscall_number, denied.compat_syscall, denied.count) == (20, True, 3)
    assert (denied.container_uid, denied.process_uid) == ("c1", "p1")
    msg = event_pb(denied)
    assert (msg.syscall_number, msg.compat_syscall) == (20, True)
    exited = wait_for(rt, AgentEventKind.PROCESS_EXITED, denied.seq)
    assert exited.process_uid == "p1"


def test_bad_device_record_is_counted_and_the_pump_carries_on(
    rt: AgentRuntime, device: CraftedDevice, metrics: AgentMetrics
) -> None:
    view = rt.create_container("c1")
    bad: Any = DeviceEvent(EventKind.DENIED, view.kernel_id, seq=1, pid=1, syscall_nr="garbage", count=1)  # type: ignore[arg-type]
    device.crafted = [bad]
    proc = rt.start_process("c1", "p1", ["true"])
    exited = wait_for(rt, AgentEventKind.PROCESS_EXITED)
    assert exited.pid == proc.pid
    end = time.monotonic() + 5
    while metrics.event_conversion_failures.labels("device")._value.get() < 1:
        assert time.monotonic() < end
        time.sleep(0.05)


def test_event_values_are_clamped_into_their_fields() -> None:
    event = AgentEvent(
        seq=1, kind=AgentEventKind.SYSCALL_DENIED, time=0.0, pid=2**40, syscall_number=0xFFFFFFFF, count=-1
    )
    msg = event_pb(event)
    assert (msg.pid, msg.syscall_number, msg.count) == (2**31 - 1, 2**31 - 1, 0)


class _Context:
    def is_active(self) -> bool:
        return True


class _Runtime:
    """Just enough of AgentRuntime for StreamEvents: one unconvertible event, then a good one."""

    closed = False

    def __init__(self, events: list[AgentEvent]) -> None:
        self._events = events

    def wait_events(self, after: int, timeout: float) -> list[AgentEvent]:
        return [e for e in self._events if e.seq > after]


def test_stream_skips_an_unconvertible_event(metrics: AgentMetrics) -> None:
    broken: Any = AgentEventKind.PROCESS_EXITED
    bad = AgentEvent(seq=1, kind=broken, time=float("nan"), exit_code=0)  # NaN time: cannot convert
    good = AgentEvent(seq=2, kind=AgentEventKind.PROCESS_EXITED, time=1.0, process_uid="p2", exit_code=3)
    service = AgentService(_Runtime([bad, good]), metrics)  # type: ignore[arg-type]
    stream = service.StreamEvents(pb.StreamEventsRequest(after_seq=0), _Context())  # type: ignore[arg-type]
    first = next(stream)
    assert (first.seq, first.process_uid, first.exit_code) == (2, "p2", 3)
    assert metrics.event_conversion_failures.labels("stream")._value.get() == 1


# -- the policy ---------------------------------------------------------------------------------


def test_default_policy_and_relaxations(rt: AgentRuntime) -> None:
    plain = rt.create_container("c1")
    for name in ("keyctl", "add_key", "iopl", "syslog", "clock_settime", "acct", "mknod", "fanotify_init"):
        assert name in plain.effective_deny_syscalls
    assert plain.sandbox == SandboxView()
    relaxed = rt.create_container(
        "c2",
        deny_syscalls=["ptrace"],
        sandbox=SandboxView(
            allow_syscalls=("syslog",), capabilities=("net_bind_service",), host_network=True
        ),
    )
    assert "syslog" not in relaxed.effective_deny_syscalls
    assert "ptrace" in relaxed.effective_deny_syscalls
    assert relaxed.sandbox.capabilities == ("CAP_NET_BIND_SERVICE",)
    assert relaxed.sandbox.host_network


def test_unknown_names_are_invalid(rt: AgentRuntime) -> None:
    with pytest.raises(InvalidArgument, match="capability"):
        rt.create_container("c1", sandbox=SandboxView(capabilities=("CAP_EVERYTHING",)))
    with pytest.raises(InvalidArgument, match="system call"):
        rt.create_container("c1", sandbox=SandboxView(allow_syscalls=("no_such_call",)))


def test_policy_survives_a_restart(device: CraftedDevice, tmp_path: Path) -> None:
    config = RuntimeConfig(state_dir=tmp_path / "state")
    first = AgentRuntime(device, config)
    box = SandboxView(allow_syscalls=("acct",), allow_raw_sockets=True, capabilities=("CAP_KILL",))
    made = first.create_container("c1", sandbox=box)
    first.close()
    second = AgentRuntime(device, config)
    try:
        (c,) = second.sync().containers
        assert c.sandbox == policy.validate_sandbox(box)
        assert c.effective_deny_syscalls == made.effective_deny_syscalls
        second.destroy_container("c1", 0)
    finally:
        second.close()


def test_container_pb_echoes_the_sandbox(rt: AgentRuntime) -> None:
    from chital.agent.service import container_pb  # noqa: PLC0415

    view = rt.create_container("c1", sandbox=SandboxView(capabilities=("CAP_CHOWN",), allow_raw_sockets=True))
    msg = container_pb(view)
    assert list(msg.sandbox.capabilities) == ["CAP_CHOWN"]
    assert msg.sandbox.allow_raw_sockets
    assert "keyctl" in msg.effective_deny_syscalls
