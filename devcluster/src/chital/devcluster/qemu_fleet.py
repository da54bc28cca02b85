"""The local multi-host cluster: QEMU guests running the real module and agent, and a controller.

Each guest boots a Debian kernel with ``chital.ko`` loaded, sees the host's root read-only over
9p (so it runs the agent from this checkout and its venv), keeps its writable state on tmpfs, and
forwards its agent port to a free port on the host's 127.0.0.1 (``restrict=on``: the guest reaches
nothing else). A busybox tree is prepared in every guest at :data:`BUSYBOX_ROOT` as a container
root. The controller runs on the host and every guest is registered with it.

    python -m chital.devcluster.qemu_fleet --guests 2     # prints addresses; Ctrl-C stops it

Every QEMU process and the controller are started here, tracked by pid and stopped by pid.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from .cluster import ClusterGuest, DevCluster, wait_for_port
from .hollow import ServiceProcess, StopSignals, start_controller
from .kernel import Kernel, default_kernel, find_kernel, repo_root
from .vm import CommandHandle, build_launcher, build_module

__all__ = ["AGENT_PORT", "BUSYBOX_ROOT", "QemuFleet"]

#: The agent's port inside every guest (forwarded to a free host port).
AGENT_PORT = 7700
#: A container root made of busybox, prepared in every guest.
BUSYBOX_ROOT = "/tmp/roots/busybox"
#: The agent's state directory inside a guest (tmpfs; gone with the guest).
AGENT_STATE = "/tmp/chital-agent"


def _prepare_root_script(root: str) -> str:
    """Shell that builds a small busybox tree (static busybox, relative applet links, /dev nodes)."""
    q = shlex.quote(root)
    return f"""
mkdir -p {q}/bin {q}/dev {q}/proc {q}/tmp {q}/etc {q}/home
# Once per boot: a restarted agent finds busybox running in containers ("Text file busy").
[ -x {q}/bin/busybox ] || cp /bin/busybox {q}/bin/busybox
for app in $({q}/bin/busybox --list); do
    [ -e {q}/bin/$app ] || ln -s busybox {q}/bin/$app
