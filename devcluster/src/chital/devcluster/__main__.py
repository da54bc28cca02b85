"""``python -m chital.devcluster [--kernel 6.12] [--module] CMD...``: boot a guest, run CMD, power off.

A manual smoke test of the harness; exits with CMD's status (3 if the kernel splatted).
"""

from __future__ import annotations

import argparse
import sys

from .kernel import default_kernel, find_kernel
from .splats import KernelSplatError
from .vm import GuestVM, build_module


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m chital.devcluster")
    parser.add_argument("--kernel", help="kernel release or prefix")
    parser.add_argument("--module", action="store_true", help="build and insmod chital.ko")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="shell command (default: uname -a)")
    args = parser.parse_args()
    kernel = find_kernel(args.kernel) if args.kernel else default_kernel()
    ko = build_module(kernel) if args.module else None
    with GuestVM(kernel, name="smoke", module=ko) as vm:
        print(f"booted {kernel.release} in {vm.boot_seconds:.1f} s", file=sys.stderr)
        rc, _ = vm.run(" ".join(args.command) or "uname -a", stream=sys.stdout.buffer)
    try:
        vm.check_splats()
    except KernelSplatError as exc:
        print(exc, file=sys.stderr)
        return 3
    return rc


if __name__ == "__main__":
    sys.exit(main())
