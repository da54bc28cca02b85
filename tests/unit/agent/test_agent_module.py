"""Module lifecycle: load when the device is missing, ABI check, exit status 2 on a major mismatch.

Nothing is loaded here: the commands go to a recording stand-in for ``subprocess.run``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from chital.agent import __main__ as agent_main
from chital.agent import module, server
from chital.agent.device import abi
from chital.agent.device.base import DeviceVersion
from chital.errdefs import Unavailable


class Commands:
    """Records commands; ``creates`` is made when the load command runs, as udev/devtmpfs would."""

    def __init__(self, creates: Path | None = None, rc: dict[str, int] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.creates = creates
        self.rc = rc or {}

    def __call__(self, cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
        cmd = list(cmd)
        self.calls.append(cmd)
        key = " ".join([Path(cmd[0]).name, *cmd[1:]])
        rc = next((v for k, v in self.rc.items() if key.startswith(k)), 0)
        if rc == 0 and "--dry-run" not in cmd and self.creates is not None:
            self.creates.touch()
        return subprocess.CompletedProcess(cmd, rc, "", "boom" if rc else "")


def names(calls: list[list[str]]) -> list[str]:
    return [" ".join([Path(c[0]).name, *c[1:]]) for c in calls]


def test_present_device_loads_nothing(tmp_path: Path) -> None:
    dev = tmp_path / "chital"
    dev.touch()
    run = Commands()
    assert module.ensure_loaded(str(dev), required=True, run=run)
    assert run.calls == []


def test_linux_modprobes_a_missing_device(tmp_path: Path) -> None:
    dev = tmp_path / "chital"
    run = Commands(creates=dev)
    assert module.ensure_loaded(str(dev), required=True, run=run)
    assert names(run.calls) == ["modprobe chital"]


def test_module_path_is_insmodded(tmp_path: Path) -> None:
    dev, ko = tmp_path / "chital", tmp_path / "chital.ko"
    ko.write_bytes(b"\x7fELF")
    run = Commands(creates=dev)
    assert module.ensure_loaded(str(dev), module_path=str(ko), required=False, run=run)
    assert names(run.calls) == [f"insmod {ko}"]
    with pytest.raises(Unavailable, match="no such file"):
        module.ensure_loaded(str(tmp_path / "other"), module_path=str(tmp_path / "nope.ko"), required=True)


def test_auto_loads_only_an_installed_module(tmp_path: Path) -> None:
    dev = tmp_path / "chital"
    run = Commands(creates=dev, rc={"modprobe --dry-run": 1})
    assert not module.ensure_loaded(str(dev), required=False, run=run)
    assert names(run.calls) == ["modprobe --dry-run --quiet chital"]
    run = Commands(creates=dev)
    assert module.ensure_loaded(str(dev), required=False, run=run)
    assert names(run.calls) == ["modprobe --dry-run --quiet chital", "modprobe chital"]


def test_failed_load(tmp_path: Path) -> None:
    dev = tmp_path / "chital"
    with pytest.raises(Unavailable, match="cannot load the module"):
        module.ensure_loaded(str(dev), required=True, run=Commands(rc={"modprobe": 1}))
    assert not module.ensure_loaded(str(dev), required=False, run=Commands(rc={"modprobe chital": 1}))
    with pytest.raises(Unavailable, match="did not appear"):
        module.ensure_loaded(str(dev), required=True, run=Commands(creates=None), wait_s=0.1)


def test_abi_check() -> None:
    module.check_abi(DeviceVersion(abi.ABI_MAJOR, abi.ABI_MINOR, "1.0", "6.1"))
    module.check_abi(DeviceVersion(abi.ABI_MAJOR, abi.ABI_MINOR + 1, "1.1", "6.1"))
    with pytest.raises(module.IncompatibleModule, match=f"ABI {abi.ABI_MAJOR + 1}.0"):
        module.check_abi(DeviceVersion(abi.ABI_MAJOR + 1, 0, "2.0", "6.1"))


def test_serve_exits_3_on_an_incompatible_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def incompatible(kind: str, path: str, module_path: str | None = None) -> object:
        module.check_abi(DeviceVersion(abi.ABI_MAJOR + 1, 0, "9.9", "6.1"))
        raise AssertionError("unreachable")

    monkeypatch.setattr(server, "open_device", incompatible)
    rc = agent_main.main(["serve", "--insecure", "--device", "linux", "--state-dir", str(tmp_path)])
    assert rc == module.EXIT_INCOMPATIBLE_MODULE == 3


def test_serve_fails_when_the_module_cannot_load(tmp_path: Path) -> None:
    rc = agent_main.main(
        [
            "serve",
            "--insecure",
            "--device",
            "linux",
            "--device-path",
            str(tmp_path / "chital"),
            "--module-path",
            str(tmp_path / "missing.ko"),
            "--state-dir",
            str(tmp_path),
        ]
    )
    assert rc == 1
