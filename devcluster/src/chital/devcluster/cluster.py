"""N guests, each with the module and one long-running command (an agent), reachable from the host.

The building block of the QEMU fleet (:mod:`chital.devcluster.qemu_fleet`, the demo's cluster):
every guest forwards one guest TCP port to a free port on the host's 127.0.0.1 (``restrict=on``:
the guest reaches nothing else) and runs its command in the background through the command
channel, so ``run()`` still works beside it.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .kernel import Kernel
from .vm import CommandHandle, GuestError, GuestVM

__all__ = ["ClusterGuest", "DevCluster", "wait_for_port"]


def wait_for_port(port: int, timeout: float = 60.0, host: str = "127.0.0.1") -> None:
    """Wait until something accepts TCP connections on ``host:port`` *and* answers past slirp.

    slirp accepts a forwarded connection before the guest listens and then closes it, so a bare
    connect() is not proof: wait until the connection stays open briefly or yields data.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=2) as s:
            s.settimeout(0.3)
            try:
                if s.recv(1, socket.MSG_PEEK) == b"":
                    raise OSError("closed by slirp: nothing listens in the guest yet")
            except TimeoutError:
                pass  # open and silent: a real server waiting for us to speak
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing answered on {host}:{port} after {timeout} s")


@dataclass(eq=False)
class ClusterGuest:
    vm: GuestVM
    guest_port: int
    command: CommandHandle | None = None

    @property
    def host_port(self) -> int:
        return self.vm.host_ports[self.guest_port]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.host_port}"


@dataclass(eq=False)
class DevCluster:
    """Start ``size`` guests in parallel; ``command(i)`` gives guest ``i``'s long-running argv."""

    kernel: Kernel
    size: int
    guest_port: int
    command: Callable[[int], Sequence[str]] | None = None
    #: Called with each booted guest before its command starts (to stage files in ``vm.dir``).
    prepare: Callable[[int, GuestVM], None] | None = None
    module: Path | None = None
    memory: int = 768
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout: float = 120.0
    guests: list[ClusterGuest] = field(default_factory=list, init=False)

    def __enter__(self) -> DevCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        try:
            for i in range(self.size):
                vm = GuestVM(
                    self.kernel,
                    name=f"host{i}",
                    memory=self.memory,
                    module=self.module,
                    forward_ports={self.guest_port: 0},
                )
                vm.launch()  # all from this thread (see GuestVM.launch); they boot in parallel
                self.guests.append(ClusterGuest(vm, self.guest_port))
            for i, g in enumerate(self.guests):
                g.vm.wait_ready()
                if self.prepare is not None:
                    self.prepare(i, g.vm)
                if self.command is not None:
                    g.command = g.vm.spawn(list(self.command(i)), env=self.env)
            if self.command is not None:
                for g in self.guests:
                    wait_for_port(g.host_port, timeout=self.ready_timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Power every guest off; QEMU processes that do not exit in time are killed by pid."""
        errors = []
        for g in self.guests:
            try:
                g.vm.stop(timeout=20)
            except Exception as exc:  # noqa: BLE001 - stop the rest, then report
                errors.append(exc)
        if errors:
            raise GuestError(f"{len(errors)} guest(s) did not stop cleanly: {errors[0]}")
