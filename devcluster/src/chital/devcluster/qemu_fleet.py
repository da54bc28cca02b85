"""The local multi-host cluster: QEMU guests running the real module and agent, and a controller.

Each guest boots a Debian kernel with ``chital.ko`` loaded, sees the host's root read-only over
9p (so it runs the agent from this checkout and its venv), keeps its writable state on tmpfs, and
forwards its agent port to a free port on the host's 127.0.0.1 (``restrict=on``: the guest reaches
nothing else). A busybox tree is prepared in every guest at :data:`BUSYBOX_ROOT` as a container
root. The controller runs on the host and every guest is registered with it.

Security is what a deployment runs (see :mod:`chital.devcluster.security`): the fleet's PKI lives
in the work directory; each guest's agent gets its own bundle (SAN 127.0.0.1, the address the
controller dials through the port forward), installed in the guest at :data:`AGENT_TLS` (0700
directory, 0600 key, on tmpfs) and serves mutual TLS; it accepts client-chosen container roots only
under :data:`ROOTS_DIR`. The controller serves TLS with a bootstrap admin token. There is no plaintext
mode: a guest's agent listens on its network interface, which is not loopback.

    python -m chital.devcluster.qemu_fleet --guests 2     # prints addresses; Ctrl-C stops it

Every QEMU process and the controller are started here, tracked by pid and stopped by pid.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from chital.security.tls import TLSFiles

from .cluster import ClusterGuest, DevCluster, wait_for_port
from .hollow import ServiceProcess, StopSignals, bootstrap_token, describe_access, start_controller
from .kernel import Kernel, default_kernel, find_kernel, repo_root
from .security import ClientConfig, FleetPKI
from .vm import CommandHandle, GuestVM, build_launcher, build_module

if TYPE_CHECKING:
    from chital.client import Client

__all__ = ["AGENT_PORT", "AGENT_TLS", "BUSYBOX_ROOT", "ROOTS_DIR", "QemuFleet"]

#: The agent's port inside every guest (forwarded to a free host port).
AGENT_PORT = 7700
#: Client-chosen container roots the fleet accepts (``--allowed-root`` of the controller and of
#: every guest's agent).
ROOTS_DIR = "/tmp/roots"
#: A container root made of busybox, prepared in every guest.
BUSYBOX_ROOT = f"{ROOTS_DIR}/busybox"
#: The agent's state directory inside a guest (tmpfs; gone with the guest).
AGENT_STATE = "/tmp/chital-agent"
#: The agent's bundle inside a guest (tmpfs): ca.crt, tls.crt, tls.key (0600), directory 0700.
AGENT_TLS = "/run/chital-agent/tls"
#: Where the host stages a bundle in a guest's shared run directory (removed by the guest).
_STAGED_TLS = "staged-tls"


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


def wait_ready(client: Client, addresses: Sequence[str], timeout: float) -> None:
    """Wait until the controller reports every host in ``addresses`` READY."""
    deadline = time.monotonic() + timeout
    while True:
        states = {h.address: h.state.name for h in client.list_hosts()}
        waiting = {a: states.get(a, "missing") for a in addresses if states.get(a) != "READY"}
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"hosts not READY after {timeout:.0f} s: {waiting}")
        time.sleep(0.2)


def stage_bundle(vm: GuestVM, bundle: Path) -> str:
    """Copy ``bundle`` into the guest's shared run directory (0700, key 0600) for
    :func:`install_bundle_script`; returns its path, which is the same in the guest."""
    staged = vm.dir / _STAGED_TLS
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(mode=0o700)
    for name, mode in (("ca.crt", 0o644), ("tls.crt", 0o644), ("tls.key", 0o600)):
        target = staged / name
        target.touch(mode=mode)
        target.write_bytes((bundle / name).read_bytes())
    return str(staged)


def install_bundle_script(staged: str, dest: str) -> str:
    """Shell that moves a staged bundle to ``dest`` in the guest (root-only modes), once."""
    s, d = shlex.quote(staged), shlex.quote(dest)
    return f"""
if [ -d {s} ]; then
    rm -rf {d}
    install -d -m 0700 {d}
    install -m 0644 {s}/ca.crt {s}/tls.crt {d}/
    install -m 0600 {s}/tls.key {d}/
    rm -rf {s}
