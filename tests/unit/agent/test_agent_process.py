"""ProcessRunner + chital-launch: start through fork+exec of the launcher, reap through pidfds.

Plain mode (hollow agents) runs anywhere. Holder and exec mode need root and namespaces (no kernel
module: the agent's ADD_PROC is replaced by a callback), so they run on a root host too: the whole
sandbox but the module, in milliseconds.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chital.agent import policy, syscalls
from chital.agent.process import ExitStatus, HolderSpec, LaunchSpec, ProcessRunner, encode_spec
from chital.errdefs import FailedPrecondition, Internal, InvalidArgument, NotFound, PermissionDenied

BUSYBOX = shutil.which("busybox")
needs_root_ns = pytest.mark.skipif(
    os.geteuid() != 0 or BUSYBOX is None, reason="needs root (namespaces, mounts) and busybox"
)


@pytest.fixture
def exits() -> queue.Queue[tuple[int, ExitStatus]]:
    return queue.Queue()


@pytest.fixture
def runner(exits: queue.Queue[tuple[int, ExitStatus]]) -> Iterator[ProcessRunner]:
    r = ProcessRunner(lambda pid, status: exits.put((pid, status)))
    yield r
    r.close()


def spec(tmp_path: Path, argv: list[str], **kw: object) -> LaunchSpec:
    args: dict[str, object] = {
        "argv": argv,
        "env": {},
        "cwd": "/",
        "root": str(tmp_path),
        "uid": None,
        "gid": None,
        "stdout_path": str(tmp_path / "out"),
        "stderr_path": str(tmp_path / "err"),
    }
    args.update(kw)
    return LaunchSpec(**args)  # type: ignore[arg-type]


def run(runner: ProcessRunner, exits: queue.Queue[tuple[int, ExitStatus]], s: LaunchSpec) -> ExitStatus:
    pid = runner.start(s)
    runner.watch(pid)
    got_pid, status = exits.get(timeout=20)
    assert got_pid == pid
    return status


def test_exit_code_and_exact_env(
    runner: ProcessRunner, exits: queue.Queue[tuple[int, ExitStatus]], tmp_path: Path
) -> None:
    status = run(runner, exits, spec(tmp_path, ["sh", "-c", "env | sort; exit 7"], env={"X": "y=z"}))
    assert (status.exit_code, status.signal) == (7, 0)
    lines = (tmp_path / "out").read_text().splitlines()
    assert "X=y=z" in lines
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in lines
    # Nothing of the agent's environment leaks (sh adds PWD and SHLVL itself).
    assert {line.split("=", 1)[0] for line in lines} <= {"X", "PATH", "PWD", "SHLVL", "_", "OLDPWD"}


def test_program_searched_in_its_own_path(
    runner: ProcessRunner, exits: queue.Queue[tuple[int, ExitStatus]], tmp_path: Path
) -> None:
    bindir = tmp_path / "mybin"
    bindir.mkdir()
    prog = bindir / "hello-chital"
    prog.write_text("#!/bin/sh\necho found\n")
    prog.chmod(0o755)
    status = run(runner, exits, spec(tmp_path, ["hello-chital"], env={"PATH": f"/nonexistent:{bindir}"}))
    assert status.exit_code == 0
    assert (tmp_path / "out").read_text() == "found\n"


def test_signals_reset_before_exec(
    runner: ProcessRunner, exits: queue.Queue[tuple[int, ExitStatus]], tmp_path: Path
) -> None:
    """Python (the agent) ignores SIGPIPE; the program must not inherit that: `yes | head -n1` dies
    of SIGPIPE inside as outside, and no signal is blocked or ignored."""
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
    script = "yes | head -n1; grep -E '^Sig(Blk|Ign)' /proc/self/status; (yes; echo $? >&2) | head -n1"
    status = run(runner, exits, spec(tmp_path, ["sh", "-c", script]))
    assert status.exit_code == 0
    out = (tmp_path / "out").read_text().splitlines()
    assert "SigBlk:\t0000000000000000" in out
    assert "SigIgn:\t0000000000000000" in out
    assert (tmp_path / "err").read_text().strip() == "141"  # 128 + SIGPIPE


def test_inherited_fds_closed(
    runner: ProcessRunner, exits: queue.Queue[tuple[int, ExitStatus]], tmp_path: Path
) -> None:
    leak = os.open("/dev/null", os.O_RDONLY)  # inheritable=False by default; make it inheritable
    os.set_inheritable(leak, True)
    try:
        run(runner, exits, spec(tmp_path, ["sh", "-c", "ls /proc/self/fd"]))
    finally:
        os.close(leak)
    fds = sorted(int(x) for x in (tmp_path / "out").read_text().split())
    assert fds[:3] == [0, 1, 2]
    assert len(fds) <= 4  # 0, 1, 2 and ls's own directory fd


def test_killed_by_signal(
    runner: ProcessRunner, exits: queue.Queue[tuple[int, ExitStatus]], tmp_path: Path
) -> None:
    pid = runner.start(spec(tmp_path, ["sleep", "30"]))
    runner.watch(pid)
    runner.send_signal(pid, 9)
    _, status = exits.get(timeout=10)
    assert (status.exit_code, status.signal) == (-1, 9)


def test_launcher_errors_are_typed(runner: ProcessRunner, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        runner.start(spec(tmp_path, ["/no/such/program"]))
    with pytest.raises(NotFound):
        runner.start(spec(tmp_path, ["no-such-program-chital"]))
    with pytest.raises(InvalidArgument):
        runner.start(spec(tmp_path, ["true"], cwd="/missing-dir"))
    text = tmp_path / "text"
    text.write_text("not a program\n")
    with pytest.raises(PermissionDenied):
        runner.start(spec(tmp_path, [str(text)]))
    text.chmod(0o755)
    noexec = tmp_path / "garbage"
    noexec.write_bytes(b"\x7fELF\x00garbage")
    noexec.chmod(0o755)
    with pytest.raises(InvalidArgument, match="Exec format"):
        runner.start(spec(tmp_path, [str(noexec)]))
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(InvalidArgument):
        runner.start(spec(tmp_path, [str(loop)]))


@pytest.mark.parametrize("launcher", ["text", "missing", "loop"])
def test_a_broken_launcher_is_the_agents_fault(launcher: str, tmp_path: Path) -> None:
    """The program's ENOEXEC/ENOENT/ELOOP are the caller's mistake; the launcher's are Internal."""
    path = tmp_path / launcher
    if launcher == "text":
        path.write_text("not a program\n")
        path.chmod(0o755)
    elif launcher == "loop":
        path.symlink_to(path)
    r = ProcessRunner(lambda pid, status: None, launcher=str(path))
    try:
        with pytest.raises(Internal, match="cannot start the launcher"):
            r.start(spec(tmp_path, ["true"]))
    finally:
        r.close()


