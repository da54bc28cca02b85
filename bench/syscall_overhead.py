"""Interception overhead: getppid and open/close loops in one guest boot, as

- ``no module``: a process on a kernel without ``chital.ko`` (the baseline, "native");
- ``non-member``: a process outside every container while the module is loaded (what every other
  process of the host pays; target <= 1.05 x native);
- ``member``: a member of a chital container (target <= 1.2 x native);
- ``traced path``: a non-member while the module is loaded with ``trim_syscall_work=0``, so that
  it takes the kernel's traced system call path and the probe finds no membership: the floor of
  any interception by the ``sys_enter`` tracepoint, which every member pays before the module's
  own checks;
- ``strace -f``: ptrace-based interception, for scale.

Run on the host: ``.venv/bin/python bench/syscall_overhead.py [--kernel 6.12]``. It builds the module
and the C loop, boots a guest with the module loaded and runs itself there with ``--in-guest``; the
guest unloads and reloads the module between the modes of every repetition. Figures are ns per
iteration (median of the repetitions) and ratios to native. Figures, never test assertions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PATTERNS = {
    # name: (argv after the loop binary, iterations natively/as member, iterations under strace)
    "getppid": (["getppid"], 200_000, 2_000),
    "open+close": (["openclose"], 40_000, 1_000),
}
REPS = 5
SETTLE_S = 2.0


#: On the guest's tmpfs: a file on the 9p host root would time QEMU's 9p server, not the syscall.
TARGET = Path("/tmp/chital-bench-target")


def _loop(prefix: list[str], bin_dir: Path, pattern: list[str], n: int) -> float:
    argv = [*prefix, str(bin_dir / "syscall_loop"), pattern[0], str(n)]
    if pattern[0] == "openclose":
        argv.append(str(TARGET))
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def _module(load: Path | None, *params: str) -> None:
    """rmmod chital (``load`` None) or insmod it again, with module ``params``."""
    argv = ["insmod", str(load), *params] if load else ["rmmod", "chital"]
    subprocess.run(argv, check=True, capture_output=True)
    # Loading and unloading patch kernel text (ftrace) and leave deferred work (RCU, module
    # memory) to the single vCPU: let it settle, or the next loop measures that work.
    time.sleep(SETTLE_S)


def in_guest(bin_dir: Path, ko: Path) -> int:
    modes = {
        "non-member": [],
        "member": [str(bin_dir / "ctr_exec"), "-r", "/", "-n", "bench", "--"],
        "strace -f": ["strace", "-f", "-qq", "-o", "/dev/null"],
    }
    TARGET.write_text("x")
    # The member mode must really be a member: members are refused on the device.
    check = subprocess.run(
        [*modes["member"], str(bin_dir / "probe"), "open", "/dev/chital"],
        check=False,
        capture_output=True,
        text=True,
    )
    if '"errno": 1,' not in check.stdout:
        print(f"member check failed: a 'member' could open /dev/chital: {check.stdout}{check.stderr}")
        return 1
    print(f"{'pattern':<12} {'mode':<11} {'ns/call':>10} {'x native':>9}")
    for name, (pattern, n, n_strace) in PATTERNS.items():
        runs: dict[str, list[float]] = {mode: [] for mode in ["no module", "traced path", *modes]}
        for rep in range(REPS + 1):  # modes interleaved so drift hits all alike; the first is warm-up
            for mode, prefix in modes.items():
                ns = _loop(prefix, bin_dir, pattern, n_strace if mode.startswith("strace") else n)
                if rep:
                    runs[mode].append(ns)
            _module(None)
            try:
                ns = _loop([], bin_dir, pattern, n)
                _module(ko, "trim_syscall_work=0")
                traced = _loop([], bin_dir, pattern, n)
                _module(None)
            finally:
                _module(ko)
            if rep:
                runs["no module"].append(ns)
                runs["traced path"].append(traced)
        native = statistics.median(runs["no module"])
        for mode, values in runs.items():
            ns = statistics.median(values)
            print(f"{name:<12} {mode:<11} {ns:>10.1f} {ns / native:>8.2f}x", flush=True)
    return 0


def on_host(kernel_spec: str | None) -> int:
    # Imported here: inside the guest only the standard library is needed.
    from chital.devcluster import GuestVM, default_kernel, find_kernel  # noqa: PLC0415
    from chital.devcluster.vm import build_module  # noqa: PLC0415
    from chital.devcluster.vmtest import build_helpers  # noqa: PLC0415

    kernel = find_kernel(kernel_spec) if kernel_spec else default_kernel()
    ko = build_module(kernel)
    bin_dir = build_helpers([REPO / "bench" / "c", REPO / "tests" / "vm" / "c"], REPO / ".state/vm/build/bin")
    print(f"kernel {kernel.release} under QEMU TCG (one vCPU)", flush=True)
    with GuestVM(kernel, name="bench", module=ko, cpus=1) as vm:
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--in-guest",
            "--bin",
            str(bin_dir),
            "--ko",
            str(Path(ko).resolve()),
        ]
        rc = vm.spawn(argv, env={"PYTHONDONTWRITEBYTECODE": "1"}).wait(timeout=600, stream=sys.stdout.buffer)
    vm.check_splats()
    return rc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernel", help="kernel release or prefix (default: Debian 12's 6.1)")
    parser.add_argument("--in-guest", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bin", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ko", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_guest:
        return in_guest(args.bin, args.ko)
    os.chdir(REPO)
    return on_host(args.kernel)


if __name__ == "__main__":
    sys.exit(main())
