"""Run pytest inside a fresh guest with ``chital.ko`` loaded: ``python -m chital.devcluster.vmtest``.

Steps: build the module for the chosen kernel (from a temporary copy of ``kmod/``), compile the C
helpers of the test suite (``tests/vm/c/*.c``, static, with the uapi header on the include path) on
the host, boot one guest, insmod, run ``pytest`` in the guest with ``CHITAL_DEVICE=linux`` and
``CHITAL_IN_GUEST=1`` (output streamed here), ``rmmod`` the module afterwards (a module that cannot be
unloaded after the suite cleaned up is a bug), power off, and scan the console and dmesg for kernel
splats. Exit status: pytest's, or 3 when pytest passed but the kernel splatted or rmmod failed.

Examples::

    python -m chital.devcluster.vmtest                      # tests/vm on Debian 12's 6.1
    python -m chital.devcluster.vmtest --kernel 6.12 -- -x -k escape
    python -m chital.devcluster.vmtest tests/vm/test_escape.py -- -vv
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .kernel import Kernel, default_kernel, find_kernel, repo_root
from .splats import KernelSplatError
from .vm import GuestError, GuestVM, build_launcher, build_module

__all__ = ["build_helpers", "main", "run_pytest_in_guest"]

EXIT_KERNEL_TROUBLE = 3


def helper_dirs(root: Path, paths: Sequence[str]) -> list[Path]:
    """Every ``c/`` directory at or below the named test paths (a file: below its own directory), so
    that a fresh checkout builds every probe its tests use, nested packages (tests/vm/agent/c) too."""
    dirs: set[Path] = set()
    for p in paths:
        path = Path(p) if os.path.isabs(p) else root / p
        base = path if path.is_dir() else path.parent
        dirs.update(d for d in base.rglob("c") if d.is_dir() and ".state" not in d.parts)
    return sorted(dirs)


def build_helpers(src_dirs: Sequence[Path], out_dir: Path) -> Path:
    """Compile every ``*.c`` in ``src_dirs`` to a static binary in ``out_dir`` (only when stale)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    uapi = repo_root() / "kmod" / "include" / "uapi"
    header = uapi / "linux" / "chital.h"
    for d in src_dirs:
        for c in sorted(d.glob("*.c")):
            exe = out_dir / c.stem
            deps = [c, *d.glob("*.h")] + ([header] if header.exists() else [])
            if exe.exists() and all(exe.stat().st_mtime >= p.stat().st_mtime for p in deps):
                continue
            cmd = ["gcc", "-O2", "-g", "-Wall", "-static", "-pthread", f"-I{uapi}", f"-I{d}"]
            tmp = exe.with_name(f".{exe.name}.{os.getpid()}")  # concurrent runs never see half a binary
            cmd += ["-o", str(tmp), str(c)]
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
            if proc.returncode != 0:
                tmp.unlink(missing_ok=True)
                raise GuestError(f"cannot compile {c}:\n{proc.stderr}")
            tmp.replace(exe)
    return out_dir


def run_pytest_in_guest(
    kernel: Kernel,
    paths: Sequence[str],
    pytest_args: Sequence[str] = (),
    *,
    module: bool = True,
    rmmod: bool = True,
    memory: int = 1024,
    cpus: int = 2,
    timeout: float = 540.0,
    append: str = "",
) -> int:
    root = repo_root()
    t0 = time.monotonic()
    ko = build_module(kernel) if module else None
    t_build = time.monotonic() - t0
    bin_dir = build_helpers(helper_dirs(root, paths), root / ".state" / "vm" / "build" / "bin")
    build_launcher()  # the agent in the guest starts every process through it
    venv_bin = Path(sys.executable).parent
    env = {
        "CHITAL_DEVICE": "linux",
        "CHITAL_IN_GUEST": "1",
        "CHITAL_REPO": str(root),
        "CHITAL_VM_BIN": str(bin_dir),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
    }
    argv = [str(venv_bin / "python"), "-m", "pytest", "-p", "no:cacheprovider", *paths, *pytest_args]
    built = f"built in {t_build:.1f} s" if ko else "not loaded"
    print(f"vmtest: kernel {kernel.release}, module {built}", flush=True)
    trouble = []
    vm = GuestVM(kernel, name="vmtest", memory=memory, cpus=cpus, module=ko, cmdline_extra=append)
    vm.start()
    try:
        print(f"vmtest: guest up in {vm.boot_seconds:.1f} s ({vm.dir})", flush=True)
        rc = vm.spawn(argv, env=env, cwd=str(root)).wait(timeout=timeout, stream=sys.stdout.buffer)
        if ko is not None and rmmod:
            rm_rc, out = vm.run(["rmmod", "chital"], timeout=60)
            if rm_rc != 0:
                trouble.append(f"rmmod chital failed after the suite (rc {rm_rc}): {out.strip()}")
    finally:
        vm.stop(timeout=30)
    try:
        vm.check_splats()
    except KernelSplatError as exc:
        trouble.append(str(exc))
    for t in trouble:
        print(f"vmtest: FAIL: {t}", file=sys.stderr)
    total = time.monotonic() - t0
    print(f"vmtest: pytest rc {rc}; total {total:.1f} s; console: {vm.console_path}", flush=True)
    if rc == 0 and trouble:
        return EXIT_KERNEL_TROUBLE
    return rc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chital.devcluster.vmtest",
        description="Run pytest in a QEMU guest with chital.ko loaded. Arguments after -- go to pytest.",
    )
    parser.add_argument("paths", nargs="*", default=["tests/vm"], help="test paths (default tests/vm)")
    parser.add_argument("--kernel", help="release or prefix (6.1, 6.12; 6.12 is fetched if missing)")
    parser.add_argument("--no-module", action="store_true", help="do not build or insmod chital.ko")
    parser.add_argument("--no-rmmod", action="store_true", help="skip the rmmod check at the end")
    parser.add_argument("--memory", type=int, default=1024, help="guest MiB (default 1024)")
    parser.add_argument("--cpus", type=int, default=2, help="guest vCPUs (default 2, for the race tests)")
    parser.add_argument("--append", default="", help="extra kernel command line (e.g. preempt=full)")
    parser.add_argument("--timeout", type=float, default=540.0, help="seconds for pytest (default 540)")
    ours = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if "--" in ours:
        cut = ours.index("--")
        ours, rest = ours[:cut], ours[cut + 1 :]
    args = parser.parse_args(ours)
    kernel = find_kernel(args.kernel) if args.kernel else default_kernel()
    try:
        return run_pytest_in_guest(
            kernel,
            args.paths,
            rest,
            module=not args.no_module,
            rmmod=not args.no_rmmod,
            memory=args.memory,
            cpus=args.cpus,
            timeout=args.timeout,
            append=args.append,
        )
    except (GuestError, TimeoutError) as exc:
        print(f"vmtest: ERROR: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
