#!/usr/bin/env python3
"""Build a wheel and an sdist of each distribution into dist/ (``make dist``).

The PEP 517 hooks of setuptools (the build backend every pyproject.toml names) are called directly,
in a child process per distribution with its directory as the working directory: no extra tool
(``build``) and no network, the venv's setuptools is the backend. Each artefact is checked: the
controller's wheel and sdist must carry the Alembic migrations.

``--wheelhouse DIR`` also fills DIR with the chital wheels plus every third-party dependency as a
wheel (``pip download``, from the package index pip is configured with), so that a host without an
index installs with ``pip install --no-index --find-links DIR chital-agent``.

    .venv/bin/python scripts/dist.py                          # dist/*.whl, dist/*.tar.gz
    .venv/bin/python scripts/dist.py --out DIR --wheelhouse WH
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DISTRIBUTIONS = ("proto/python", "agent", "controller", "client", "devcluster")
MIGRATION = "chital/controller/migrations/versions/0001_initial.py"

_HOOKS = """
import pathlib, sys
from setuptools import build_meta
out, names = sys.argv[1], pathlib.Path(sys.argv[2])
names.write_text(build_meta.build_sdist(out) + " " + build_meta.build_wheel(out))
"""


def build(dist: str, out: Path) -> list[Path]:
    """The sdist and the wheel of one distribution, built into ``out``."""
    src = REPO / dist
    with tempfile.TemporaryDirectory() as tmp:
        # setuptools writes build/ and *.egg-info beside the sources; build a copy so the checkout
        # (and its editable install) is untouched.
        work = Path(tmp) / "src"
        shutil.copytree(
            src, work, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache")
        )
        names_file = Path(tmp) / "names"
        result = subprocess.run(
            [sys.executable, "-c", _HOOKS, str(out), str(names_file)],
            cwd=work,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
            raise SystemExit(f"dist: building {dist} failed")
        return [out / name for name in names_file.read_text().split()]


def check(artefacts: list[Path]) -> None:
    """The controller's migrations are inside its wheel and its sdist."""
    for path in artefacts:
        if not path.name.startswith("chital_controller"):
            continue
        if path.suffix == ".whl":
            names = zipfile.ZipFile(path).namelist()
        else:
            with tarfile.open(path) as tar:
                names = tar.getnames()
        if not any(n.endswith(MIGRATION) for n in names) or not any(
            n.endswith("migrations/script.py.mako") for n in names
        ):
            raise SystemExit(f"dist: {path.name} lacks the Alembic migrations")


def third_party_requirements() -> list[str]:
    """Every dependency the distributions declare, but the chital ones."""
    reqs: list[str] = []
    for dist in DISTRIBUTIONS:
        project = tomllib.loads((REPO / dist / "pyproject.toml").read_text())["project"]
        for req in project.get("dependencies", []):
            if not req.startswith("chital") and req not in reqs:
                reqs.append(req)
    return reqs


def wheelhouse(artefacts: list[Path], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for stale in dest.glob("chital*"):
        stale.unlink()
    for path in artefacts:
        if path.suffix == ".whl":
            shutil.copy2(path, dest / path.name)
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:"),
            *("--dest", str(dest), *third_party_requirements()),
        ],
        check=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="where the artefacts go (dist/)")
    parser.add_argument("--wheelhouse", type=Path, help="also a wheelhouse with every dependency here")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    version = (REPO / "VERSION").read_text().strip()
    for stale in out.glob("chital*"):
        stale.unlink()  # an older version's artefacts would be installed beside the new ones
    artefacts: list[Path] = []
    for dist in DISTRIBUTIONS:
        artefacts += build(dist, out)
    check(artefacts)
    for path in artefacts:
        if f"-{version}" not in path.name:
            raise SystemExit(f"dist: {path.name} is not version {version}: run 'make version'")
        print(f"dist: {path.relative_to(out.parent) if out.parent in path.parents else path}")
    if args.wheelhouse:
        wheelhouse(artefacts, args.wheelhouse.resolve())
        print(f"dist: wheelhouse {args.wheelhouse}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
