"""Guest-only test suite: real chital.ko in a QEMU guest (run by ``make test-vm``).

Outside a guest (``CHITAL_IN_GUEST`` unset) nothing here is collected, so the host's ``pytest``
never touches it; naming ``tests/vm`` explicitly on the host collects it and every test skips with
the reason below. The runner (``python -m chital.devcluster.vmtest``) boots a guest, insmods the
module, compiles the C helpers in ``c/`` on the host (``$CHITAL_VM_BIN``) and sets the variables.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

IN_GUEST = os.environ.get("CHITAL_IN_GUEST") == "1"
SKIP_REASON = "needs the chital module in a QEMU guest: `python -m chital.devcluster.vmtest` (make test-vm)"
HERE = Path(__file__).parent


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if IN_GUEST:
        return None
    named = [Path(a.split("::")[0]).resolve() for a in config.args]
    if any(p == HERE or HERE in p.parents for p in named):
        return None  # asked for explicitly: collect, and skip below with the reason
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not IN_GUEST:
        for item in items:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
        return
    # The fuzzer goes last: whatever it leaves behind must not confuse the precise tests.
    items.sort(key=lambda it: it.get_closest_marker("fuzz") is not None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fuzz: random-input test, run after the others")


# ----------------------------------------------------------------------------- helpers


def helper(name: str) -> str:
    """Path of a C helper compiled by the runner (static, so it also runs inside busybox roots)."""
    path = Path(os.environ.get("CHITAL_VM_BIN", "/nonexistent")) / name
    if not path.exists():
        pytest.fail(f"helper {name} not built at {path}: run the suite with chital.devcluster.vmtest")
    return str(path)


def parse_json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@dataclass(frozen=True)
class Sandbox:
    """A busybox container root in the guest's tmpfs, and things outside it to escape to.

    ``base/secret`` (outside) and ``root/secret`` (an inside decoy) have different inodes: a probe
    that opens something and reports the outside inode escaped, whatever the path looked like.
    """

    base: Path  # /tmp/chital-vm
    root: Path  # base/root: the container root
    secret: Path  # base/secret: outside the root
    outside_dir: Path  # base/outdir: a directory outside, for fd-relative attempts

    @property
    def secret_id(self) -> tuple[int, int]:
        st = self.secret.stat()
        return st.st_dev, st.st_ino

    def run_member(
        self,
        argv: Sequence[str],
        *,
        member: bool = True,
        keep: Sequence[str | Path] = (),
        timeout: float = 120,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` (paths as seen inside the root) chrooted into the root, as a member."""
        cmd = [helper("ctr_exec"), "-r", str(self.root)]
        if not member:
            cmd.append("-M")
        for k in keep:
            cmd += ["-k", str(k)]
        proc = subprocess.run(
            [*cmd, "--", *argv], check=False, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv} rc {proc.returncode}\nout:\n{proc.stdout}\nerr:\n{proc.stderr}")
        return proc


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    base = Path("/tmp/chital-vm")
    shutil.rmtree(base, ignore_errors=True)
    root = base / "root"
    for d in ("bin", "dev", "etc", "mnt", "proc", "tmp", "race"):
        (root / d).mkdir(parents=True)
    busybox = shutil.which("busybox") or "/bin/busybox"
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in ("sh", "ls", "cat", "echo", "true", "mount", "chroot", "stat"):
        (root / "bin" / applet).symlink_to("busybox")
    for name in ("probe", "race"):
        shutil.copy2(helper(name), root / "bin" / name)
    (root / "etc" / "hello").write_text("hello from inside\n")
    if Path("/dev/chital").exists():  # the same device node inside, to show members are refused
        os.mknod(root / "dev" / "chital", 0o020600, Path("/dev/chital").stat().st_rdev)
    (root / "escape_abs").symlink_to("/tmp/chital-vm/secret")
    (root / "escape_rel").symlink_to("../../../../../tmp/chital-vm/secret")
    (root / "inside_link").symlink_to("etc/hello")
    (root / "secret").write_text("inside decoy\n")
    (base / "secret").write_text("outside secret\n")
    (base / "outdir").mkdir()
    (base / "outdir" / "secret").write_text("outside secret 2\n")
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        yield Sandbox(base=base, root=root, secret=base / "secret", outside_dir=base / "outdir")
    finally:
        subprocess.run(["umount", "-l", str(root / "proc")], check=False)


@pytest.fixture(autouse=True)
def _no_kernel_splat() -> Iterator[None]:
    """Fail the test that made the kernel WARN/BUG/oops (the runner also checks the whole log)."""
    if not IN_GUEST:
        yield
        return
    # Imported here: the host collects (and ignores) this directory without chital-devcluster.
    from chital.devcluster.splats import find_splats  # noqa: PLC0415

    before = len(_dmesg())
    yield
    new = _dmesg()[before:]
    splats = find_splats(new)
    if splats:
        pytest.fail(f"kernel splat during this test:\n{splats[0].context}")


def _dmesg() -> list[str]:
    return subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout.splitlines()
