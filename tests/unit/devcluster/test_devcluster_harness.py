"""Pure parts of the VM harness: splat recognition, the initramfs writer, kernel discovery."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from chital.devcluster import Kernel, KernelSplatError, find_splats
from chital.devcluster.vm import _Cpio, _module_closure

SPLAT_LINES = {
    "warning": "[   12.3] WARNING: CPU: 0 PID: 77 at kmod/main.c:120 chital_ioctl+0x1c/0x90 [chital]",
    "bug": "[    5.1] BUG: kernel NULL pointer dereference, address: 0000000000000008",
    "oops": "[    5.1] Oops: 0000 [#1] PREEMPT SMP NOPTI",
    "gpf": "[    7.0] general protection fault, probably for non-canonical address 0xdead",
    "lockdep": "[    9.9] WARNING: possible circular locking dependency detected",
    "rcu-stall": "[   30.0] rcu: INFO: rcu_preempt self-detected stall on CPU",
    "soft-lockup": "[   40.0] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [fuzz:99]",
    "call-trace": "[   12.4] Call Trace:",
    "kasan": "[    3.3] BUG: KASAN: use-after-free in chital_release+0x10/0x40",
    "hung-task": "[  240.0] INFO: task fuzz:12 blocked for more than 120 seconds.",
}

CLEAN_BOOT = """\
[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)
[    0.512000] Warning: unable to open an initial console.
[    1.363787] acpi PNP0A03:00: fail to add MMCONFIG information
[    2.100000] chital: loading out-of-tree module taints kernel.
[    2.100100] chital: module verification failed: signature and/or required key missing - tainting kernel
chital-init: ready
chital-init: powering off
"""


@pytest.mark.parametrize("kind", sorted(SPLAT_LINES))
def test_each_kind_of_splat_is_recognised(kind: str) -> None:
    found = find_splats(["ok line", SPLAT_LINES[kind], "after"])
    assert len(found) == 1
    assert found[0].line_no == 2
    assert SPLAT_LINES[kind] in found[0].context


def test_a_clean_boot_has_no_splat() -> None:
    assert find_splats(CLEAN_BOOT.splitlines()) == []


def test_splat_error_names_the_first_splat() -> None:
    splats = find_splats([SPLAT_LINES["oops"], SPLAT_LINES["call-trace"]])
    err = KernelSplatError(splats, "console.log")
    assert "2 kernel splat line(s) in console.log" in str(err)
    assert "Oops" in str(err)


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs cpio to read the archive back")
def test_cpio_archive_unpacks_with_cpio(tmp_path: Path) -> None:
    c = _Cpio()
    c.file("bin/tool", b"#!/bin/sh\necho hi\n", 0o755)
    c.symlink("bin/sh", "tool")
    c.file("etc/odd-size", b"x" * 1001)
    data = c.finish()
    assert len(data) % 512 == 0
    subprocess.run(["cpio", "-id", "--quiet"], input=data, cwd=tmp_path, check=True)
    assert (tmp_path / "bin/tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (tmp_path / "bin/tool").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "bin/sh").is_symlink()
    assert (tmp_path / "bin/sh").readlink() == Path("tool")
    assert (tmp_path / "etc/odd-size").stat().st_size == 1001


def test_module_closure_puts_dependencies_first(tmp_path: Path) -> None:
    mods = tmp_path / "lib/modules/9.9.9"
    mods.mkdir(parents=True)
    (mods / "modules.dep").write_text(
        "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko\n"
        "kernel/net/9p/9pnet.ko:\n"
        "kernel/fs/netfs/netfs.ko:\n"
        "kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko\n"
    )
    (mods / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    k = Kernel("9.9.9", tmp_path / "vmlinuz", mods, tmp_path / "build")
    order = _module_closure(k, ["9p", "9pnet_virtio", "virtio_pci"])
    assert order.index("kernel/net/9p/9pnet.ko") < order.index("kernel/fs/9p/9p.ko")
    assert order.index("kernel/fs/netfs/netfs.ko") < order.index("kernel/fs/9p/9p.ko")
    assert order[-1] == "kernel/net/9p/9pnet_virtio.ko.xz"
    assert len(order) == len(set(order)) == 4
