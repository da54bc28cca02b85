"""A Debian root disk that boots like a real host: systemd as PID 1, sshd, Python, DKMS and headers.

The guests of :mod:`chital.devcluster.hostvm` boot it to be installed by the Ansible playbooks over
SSH, exactly as a fleet host is. It is built with ``mmdebstrap`` (Debian's package) into a plain
directory, then turned into an ext4 image with ``mkfs.ext4 -d`` (no loop device, no mount); every
guest boots a copy-on-write qcow2 overlay of it, so the image itself is never written.

What is preinstalled, because the guests reach no network beyond their forwarded ports
(``restrict=on``): systemd (PID 1, networkd, udev), openssh-server, Python 3 with venv and the
modules Ansible's ``apt`` and ``pip`` need, and what the ``chital_kmod`` role needs to build the
module with DKMS: dkms, build-essential, kmod, mokutil and the ``linux-headers`` package of the guest
kernel. The guest kernel's modules (``/lib/modules/<release>``) are copied in from the kernel the
guests boot, so udev and ``modprobe`` find them.

The image is cached under ``<repo>/.state/images/<key>/`` (``$CHITAL_IMAGE_CACHE`` overrides the
directory), keyed by a hash of the recipe (suite, packages, the setup script) and the kernel release:
it is built once per machine and recipe. The build is idempotent and atomic: one build at a time
(a lock file), into a temporary directory renamed into place when complete. Building needs root
(mmdebstrap's root mode; ``mkfs.ext4 -d`` keeps the files' owners).

    python -m chital.devcluster.hostimage          # build (or find) the image; prints its path
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .kernel import Kernel, default_kernel, find_kernel, repo_root

__all__ = ["HostImage", "HostImageError", "ensure_host_image", "image_cache_dir", "recipe"]

#: Bumped when the way an image is made changes in a way the recipe below does not show.
RECIPE_VERSION = 1
SUITE = "bookworm"

#: Debian packages of every image (the kernel's headers are added per kernel).
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "openssh-server",
    "python3",
    "python3-apt",
    "python3-venv",
    "python3-setuptools",
    "dkms",
    "build-essential",
    "kmod",
    "mokutil",
    "iproute2",
    "procps",
    "ca-certificates",
    "e2fsprogs",
    "busybox-static",  # to make containers' roots from
)

#: Run in the new root (``chroot``) after the packages are installed.
SETUP_SCRIPT = r"""
set -eu
# Every guest gets its own host keys and machine-id at boot (chital.devcluster.hostvm).
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
# Root logs in with the cluster's key only.
passwd -l root >/dev/null
cat > /etc/ssh/sshd_config.d/chital-devcluster.conf <<'EOF'
# chital devcluster guest: keys only, no DNS lookups (the guest has no resolver).
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
EOF
# The root file system is the guest's virtio disk.
echo '/dev/vda / ext4 rw,relatime 0 1' > /etc/fstab
# Network: systemd-networkd with the address slirp expects (written per guest at boot).
systemctl enable systemd-networkd.service ssh.service >/dev/null 2>&1
# Nothing periodic that would compete with the tests for a slow emulated CPU.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
        fstrim.timer man-db.timer dpkg-db-backup.timer systemd-networkd-wait-online.service \
        getty@tty1.service; do
    systemctl mask "$unit" >/dev/null 2>&1 || true
done
# apt has no index here (the guests reach no mirror): the installed packages are all there is.
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
"""


class HostImageError(RuntimeError):
    """The image could not be built."""


@dataclass(frozen=True)
class HostImage:
    """A built image: its ext4 file, the kernel release it was made for and how it was made."""

    path: Path  # the ext4 image (raw); guests boot qcow2 overlays of it
    kernel_release: str
    key: str
    build_seconds: float
    size_bytes: int  # the bytes the image occupies on disk (it is sparse)
    apparent_bytes: int  # the file system's size


def image_cache_dir() -> Path:
    env = os.environ.get("CHITAL_IMAGE_CACHE")
    return Path(env) if env else repo_root() / ".state" / "images"


def recipe(kernel: Kernel) -> dict[str, object]:
    """Everything the image depends on; its hash names the cached image."""
    return {
        "recipe_version": RECIPE_VERSION,
        "suite": SUITE,
        "variant": "minbase",
        "packages": [*PACKAGES, f"linux-headers-{kernel.release}"],
        "setup": SETUP_SCRIPT,
        "kernel_release": kernel.release,
    }


def _key(kernel: Kernel) -> str:
    blob = json.dumps(recipe(kernel), sort_keys=True).encode()
    return f"{kernel.release}-{hashlib.sha256(blob).hexdigest()[:16]}"


def _load(directory: Path) -> HostImage | None:
    try:
        info = json.loads((directory / "image.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    path = directory / "root.ext4"
    if not path.exists():
        return None
    return HostImage(
        path=path,
        kernel_release=info["kernel_release"],
        key=info["key"],
        build_seconds=info["build_seconds"],
        size_bytes=path.stat().st_blocks * 512,
        apparent_bytes=path.stat().st_size,
    )


def ensure_host_image(
    kernel: Kernel | None = None, cache: Path | None = None, log: Path | None = None
) -> HostImage:
    """The cached image for ``kernel`` (default: the guests' default kernel), built if missing.

    Concurrent callers wait for one build (a lock file in the cache directory); an interrupted
    build leaves only a ``*.partial-*`` directory, which the next build removes.
    """
    kernel = kernel or default_kernel()
    cache = cache or image_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    key = _key(kernel)
    final = cache / key
    found = _load(final)
    if found is not None:
        return found
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _load(final)  # built by another process while we waited
        if found is not None:
            return found
        for stale in cache.glob(f"{key}.partial-*"):
            _remove_partial(stale)
        work = Path(tempfile.mkdtemp(prefix=f"{key}.partial-", dir=cache))
        try:
            _build(kernel, key, work, log or cache / f"{key}.build.log")
            if final.exists():  # a half-removed older copy
                shutil.rmtree(final)
            work.rename(final)
        except BaseException:
            _remove_partial(work)
            raise
    image = _load(final)
    assert image is not None
    return image


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (from /proc/self/mounts)."""
    prefix = str(path.resolve())
    found = []
    with open("/proc/self/mounts") as f:
        for line in f:
            point = line.split()[1].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


def _remove_partial(path: Path) -> None:
    """Remove an interrupted build, never through a mount: mmdebstrap mounts /proc, /sys and /dev
    in the new root while it runs, and a build killed with SIGKILL leaves them mounted."""
    mounts = _mounts_under(path)
    if mounts:
        raise HostImageError(
            f"an interrupted image build left file systems mounted under {path}: {', '.join(mounts)}; "
            f"unmount them (umount -R) and run again"
        )
    shutil.rmtree(path, ignore_errors=True)


def _run(cmd: list[str], log: Path, what: str) -> None:
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False
        )
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise HostImageError(f"{what} failed (exit {proc.returncode}); the end of {log}:\n{tail}")