def test_spec_encoding_rejects_nul() -> None:
    assert encode_spec([("arg", "a=b"), ("env", "K=V")]) == b"arg=a=b\0env=K=V\0"
    with pytest.raises(InvalidArgument):
        encode_spec([("arg", "a\0b")])


def test_bad_spec_is_invalid_argument(tmp_path: Path) -> None:
    from chital.agent.process import find_launcher  # noqa: PLC0415

    r, w = os.pipe()
    proc = subprocess.run(
        [find_launcher(), "--status-fd", str(w)],
        input=b"mode=plain\0nonsense",
        pass_fds=(w,),
        check=False,
        capture_output=True,
    )
    os.close(w)
    report = os.read(r, 4096)
    os.close(r)
    assert proc.returncode == 127
    assert report.startswith(b"err spec 22 ")


# -- holder and exec mode (root, no module) ----------------------------------------------------


@pytest.fixture
def busybox_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "tmp").mkdir()
    assert BUSYBOX is not None
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in ("sh", "cat", "ls", "id", "hostname", "ps", "sleep", "yes", "head", "ifconfig", "grep"):
        (root / "bin" / applet).symlink_to("busybox")
    return root


@pytest.fixture
def holder(runner: ProcessRunner, busybox_root: Path, tmp_path: Path) -> Iterator[int]:
    pid = runner.start_holder(
        HolderSpec(root=str(busybox_root), hostname="ctr-test", network=True), str(tmp_path / "h")
    )
    yield pid
    os.kill(pid, signal.SIGKILL)


def sandboxed(tmp_path: Path, holder: int, argv: list[str], **kw: object) -> LaunchSpec:
    effective = policy.effective_deny((), policy.SandboxView())
    args: dict[str, object] = {
        "uid": 65534,
        "gid": 65534,
        "holder": holder,
        "seccomp_deny": policy.seccomp_deny(effective, policy.SandboxView()),
    }
    args.update(kw)
    return spec(tmp_path, argv, **args)


