"""Bare hosts for the Ansible playbooks: QEMU guests with systemd and sshd, and a controller.

:class:`SshFleet` boots ``guests`` :class:`~chital.devcluster.hostvm.HostVM` guests from the host
image (nothing of chital is installed in them) and starts a controller on the host, secured as
deployed (TLS, the fleet PKI, a bootstrap admin token). It writes an Ansible inventory for
``playbooks/``: the guests are the ``chital_agents`` group, reached over SSH as root with the
cluster's key through their forwarded ports, host keys pinned in the cluster's ``known_hosts``
(StrictHostKeyChecking on). The playbooks install the module (DKMS) and the agent (systemd) and
register each host with the controller: what an operator does to a fleet.

The controller runs outside the playbooks (the ``chital_controllers`` group is empty), like a
controller an operator manages elsewhere: the inventory points the playbooks' ``chital`` CLI calls
and the agents' health checks at it from the deploy host (``chital_cli_host: localhost``).

Each guest's agent listens on a port number free on the host and forwarded under the same number
(``127.0.0.1:P`` on the host is port P in the guest), so the agent's address, its certificate
(SAN 127.0.0.1) and the controller's record agree, as on a real network.

    python -m chital.devcluster.ssh_fleet --guests 2     # prints the inventory; Ctrl-C stops it
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

from chital.security.tls import TLSFiles

from .hollow import ServiceProcess, StopSignals, bootstrap_token, describe_access, start_controller
from .hostimage import HostImage, ensure_host_image
from .hostvm import ClusterKeys, HostVM
from .kernel import Kernel, default_kernel, find_kernel, repo_root
from .security import BIN, ClientConfig, FleetPKI
from .vm import GuestError, free_port

if TYPE_CHECKING:
    from chital.client import Client

__all__ = ["BUSYBOX_ROOT", "MAKE_BUSYBOX_ROOT", "ROOTS_DIR", "PlaybookRun", "SshFleet", "parse_recap"]

#: Where containers' roots live on the guests (the allowed root of the controller and of the
#: agents, given explicitly although it is the daemons' default); the image ships busybox-static
#: to make one from.
ROOTS_DIR = "/srv/chital/roots"
#: A container root of busybox-static on each guest (:meth:`SshFleet.make_busybox_roots`).
BUSYBOX_ROOT = f"{ROOTS_DIR}/busybox"
#: Makes :data:`BUSYBOX_ROOT` in a guest (what an operator prepares); idempotent.
MAKE_BUSYBOX_ROOT = f"""set -e
B={BUSYBOX_ROOT}
mkdir -p $B/bin $B/dev $B/proc $B/tmp $B/etc
[ -x $B/bin/busybox ] || cp /bin/busybox $B/bin/busybox
for app in $($B/bin/busybox --list); do [ -e $B/bin/$app ] || ln -s busybox $B/bin/$app; done
[ -e $B/dev/null ] || mknod -m 666 $B/dev/null c 1 3
chmod 1777 $B/tmp
"""

_RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)\s+"
    r"failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)\s+ignored=(?P<ignored>\d+)",
    re.MULTILINE,
)


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP of ``ansible-playbook``'s default output: host -> ok/changed/failed/..."""
    recap = {}
    for m in _RECAP.finditer(output):
        recap[m.group("host")] = {k: int(v) for k, v in m.groupdict().items() if k != "host"}
    return recap


@dataclass
class PlaybookRun:
    """One ``ansible-playbook`` run: exit status, output, its PLAY RECAP and its wall time."""

    playbook: str
    returncode: int
    output: str
    recap: dict[str, dict[str, int]]
    seconds: float
    #: (host, "role : task", seconds) of every task, from Ansible's junit callback.
    tasks: list[tuple[str, str, float]] = field(default_factory=list)

    def task_seconds(self, task: str) -> dict[str, float]:
        """Per host, the seconds of the tasks whose name contains ``task``."""
        found: dict[str, float] = {}
        for host, name, seconds in self.tasks:
            if task in name:
                found[host] = found.get(host, 0.0) + seconds
        return found

    def changed(self) -> dict[str, int]:
        return {host: r["changed"] for host, r in self.recap.items()}

    def failed_hosts(self) -> list[str]:
        return [host for host, r in self.recap.items() if r["failed"] or r["unreachable"]]