def _build(kernel: Kernel, key: str, work: Path, log: Path) -> None:
    if os.geteuid() != 0:
        raise HostImageError("building the host image needs root (mmdebstrap, mkfs.ext4 -d keep file owners)")
    for tool, package in (("mmdebstrap", "mmdebstrap"), ("mkfs.ext4", "e2fsprogs")):
        if shutil.which(tool) is None:
            raise HostImageError(
                f"{tool} is missing: install the Debian package {package} (CHITAL_VM=1 scripts/bootstrap.sh)"
            )
    log.write_text(f"chital host image {key}\n")
    started = time.monotonic()
    root = work / "root"
    setup = work / "setup.sh"
    setup.write_text(SETUP_SCRIPT)
    packages = [*PACKAGES, f"linux-headers-{kernel.release}"]
    _run(
        [
            "mmdebstrap",
            "--variant=minbase",
            "--mode=root",
            "--include=" + ",".join(packages),
            f'--customize-hook=chroot "$1" /bin/sh < {setup}',
            SUITE,
            str(root),
        ],
        log,
        "mmdebstrap",
    )
    # The guest kernel's modules, as its linux-image package would install them (the headers
    # package already made /lib/modules/<release>/build).
    modules = root / "lib" / "modules" / kernel.release
    modules.mkdir(parents=True, exist_ok=True)
    _run(
        ["cp", "-a", str(kernel.modules_dir / "kernel"), str(modules / "kernel")], log, "copying the modules"
    )
    for f in kernel.modules_dir.glob("modules.*"):
        shutil.copy2(f, modules / f.name)
    _run(["depmod", "-b", str(root), kernel.release], log, "depmod")
    used = int(
        subprocess.run(["du", "-sb", str(root)], capture_output=True, text=True, check=True).stdout.split()[0]
    )
    # Room for DKMS builds, a venv, containers' roots; the file is sparse and the guests' writes go
    # to their own overlays.
    size = (used + 3 * 1024**3) // (1024**2) * (1024**2)
    image = work / "root.ext4"
    with image.open("wb") as out:
        out.truncate(size)
    _run(["mkfs.ext4", "-q", "-L", "chital-root", "-d", str(root), str(image)], log, "mkfs.ext4 -d")
    shutil.rmtree(root)
    setup.unlink()
    seconds = time.monotonic() - started
    info = {
        "key": key,
        "kernel_release": kernel.release,
        "build_seconds": round(seconds, 1),
        "recipe": recipe(kernel),
    }
    (work / "image.json").write_text(json.dumps(info, indent=2) + "\n")
    with contextlib.suppress(OSError):
        shutil.copy2(log, work / "build.log")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chital.devcluster.hostimage",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--kernel", help="kernel release or '6.12' (default: the guests' default kernel)")
    args = parser.parse_args(argv)
    kernel = find_kernel(args.kernel) if args.kernel else default_kernel()
    started = time.monotonic()
    try:
        image = ensure_host_image(kernel)
    except HostImageError as exc:
        print(f"hostimage: {exc}", file=sys.stderr)
        return 1
    print(
        f"{image.path}\n  kernel {image.kernel_release}, built in {image.build_seconds:.0f} s, "
        f"{image.size_bytes / 1024**2:.0f} MiB on disk "
        f"({image.apparent_bytes / 1024**2:.0f} MiB file system); "
        f"this call {time.monotonic() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
