"""The Ansible playbooks (playbooks/): syntax, ansible-lint, and a real local run of the parts that
can run here without touching this machine's /etc, /opt or systemd.

The local run applies the chital_agent and chital_controller roles' TLS and configuration tasks
(``tasks_from``) with ``connection: local`` and the test-only ``chital_*_root_prefix`` variables, so
every file lands under a temporary directory: the bundles from a real PKI (``chital-controller
pki``), the settings files (``agent.toml``, ``controller.toml``) and the systemd units. It checks
their contents and modes, that the database password never reaches Ansible's output
(``no_log``), and that a second run changes nothing. The settings files are read back with the
daemons' own readers (``chital.agent.config``, ``chital.controller.config``), which refuse unknown
keys and wrong types. The shared variables of ``playbooks/group_vars/all.yml`` are evaluated
against the checkout. DKMS, systemd and SSH to real hosts are left to the guest tests (issue 10).
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from chital.agent.config import SETTINGS as AGENT_SETTINGS
from chital.agent.device import abi
from chital.controller.config import SETTINGS as CONTROLLER_SETTINGS
from chital.devcluster.hollow import HollowFleet

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = ROOT / "playbooks"
BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = BIN / "ansible-playbook"
ANSIBLE_LINT = BIN / "ansible-lint"
ROLES = ("chital_kmod", "chital_agent", "chital_controller")

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(not ANSIBLE_PLAYBOOK.exists(), reason="no ansible-core (requirements-dev.txt)"),
]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        PATH=f"{BIN}:{env.get('PATH', '')}",
        ANSIBLE_ROLES_PATH=str(PLAYBOOKS / "roles"),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
        ANSIBLE_HOME=str(tmp_path / "ansible-home"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
    )
    return env


@pytest.mark.parametrize("playbook", ["site.yml", "upgrade.yml", "uninstall.yml"])
def test_syntax_check(playbook: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "--syntax-check", "-i", "inventory/example.yml", playbook],
        cwd=PLAYBOOKS,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"playbook: {playbook}" in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(not ANSIBLE_LINT.exists(), reason="ansible-lint is not installed (requirements-dev.txt)")
def test_ansible_lint_production_profile(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(ANSIBLE_LINT), "--nocolor"],
        cwd=PLAYBOOKS,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Profile 'production' was required, and it passed" in out


def test_roles_are_documented() -> None:
    """Every variable a role defines is in its README's table, and each role has meta/main.yml."""
    for role in ROLES:
        base = PLAYBOOKS / "roles" / role
        assert (base / "meta" / "main.yml").is_file(), role
        readme = (base / "README.md").read_text()
        names = re.findall(r"^(chital_\w+):", (base / "defaults" / "main.yml").read_text(), re.MULTILINE)
        assert names, role
        missing = [n for n in names if f"`{n}`" not in readme]
        assert not missing, f"{role}/README.md does not document {missing}"
        for name in names:
            assert name.startswith(role + "_"), f"{role}: {name} lacks the role's prefix"


def test_health_script_is_the_same_in_both_roles() -> None:
    agent = PLAYBOOKS / "roles/chital_agent/files/chital_grpc_health.py"
    controller = PLAYBOOKS / "roles/chital_controller/files/chital_grpc_health.py"
    assert agent.read_bytes() == controller.read_bytes()


def test_abi_probe_matches_the_agents_mirror() -> None:
    """The role's standard-library probe asks for CHITAL_IOC_VERSION exactly as the agent does."""
    script = PLAYBOOKS / "roles/chital_kmod/files/chital_abi.py"
    spec = importlib.util.spec_from_file_location("chital_abi_probe", script)
    assert spec is not None and spec.loader is not None
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    assert probe.LAYOUT.size == ctypes.sizeof(abi.Version)
    assert probe._ior(probe.IOC_MAGIC, 0x00, probe.LAYOUT.size) == abi.IOC_VERSION
    # The fields the role reads, at the offsets of the mirror.
    fields = {f[0]: getattr(abi.Version, f[0]).offset for f in abi.Version._fields_}
    assert fields["abi_major"] == 0 and fields["abi_minor"] == 4
    assert fields["module_version"] == 40 and fields["kernel_release"] == 72


