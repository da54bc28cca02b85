"""deploy/systemd and deploy/config: the units say what docs/daemons.md promises, systemd accepts
them (``systemd-analyze verify``, where systemd is installed), their command lines parse, and the
example config files load without an error under the daemons' own schemas.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chital.agent import __main__ as agent_main
from chital.agent import config as agent_config
from chital.controller import __main__ as controller_main
from chital.controller import config as controller_config
from chital.daemon import exitcodes

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
DOCS = (ROOT / "docs" / "daemons.md").read_text()

pytestmark = pytest.mark.timeout(120)


def directives(unit: str) -> dict[str, list[str]]:
    """``Key -> [values]`` of a unit file (keys may repeat, e.g. SystemCallFilter)."""
    out: dict[str, list[str]] = {}
    for raw in (UNITS / unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def test_the_agent_unit() -> None:
    d = directives("chital-agent.service")
    assert d["Delegate"] == ["yes"]
    assert d["KillMode"] == ["process"]  # containers outlive an agent restart
    assert d["Restart"] == ["on-failure"]
    assert "User" not in d  # root: CAP_SYS_ADMIN, /dev/chital, cgroupfs, namespaces
    codes = {int(c) for c in d["RestartPreventExitStatus"][0].split()}
    assert codes == {exitcodes.EXIT_USAGE, exitcodes.EXIT_INCOMPATIBLE_MODULE, exitcodes.EXIT_CONFIG}
    # Nothing that containers, the agent's children, would inherit as a restriction.
    for inherited in ("NoNewPrivileges", "ProtectSystem", "PrivateDevices", "ProtectControlGroups",
                      "ProtectKernelModules", "RestrictNamespaces", "SystemCallFilter",
                      "CapabilityBoundingSet", "PrivateTmp", "OOMScoreAdjust"):  # fmt: skip
        assert inherited not in d, inherited
    argv = shlex.split(d["ExecStart"][0])
    assert argv[1:] == ["serve", "--config", str(agent_config.DEFAULT_CONFIG)]
    agent_main._parser().parse_args(argv[1:])


def test_the_controller_unit() -> None:
    d = directives("chital-controller.service")
    assert d["User"] == ["chital"]
    assert d["Restart"] == ["on-failure"]
    codes = {int(c) for c in d["RestartPreventExitStatus"][0].split()}
    assert codes == {exitcodes.EXIT_USAGE, exitcodes.EXIT_CONFIG}
    for key in ("NoNewPrivileges", "ProtectSystem", "PrivateDevices", "ProtectHome", "RestrictNamespaces"):
        assert d[key][0] in ("yes", "strict"), key
    assert d["CapabilityBoundingSet"] == [""]
    argv = shlex.split(d["ExecStart"][0])
    assert argv[1:] == ["serve", "--config", str(controller_config.DEFAULT_CONFIG)]
    controller_main._parser().parse_args(argv[1:])


def test_every_directive_is_explained_in_the_docs() -> None:
    for unit in ("chital-agent.service", "chital-controller.service"):
        for key in directives(unit):
            if key in ("Description", "Documentation", "WantedBy", "Type", "ExecStart", "Environment"):
                continue
            assert f"`{key}" in DOCS, f"{unit}: {key} is not explained in docs/daemons.md"


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    return path


def _installed_copies(tmp_path: Path) -> list[Path]:
    """The units with ExecStart pointing at this venv's commands (verify wants them executable)."""
    copies = []
    for unit in sorted(UNITS.glob("*.service")):
        text = unit.read_text().replace("/opt/chital/venv/bin", str(Path(sys.executable).parent))
        copy = tmp_path / unit.name
        copy.write_text(text)
        copies.append(copy)
    return copies


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = _systemd_analyze()
    copies = _installed_copies(tmp_path)
    result = subprocess.run(
        [tool, "verify", *map(str, copies)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    # verify only warns about unknown keys and bad values: any output is a defect.
    assert result.stderr.strip() == "" and result.stdout.strip() == "", result.stderr


def test_the_controller_unit_is_tightly_sandboxed(tmp_path: Path) -> None:
    tool = _systemd_analyze()
    (unit,) = [c for c in _installed_copies(tmp_path) if c.name == "chital-controller.service"]
    result = subprocess.run(
        [tool, "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


@pytest.mark.parametrize(
    ("settings", "name"),
    [(agent_config.SETTINGS, "agent.toml"), (controller_config.SETTINGS, "controller.toml")],
)
def test_the_example_configs_load(settings: object, name: str) -> None:
    data = settings.read_file(ROOT / "deploy" / "config" / name)  # type: ignore[attr-defined]
    assert data["log_format"] == "json"
    assert set(data) <= set(settings.by_key)  # type: ignore[attr-defined]


@pytest.mark.parametrize("settings", [agent_config.SETTINGS, controller_config.SETTINGS])
def test_every_setting_is_documented(settings: object) -> None:
    for key in settings.by_key:  # type: ignore[attr-defined]
        assert f"| `{key}` |" in DOCS, f"{key} is not in docs/daemons.md's table"
