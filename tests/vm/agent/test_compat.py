"""Compatibility: ordinary programs behave the same inside a container and outside the sandbox.

Each case is a busybox shell command (plus the ``sbx`` probes for threads, a pty, a zombie child and
TCP on loopback). It runs (1) inside a container through the real agent as the default user, and (2)
outside, in the same guest, in a copy of the same root with an ordinary /proc and /dev, with
``env --default-signal chroot --userspec=65534:65534`` (no namespaces, no module, no seccomp).
Stdout and the exit status must be equal.

Documented differences, by design, not tested for equality: the hostname (the container's name),
what ``ps`` lists (only the container's processes), and the addresses a process can reach (only the
container's loopback).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from chital.api.agent.v1 import agent_pb2 as pb

from .guest_agent import AgentProcess

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

CASES = {
    "sigpipe-in-a-pipeline": "{ (yes; echo $? >&3) | head -n1; } 3>&1",
    "yes-head-status": "yes | head -n1",
    "exit-code": "exit 42",
    "killed-by-a-signal": "kill -9 $$",
    "trap-usr1": "trap 'echo got-usr1' USR1; kill -USR1 $$; echo after",
    "trap-term-exits": "trap 'echo term; exit 3' TERM; kill -TERM $$; sleep 5; echo not-reached",
    "background-job-and-wait": "sleep 0.1 & wait $!; echo waited=$?",
    "signal-own-zombie-child": "sbx zombie",
    "threads": "sbx threads",
    "pty": "sbx pty",
    "loopback-tcp": "sbx tcp-self",
    "proc-self": "readlink /proc/self/exe; grep -c '^Name:' /proc/self/status; ls -d /proc/self/fd",
    "no-signal-ignored-or-blocked": "grep -E '^Sig(Blk|Ign)' /proc/self/status",
    "ps-sees-itself": "ps -o comm | grep -c '^ps$'",
    "dev-nodes": "head -c 5 /dev/zero | wc -c; head -c 3 /dev/urandom | wc -c; echo x > /dev/null && echo ok",
    "tmp-is-writable": "echo data > /tmp/compat.$$ && cat /tmp/compat.$$ && rm /tmp/compat.$$",
    "identity": "id -u; id -g; id -G",
    "umask-and-modes": "umask; touch /tmp/m.$$; stat -c %a /tmp/m.$$; rm /tmp/m.$$",
}


@pytest.fixture(scope="module")
def outside_root(root: Path) -> Iterator[Path]:
    """A copy of the container root with the guest's /proc and an ordinary /dev (tmpfs + devpts)."""
    out = root.parent / "outside"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(root, out, symlinks=True, ignore=shutil.ignore_patterns("proc", "dev"))
    (out / "proc").mkdir()
    (out / "dev").mkdir()
    (out / "tmp").chmod(0o1777)
    mounts = [
        ["mount", "--bind", "/proc", str(out / "proc")],
        ["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", str(out / "dev")],
    ]
    for cmd in mounts:
        subprocess.run(cmd, check=True)
    for name, major, minor in (("null", 1, 3), ("zero", 1, 5), ("urandom", 1, 9), ("tty", 5, 0)):
        subprocess.run(
            ["mknod", "-m", "666", str(out / "dev" / name), "c", str(major), str(minor)], check=True
        )
    (out / "dev" / "pts").mkdir()
    subprocess.run(
        ["mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666", "devpts", str(out / "dev" / "pts")],
        check=True,
    )
    (out / "dev" / "ptmx").symlink_to("pts/ptmx")
    try:
        yield out
    finally:
        for sub in ("dev/pts", "dev", "proc"):
            subprocess.run(["umount", "-l", str(out / sub)], check=False)


@pytest.fixture(scope="module")
def compat(agent: AgentProcess, root: Path) -> Iterator[str]:
    agent.create("compat", root)
    yield "compat"
    agent.stub.DestroyContainer(pb.DestroyContainerRequest(uid="compat", grace_period_seconds=0), timeout=120)


def _status(exit_code: int, signal: int) -> str:
    return f"signal {signal}" if signal else f"exit {exit_code}"


@pytest.mark.parametrize("case", CASES)
def test_same_inside_and_outside(agent: AgentProcess, compat: str, outside_root: Path, case: str) -> None:
    script = CASES[case]
    agent.start_process(compat, f"compat-{case}", ["/bin/sh", "-c", script])
    done = agent.wait_exit(f"compat-{case}")
    out_in, err_in = agent.logs(f"compat-{case}")
    proc = subprocess.run(
        # env: dispositions back to default (the harness runs this test with SIGINT ignored).
        [
            "env",
            "--default-signal",
            "chroot",
            "--userspec=65534:65534",
            str(outside_root),
            "/bin/sh",
            "-c",
            script,
        ],
        capture_output=True,
        env={"PATH": DEFAULT_PATH},
        timeout=120,
        check=False,
    )
    status_out = _status(proc.returncode, 0) if proc.returncode >= 0 else _status(0, -proc.returncode)
    inside = (out_in.decode(), _status(done.exit_code, done.signal))
    outside = (proc.stdout.decode(), status_out)
    assert inside == outside, f"inside stderr: {err_in!r}; outside stderr: {proc.stderr!r}"
