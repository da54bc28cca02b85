"""The sandbox policy of a container: one place for the defaults, the relaxations and what they become.

Two layers enforce it (defense in depth; either one alone stops the call):

- the kernel module denies the **effective deny list** (``DEFAULT_DENY`` plus the container's own
  ``deny_syscalls``, minus ``SandboxView.allow_syscalls``) and, unless ``allow_raw_sockets``, raw sockets. It
  counts every denial (``chital stats``);
- the launcher's seccomp filter kills any non-x86_64 call (``int $0x80``, x32), answers ``clone3``
  with ENOSYS, and denies ``SECCOMP_DENY`` (what no container needs, as in the default profiles of
  Docker and containerd: kernel modules, kexec, mounts, namespaces, handles, quotas, obsolete calls,
  ...) minus what the module denies itself (``MODULE_CONTAINMENT`` and the effective list) and minus
  ``allow_syscalls``. Seccomp runs before the module's tracepoint, so a call it refused would never
  be counted: the module keeps the calls it denies, so that every denial shows in ``chital stats``.

Capabilities are the third wall: a container's processes start with an empty bounding set unless
the sandbox names capabilities (``CAPABILITIES`` maps the names). Root without capabilities cannot
mknod, iopl, set the clock, load keys into other users' rings or reconfigure interfaces, even where a
system call is allowed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from chital.errdefs import InvalidArgument

from . import syscalls

__all__ = [
    "CAPABILITIES",
    "DEFAULT_DENY",
    "MODULE_CONTAINMENT",
    "SECCOMP_DENY",
    "SandboxView",
    "effective_deny",
    "seccomp_deny",
    "validate_sandbox",
]

#: Denied by the module to every container unless its sandbox allows them: what a container never
#: needs and what, with a capability or a hole, would reach the host (keys, kernel log, clock,
#: accounting, device nodes, swap, page-fault handlers, I/O ports, fanotify marks).
DEFAULT_DENY: frozenset[str] = frozenset(
    {
        "acct",
        "add_key",
        "adjtimex",
        "clock_adjtime",
        "clock_settime",
        "fanotify_init",
        "ioperm",
        "iopl",
        "keyctl",
        "mknod",
        "mknodat",
        "request_key",
        "settimeofday",
        "swapoff",
        "swapon",
        "syslog",
        "userfaultfd",
    }
)

#: What the module refuses every member whatever its policy (kmod/intercept.c, the containment
#: verdict; unshare and clone only with namespace flags).
MODULE_CONTAINMENT: frozenset[str] = frozenset(
    {
        "bpf",
        "chroot",
        "clone3",
        "delete_module",
        "finit_module",
        "fsconfig",
        "fsmount",
        "fsopen",
        "fspick",
        "init_module",
        "io_uring_setup",
        "kexec_file_load",
        "kexec_load",
        "mount",
        "mount_setattr",
        "move_mount",
        "open_by_handle_at",
        "open_tree",
        "perf_event_open",
        "pivot_root",
        "reboot",
        "setns",
        "umount2",
    }
)

#: Denied by the launcher's seccomp filter (those the module does not deny itself; see above).
SECCOMP_DENY: frozenset[str] = frozenset(
    {
        "bpf",
        "chroot",
        "create_module",
        "delete_module",
        "finit_module",
        "fsconfig",
        "fsmount",
        "fsopen",
        "fspick",
        "get_kernel_syms",
        "init_module",
        "io_uring_enter",
        "io_uring_register",
        "io_uring_setup",
        "kcmp",
        "kexec_file_load",
        "kexec_load",
        "lookup_dcookie",
        "mount",
        "mount_setattr",
        "move_mount",
        "name_to_handle_at",
        "nfsservctl",
        "open_by_handle_at",
        "open_tree",
        "perf_event_open",
        "pivot_root",
        "query_module",
        "quotactl",
        "quotactl_fd",
        "reboot",
        "setns",
        "_sysctl",
        "sysfs",
        "umount2",
        "uselib",
        "ustat",
        "vhangup",
    }
)

#: Linux capability names (``capability.h``) to their numbers.
CAPABILITIES: dict[str, int] = {
    name: nr
    for nr, name in enumerate(
        (
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_DAC_READ_SEARCH",
            "CAP_FOWNER",
            "CAP_FSETID",
            "CAP_KILL",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETPCAP",
            "CAP_LINUX_IMMUTABLE",
            "CAP_NET_BIND_SERVICE",
            "CAP_NET_BROADCAST",
            "CAP_NET_ADMIN",
            "CAP_NET_RAW",
            "CAP_IPC_LOCK",
            "CAP_IPC_OWNER",
            "CAP_SYS_MODULE",
            "CAP_SYS_RAWIO",
            "CAP_SYS_CHROOT",
            "CAP_SYS_PTRACE",
            "CAP_SYS_PACCT",
            "CAP_SYS_ADMIN",
            "CAP_SYS_BOOT",
            "CAP_SYS_NICE",
            "CAP_SYS_RESOURCE",
            "CAP_SYS_TIME",
            "CAP_SYS_TTY_CONFIG",
            "CAP_MKNOD",
            "CAP_LEASE",
            "CAP_AUDIT_WRITE",
            "CAP_AUDIT_CONTROL",
            "CAP_SETFCAP",
            "CAP_MAC_OVERRIDE",
            "CAP_MAC_ADMIN",
            "CAP_SYSLOG",
            "CAP_WAKE_ALARM",
            "CAP_BLOCK_SUSPEND",
            "CAP_AUDIT_READ",
            "CAP_PERFMON",
            "CAP_BPF",
            "CAP_CHECKPOINT_RESTORE",
        )
    )
}


@dataclass(frozen=True, slots=True)
class SandboxView:
    """Relaxations of the default policy a container asked for (all off by default)."""

    allow_syscalls: tuple[str, ...] = ()
    allow_raw_sockets: bool = False
    capabilities: tuple[str, ...] = ()
    host_network: bool = False
    #: The container may use the host's "/" as its root (admin-only at the controller).
    allow_host_root: bool = False

    @property
    def capability_mask(self) -> int:
        mask = 0
        for name in self.capabilities:
            mask |= 1 << CAPABILITIES[name]
        return mask


def _known_syscalls(names: Iterable[str], what: str) -> tuple[str, ...]:
    out = tuple(sorted(set(names)))
    unknown = [n for n in out if n not in syscalls.NUMBERS]
    if unknown:
        raise InvalidArgument(f"{what}: unknown system call {unknown[0][:64]!r}")
    return out


def validate_sandbox(sandbox: SandboxView) -> SandboxView:
    """The same sandbox with sorted, de-duplicated names; InvalidArgument for an unknown name."""
    caps = []
    for name in sandbox.capabilities:
        canonical = name.upper()
        if not canonical.startswith("CAP_"):
            canonical = "CAP_" + canonical
        if canonical not in CAPABILITIES:
            raise InvalidArgument(f"unknown capability {name[:64]!r}")
        caps.append(canonical)
    return SandboxView(
        allow_syscalls=_known_syscalls(sandbox.allow_syscalls, "allow_syscalls"),
        allow_raw_sockets=sandbox.allow_raw_sockets,
        capabilities=tuple(sorted(set(caps), key=CAPABILITIES.__getitem__)),
        host_network=sandbox.host_network,
        allow_host_root=sandbox.allow_host_root,
    )


def effective_deny(deny_syscalls: Iterable[str], sandbox: SandboxView) -> tuple[str, ...]:
    """What the module denies: the default list plus the container's own, minus its allowances."""
    return tuple(sorted((DEFAULT_DENY | set(deny_syscalls)) - set(sandbox.allow_syscalls)))


def seccomp_deny(effective: Iterable[str], sandbox: SandboxView) -> tuple[int, ...]:
    """System call numbers the launcher's seccomp filter answers with EPERM: the default profile
    minus what the module denies (and counts) itself, minus the container's allowances."""
    names = SECCOMP_DENY - MODULE_CONTAINMENT - set(effective) - set(sandbox.allow_syscalls)
    return tuple(sorted(syscalls.NUMBERS[n] for n in names if n in syscalls.NUMBERS))
