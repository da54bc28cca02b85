"""Fixtures of the conformance suite: the same cases against FakeDevice and the real module.

``CHITAL_DEVICE=fake`` (default) runs them on the host against ``FakeDevice``; ``CHITAL_DEVICE=linux``
runs them against ``LinuxDevice("/dev/chital")``, which only makes sense inside a guest with the module
loaded (``CHITAL_DEVICE_PATH`` overrides the path). Cases talk to a :class:`Driver`, which makes real
processes do things and, for the fake, reports to the fake what the kernel's tracepoints would have.

A case that applies to one device only carries ``@pytest.mark.linux_only`` or ``@pytest.mark.fake_only``
and is not collected (deselected) for the other one: nothing here is skipped at run time, so every
reported pass ran.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chital.agent.device.base import Device, DeviceEvent, KernelContainerSpec
from chital.agent.device.fake import FakeDevice
from chital.agent.device.linux import LinuxDevice
from chital.errdefs import NotFound

WORKER = Path(__file__).with_name("_worker.py")
KIND = os.environ.get("CHITAL_DEVICE", "fake")


class Worker:
    """A real process running ``_worker.py``, driven through pipes."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        self.pid = self.proc.pid
        assert self._read() == "ready"

    def _read(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().decode().strip()

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()
        return self._read()

    def exit(self, code: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"exit {code}\n".encode())
        self.proc.stdin.flush()

    def wait_status(self, timeout: float = 60) -> int:
        rc = self.proc.wait(timeout)
        return rc << 8 if rc >= 0 else -rc

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


class Driver:
    """What a case needs beyond the Device port. ``Driver`` is the real module's behaviour."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.workers: list[Worker] = []
        self.created: list[int] = []
        self._prefix = "conf-" + uuid.uuid4().hex[:8]
        self._n = 0
        self._pending: list[DeviceEvent] = []
        self.drain()

    # -- helpers shared by both --------------------------------------------------------------
    def name(self) -> str:
        self._n += 1
        return f"{self._prefix}-{self._n}"

    def create(self, root: str = "/", **kw: object) -> int:
        name = kw.pop("name", None) or self.name()
        cid = self.device.create(KernelContainerSpec(name=name, root=root, **kw))  # type: ignore[arg-type]
        self.created.append(cid)
        return cid

    def worker(self) -> Worker:
        w = Worker()
        self.workers.append(w)
        return w

    def drain(self) -> None:
        self._pending.clear()
        while self.device.read_events(timeout=0).events:
            pass

    def wait_event(self, pred: Callable[[DeviceEvent], bool], timeout: float = 30) -> DeviceEvent:
        """The first unseen event matching ``pred``; events read before it are consumed."""
        deadline = time.monotonic() + timeout
        while True:
            while self._pending:
                ev = self._pending.pop(0)
                if pred(ev):
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("event not seen")
            self._pending += self.device.read_events(timeout=min(1.0, left)).events

    def events_of(self, cid: int, timeout: float = 2.0) -> list[DeviceEvent]:
        """Every event of container ``cid`` queued until ``timeout`` passes without a new one."""
        out = [ev for ev in self._pending if ev.container_id == cid]
        self._pending.clear()
        while True:
            batch = self.device.read_events(timeout=timeout)
            if not batch.events:
                return out
            out += [ev for ev in batch.events if ev.container_id == cid]

    # -- what the kernel does by itself, and the fake is told -------------------------------
    def syscall(self, w: Worker, nr: int, *args: int) -> int:
        """Make ``w`` call system call ``nr``; returns its errno (0: it ran)."""
        return int(w.ask(" ".join(map(str, ("syscall", nr, *args)))).split()[1])

    def compat_syscall(self, w: Worker, nr: int) -> int:
        """Make ``w`` call i386 system call ``nr`` (no arguments) by ``int $0x80``; returns eax."""
        return int(w.ask(f"int80 {nr}"))

    def fork(self, w: Worker) -> int:
        return int(w.ask("fork"))

    def child_exit(self, w: Worker, child: int, code: int) -> int:
        w.ask(f"release {child} {code}")
        return int(w.ask(f"wait {child}"))

    def exit(self, w: Worker, code: int) -> int:
        w.exit(code)
        return w.wait_status()

    def kill(self, w: Worker, sig: int) -> int:
        w.proc.send_signal(sig)
        return w.wait_status()

    def close(self) -> None:
        for cid in self.created:
            with contextlib.suppress(NotFound):  # already destroyed by the case
                self.device.destroy(cid, kill_members=True)
        for w in self.workers:
            w.close()
        self.device.close()


class FakeDriver(Driver):
    """Tells FakeDevice what the module's tracepoints would see (the fake sandboxes nothing)."""

    def syscall(self, w: Worker, nr: int, *args: int) -> int:
        # The call is not made: the fake only says what the module would answer.
        return int(self.device.syscall_errno(w.pid, nr, *args))  # type: ignore[attr-defined]

    def compat_syscall(self, w: Worker, nr: int) -> int:
        err = int(self.device.syscall_errno(w.pid, nr, compat=True))  # type: ignore[attr-defined]
        return -err if err else super().compat_syscall(w, nr)

    def fork(self, w: Worker) -> int:
        child = super().fork(w)
        self.device.notify_fork(w.pid, child)  # type: ignore[attr-defined]
        return child

    def child_exit(self, w: Worker, child: int, code: int) -> int:
        status = super().child_exit(w, child, code)
        self.device.notify_exit(child, status)  # type: ignore[attr-defined]
        return status

    def exit(self, w: Worker, code: int) -> int:
        status = super().exit(w, code)
        self.device.notify_exit(w.pid, status)  # type: ignore[attr-defined]
        return status

    def kill(self, w: Worker, sig: int) -> int:
        status = super().kill(w, sig)
        self.device.notify_exit(w.pid, status)  # type: ignore[attr-defined]
        return status


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "linux_only: conformance case for the real module only (not collected with CHITAL_DEVICE=fake)",
    )
    config.addinivalue_line(
        "markers", "fake_only: a case for FakeDevice only (not collected with CHITAL_DEVICE=linux)"
    )
    if KIND not in ("fake", "linux"):
        raise pytest.UsageError(f"CHITAL_DEVICE={KIND!r}: expected fake or linux")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the cases that do not apply to the selected device (instead of skipping them)."""
    other = "fake_only" if KIND == "linux" else "linux_only"
    deselected = [item for item in items if item.get_closest_marker(other) is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item.get_closest_marker(other) is None]


#: The node the fake stands for: like the module's device, it has one owner at a time.
FAKE_NODE = "/dev/chital (conformance)"


def make_device() -> Device:
    """Open the device under test (a second open while one is open fails, as with the module)."""
    if KIND == "fake":
        return FakeDevice(node=FAKE_NODE)
    path = os.environ.get("CHITAL_DEVICE_PATH", "/dev/chital")
    if not os.path.exists(path):
        pytest.fail(
            f"CHITAL_DEVICE=linux but {path} does not exist (run inside a guest with chital.ko loaded)"
        )
    return LinuxDevice(path)


@pytest.fixture
def device() -> Iterator[Device]:
    dev = make_device()
    yield dev
    dev.close()


@pytest.fixture
def driver() -> Iterator[Driver]:
    dev = make_device()
    drv = FakeDriver(dev) if KIND == "fake" else Driver(dev)
    yield drv
    drv.close()


#: Cases about what the fake cannot model (it sandboxes nothing: paths, the device node, real ABI bytes).
linux_only = pytest.mark.linux_only
#: Cases about the fake's own test hooks.
fake_only = pytest.mark.fake_only