fi
[ -f {d}/tls.key ] || {{ echo "no agent bundle in {d}" >&2; exit 1; }}
"""


def agent_script(extra_args: Sequence[str] = (), staged_tls: str | None = None) -> str:
    """What a guest runs: prepare the container root, install the staged bundle, then exec the
    agent from this checkout with mutual TLS."""
    agent = Path(sys.executable).parent / "chital-agent"
    argv = [
        str(agent),
        "serve",
        "--config",
        "/dev/null",  # the guest sees the host's root: never a host's /etc/chital/agent.toml
        "--device",
        "linux",
        "--listen",
        f"0.0.0.0:{AGENT_PORT}",
        "--state-dir",
        AGENT_STATE,
        "--tls-dir",
        AGENT_TLS,
        "--allowed-root",
        ROOTS_DIR,
        *extra_args,
    ]
    return (
        "set -e\n"
        + _prepare_root_script(BUSYBOX_ROOT)
        + (install_bundle_script(staged_tls, AGENT_TLS) if staged_tls else "")
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
    #: The fleet's PKI (``<workdir>/pki``): the controller's bundle and one per guest (``host<i>``).
    pki: FleetPKI | None = field(default=None, init=False)
    #: The bootstrap admin token (``chital-controller token create``).
    token: str | None = field(default=None, init=False, repr=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False)

    @property
    def target(self) -> str:
        """The controller's address."""
        assert self.controller is not None, "fleet not started"
        return self.controller.address

    @property
    def client_config(self) -> ClientConfig:
        """The controller's address, the CA to verify it with and the admin token."""
        assert self.token is not None and self.pki is not None, "fleet not started"
        return ClientConfig(self.target, self.token, tls=TLSFiles(ca=self.pki.ca))

    @property
    def config_path(self) -> Path:
        """A ``chital`` config file for this fleet (context "qemu"): ``CHITAL_CONFIG=<it>``."""
        assert self.workdir is not None, "fleet not started"
        return self.workdir / "client" / "config.toml"

    def client(self, **kw: Any) -> Client:
        """A ``chital.client.Client`` of the fleet's admin (``kw``: ``timeout=``, ``token=``...)."""
        return self.client_config.client(**kw)

    def agent_bundle(self, index: int) -> Path:
        """Guest ``index``'s agent bundle on the host (SAN 127.0.0.1: the controller dials the
        forwarded port)."""
        assert self.pki is not None, "fleet not started"
        bundle = self.pki.directory / "agents" / f"host{index}"
        if not (bundle / "tls.key").exists():
            bundle = self.pki.agent(f"host{index}", "127.0.0.1")
        return bundle

    def _agent_command(self, index: int, vm: GuestVM) -> list[str]:
        staged = stage_bundle(vm, self.agent_bundle(index))
        return ["sh", "-c", agent_script(self.agent_args, staged_tls=staged)]

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
            pki = self.pki = FleetPKI(self.workdir / "pki")
            commands: dict[int, list[str]] = {}

            def prepare(index: int, vm: GuestVM) -> None:
                commands[index] = self._agent_command(index, vm)

            self.cluster = DevCluster(
                kernel,
                self.guests,
                AGENT_PORT,
                command=lambda i: commands[i],
                prepare=prepare,
                module=module,
                memory=self.memory,
                ready_timeout=180.0,
            )
            self.cluster.start()
            self.controller = start_controller(
                self.workdir / "controller",
                tls_dir=pki.controller(),
                extra_args=["--allowed-root", ROOTS_DIR, *self.controller_args],
            )
            self.token = bootstrap_token(self.workdir / "controller", None, "qemu-admin")
            self.client_config.write(self.config_path, context="qemu")
            if self.register:
                with self.client(timeout=30.0) as client:
                    for i, guest in enumerate(self.hosts):
                        client.register_host(guest.address, labels={"fleet": "qemu", "guest": f"host{i}"})
                    # The first call to a guest opens its channel (a TLS handshake under emulation):
                    # the registration's own check may time out; the health rounds then catch up.
                    wait_ready(client, [g.address for g in self.hosts], timeout=120.0)
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
        guest.command = guest.vm.spawn(self._agent_command(index, guest.vm))
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
    parser.add_argument(
        "--ready-file",
        type=Path,
        help="write the controller address here once ready (the client config file, "
        "<workdir>/client/config.toml, exists by then)",
    )
    parser.add_argument("--workdir", type=Path, help="PKI, controller state, logs (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.guests < 1:
        parser.error("--guests must be at least 1")
    signals = StopSignals()
    kernel = find_kernel(args.kernel) if args.kernel else default_kernel()
    print(f"booting {args.guests} guest(s) with Linux {kernel.release} and chital.ko ...", flush=True)
    started = time.monotonic()
    fleet = QemuFleet(guests=args.guests, kernel=kernel, memory=args.memory, workdir=args.workdir)
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
        print(describe_access(fleet.client_config, fleet.config_path, fleet.pki), flush=True)
        print("Ctrl-C stops the cluster.", flush=True)

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
