"""Escapes from a busybox container root, as a member.

The member is set up the way the agent does it: a child chroots into the container root, waits
while its parent adds it with ADD_PROC, then execs (``c/ctr_exec.c``). The attempts run in a static
C program (``c/probe.c``) inside the root, because a busybox tree has no Python. Each attempt must
fail with the errno the uapi header promises; the same attempts by a chrooted non-member (the
control) show which ones would otherwise have succeeded, so a pass is not vacuous.
"""

from __future__ import annotations

import errno
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence

import pytest
from conftest import Sandbox, helper, parse_json_lines

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
    "ptrace_attach": errno.ESRCH,  # outside tasks do not exist for a member
    "ptrace_seize": errno.ESRCH,
    "kill_outsider_sig0": errno.ESRCH,
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


# -- other processes: signals, by proxy too, priority, limits, scheduling; and raw sockets --------
#
# Each probe runs as a member as root and as uid 65534 (the default container user), beside the same
# probe run by a chrooted non-member (the control) that shows the route is real. The target outside
# runs as the probe's uid, so that without the module the calls would work.

NOBODY = 65534
USERS = {"root": 0, "nobody": NOBODY}
#: Numbers of the system calls whose denials the module must count (x86_64).
NR_KILL, NR_SOCKET, NR_FTRUNCATE, NR_FCNTL, NR_PRLIMIT64 = 62, 41, 77, 72, 302


def _spawn_outsider(uid: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "300"], user=uid, group=uid, extra_groups=[])


@pytest.fixture(params=list(USERS))
def user(request: pytest.FixtureRequest) -> int:
    return USERS[request.param]


@pytest.fixture
def same_uid_outsider(user: int) -> Iterator[subprocess.Popen[bytes]]:
    """A process outside every container, running as the probe's uid."""
    proc = _spawn_outsider(user)
    yield proc
    proc.kill()
    proc.wait()