def test_abi_probe_reports_a_missing_device(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(PLAYBOOKS / "roles/chital_kmod/files/chital_abi.py"), str(tmp_path / "chital")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    answer = json.loads(result.stdout)
    assert "cannot open" in answer["error"] and answer["device"] == str(tmp_path / "chital")


def test_dkms_conf_version_is_the_module_version() -> None:
    dkms = (ROOT / "kmod/dkms.conf").read_text()
    header = (ROOT / "kmod/chital_internal.h").read_text()
    m = re.search(r'#define CHITAL_VERSION\s+"([^"]+)"', header)
    assert m is not None
    assert f'PACKAGE_VERSION="{m.group(1)}"' in dkms
    assert 'PACKAGE_NAME="chital"' in dkms


def _pki(tmp_path: Path) -> Path:
    pki = tmp_path / "pki"
    ctl = [str(BIN / "chital-controller"), "pki"]
    for args in (["init"], ["issue-controller", "--san", "127.0.0.1"], ["issue-agent", "127.0.0.1"]):
        subprocess.run([*ctl, *args, "--dir", str(pki)], check=True, capture_output=True, text=True)
    return pki


LOCAL_PLAY = """
- name: The chital roles' configuration tasks, under a throwaway root
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    chital_agent_root_prefix: "{root}"
    chital_agent_manage_service: false
    chital_agent_address: 127.0.0.1
    chital_agent_pki_bundle: "{pki}/agents/127.0.0.1"
    chital_agent_allowed_roots: [/srv/chital/roots]
    chital_agent_metrics_listen: 127.0.0.1:9472
    chital_agent_log_max_bytes: 1048576
    chital_agent_settings: {{cgroup_root: /sys/fs/cgroup}}
    chital_controller_root_prefix: "{root}"
    chital_controller_manage_service: false
    chital_controller_user: root
    chital_controller_group: root
    chital_controller_pki_bundle: "{pki}/controller"
    chital_controller_database_url: postgresql+psycopg://chital:{secret}@db.invalid/chital
    chital_controller_mtls_listen: 0.0.0.0:7445
  tasks:
    - name: The shared variables, evaluated against the checkout
      ansible.builtin.assert:
        that:
          - chital_version == "{version}"
          - chital_module_version == "{module_version}"
          - chital_abi_major | int == {abi_major}
          - chital_abi_minor | int == {abi_minor}
    - name: Agent TLS
      ansible.builtin.include_role: {{name: chital_agent, tasks_from: tls.yml}}
    - name: Agent configuration
      ansible.builtin.include_role: {{name: chital_agent, tasks_from: config.yml}}
    - name: Controller TLS
      ansible.builtin.include_role: {{name: chital_controller, tasks_from: tls.yml}}
    - name: Controller configuration
      ansible.builtin.include_role: {{name: chital_controller, tasks_from: config.yml}}
"""


def _recap(out: str) -> dict[str, int]:
    m = re.search(r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out)
    assert m is not None, out
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m.groups()), strict=True))


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the roles make root-owned files")
def test_agent_and_controller_configuration_under_a_root_prefix(tmp_path: Path) -> None:
    pki = _pki(tmp_path)
    root = tmp_path / "root"
    secret = "s3cret-db-password"
    header = (ROOT / "kmod/include/uapi/linux/chital.h").read_text()
    internal = (ROOT / "kmod/chital_internal.h").read_text()
    play = tmp_path / "local.yml"
    play.write_text(
        LOCAL_PLAY.format(
            root=root,
            pki=pki,
            secret=secret,
            version=(ROOT / "VERSION").read_text().strip(),
            module_version=re.search(r'CHITAL_VERSION\s+"([^"]+)"', internal).group(1),  # type: ignore[union-attr]
            abi_major=re.search(r"CHITAL_ABI_MAJOR\s+(\d+)", header).group(1),  # type: ignore[union-attr]
            abi_minor=re.search(r"CHITAL_ABI_MINOR\s+(\d+)", header).group(1),  # type: ignore[union-attr]
        )
    )
    cmd = [
        str(ANSIBLE_PLAYBOOK),
        "-i",
        "localhost,",
        "-e",
        f"@{PLAYBOOKS / 'group_vars/all.yml'}",
        "-e",
        f"chital_source_dir={ROOT}",
        str(play),
    ]

    def run() -> str:
        result = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, check=False)
        out = result.stdout + result.stderr
        assert result.returncode == 0, out
        assert secret not in out, "the database URL reached Ansible's output"
        return out

    first = _recap(run())
    assert first["failed"] == 0 and first["changed"] > 0

    # The agent's bundle: root only, the key 0600, the files those of the PKI.
    tls = root / "etc/chital/agent-tls"
    assert stat.S_IMODE(tls.stat().st_mode) == 0o700
    assert stat.S_IMODE((tls / "tls.key").stat().st_mode) == 0o600
    assert (tls / "tls.crt").read_bytes() == (pki / "agents/127.0.0.1/tls.crt").read_bytes()
    assert stat.S_IMODE((root / "var/lib/chital/agent").stat().st_mode) == 0o700

    # The agent's settings, as the agent itself reads them (unknown keys and wrong types fail).
    agent = AGENT_SETTINGS.read_file(root / "etc/chital/agent.toml")
    assert agent["tls_dir"] == "/etc/chital/agent-tls"
    assert agent["listen"] == "0.0.0.0:7444"
    assert agent["launcher"] == "/usr/libexec/chital/chital-launch"
    assert agent["allowed_roots"] == ["/srv/chital/roots"]
    assert agent["metrics_listen"] == "127.0.0.1:9472"
    assert agent["device"] == "linux" and agent["cgroups"] == "required"
    assert agent["cgroup_root"] == "/sys/fs/cgroup"  # from chital_agent_settings
    assert agent["log_max_bytes"] == 1048576 and agent["log_max_files"] == 5  # the log caps

    unit = (root / "etc/systemd/system/chital-agent.service").read_text()
    lines = unit.splitlines()
    # deploy/systemd/chital-agent.service, with the role's paths.
    assert "ExecStart=/opt/chital/venv/bin/chital-agent serve --config /etc/chital/agent.toml" in lines
    shipped = (ROOT / "deploy/systemd/chital-agent.service").read_text().splitlines()
    assert [line for line in lines if not line.startswith("ExecStart=")] == [
        line for line in shipped if not line.startswith("ExecStart=")
    ]
    for line in ("Delegate=yes", "Restart=on-failure", "RestartPreventExitStatus=2 3 4"):
        assert line in lines
    # No mount namespace for the agent: containers would inherit it.
    active = [line for line in lines if not line.startswith("#")]
    mount_namespace = ("ProtectSystem=", "PrivateDevices=", "PrivateTmp=")
    assert not [line for line in active if line.startswith(mount_namespace)]

    # The controller: the database URL only in its settings file (root and its group), not in the unit.
    toml = root / "etc/chital/controller.toml"
    assert stat.S_IMODE(toml.stat().st_mode) == 0o640
    controller = CONTROLLER_SETTINGS.read_file(toml)
    assert controller["database_url"] == f"postgresql+psycopg://chital:{secret}@db.invalid/chital"
    assert controller["mtls_listen"] == "0.0.0.0:7445"
    assert controller["tls_dir"] == "/etc/chital/controller-tls"
    assert controller["allowed_roots"] == ["/srv/chital/roots"]  # the role's default, written out
    assert "metrics_listen" not in controller
    cunit = (root / "etc/systemd/system/chital-controller.service").read_text()
    clines = cunit.splitlines()
    assert secret not in cunit
    exec_start = "ExecStart=/opt/chital/venv/bin/chital-controller serve --config /etc/chital/controller.toml"
    assert exec_start in clines
    assert "User=root" in clines and "ProtectSystem=strict" in clines and "NoNewPrivileges=yes" in clines
    assert stat.S_IMODE((root / "etc/chital/controller-tls/tls.key").stat().st_mode) == 0o600

    # Idempotent: a second run changes nothing.
    second = _recap(run())
    assert second["changed"] == 0 and second["failed"] == 0


