"""``chital top`` on a terminal: the live view refreshes, ranks system calls by their rate since the
previous frame, re-reads the container, and ends on Ctrl-C. Against the fake controller, with a
virtual clock: each refresh's elapsed time is exactly the interval, so the rates are exact, and the
test ends the loop itself (Ctrl-C at the third wait) instead of waiting on real time."""

from __future__ import annotations

import io
import re
from collections.abc import Callable

import pytest
from fake_chital_controller import FakeController
from rich.console import Console

from chital.api.container.v1 import container_pb2 as cpb
from chital.cli import _containers, _output, main

# Cursor moves, line erasing, hide/show cursor: what rich.live draws between frames.
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
FOOTER = "every 2 s; Ctrl-C to quit"


def _stats(
    uid: str, read: int, write: int, openat_denied: int, cpu_usec: int
) -> cpb.GetContainerStatsResponse:
    syscalls = [
        cpb.SyscallCount(name="read", number=0, calls=read),
        cpb.SyscallCount(name="write", number=1, calls=write),
        cpb.SyscallCount(name="openat", number=257, calls=5, denied=openat_denied),
    ]
    return cpb.GetContainerStatsResponse(
        container_uid=uid,
        syscalls=syscalls,
        syscalls_total=read + write + 5,
        denied_total=openat_denied,
        members=2,
        memory_current_bytes=10 << 20,
        pids_current=2,
        cpu_usage_usec=cpu_usec,
        sandboxed=True,
    )


class Clock:
    """``time`` for the top loop: sleeping advances the clock by exactly what was asked; the
    ``interrupt_at``-th sleep is Ctrl-C. ``on_sleep`` runs at each sleep (to change the fleet)."""

    def __init__(self, interrupt_at: int, on_sleep: dict[int, Callable[[], None]]) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.interrupt_at = interrupt_at
        self.on_sleep = on_sleep

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        action = self.on_sleep.get(len(self.sleeps))
        if action is not None:
            action()
        if len(self.sleeps) == self.interrupt_at:
            raise KeyboardInterrupt
        self.now += seconds


def _frames(drawn: str) -> list[list[str]]:
    """The distinct frames drawn, in order, each as its non-blank lines (rich's live display draws
    the last frame once more when it stops)."""
    text = _CONTROL.sub("", drawn).replace("\r", "")
    frames: list[list[str]] = []
    for chunk in text.split(FOOTER)[:-1]:
        lines = [line.rstrip() for line in chunk.splitlines() if line.strip()]
        if not frames or frames[-1] != lines:
            frames.append(lines)
    return frames


def _row(frame: list[str], syscall: str) -> list[str]:
    return next(line.split() for line in frame if line.split()[0] == syscall)


def test_top_refreshes_until_ctrl_c(
    target: str,
    fake: FakeController,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert main(["--controller", target, "--insecure", "run", "-d", "--name", "box", "--", "sleep"]) == 0
    (uid,) = fake.containers
    fake.stats[uid] = [
        _stats(uid, read=100, write=10, openat_denied=0, cpu_usec=1_000_000),
        # 2 s later: write 30/s, read 20/s, openat 0/s; one CPU second in two.
        _stats(uid, read=140, write=70, openat_denied=0, cpu_usec=2_000_000),
        # 2 s later again: read 50/s, write 5/s, one openat denied.
        _stats(uid, read=240, write=80, openat_denied=1, cpu_usec=2_500_000),
    ]

    def stop_box() -> None:
        fake.containers[uid].state = cpb.CONTAINER_STATE_STOPPED

    clock = Clock(interrupt_at=3, on_sleep={2: stop_box})
    monkeypatch.setattr(_containers, "time", clock)
    screen = io.StringIO()
    monkeypatch.setattr(_output, "is_tty", lambda stream=None: True)
    monkeypatch.setattr(
        _output,
        "console",
        lambda stream=None: Console(file=screen, force_terminal=True, width=120, no_color=True),
    )
    capsys.readouterr()
    stats_calls, get_calls = fake.calls["GetContainerStats"], fake.calls["GetContainer"]

    code = main(["--controller", target, "--insecure", "top", "box"])

    assert code == 130 and "chital: interrupted" in capsys.readouterr().err
    assert clock.sleeps == [2.0, 2.0, 2.0]  # two refreshes, Ctrl-C in the third wait
    assert fake.calls["GetContainerStats"] - stats_calls == 3  # the first frame and two refreshes
    assert fake.calls["GetContainer"] - get_calls == 3  # the record is read again at each refresh

    first, second, third = _frames(screen.getvalue())
    # The first frame: counters only (no rate without a previous frame), in the host's order.
    assert first[0].split()[:3] == ["box", uid, "RUNNING"]
    assert first[1].split()[:6] == ["memory", "10.0", "MiB", "pids", "2", "cpu"]
    assert "1.00 s" in first[1] and "of a CPU" not in first[1]
    assert first[2].startswith("system calls 115 (0 denied)")
    assert first[3].split() == ["SYSCALL", "NR", "CALLS", "DENIED"]
    assert [line.split()[0] for line in first[4:]] == ["read", "write", "openat"]
    # A refresh: rates over the 2 s since the first frame, the fastest first.
    assert "cpu 2.00 s (50.0% of a CPU)" in second[1]
    assert second[3].split() == ["SYSCALL", "NR", "CALLS", "DENIED", "CALLS/S", "DENIED/S"]
    assert [line.split()[0] for line in second[4:]] == ["write", "read", "openat"]
    assert _row(second, "write") == ["write", "1", "70", "0", "30.0", "0.0"]
    assert _row(second, "read") == ["read", "0", "140", "0", "20.0", "0.0"]
    # The next: rates since the second frame (not the first), and the container's new state.
    assert third[0].split()[:3] == ["box", uid, "STOPPED"]
    assert "cpu 2.50 s (25.0% of a CPU)" in third[1]
    assert third[2].startswith("system calls 325 (1 denied)")
    assert [line.split()[0] for line in third[4:]] == ["read", "write", "openat"]
    assert _row(third, "read") == ["read", "0", "240", "0", "50.0", "0.0"]
    assert _row(third, "openat") == ["openat", "257", "5", "1", "0.0", "0.5"]