def _run(
    sandbox: Sandbox, argv: list[str], uid: int, *, member: bool = True, opts: Sequence[str] = ()
) -> tuple[dict[str, dict], dict]:
    """Run a probe; returns its results by name and the container's counters (``ctr_exec -S``)."""
    cmd = [helper("ctr_exec"), "-r", str(sandbox.root), "-S", "-u", str(uid), *opts]
    if not member:
        cmd.append("-M")
    proc = subprocess.run([*cmd, "--", *argv], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{argv} rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    counters = [c for c in parse_json_lines(proc.stderr) if "denied_total" in c]
    assert len(counters) == 1, proc.stderr
    return {r["name"]: r for r in parse_json_lines(proc.stdout)}, counters[0]


def _errnos(results: dict[str, dict]) -> dict[str, str]:
    return {
        n: "ok" if r["ret"] >= 0 else errno.errorcode.get(r["errno"], str(r["errno"]))
        for n, r in results.items()
    }


TASK_CALLS = (
    "kill_sig0",
    "prlimit_get",
    "getpriority",
    "setpriority",
    "sched_getaffinity",
    "sched_setaffinity",
    "sched_getscheduler",
    "sched_setscheduler",
    "ioprio_get",
    "ioprio_set",
    "getsid",
    "getpgid",
)


def test_other_processes_answer_esrch(
    sandbox: Sandbox, user: int, same_uid_outsider: subprocess.Popen[bytes]
) -> None:
    """kill(pid, 0), prlimit, priority, affinity, scheduler, ioprio, getsid/getpgid of an outsider."""
    argv = ["/bin/probe", "tasks", str(same_uid_outsider.pid)]
    control, _ = _run(sandbox, argv, user, member=False)
    results, counters = _run(sandbox, argv, user)
    print("control", _errnos(control), "\nmember", _errnos(results), counters)
    assert set(results) == set(TASK_CALLS)
    assert {n for n, e in _errnos(control).items() if e != "ok"} == set(), "the control must reach it"
    assert _errnos(results) == dict.fromkeys(TASK_CALLS, "ESRCH")
    assert same_uid_outsider.poll() is None
    # Every refusal is counted, the ones made by hooks (kill, setpriority, ...) as well.
    assert counters["denied_total"] >= len(TASK_CALLS)
    assert counters["denied"].get(str(NR_KILL)) == 1
    assert counters["denied"].get(str(NR_PRLIMIT64)) == 1


def test_root_outsider_by_nobody(sandbox: Sandbox, outsider: int) -> None:
    """The control sees EPERM (the pid exists); the member sees ESRCH for everything (it learns nothing)."""
    control, _ = _run(sandbox, ["/bin/probe", "tasks", str(outsider)], NOBODY, member=False)
    results, _ = _run(sandbox, ["/bin/probe", "tasks", str(outsider)], NOBODY)
    print("control", _errnos(control), "\nmember", _errnos(results))
    assert _errnos(control)["kill_sig0"] == "EPERM"
    assert _errnos(results) == dict.fromkeys(TASK_CALLS, "ESRCH")


def test_own_exited_child_can_be_signalled(sandbox: Sandbox, user: int) -> None:
    for member in (False, True):
        results, counters = _run(sandbox, ["/bin/probe", "zombie"], user, member=member)
        print(member, _errnos(results))
        assert _errnos(results) == {
            "waitid_nowait": "ok",
            "kill_zombie_sig0": "ok",
            "kill_zombie_term": "ok",
            "reap": "ok",
        }
        if member:
            assert counters["denied_total"] == 0


@pytest.mark.parametrize("how", ["setown", "setown_ex", "fiosetown"])
def test_sigio_cannot_kill_an_outsider(sandbox: Sandbox, user: int, how: str) -> None:
    """F_SETOWN (or F_SETOWN_EX, FIOSETOWN) + F_SETSIG(SIGKILL) + O_ASYNC, then I/O."""
    victim = _spawn_outsider(user)
    try:
        results, counters = _run(sandbox, ["/bin/probe", "sigio", how, str(victim.pid)], user)
        print("member", _errnos(results), counters)
        time.sleep(0.2)
        assert victim.poll() is None, f"SIGIO by proxy killed an outside process: {_errnos(results)}"
        assert results["getown"]["ret"] != victim.pid
        if how == "setown":
            assert _errnos(results)["set_owner"] == "ESRCH"
        assert counters["denied_total"] >= 1  # refused at sys_enter or by the __f_setown hook
        # The control: the same steps by a non-member kill it.
        _run(sandbox, ["/bin/probe", "sigio", how, str(victim.pid)], user, member=False)
        assert victim.wait(timeout=10) == -signal.SIGKILL
    finally:
        victim.kill()
        victim.wait()


def test_own_sigio_still_works(sandbox: Sandbox) -> None:
    """A member may still be its own SIGIO owner: the probe asks for SIGKILL to itself, and gets it."""
    argv = ["/bin/sh", "-c", "exec /bin/probe sigio setown $$"]
    proc = subprocess.run(
        [helper("ctr_exec"), "-r", str(sandbox.root), "--", *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 128 + signal.SIGKILL, (proc.stdout, proc.stderr)


def test_ftruncate_of_an_outside_fd_fails(sandbox: Sandbox, user: int) -> None:
    """A writable descriptor of an outside file, inherited: ftruncate must not reach the file."""
    victim = sandbox.base / "truncate-me"
    content = "outside content\n"
    victim.write_text(content)
    victim.chmod(0o666)
    argv = ["/bin/probe", "ftruncate", "@FD0@"]
    results, counters = _run(sandbox, argv, user, opts=["-w", str(victim)])
    print(_errnos(results), counters)
    assert results["ftruncate"]["ret"] < 0
    assert victim.read_text() == content
    assert counters["denied"].get(str(NR_FTRUNCATE)) == 1
    control, _ = _run(sandbox, argv, user, member=False, opts=["-w", str(victim)])
    assert control["ftruncate"]["ret"] == 0
    assert victim.read_text() == ""


RAW_SOCKETS = ("af_packet_raw", "af_packet_dgram", "inet_raw_icmp", "inet_sock_packet", "unix_raw_pair")


def test_raw_sockets_refused_with_the_flag(sandbox: Sandbox, user: int) -> None:
    with_flag, counters = _run(sandbox, ["/bin/probe", "sockets"], user, opts=["-R"])
    without, plain_counters = _run(sandbox, ["/bin/probe", "sockets"], user)
    print("flag", _errnos(with_flag), counters, "\nno flag", _errnos(without))
    assert {n: _errnos(with_flag)[n] for n in RAW_SOCKETS} == dict.fromkeys(RAW_SOCKETS, "EPERM")
    assert _errnos(with_flag)["inet_dgram"] == "ok"
    assert counters["denied"].get(str(NR_SOCKET)) == 4
    assert counters["denied"].get("53") == 1  # socketpair
    assert plain_counters["denied_total"] == 0
    if user == 0:  # root gets them without the flag: the route is real
        assert {n: _errnos(without)[n] for n in RAW_SOCKETS} == dict.fromkeys(RAW_SOCKETS, "ok")
    else:  # uid 65534 lacks CAP_NET_RAW anyway; only the AF_UNIX pair works
        assert _errnos(without)["unix_raw_pair"] == "ok"


def test_device_has_one_owner_and_no_member(sandbox: Sandbox) -> None:
    """ctr_exec holds the device open while its child runs: the child, member or not, cannot open it."""
    member, _ = _run(sandbox, ["/bin/probe", "device"], 0)
    control, _ = _run(sandbox, ["/bin/probe", "device"], 0, member=False)
    nobody, _ = _run(sandbox, ["/bin/probe", "device"], NOBODY, member=False)
    assert _errnos(member)["device"] == "EPERM"  # a member: refused first
    assert _errnos(control)["device"] == "EBUSY"  # root with every capability: the second open
    assert _errnos(nobody)["device"] in ("EACCES", "EPERM")  # the node's mode, or the capability