@dataclass
class SshFleet:
    """``guests`` bare hosts (systemd, sshd) and a controller on the host; see the module docstring."""

    guests: int = 2
    kernel: Kernel | None = None
    memory: int = 1536
    workdir: Path | None = None
    controller_args: Sequence[str] = ()
    image: HostImage | None = field(default=None, init=False)
    hosts: list[HostVM] = field(default_factory=list, init=False)
    #: Each guest's agent port (the same on the host's 127.0.0.1 and in the guest).
    agent_ports: list[int] = field(default_factory=list, init=False)
    keys: ClusterKeys | None = field(default=None, init=False)
    controller: ServiceProcess | None = field(default=None, init=False)
    pki: FleetPKI | None = field(default=None, init=False)
    token: str | None = field(default=None, init=False, repr=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False)

    # ----------------------------------------------------------------- addresses and files
    @property
    def target(self) -> str:
        assert self.controller is not None, "fleet not started"
        return self.controller.address

    @property
    def client_config(self) -> ClientConfig:
        assert self.token is not None and self.pki is not None, "fleet not started"
        return ClientConfig(self.target, self.token, tls=TLSFiles(ca=self.pki.ca))

    @property
    def config_path(self) -> Path:
        """A ``chital`` config file for this fleet (context "ssh"): ``CHITAL_CONFIG=<it>``."""
        assert self.workdir is not None, "fleet not started"
        return self.workdir / "client" / "config.toml"

    @property
    def token_file(self) -> Path:
        assert self.workdir is not None, "fleet not started"
        return self.workdir / "admin.token"

    @property
    def inventory_path(self) -> Path:
        assert self.workdir is not None, "fleet not started"
        return self.workdir / "inventory.yml"

    def agent_address(self, index: int) -> str:
        return f"127.0.0.1:{self.agent_ports[index]}"

    def make_busybox_roots(self) -> None:
        """Make :data:`BUSYBOX_ROOT` on every guest, over SSH (idempotent)."""
        for vm in self.hosts:
            rc, out = vm.ssh(MAKE_BUSYBOX_ROOT, timeout=300)
            if rc != 0:
                raise GuestError(f"{vm.name}: making {BUSYBOX_ROOT} failed (exit {rc}): {out.strip()}")

    def client(self, **kw: Any) -> Client:
        return self.client_config.client(**kw)

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> SshFleet:
        kernel = self.kernel or default_kernel()
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="chital-ssh-fleet-")
            self.workdir = Path(self._tmp.name)
        try:
            self.image = ensure_host_image(kernel)
            self.keys = ClusterKeys(self.workdir / "ssh")
            pki = self.pki = FleetPKI(self.workdir / "pki")
            pki.controller()
            while len(self.agent_ports) < self.guests:
                port = free_port()
                if port not in self.agent_ports:
                    self.agent_ports.append(port)
            for i in range(self.guests):
                pki.agent(f"host{i}", "127.0.0.1")
                vm = HostVM(
                    kernel,
                    name=f"host{i}",
                    image=self.image,
                    keys=self.keys,
                    same_ports=[self.agent_ports[i]],
                    memory=self.memory,
                )
                vm.launch()  # all from this thread (see GuestVM.launch); they boot in parallel
                self.hosts.append(vm)
            self.controller = start_controller(
                self.workdir / "controller",
                tls_dir=pki.directory / "controller",
                extra_args=["--allowed-root", ROOTS_DIR, *self.controller_args],
            )
            self.token = bootstrap_token(self.workdir / "controller", None, "ssh-fleet-admin")
            self.token_file.touch(mode=0o600)
            self.token_file.write_text(self.token + "\n")
            self.client_config.write(self.config_path, context="ssh")
            for vm in self.hosts:
                vm.wait_ready()
            self.write_inventory()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the controller, then power every guest off (by pid when it does not go)."""
        if self.controller is not None:
            self.controller.stop()
        errors = []
        for vm in self.hosts:
            try:
                vm.stop(timeout=30)
            except Exception as exc:  # noqa: BLE001 - stop the rest, then report
                errors.append(exc)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        if errors:
            raise GuestError(f"{len(errors)} guest(s) did not stop cleanly: {errors[0]}")

    def __enter__(self) -> SshFleet:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------- Ansible
    def inventory(self) -> dict[str, Any]:
        """The inventory of the fleet (see the module docstring)."""
        assert self.keys is not None and self.pki is not None and self.workdir is not None
        cli = [str(BIN / "chital"), "--controller", self.target, "--ca", str(self.pki.ca)]
        cli += ["--token-file", str(self.token_file), "--timeout", "30", "--output", "json"]
        # Host variables: they take precedence over the playbooks' group_vars/all.yml, which sets
        # chital_cli_host and chital_cli for a controller installed by the playbooks.
        deploy_host = {
            # The controller is run outside the playbooks, on this (the deploy) host.
            "chital_cli_host": "localhost",
            "chital_cli": cli,
            "chital_agent_health_delegate": "localhost",
            "chital_agent_health_python": sys.executable,
            "chital_agent_health_tls_dir": str(self.pki.directory / "controller"),
        }
        agents = {}
        for i, vm in enumerate(self.hosts):
            agents[vm.name] = {
                "ansible_host": "127.0.0.1",
                "ansible_port": vm.ssh_port,
                "chital_agent_address": "127.0.0.1",
                "chital_agent_port": self.agent_ports[i],
                "chital_agent_pki_bundle": str(self.pki.directory / "agents" / f"host{i}"),
                "chital_agent_allowed_roots": [ROOTS_DIR],
                **deploy_host,
            }
        ssh_args = [o for o in self.keys.ssh_options() if o != "-o"]
        return {
            "all": {
                "vars": {
                    "ansible_user": "root",
                    "ansible_ssh_private_key_file": str(self.keys.client_key),
                    "ansible_ssh_common_args": " ".join(f"-o {o}" for o in ssh_args),
                    "chital_pki_dir": str(self.pki.directory),
                },
                "hosts": {
                    "localhost": {
                        "ansible_connection": "local",
                        "ansible_python_interpreter": sys.executable,
                        "ansible_become": False,
                    }
                },
                "children": {
                    "chital_controllers": {"hosts": {}},
                    "chital_agents": {"hosts": agents},
                },
            }
        }

    def write_inventory(self) -> Path:
        """``inventory.yml`` (every guest) and ``inventory-<name>.yml`` (one guest each) in the workdir."""
        assert self.workdir is not None
        full = self.inventory()
        files = {self.inventory_path: full}
        for name in full["all"]["children"]["chital_agents"]["hosts"]:
            one = json.loads(json.dumps(full))
            agents = one["all"]["children"]["chital_agents"]["hosts"]
            one["all"]["children"]["chital_agents"]["hosts"] = {name: agents[name]}
            files[self.workdir / f"inventory-{name}.yml"] = one
        for path, data in files.items():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2) + "\n")
            tmp.replace(path)
        return self.inventory_path

    def ansible_env(self) -> dict[str, str]:
        assert self.workdir is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
        env.update(
            PATH=f"{BIN}:{env.get('PATH', '')}",
            ANSIBLE_CONFIG=str(repo_root() / "playbooks" / "ansible.cfg"),
            ANSIBLE_HOME=str(self.workdir / "ansible"),
            ANSIBLE_LOCAL_TEMP=str(self.workdir / "ansible" / "tmp"),
            ANSIBLE_SSH_CONTROL_PATH_DIR=str(self.workdir / "cp"),
            ANSIBLE_HOST_KEY_CHECKING="True",
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_FORCE_COLOR="0",
            ANSIBLE_RETRY_FILES_ENABLED="0",
            ANSIBLE_LOCALHOST_WARNING="0",
            GRPC_VERBOSITY="ERROR",
        )
        return env

    def playbook(
        self,
        playbook: str,
        extra_vars: Mapping[str, Any] | None = None,
        args: Sequence[str] = (),
        log: Path | None = None,
        timeout: float = 3600,
    ) -> PlaybookRun:
        """Run ``playbooks/<playbook>`` against the fleet with ``ansible-playbook``."""
        cmd = [str(BIN / "ansible-playbook"), "-i", str(self.inventory_path)]
        if extra_vars:
            cmd += ["-e", json.dumps(dict(extra_vars))]
        cmd += [*args, playbook]
        junit = Path(tempfile.mkdtemp(prefix="junit-", dir=self.workdir))
        env = self.ansible_env()
        env.update(
            ANSIBLE_CALLBACKS_ENABLED="ansible.builtin.junit",
            JUNIT_OUTPUT_DIR=str(junit),
            JUNIT_HIDE_TASK_ARGUMENTS="True",
            JUNIT_INCLUDE_SETUP_TASKS_IN_REPORT="False",
        )
        started = time.monotonic()
        proc = subprocess.run(
            cmd,
            cwd=repo_root() / "playbooks",
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
        seconds = time.monotonic() - started
        if log is not None:
            log.write_text(proc.stdout)
        tasks = _junit_tasks(junit)
        shutil.rmtree(junit, ignore_errors=True)
        return PlaybookRun(playbook, proc.returncode, proc.stdout, parse_recap(proc.stdout), seconds, tasks)


_JUNIT_NAME = re.compile(r"^\[(?P<host>[^\]]+)\]\s*(?P<task>.*)$")


def _junit_tasks(directory: Path) -> list[tuple[str, str, float]]:
    """(host, task, seconds) from the junit callback's reports in ``directory``."""
    found = []
    for report in sorted(directory.glob("*.xml")):
        with contextlib.suppress(ElementTree.ParseError):
            # Written a moment ago by our own ansible-playbook run, into our own directory.
            for case in ElementTree.parse(report).iter("testcase"):  # noqa: S314
                m = _JUNIT_NAME.match(case.get("name", ""))
                if m is not None:
                    found.append((m.group("host"), m.group("task").strip(), float(case.get("time") or 0)))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chital.devcluster.ssh_fleet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--guests", type=int, default=2, help="number of hosts (default 2)")
    parser.add_argument("--kernel", help="kernel release or '6.12' (default: the installed Debian one)")
    parser.add_argument("--memory", type=int, default=1536, help="MiB per guest (default 1536)")
    parser.add_argument(
        "--workdir", type=Path, help="PKI, SSH keys, inventory, controller state (default: a temp dir)"
    )
    parser.add_argument("--ready-file", type=Path, help="write the controller address here once ready")
    parser.add_argument(
        "--busybox-root",
        action="store_true",
        help=f"make a container root {BUSYBOX_ROOT} on each guest",
    )
    args = parser.parse_args(argv)
    signals = StopSignals()
    kernel = find_kernel(args.kernel) if args.kernel else default_kernel()
    started = time.monotonic()
    fleet = SshFleet(guests=args.guests, kernel=kernel, memory=args.memory, workdir=args.workdir)
    try:
        fleet.start()
    except Exception as exc:  # noqa: BLE001 - one line for the operator; details are in the logs
        print(f"ssh-fleet: {exc}", file=sys.stderr)
        return 1
    try:
        if args.busybox_root:
            try:
                fleet.make_busybox_roots()
            except GuestError as exc:
                print(f"ssh-fleet: {exc}", file=sys.stderr)
                return 1
        print(f"ready in {time.monotonic() - started:.0f} s; controller {fleet.target}")
        for vm in fleet.hosts:
            print(
                f"{vm.name:<8} ssh port {vm.ssh_port} (sshd after {vm.ssh_seconds:.0f} s), "
                f"console {vm.console_path}"
            )
        print(f"inventory   {fleet.inventory_path}")
        print(f"  cd playbooks && ../.venv/bin/ansible-playbook -i {fleet.inventory_path} site.yml")
        print(describe_access(fleet.client_config, fleet.config_path, fleet.pki), flush=True)

        def stopped() -> str | None:
            for vm in fleet.hosts:
                if not vm.alive():
                    return f"ssh-fleet: {vm.name} stopped"
            return None

        return signals.serve(fleet.target, args.ready_file, stopped)
    finally:
        fleet.stop()


if __name__ == "__main__":
    sys.exit(main())
