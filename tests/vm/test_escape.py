"""Escapes from a busybox container root, as a member (DESIGN.md §9).

The member is set up the way the agent does it: a child chroots into the container root, waits
while its parent adds it with ADD_PROC, then execs (``c/ctr_exec.c``). The attempts run in a static
C program (``c/probe.c``) inside the root, because a busybox tree has no Python. Each attempt must
fail with the errno the uapi header promises; the same attempts by a chrooted non-member (the
control) show which ones would otherwise have succeeded, so a pass is not vacuous.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator

import pytest
from conftest import Sandbox, parse_json_lines

#: Attempt -> errno a member must get (from kmod/include/uapi/linux/chital.h).
MUST_FAIL = {
    "chroot": errno.EPERM,
    "mount": errno.EPERM,
    "mount_bind": errno.EPERM,
    "umount": errno.EPERM,
    "umount_root": errno.EPERM,
    "pivot_root": errno.EPERM,
    "unshare_newns": errno.EPERM,
    "unshare_newuser": errno.EPERM,
    "unshare_newpid": errno.EPERM,
    "setns": errno.EPERM,
    "clone3": errno.ENOSYS,
    "ptrace_attach": errno.EPERM,
    "ptrace_seize": errno.EPERM,
    "init_module": errno.EPERM,
    "finit_module": errno.EPERM,
    "delete_module": errno.EPERM,
    "kexec_load": errno.EPERM,
    "kexec_file_load": errno.EPERM,
    "reboot_cad_off": errno.EPERM,
    "io_uring_setup": errno.EPERM,
    "bpf": errno.EPERM,
    "perf_event_open": errno.EPERM,
    "open_by_handle_at": errno.EPERM,
    "fsopen": errno.EPERM,
    "open_tree": errno.EPERM,
    "chital_device": errno.EPERM,
    "int80_getpid": errno.EPERM,
}
#: Attempts that must work for a member (the container is usable, not a padded cell).
MUST_WORK = ("getpid", "getppid")


@pytest.fixture
def outsider() -> Iterator[int]:
    """A process outside every container, for ptrace attempts."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _probe_syscalls(sandbox: Sandbox, pid: int, member: bool, via_shell: bool = False) -> dict[str, dict]:
    argv = ["/bin/probe", "syscalls", str(pid)]
    if via_shell:  # busybox sh forks, the child execs the probe: membership must follow the fork
        argv = ["/bin/sh", "-c", f"/bin/probe syscalls {pid}; echo"]
    proc = sandbox.run_member(argv, member=member)
    return {r["name"]: r for r in parse_json_lines(proc.stdout)}


@pytest.mark.parametrize("via_shell", [False, True], ids=["direct", "forked-child"])
def test_member_escape_attempts_fail(sandbox: Sandbox, outsider: int, via_shell: bool) -> None:
    results = _probe_syscalls(sandbox, outsider, member=True, via_shell=via_shell)
    print({n: (r["ret"], r["errno"]) for n, r in results.items()})
    missing = set(MUST_FAIL) - set(results)
    assert not missing, f"probe did not report {sorted(missing)}"
    wrong = {
        name: (r["ret"], errno.errorcode.get(r["errno"], r["errno"]))
        for name, r in results.items()
        if name in MUST_FAIL and (r["ret"] >= 0 or r["errno"] != MUST_FAIL[name])
    }
    assert not wrong, f"escape attempts that did not fail as required (ret, errno): {wrong}"
    for name in MUST_WORK:
        assert results[name]["ret"] > 0, f"{name} failed for a member: {results[name]}"


def test_control_non_member_can_do_what_members_cannot(sandbox: Sandbox, outsider: int) -> None:
    """Without membership the same probe gets through (so the member test has teeth)."""
    results = _probe_syscalls(sandbox, outsider, member=False)
    expected = {"chroot", "unshare_newns", "ptrace_attach", "int80_getpid"}
    succeeded = {n for n in expected if results[n]["ret"] >= 0}
    assert succeeded == expected, results
    # Ordinary failures differ from the module's: kexec_load with no segments is allowed to root.
    assert results["init_module"]["errno"] != errno.EPERM


def test_member_busybox_tools_work(sandbox: Sandbox) -> None:
    proc = sandbox.run_member(["/bin/sh", "-c", "cat /etc/hello; ls /bin | grep -c busybox; echo $$"])
    lines = proc.stdout.splitlines()
    assert lines[0] == "hello from inside"
    assert lines[1] == "1"
    assert int(lines[2]) > 1
