"""The host image's cache key, the SSH material of a cluster, the PLAY RECAP parser: no QEMU needed."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from chital.devcluster import hostimage
from chital.devcluster.hostvm import ClusterKeys
from chital.devcluster.kernel import Kernel
from chital.devcluster.ssh_fleet import parse_recap


def _kernel(release: str) -> Kernel:
    return Kernel(release, Path("/boot/x"), Path("/lib/modules/x"), Path("/lib/modules/x/build"))


def test_image_key_follows_the_recipe_and_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    a = hostimage._key(_kernel("6.1.0-1-amd64"))
    assert a == hostimage._key(_kernel("6.1.0-1-amd64"))
    assert a.startswith("6.1.0-1-amd64-")
    assert a != hostimage._key(_kernel("6.1.0-2-amd64"))
    assert "linux-headers-6.1.0-2-amd64" in hostimage.recipe(_kernel("6.1.0-2-amd64"))["packages"]  # type: ignore[operator]
    monkeypatch.setattr(hostimage, "PACKAGES", (*hostimage.PACKAGES, "strace"))
    assert hostimage._key(_kernel("6.1.0-1-amd64")) != a


def test_a_cached_image_is_found_without_building(tmp_path: Path) -> None:
    kernel = _kernel("6.1.0-1-amd64")
    key = hostimage._key(kernel)
    d = tmp_path / key
    d.mkdir()
    (d / "root.ext4").write_bytes(b"\0" * 4096)
    (d / "image.json").write_text(
        f'{{"key": "{key}", "kernel_release": "{kernel.release}", "build_seconds": 5}}'
    )
    image = hostimage.ensure_host_image(kernel, cache=tmp_path)
    assert image.path == d / "root.ext4" and image.key == key and image.build_seconds == 5


def test_a_partial_build_is_never_removed_through_a_mount(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    partial = tmp_path / "k.partial-x"
    (partial / "root" / "proc").mkdir(parents=True)
    monkeypatch.setattr(hostimage, "_mounts_under", lambda path: [str(partial / "root" / "proc")])
    with pytest.raises(hostimage.HostImageError, match="left file systems mounted"):
        hostimage._remove_partial(partial)
    assert partial.exists()
    monkeypatch.setattr(hostimage, "_mounts_under", lambda path: [])
    hostimage._remove_partial(partial)
    assert not partial.exists()


def test_mounts_under_sees_proc() -> None:
    assert "/proc" in hostimage._mounts_under(Path("/proc"))


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="no ssh-keygen")
def test_cluster_keys_pin_each_guest(tmp_path: Path) -> None:
    keys = ClusterKeys(tmp_path / "ssh")
    assert stat.S_IMODE(keys.directory.stat().st_mode) == 0o700
    assert keys.client_key.exists() and keys.client_key.with_suffix(".pub").exists()
    keys.trust("host0", 2222)
    keys.trust("host1", 2223)
    keys.trust("host0", 2222)  # again: replaced, not duplicated
    lines = keys.known_hosts.read_text().splitlines()
    assert len(lines) == 2
    pub0 = keys.host_key("host0").with_suffix(".pub").read_text().split()
    assert f"[127.0.0.1]:2222 {pub0[0]} {pub0[1]}" in lines
    options = keys.ssh_options()
    assert "StrictHostKeyChecking=yes" in options and f"UserKnownHostsFile={keys.known_hosts}" in options


def test_parse_recap() -> None:
    out = """PLAY RECAP *********************************************************************
host0              : ok=39   changed=14   unreachable=0    failed=0    skipped=10   rescued=0    ignored=0
host1              : ok=12   changed=0    unreachable=1    failed=1    skipped=3    rescued=1    ignored=0
"""
    recap = parse_recap(out)
    assert recap["host0"]["changed"] == 14 and recap["host0"]["ok"] == 39
    assert recap["host1"] == {
        "ok": 12,
        "changed": 0,
        "unreachable": 1,
        "failed": 1,
        "skipped": 3,
        "rescued": 1,
        "ignored": 0,
    }
