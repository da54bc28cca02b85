"""The guest itself: the runner's promises (fresh tmpfs, module loaded, helpers built) hold."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import Sandbox


def test_guest_environment() -> None:
    assert os.environ["CHITAL_DEVICE"] == "linux"
    mounts = Path("/proc/mounts").read_text().splitlines()
    assert any(line.split()[1:3] == ["/tmp", "tmpfs"] for line in mounts), "guest /tmp is not a fresh tmpfs"
    assert any(line.split()[1:3] == ["/", "9p"] for line in mounts), "host root is not the guest's /"


def test_module_is_loaded() -> None:
    assert "chital " in Path("/proc/modules").read_text()
    assert Path("/dev/chital").is_char_device()
    assert oct(Path("/dev/chital").stat().st_mode & 0o777) == "0o600"


def test_busybox_works_for_a_member(sandbox: Sandbox) -> None:
    proc = sandbox.run_member(["/bin/sh", "-c", "ls / && cat /etc/hello && echo done"])
    assert "hello from inside" in proc.stdout
    assert "bin" in proc.stdout.split()
    assert proc.stdout.rstrip().endswith("done")
