"""The next release of this checkout, for upgrade rehearsals: version N+1 built beside it.

:func:`next_release` copies the sources that make a release (the Python distributions, the kernel
module, the deploy files) into a directory, bumps the last number of ``VERSION`` (``0.4.0`` ->
``0.4.1``), lets ``scripts/version.py`` carry it into the module's ``CHITAL_VERSION`` and the
distributions, and builds its wheels with ``scripts/dist.py``. Its ``dist/wheelhouse`` holds the
checkout's third-party wheels (from ``make wheelhouse``: no package index is needed) and the new
chital wheels. The directory is what ``upgrade.yml`` takes as ``chital_source_dir``: the playbooks
install the new agent from its wheelhouse and build the new module from its ``kmod/`` with DKMS.

For fleets of identical kernels the ``chital_kmod`` role can install a module built ahead instead
of building it with DKMS on every host (``chital_kmod_prebuilt_dir``): :func:`prebuild` builds a
source's ``kmod/`` for a kernel into ``DIR/<kernel release>/chital.ko``, the layout it reads.

    python -m chital.devcluster.release --out DIR        # prints DIR/chital and the new version
    python -m chital.devcluster.release --prebuilt DIR   # the checkout's chital.ko for the guests' kernel
    python -m chital.devcluster.release --out DIR --prebuilt DIR2   # the new release's
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .kernel import Kernel, KernelNotFoundError, default_kernel, repo_root
from .vm import GuestError, build_module

__all__ = ["ReleaseError", "bump", "module_version", "next_release", "prebuild", "snapshot"]

#: What a release is built from (copied), besides VERSION and two scripts.
_TREES = ("proto/python", "agent", "controller", "client", "devcluster", "kmod", "deploy")
_SCRIPTS = ("dist.py", "version.py")


class ReleaseError(RuntimeError):
    """The release could not be built."""


def bump(version: str) -> str:
    """``version`` with its last number one higher (a suffix such as ``.dev1`` is dropped)."""
    m = re.match(r"^(\d+(?:\.\d+)*)", version)
    if m is None:
        raise ReleaseError(f"VERSION {version!r} does not start with a number")
    parts = m.group(1).split(".")
    parts[-1] = str(int(parts[-1]) + 1)
    return ".".join(parts)


def module_version(source: Path) -> str:
    """The module's ``CHITAL_VERSION`` in ``source``'s ``kmod/chital_internal.h``."""
    m = re.search(r'#define CHITAL_VERSION\s+"([^"]+)"', (source / "kmod/chital_internal.h").read_text())
    if m is None:
        raise ReleaseError(f"no CHITAL_VERSION in {source}/kmod/chital_internal.h")
    return m.group(1)


def _run(argv: list[str], cwd: Path) -> None:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ReleaseError(f"{' '.join(argv)} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")


def _junk() -> Any:
    return shutil.ignore_patterns(
        "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
        # the module's build output in a checkout that built it
        "*.o", "*.ko", "*.mod", "*.mod.c", ".*.cmd", "modules.order", "Module.symvers",
    )  # fmt: skip


def snapshot(dest: Path, root: Path | None = None) -> Path:
    """Copy what the playbooks install from the checkout ``root`` (``VERSION``, ``kmod/``,
    ``deploy/``, the launcher, ``dist/wheelhouse``) to ``dest/chital``; returns that path.

    As ``chital_source_dir``, it is release N frozen: a ``make wheelhouse`` or an edit in the
    checkout while the playbooks run (a second, idempotent run included) changes nothing they see.
    Needs ``make wheelhouse launcher`` first."""
    root = root or repo_root()
    launcher = root / "agent" / "launcher" / "chital-launch"
    wheels = sorted((root / "dist" / "wheelhouse").glob("*.whl"))
    if not wheels or not launcher.exists():
        raise ReleaseError(f"no wheelhouse or launcher in {root}: run make wheelhouse launcher")
    src = dest / "chital"
    if src.exists():
        shutil.rmtree(src)
    for d in ("kmod", "deploy"):
        shutil.copytree(root / d, src / d, ignore=_junk(), symlinks=True)
    shutil.copy2(root / "VERSION", src / "VERSION")
    (src / "agent" / "launcher").mkdir(parents=True)
    shutil.copy2(launcher, src / "agent" / "launcher" / launcher.name)
    (src / "dist" / "wheelhouse").mkdir(parents=True)
    for wheel in wheels:
        shutil.copy2(wheel, src / "dist" / "wheelhouse" / wheel.name)
    return src


def next_release(dest: Path, root: Path | None = None) -> tuple[Path, str]:
    """Build version N+1 of the checkout ``root`` in ``dest/chital``; returns (its path, N+1).

    Needs the checkout's wheelhouse (``make wheelhouse``) for the third-party wheels."""
    root = root or repo_root()
    wheels = sorted((root / "dist" / "wheelhouse").glob("*.whl"))
    if not wheels:
        raise ReleaseError(f"no wheelhouse in {root}/dist/wheelhouse: run make wheelhouse")
    src = dest / "chital"
    if src.exists():
        shutil.rmtree(src)
    for d in _TREES:
        shutil.copytree(root / d, src / d, ignore=_junk(), symlinks=True)
    (src / "scripts").mkdir()
    for f in _SCRIPTS:
        shutil.copy2(root / "scripts" / f, src / "scripts" / f)
    new = bump((root / "VERSION").read_text().strip())
    (src / "VERSION").write_text(new + "\n")
    _run([sys.executable, "scripts/version.py"], src)
    _run([sys.executable, "scripts/dist.py", "--out", str(src / "dist")], src)
    wheelhouse = src / "dist" / "wheelhouse"
    wheelhouse.mkdir()
    for wheel in wheels:
        if not wheel.name.startswith("chital"):
            shutil.copy2(wheel, wheelhouse / wheel.name)
    for wheel in (src / "dist").glob("chital*.whl"):
        shutil.copy2(wheel, wheelhouse / wheel.name)
    if module_version(src) != new:
        raise ReleaseError(f"scripts/version.py left the module at {module_version(src)}, not {new}")
    return src, new


def prebuild(source: Path, out: Path, kernel: Kernel | None = None) -> Path:
    """Build ``source``'s ``kmod/`` for ``kernel`` (default: the guests' kernel) into
    ``out/<kernel release>/chital.ko`` (the layout of ``chital_kmod_prebuilt_dir``); its path."""
    kernel = kernel or default_kernel()
    return build_module(kernel, src=source / "kmod", out_dir=out / kernel.release)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chital.devcluster.release",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, help="build the next release into OUT/chital")
    parser.add_argument(
        "--prebuilt",
        type=Path,
        help="build chital.ko (of the next release with --out, else of the checkout) for the guests' "
        "kernel into PREBUILT/<kernel release>/",
    )
    args = parser.parse_args(argv)
    if args.out is None and args.prebuilt is None:
        parser.error("give --out, --prebuilt or both")
    started = time.monotonic()
    try:
        source = repo_root()
        if args.out is not None:
            source, version = next_release(args.out.resolve())
            print(f"release {version} in {source} ({time.monotonic() - started:.0f} s)", flush=True)
        if args.prebuilt is not None:
            started = time.monotonic()
            ko = prebuild(source, args.prebuilt.resolve())
            print(f"module {module_version(source)} built ahead: {ko} ({time.monotonic() - started:.0f} s)")
    except (ReleaseError, GuestError, KernelNotFoundError) as exc:
        print(f"release: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