done
[ -e {q}/dev/null ] || mknod -m 666 {q}/dev/null c 1 3
[ -e {q}/dev/zero ] || mknod -m 666 {q}/dev/zero c 1 5
[ -e {q}/dev/urandom ] || mknod -m 444 {q}/dev/urandom c 1 9
chmod 1777 {q}/tmp
echo 'root:x:0:0:root:/home:/bin/sh' > {q}/etc/passwd
echo 'nobody:x:65534:65534:nobody:/home:/bin/sh' >> {q}/etc/passwd
"""


def agent_script(extra_args: Sequence[str] = ()) -> str:
    """What a guest runs: prepare the container root, then exec the agent from this checkout."""
    agent = Path(sys.executable).parent / "chital-agent"
    argv = [
        str(agent),
        "serve",
        "--device",
        "linux",
        "--listen",
        f"0.0.0.0:{AGENT_PORT}",
        "--state-dir",
        AGENT_STATE,
        *extra_args,
    ]
    return (
        "set -e\n"
        + _prepare_root_script(BUSYBOX_ROOT)
        + f"mkdir -p {AGENT_STATE}\n"
        + f"echo $$ > {AGENT_STATE}.pid\n"
        + f"exec {shlex.join(argv)} >>{AGENT_STATE}.log 2>&1\n"
    )


@dataclass
class QemuFleet:
    """``guests`` QEMU hosts with the module and an agent each, plus a controller on the host."""

    guests: int = 2
    kernel: Kernel | None = None
    memory: int = 768
    workdir: Path | None = None
    controller_args: Sequence[str] = ()
    agent_args: Sequence[str] = ()
    register: bool = True
    cluster: DevCluster | None = field(default=None, init=False)
    controller: ServiceProcess | None = field(default=None, init=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False)

    @property
    def target(self) -> str:
        """The controller's address."""
        assert self.controller is not None, "fleet not started"
        return self.controller.address

    @property
    def hosts(self) -> list[ClusterGuest]:
        assert self.cluster is not None, "fleet not started"
        return self.cluster.guests

    def start(self) -> QemuFleet:
        kernel = self.kernel or default_kernel()
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="chital-qemu-fleet-")
            self.workdir = Path(self._tmp.name)
        try:
            module = build_module(kernel)
            build_launcher()
            script = agent_script(self.agent_args)
            self.cluster = DevCluster(
                kernel,
                self.guests,
                AGENT_PORT,
                command=lambda _i: ["sh", "-c", script],
                module=module,
                memory=self.memory,
                ready_timeout=180.0,
            )
            self.cluster.start()
            self.controller = start_controller(
                self.workdir / "controller", extra_args=list(self.controller_args)
            )
            if self.register:
                from chital.client import Client  # noqa: PLC0415 - optional at import time

                with Client(self.target, timeout=30.0) as client:
                    for i, guest in enumerate(self.hosts):
                        client.register_host(guest.address, labels={"fleet": "qemu", "guest": f"host{i}"})
        except BaseException:
            self.stop()
            raise
        return self

    # -- failure injection, for tests ------------------------------------------------------------

    def run(self, index: int, command: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run a shell command in guest ``index`` (chrooted into the host root)."""
        return self.hosts[index].vm.run(["sh", "-c", command], timeout=timeout)

    def kill_agent(self, index: int) -> None:
        """``kill -9`` the agent in guest ``index``; its processes keep running in the kernel."""
        rc, out = self.run(index, f"kill -9 $(cat {AGENT_STATE}.pid)")
        if rc != 0:
            raise RuntimeError(f"could not kill the agent in host{index}: {out}")
        guest = self.hosts[index]
        if guest.command is not None:
            guest.command.wait(timeout=30)
            guest.command.archive()

    def restart_agent(self, index: int) -> CommandHandle:
        """Start the agent in guest ``index`` again (after :meth:`kill_agent`)."""
        guest = self.hosts[index]
        argv = ["sh", "-c", agent_script(self.agent_args)]
        guest.command = guest.vm.spawn(argv)
        wait_for_port(guest.host_port, timeout=120)
        return guest.command

    def power_off(self, index: int) -> None:
        """Kill guest ``index``'s QEMU (a host that vanishes without a word)."""
        vm = self.hosts[index].vm
        if vm.proc is not None and vm.proc.poll() is None:
            vm.proc.kill()
            vm.proc.wait()

    def agent_log(self, index: int) -> str:
        rc, out = self.run(index, f"cat {AGENT_STATE}.log", timeout=30)
        return out if rc == 0 else ""

    def stop(self) -> None:
        """Stop the controller, then power every guest off."""
        if self.controller is not None:
            self.controller.stop()
        if self.cluster is not None:
            self.cluster.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> QemuFleet:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chital.devcluster.qemu_fleet", description=__doc__)
    parser.add_argument("--guests", type=int, default=2, help="number of QEMU hosts (default 2)")
    parser.add_argument("--kernel", help="kernel release or '6.12' (default: the installed Debian one)")
    parser.add_argument("--memory", type=int, default=768, help="MiB per guest (default 768)")
    parser.add_argument("--ready-file", type=Path, help="write the controller address here once ready")
    args = parser.parse_args(argv)
    if args.guests < 1:
        parser.error("--guests must be at least 1")
    signals = StopSignals()
    kernel = find_kernel(args.kernel) if args.kernel else default_kernel()
    print(f"booting {args.guests} guest(s) with Linux {kernel.release} and chital.ko ...", flush=True)
    started = time.monotonic()
    fleet = QemuFleet(guests=args.guests, kernel=kernel, memory=args.memory)
    try:
        fleet.start()
    except Exception as exc:  # noqa: BLE001 - one line for the operator; details are in the logs
        print(f"qemu-fleet: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"ready in {time.monotonic() - started:.0f} s (state under {repo_root() / '.state' / 'vm'})")
        print(f"controller  {fleet.target}")
        for i, guest in enumerate(fleet.hosts):
            print(f"host{i:<7} {guest.address}  (console {guest.vm.console_path})")
        print(f"\nexport CHITAL_CONTROLLER={fleet.target}\nCtrl-C stops the cluster.", flush=True)

        def stopped() -> str | None:
            for i, guest in enumerate(fleet.hosts):
                if not guest.vm.alive():
                    return f"qemu-fleet: host{i} stopped"
            return None

        return signals.serve(fleet.target, args.ready_file, stopped)
    finally:
        fleet.stop()


if __name__ == "__main__":
    sys.exit(main())
