"""Find the Debian kernels a guest can boot, and fetch a 6.12 one into a cache.

A :class:`Kernel` is the three things a VM test needs: the bootable image (``vmlinuz``), the directory
of its modules (for the virtio/9p drivers the initramfs carries) and a build tree to compile
``chital.ko`` against. Versions are discovered at run time, never hard-coded: the installed ones come
from ``/boot`` and ``/lib/modules``; a 6.12 one is unpacked with ``dpkg-deb -x`` into
``<repo>/.state/kernels/`` (no package is installed on the host).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Kernel",
    "KernelNotFoundError",
    "default_kernel",
    "ensure_kernel_612",
    "find_kernel",
    "installed_kernels",
    "repo_root",
]


class KernelNotFoundError(RuntimeError):
    """No usable kernel (image + modules + build tree) was found."""


@dataclass(frozen=True, slots=True)
class Kernel:
    """A bootable kernel with its modules and the tree ``chital.ko`` is built against."""

    release: str  # ``uname -r`` inside the guest, e.g. ``6.1.0-56-amd64``
    image: Path  # vmlinuz
    modules_dir: Path  # holds ``kernel/`` and ``modules.dep`` (``/lib/modules/<release>``)
    build_dir: Path  # ``make -C`` target for out-of-tree modules

    @property
    def major_minor(self) -> tuple[int, int]:
        m = re.match(r"(\d+)\.(\d+)", self.release)
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)

    def check(self) -> None:
        """Raise :class:`KernelNotFoundError` unless every part exists."""
        for what, path in (
            ("image", self.image),
            ("modules", self.modules_dir / "modules.dep"),
            ("build tree", self.build_dir / "Makefile"),
        ):
            if not path.exists():
                raise KernelNotFoundError(f"kernel {self.release}: {what} missing at {path}")


def repo_root() -> Path:
    """The chital checkout: ``$CHITAL_REPO``, else the nearest parent with ``kmod/`` and ``devcluster/``."""
    env = os.environ.get("CHITAL_REPO")
    if env:
        return Path(env).resolve()
    for start in (Path.cwd(), Path(__file__).resolve()):
        for p in (start, *start.parents):
            if (p / "devcluster").is_dir() and (p / "kmod").is_dir():
                return p
    raise RuntimeError("cannot find the chital repository; set CHITAL_REPO")


def _version_key(release: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", release))


def installed_kernels(root: Path = Path("/")) -> list[Kernel]:
    """Kernels installed on this machine (image, modules and build tree all present), newest first."""
    found = []
    for image in (root / "boot").glob("vmlinuz-*"):
        release = image.name.removeprefix("vmlinuz-")
        k = Kernel(
            release=release,
            image=image,
            modules_dir=root / "lib/modules" / release,
            build_dir=root / "lib/modules" / release / "build",
        )
        try:
            k.check()
        except KernelNotFoundError:
            continue
        found.append(k)
    return sorted(found, key=lambda k: _version_key(k.release), reverse=True)


def cached_kernels(cache: Path | None = None) -> list[Kernel]:
    """Kernels unpacked by :func:`ensure_kernel_612` (or by hand) under the cache directory."""
    cache = cache or repo_root() / ".state" / "kernels"
    found = []
    for tree in sorted(cache.glob("*/root")):
        found += installed_kernels(tree)
    return found


def default_kernel() -> Kernel:
    """The kernel VM tests boot unless told otherwise: ``$CHITAL_KERNEL``, else Debian 12's 6.1."""
    want = os.environ.get("CHITAL_KERNEL")
    if want:
        return find_kernel(want)
    kernels = installed_kernels()
    for k in kernels:
        if k.major_minor == (6, 1):
            return k
    if kernels:
        return kernels[0]
    raise KernelNotFoundError("no kernel installed: run CHITAL_VM=1 scripts/bootstrap.sh")