API_PLAY = """
- name: The playbooks' controller calls against a hollow fleet
  hosts: chital_agents
  connection: local
  gather_facts: false
  tasks:
    - name: Register (site.yml)
      ansible.builtin.include_tasks: {playbooks}/tasks/register.yml
      when: step == 'register'
    - name: The running-containers check (uninstall.yml)
      ansible.builtin.include_tasks: {playbooks}/tasks/refuse_running.yml
      when: step == 'uninstall'
    - name: Cordon and drain (upgrade.yml)
      ansible.builtin.include_tasks: {playbooks}/tasks/cordon_drain.yml
      when: step == 'upgrade'
    - name: Versions and uncordon (upgrade.yml)
      ansible.builtin.include_tasks: {playbooks}/tasks/verify_uncordon.yml
      when: step == 'upgrade'
"""


@pytest.mark.slow
def test_register_cordon_drain_uncordon_against_a_hollow_fleet(tmp_path: Path) -> None:
    """site.yml's registration, uninstall.yml's running-containers check and upgrade.yml's cordon,
    drain, version check and uncordon, through the real ``chital`` CLI against a hollow fleet (a
    controller and an agent on 127.0.0.1)."""
    with HollowFleet(agents=1, register=False) as fleet:
        assert fleet.pki is not None and fleet.token is not None
        agent_address = fleet.agent_procs[0].address
        host, port = agent_address.rsplit(":", 1)
        token_file = tmp_path / "token"
        token_file.write_text(fleet.token + "\n")
        token_file.chmod(0o600)
        cli = [str(BIN / "chital"), "--controller", fleet.target, "--ca", str(fleet.pki.ca)]
        cli += ["--token-file", str(token_file), "--timeout", "30", "--output", "json"]
        inventory = tmp_path / "inventory.yml"
        inventory.write_text(
            json.dumps(
                {
                    "chital_controllers": {"hosts": {"ctl": {"ansible_connection": "local"}}},
                    "chital_agents": {
                        "hosts": {"node": {"chital_agent_address": host, "chital_agent_port": int(port)}}
                    },
                }
            )
        )
        play = tmp_path / "api.yml"
        play.write_text(API_PLAY.format(playbooks=PLAYBOOKS))

        def run(step: str, **extra: object) -> tuple[dict[str, int], str]:
            extra_vars = {"step": step, "chital_cli": cli, "chital_ready_timeout": 60, **extra}
            cmd = [str(ANSIBLE_PLAYBOOK), "-i", str(inventory), "-e", f"@{PLAYBOOKS / 'group_vars/all.yml'}"]
            cmd += ["-e", f"chital_source_dir={ROOT}", "-e", json.dumps(extra_vars), str(play)]
            result = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, check=False)
            out = result.stdout + result.stderr
            m = re.search(r"node\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out)
            assert m is not None, out
            recap = dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m.groups()), strict=True))
            return recap, out

        # Registration: the host is added and READY; a second run changes nothing.
        recap, out = run("register")
        assert recap["failed"] == 0 and recap["changed"] == 1, out
        with fleet.client() as client:
            (registered,) = client.list_hosts()
            assert registered.address == agent_address and registered.state.value == "READY"
            agent_info = registered.agent
        assert agent_info is not None
        recap, out = run("register")
        assert recap["failed"] == 0 and recap["changed"] == 0, out

        # A container on the host, which the drain must stop.
        config = ["--config", str(fleet.config_path), "--output", "json"]
        started = subprocess.run(
            [str(BIN / "chital"), *config, "run", "-d", "--name", "drained", "--", "sleep", "600"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert started.returncode == 0, started.stderr

        # uninstall.yml refuses while it runs, naming it, unless forced.
        recap, out = run("uninstall", chital_force_uninstall=False)
        assert recap["failed"] == 1, out
        assert "Containers still run on " + agent_address in out and "drained" in out, out
        recap, out = run("uninstall", chital_force_uninstall=True)
        assert recap["failed"] == 0, out
        upgrade_vars = {
            "chital_upgrade_drain": True,
            "chital_upgrade_drain_grace": 1,
            "chital_upgrade_drain_deadline": 60,
            "chital_upgrade_ready_timeout": 30,
            "chital_upgrade_device": agent_info.device,
            "chital_version": agent_info.agent_version,
            "chital_module_version": agent_info.module_version,
            "chital_abi_major": int(agent_info.abi_version.split(".")[0] or 0),
        }

        # A version the host does not run: the check fails and the host stays cordoned, drained.
        wrong = {**upgrade_vars, "chital_version": "0.0.0-not-this", "chital_upgrade_ready_timeout": 6}
        recap, out = run("upgrade", **wrong)
        assert recap["failed"] == 1, out
        with fleet.client() as client:
            (cordoned,) = client.list_hosts()
            assert cordoned.state.value in ("CORDONED", "DRAINING"), out
            running = [c for c in client.list_containers() if c.state.value in ("RUNNING", "CREATED")]
            assert running == []

        # Drained: uninstall.yml no longer refuses.
        recap, out = run("uninstall", chital_force_uninstall=False)
        assert recap["failed"] == 0, out

        # The versions it runs: checked, then uncordoned and READY. The host was cordoned by the
        # failed run, so this run keeps it cordoned, as for a host an operator had cordoned.
        recap, out = run("upgrade", **upgrade_vars)
        assert recap["failed"] == 0, out
        with fleet.client() as client:
            (kept,) = client.list_hosts()
            assert kept.state.value in ("CORDONED", "DRAINING")
            client.uncordon_host(agent_address)
        recap, out = run("upgrade", **upgrade_vars)
        assert recap["failed"] == 0, out
        with fleet.client() as client:
            (ready,) = client.list_hosts()
            assert ready.state.value == "READY"