def wait_gone(pid: int, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < end:
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{pid}")


@needs_root_ns
def test_exec_in_holder_namespaces_fully_dropped(runner: ProcessRunner, holder: int, tmp_path: Path) -> None:
    attached: list[int] = []
    script = (
        "id; hostname; ps -o pid,user,comm; grep -E '^Cap|^NoNewPrivs|^Seccomp:' /proc/self/status; "
        "ls /dev; ifconfig -a | grep -c Link; cat /proc/kcore | head -c1 | wc -c; ulimit -c"
    )
    pid = runner.start(sandboxed(tmp_path, holder, ["sh", "-c", script]), attach=attached.append)
    assert attached == [pid]
    wait_gone(pid)
    out = (tmp_path / "out").read_text()
    assert "uid=65534 gid=65534" in out
    assert "ctr-test" in out
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert f"{cap}:\t0000000000000000" in out
    assert "NoNewPrivs:\t1" in out
    assert "Seccomp:\t2" in out
    assert "    1 65534" in out  # the holder is pid 1; the host's processes are invisible
    assert os.uname().nodename not in out.split("\n")[1]
    for node in ("null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm"):
        assert node in out.split()
    assert "\n1\n" in out  # only lo


@needs_root_ns
def test_root_without_capabilities_and_seccomp_denials(
    runner: ProcessRunner, holder: int, tmp_path: Path
) -> None:
    script = (
        "grep -E '^CapEff' /proc/self/status; hostname evil; echo rc=$?; mknod /tmp/mem c 1 1; echo rc=$?"
    )
    pid = runner.start(sandboxed(tmp_path, holder, ["sh", "-c", script], uid=0, gid=0), attach=lambda p: None)
    wait_gone(pid)
    out = (tmp_path / "out").read_text()
    assert "CapEff:\t0000000000000000" in out
    assert out.count("rc=1") == 2, out
    assert not (Path(tmp_path / "root" / "tmp" / "mem")).exists()


@needs_root_ns
def test_requested_capability_kept(runner: ProcessRunner, holder: int, tmp_path: Path) -> None:
    mask = 1 << policy.CAPABILITIES["CAP_NET_BIND_SERVICE"]
    pid = runner.start(
        sandboxed(tmp_path, holder, ["grep", "^Cap", "/proc/self/status"], capabilities=mask),
        attach=lambda p: None,
    )
    wait_gone(pid)
    out = (tmp_path / "out").read_text()
    for cap in ("CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert f"{cap}:\t{mask:016x}" in out


@needs_root_ns
def test_attach_failure_runs_nothing(runner: ProcessRunner, holder: int, tmp_path: Path) -> None:
    marker = tmp_path / "root" / "tmp" / "ran"

    def refuse(pid: int) -> None:
        raise FailedPrecondition("no")

    with pytest.raises(FailedPrecondition):
        runner.start(sandboxed(tmp_path, holder, ["sh", "-c", "echo > /tmp/ran"]), attach=refuse)
    time.sleep(0.3)
    assert not marker.exists()


@needs_root_ns
def test_exec_errors_in_sandbox_are_typed(runner: ProcessRunner, holder: int, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        runner.start(sandboxed(tmp_path, holder, ["/bin/nothing"]), attach=lambda p: None)
    with pytest.raises(InvalidArgument):
        runner.start(sandboxed(tmp_path, holder, ["true"], cwd="/nope"), attach=lambda p: None)
    with pytest.raises(FailedPrecondition):
        runner.start(sandboxed(tmp_path, 999_999_999 % 4_000_000 + 1, ["true"]), attach=lambda p: None)


def test_seccomp_list_follows_the_policy() -> None:
    box = policy.SandboxView(allow_syscalls=("syslog",))
    eff = policy.effective_deny(["ptrace"], box)
    assert "syslog" not in eff and "ptrace" in eff and "keyctl" in eff
    deny = policy.seccomp_deny(eff, box)
    assert syscalls.NUMBERS["kcmp"] in deny
    assert syscalls.NUMBERS["quotactl"] in deny
    # The module denies (and counts) these itself: seccomp would hide them from its counters.
    for name in ("syslog", "mount", "keyctl", "ptrace", "chroot"):
        assert syscalls.NUMBERS[name] not in deny
    box = policy.SandboxView(allow_syscalls=("kcmp",))
    assert syscalls.NUMBERS["kcmp"] not in policy.seccomp_deny(policy.effective_deny((), box), box)
