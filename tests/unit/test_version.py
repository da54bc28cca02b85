"""scripts/version.py (make version): VERSION written into every place that carries it, on a copy of
the repository's files; --check (make lint) fails on a stale place and names it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "version.py"
DISTS = ("proto/python", "agent", "controller", "client", "devcluster")
MODULES = (
    "proto/python/src/chital/version.py",
    "agent/src/chital/agent/_version.py",
    "controller/src/chital/controller/_version.py",
    "client/src/chital/client/_version.py",
    "devcluster/src/chital/devcluster/_version.py",
)


def copy(tmp_path: Path) -> Path:
    pyprojects = [f"{d}/pyproject.toml" for d in DISTS]
    for rel in ("VERSION", "kmod/chital_internal.h", "kmod/dkms.conf", *MODULES, *pyprojects):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    return tmp_path


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_repository_is_fresh() -> None:
    result = run(ROOT, "--check")
    assert result.returncode == 0, result.stderr


def test_a_new_version_reaches_every_place(tmp_path: Path) -> None:
    root = copy(tmp_path)
    (root / "VERSION").write_text("1.2.3rc1\n")
    stale = run(root, "--check")
    assert stale.returncode == 1
    assert "run 'make version'" in stale.stderr
    assert "kmod/chital_internal.h" in stale.stderr and "agent/pyproject.toml" in stale.stderr
    assert run(root).returncode == 0
    assert run(root, "--check").returncode == 0
    for dist in DISTS:
        text = (root / dist / "pyproject.toml").read_text()
        assert '\nversion = "1.2.3rc1"\n' in text
        if dist != "proto/python":
            assert '"chital-api==1.2.3rc1"' in text, dist
    for module in MODULES:
        assert '__version__ = "1.2.3rc1"' in (root / module).read_text()
    assert '#define CHITAL_VERSION\t\t"1.2.3rc1"' in (root / "kmod/chital_internal.h").read_text()
    assert 'PACKAGE_VERSION="1.2.3rc1"' in (root / "kmod/dkms.conf").read_text()


def test_a_malformed_version_is_refused(tmp_path: Path) -> None:
    root = copy(tmp_path)
    (root / "VERSION").write_text("1.2 beta\n")
    result = run(root)
    assert result.returncode != 0
    assert "is not a release version" in result.stderr
