"""The VM harness against a real QEMU guest (no chital module needed): command channel, port
forwarding with ``restrict=on``, background commands, splat detection, teardown without strays.

Each test boots a guest (boot times: docs/benchmarks.md); skipped where QEMU or a Debian kernel is
missing.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from chital.devcluster import GuestVM, KernelNotFoundError, KernelSplatError, default_kernel
from chital.devcluster.cluster import wait_for_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kernel():  # type: ignore[no-untyped-def]
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 missing: CHITAL_VM=1 scripts/bootstrap.sh")
    try:
        return default_kernel()
    except KernelNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def guest(kernel) -> Iterator[GuestVM]:  # type: ignore[no-untyped-def]
    with GuestVM(kernel, name="itest", memory=768, forward_ports={8000: 0}) as vm:
        yield vm
    vm.check_splats()


def test_run_returns_status_and_output(guest: GuestVM) -> None:
    rc, out = guest.run("echo hello; uname -r; exit 7", timeout=60)
    assert rc == 7
    lines = out.splitlines()
    assert lines[0] == "hello"
    assert lines[1] == guest.kernel.release


def test_guest_sees_host_root_read_only_and_a_fresh_tmp(guest: GuestVM) -> None:
    marker = f"/tmp/chital-host-only-{os.getpid()}"
    Path(marker).touch()
    try:
        _, out = guest.run(
            f"test -e {marker}; echo $?; touch /etc/x 2>&1; touch /tmp/ok && echo w", timeout=60
        )
    finally:
        os.unlink(marker)
    lines = out.splitlines()
    assert lines[0] == "1", "guest /tmp must be its own tmpfs"
    assert "Read-only file system" in lines[1]
    assert lines[2] == "w"


def test_port_forward_reaches_a_background_server(guest: GuestVM) -> None:
    server = guest.spawn([sys.executable, "-m", "http.server", "8000", "--bind", "0.0.0.0", "-d", "/etc"])
    port = guest.host_ports[8000]
    wait_for_port(port, timeout=90)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/hostname", timeout=30) as resp:
        assert resp.status == 200
    # The channel still answers while the server runs, and the guest cannot dial out (restrict=on).
    _, out = guest.run(
        "python3 - <<'X'\nimport socket\ntry:\n socket.create_connection(('1.1.1.1', 80), 3)\n"
        " print('out')\nexcept OSError as e:\n print('blocked', e)\nX",
        timeout=60,
    )
    assert "blocked" in out, out
    assert server.poll() is None


def test_splat_is_detected_and_qemu_is_gone(kernel) -> None:  # type: ignore[no-untyped-def]
    vm = GuestVM(kernel, name="splat", memory=512)
    vm.start()
    pid = vm.pid
    try:
        rc, _ = vm.run("echo l > /proc/sysrq-trigger", timeout=60)  # backtrace of all CPUs
        assert rc == 0
    finally:
        vm.stop()
    assert pid is not None
    time.sleep(0.2)
    status = Path(f"/proc/{pid}/status")
    assert not status.exists() or "zombie" in status.read_text().lower(), "qemu still running"
    with pytest.raises(KernelSplatError):
        vm.check_splats()
