#!/usr/bin/env python3
"""Write the one version (the top-level VERSION file) into every place that carries it.

VERSION is the single source. A pyproject.toml cannot read a file outside its own directory in a
way that also works from an sdist, so the version is written into each place instead, and
``make lint`` fails when one of them differs from VERSION:

- ``version = "..."`` of the five distributions' pyproject.toml, and their ``chital-api==...``
  dependency (the distributions are released together and installed at one version);
- the ``_version.py`` module of each distribution (``chital.version``, ``chital.agent``,
  ``chital.controller``, ``chital.client``, ``chital.devcluster``: ``__version__``);
- the kernel module: ``CHITAL_VERSION`` in kmod/chital_internal.h (``MODULE_VERSION`` and the
  version ioctl use it) and ``PACKAGE_VERSION`` in kmod/dkms.conf.

    .venv/bin/python scripts/version.py           # write VERSION everywhere (make version)
    .venv/bin/python scripts/version.py --check   # fail when a place is stale (make lint)
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DISTRIBUTIONS = ("proto/python", "agent", "controller", "client", "devcluster")
VERSION_MODULES = (
    "proto/python/src/chital/version.py",
    "agent/src/chital/agent/_version.py",
    "controller/src/chital/controller/_version.py",
    "client/src/chital/client/_version.py",
    "devcluster/src/chital/devcluster/_version.py",
)
# PEP 440 release versions with optional pre/post/dev parts; also a valid C string and DKMS version.
VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?$")

MODULE_TEMPLATE = '''"""This distribution's version: written by `make version` from VERSION; do not edit."""

__version__ = "{version}"
'''


def read_version(root: Path = REPO) -> str:
    text = (root / "VERSION").read_text().strip()
    if not VERSION_RE.match(text):
        raise SystemExit(f"VERSION: {text!r} is not a release version like 1.2.3 or 1.2.3rc1")
    return text


def _sub(pattern: str, replacement: str, count_expected: int) -> Callable[[str, str], str]:
    def apply(text: str, where: str) -> str:
        new, n = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        if n < count_expected:
            raise SystemExit(f"{where}: no line matches {pattern!r}")
        return new

    return apply


def expected_files(version: str, root: Path = REPO) -> dict[Path, str]:
    """Each file that carries the version, with its content as it should be."""
    out: dict[Path, str] = {}
    for dist in DISTRIBUTIONS:
        path = root / dist / "pyproject.toml"
        text = path.read_text()
        text = _sub(r'^version = "[^"]*"$', f'version = "{version}"', 1)(text, str(path))
        text = _sub(r'^(\s+)"chital-api(==[^"]*)?",', rf'\1"chital-api=={version}",', 0)(text, str(path))
        text = _sub(
            r'^dependencies = \["chital-api(==[^"]*)?"\]', f'dependencies = ["chital-api=={version}"]', 0
        )(text, str(path))
        out[path] = text
    for module in VERSION_MODULES:
        out[root / module] = MODULE_TEMPLATE.format(version=version)
    header = root / "kmod" / "chital_internal.h"
    out[header] = _sub(r'^#define CHITAL_VERSION\t+"[^"]*"$', f'#define CHITAL_VERSION\t\t"{version}"', 1)(
        header.read_text(), str(header)
    )
    dkms = root / "kmod" / "dkms.conf"
    out[dkms] = _sub(r'^PACKAGE_VERSION="[^"]*"$', f'PACKAGE_VERSION="{version}"', 1)(
        dkms.read_text(), str(dkms)
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail when a place differs from VERSION")
    parser.add_argument("--root", type=Path, default=REPO, help="the repository (default: this one)")
    args = parser.parse_args(argv)
    root: Path = args.root
    version = read_version(root)
    stale = []
    for path, text in expected_files(version, root).items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(str(path.relative_to(root)))
        else:
            path.write_text(text)
            print(f"version: wrote {version} into {path.relative_to(root)}")
    if stale:
        print(
            f"version: stale (VERSION is {version}): {', '.join(stale)}; run 'make version' and commit",
            file=sys.stderr,
        )
        return 1
    if args.check:
        print(f"version: {version} everywhere")
    return 0


if __name__ == "__main__":
    sys.exit(main())
