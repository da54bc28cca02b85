"""chital.devcluster: QEMU guests running the real chital kernel module.

``GuestVM`` boots a Debian kernel under TCG with the host root shared read-only and a command
channel; ``vmtest`` runs pytest inside such a guest; ``kernel`` finds (or fetches) the kernels.
``hostimage`` and ``hostvm`` boot guests that look like real hosts (systemd as PID 1, sshd, DKMS),
reached over SSH only; ``ssh_fleet`` puts a controller beside them and writes an Ansible inventory.
"""

from ._version import __version__
from .kernel import (
    Kernel,
    KernelNotFoundError,
    default_kernel,
    ensure_kernel_612,
    find_kernel,
    installed_kernels,
)
from .splats import KernelSplatError, Splat, find_splats
from .vm import CommandHandle, GuestError, GuestVM, build_module, free_port

__all__ = [
    "CommandHandle",
    "GuestError",
    "GuestVM",
    "Kernel",
    "KernelNotFoundError",
    "KernelSplatError",
    "Splat",
    "__version__",
    "build_module",
    "default_kernel",
    "ensure_kernel_612",
    "find_kernel",
    "find_splats",
    "free_port",
    "installed_kernels",
]