def find_kernel(spec: str) -> Kernel:
    """Pick a kernel by exact release, by prefix (``6.12``), or ``6.12`` fetched on demand."""
    candidates = installed_kernels() + cached_kernels()
    for k in candidates:
        if k.release == spec:
            return k
    for k in candidates:
        if k.release.startswith(spec):
            return k
    if spec == "6.12":
        return ensure_kernel_612()
    names = ", ".join(k.release for k in candidates) or "none"
    raise KernelNotFoundError(f"no kernel matches {spec!r} (have: {names})")


def _apt_candidates(pattern: str) -> list[str]:
    out = subprocess.run(
        ["apt-cache", "search", "--names-only", pattern],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [line.split(" - ", 1)[0] for line in out.splitlines()]


def ensure_kernel_612(cache: Path | None = None) -> Kernel:
    """Download and unpack Debian 12's newest 6.12 kernel (image, headers, kbuild) into the cache.

    Idempotent: a second call finds the unpacked tree and returns at once. Needs ``apt-get download``
    access to the security suite and ``pahole`` (package ``dwarves``) for module builds with BTF.
    """
    cache = cache or repo_root() / ".state" / "kernels"
    have = [k for k in cached_kernels(cache) if k.major_minor == (6, 12)]
    if have:
        return have[0]
    images = _apt_candidates(r"^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$")
    if not images:
        raise KernelNotFoundError("apt knows no linux-image-6.12.*+deb12-amd64-unsigned (apt-get update?)")
    image_pkg = max(images, key=_version_key)
    abi = image_pkg.removeprefix("linux-image-").removesuffix("-amd64-unsigned")  # 6.12.117+deb12
    pkgs = [
        image_pkg,
        f"linux-headers-{abi}-amd64",
        f"linux-headers-{abi}-common",
        f"linux-kbuild-{abi}",
    ]
    work = cache / abi
    debs = work / "debs"
    root = work / "root"
    debs.mkdir(parents=True, exist_ok=True)
    if len(list(debs.glob("*.deb"))) < len(pkgs):
        subprocess.run(["apt-get", "download", *pkgs], cwd=debs, check=True)
    shutil.rmtree(root, ignore_errors=True)  # a half-unpacked tree from an interrupted run
    tmp_root = work / "root.partial"
    shutil.rmtree(tmp_root, ignore_errors=True)
    tmp_root.mkdir()
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_root)], check=True)
    release = f"{abi}-amd64"
    _fix_headers_tree(tmp_root, root, release, abi)
    # The package's postinst would run depmod; the initramfs builder needs modules.dep.
    subprocess.run(["depmod", "-b", str(tmp_root), release], check=True)
    tmp_root.rename(root)
    kernel = Kernel(
        release=release,
        image=root / "boot" / f"vmlinuz-{release}",
        modules_dir=root / "lib/modules" / release,
        build_dir=root / "usr/src" / f"linux-headers-{release}",
    )
    kernel.check()
    return kernel


def _fix_headers_tree(root: Path, final_root: Path, release: str, abi: str) -> None:
    """Point the unpacked headers at the unpacked common tree and kbuild tools (not at /usr/src).

    ``root`` is where the tree is now; ``final_root`` where it will be renamed to (paths written
    into files and symlinks use the final location).
    """
    headers = root / "usr/src" / f"linux-headers-{release}"
    common = final_root / "usr/src" / f"linux-headers-{abi}-common"
    makefile = headers / "Makefile"
    text = makefile.read_text()
    text = text.replace(f"/usr/src/linux-headers-{abi}-common", str(common))
    makefile.write_text(text)
    # Absolute symlinks (scripts, tools -> /usr/lib/linux-kbuild-*) must point into the unpacked tree.
    local_common = root / "usr/src" / f"linux-headers-{abi}-common"
    for link in list(headers.iterdir()) + list(local_common.iterdir()):
        if link.is_symlink():
            target = os.readlink(link)
            if target.startswith("/"):
                link.unlink()
                link.symlink_to(final_root / target.lstrip("/"))
    build = root / "lib/modules" / release / "build"
    if build.is_symlink() or build.exists():
        build.unlink()
    build.symlink_to(final_root / "usr/src" / f"linux-headers-{release}")
