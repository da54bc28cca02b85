"""Escapes through the real agent: each attempt made by a container process as the default user and
as root, beside a non-member control (the same probe run directly in the guest as root) showing that
the route is real. Probes: ``c/sbx.c``.

Which layer stops what (any one suffices; the test asserts the outcome, not the layer):
capabilities (the bounding set is empty: root in a container cannot mknod, iopl, set the clock,
read the kernel log, configure interfaces, ...), namespaces (its own network, UTS, pid and mount
namespaces: loopback only, no host pids), the seccomp filter, and the module's default deny list.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from chital.api.agent.v1 import agent_pb2 as pb

from .guest_agent import AgentProcess

PROBES = (
    "mknod",
    "devmem",
    "iopl",
    "klogctl",
    "clock",
    "acct",
    "sethostname",
    "add_key",
    "packet",
    "rawip",
    "fanotify",
    "lo_mtu",
)
USERS = {"default": {}, "root": {"user_id": 0, "group_id": 0}}


def parse(out: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def run_inside(
    agent: AgentProcess, cuid: str, puid: str, argv: list[str], **kw: object
) -> tuple[str, pb.Process]:
    agent.start_process(cuid, puid, argv, **kw)
    done = agent.wait_exit(puid)
    out, _ = agent.logs(puid)
    return out.decode(), done


def run_outside(root: Path, argv: list[str]) -> str:
    """The control: the probe run directly in the guest as root, not a member, no namespaces."""
    proc = subprocess.run(
        [str(root / "bin" / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def box(agent: AgentProcess, root: Path) -> Iterator[str]:
    agent.create("sbx-a", root)
    yield "sbx-a"
    agent.stub.DestroyContainer(pb.DestroyContainerRequest(uid="sbx-a", grace_period_seconds=0), timeout=120)


def test_control_routes_are_real(root: Path) -> None:
    control = parse(run_outside(root, ["sbx", *PROBES]))
    assert control == dict.fromkeys(PROBES, "ok"), control


@pytest.mark.parametrize("user", USERS)
def test_privileged_operations_fail_inside(agent: AgentProcess, root: Path, box: str, user: str) -> None:
    hostname = socket.gethostname()
    out, _ = run_inside(agent, box, f"probes-{user}", ["/bin/sbx", *PROBES], **USERS[user])
    got = parse(out)
    assert set(got) == set(PROBES), out
    assert got["devmem"] in ("ENOENT", "EACCES", "EPERM")  # no /dev/mem in the container's /dev
    for name in PROBES:
        assert got[name] != "ok", f"{name} succeeded inside as {user}: {got}"
    assert not (root / "tmp" / "sbx-mem").exists()
    assert socket.gethostname() == hostname


@pytest.mark.parametrize("user", USERS)
def test_no_capabilities_and_no_host_pids(agent: AgentProcess, box: str, user: str) -> None:
    script = "grep -E '^Cap' /proc/self/status; echo pids: $(ls /proc | grep -E '^[0-9]+$')"
    out, _ = run_inside(agent, box, f"caps-{user}", ["/bin/sh", "-c", script], **USERS[user])
    lines = out.splitlines()
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert f"{cap}:\t0000000000000000" in lines, out
    pids = {int(p) for p in lines[-1].split()[1:]}
    assert 1 in pids and len(pids) <= 6, out  # the holder, sh, ls, grep: nothing of the host
    assert agent.proc is not None


@pytest.mark.parametrize("user", USERS)
def test_kernel_tunables_are_read_only(agent: AgentProcess, box: str, user: str) -> None:
    """core_pattern and modprobe name programs the kernel runs as host root (the classic escape of
    a container root): /proc/sys is read-only inside, whatever the user. The control shows that root
    in the guest can write them (the same value back)."""
    tunables = ("/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe")
    before = {t: Path(t).read_text() for t in tunables}
    attempt = "if echo '|/bin/sh -c id' 2>/dev/null > {}; then echo written; else echo refused; fi"
    script = "; ".join(attempt.format(t) for t in tunables)
    out, _ = run_inside(agent, box, f"sysctl-{user}", ["/bin/sh", "-c", script], **USERS[user])
    assert out.split() == ["refused", "refused"], out
    for t in tunables:
        assert Path(t).read_text() == before[t]
        Path(t).write_text(before[t])  # the control: the route is real outside


@pytest.mark.parametrize("user", USERS)
def test_device_nodes_in_the_root_are_inert(agent: AgentProcess, root: Path, box: str, user: str) -> None:
    """A device node that lies in the root directory (an unpacked image, a careless root) cannot be
    opened from inside, even by root, who passes the permission check of a root-owned node without
    any capability: the root is mounted nodev. The control opens it outside."""
    node = root / "etc" / f"node-{user}"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's numbers: harmless outside
    try:
        node.write_text("x")  # the control
        attempt = f"if echo x 2>/dev/null > /etc/{node.name}; then echo opened; else echo refused; fi"
        out, _ = run_inside(agent, box, f"node-{user}", ["/bin/sh", "-c", attempt], **USERS[user])
        assert out.split() == ["refused"], out
    finally:
        node.unlink()


def test_the_holder_is_the_parent_and_reaps(agent: AgentProcess, box: str) -> None:
    """A process's parent is the container's init (the holder), which reaps it: nothing of it is
    left on the host once it exited, and nothing points outside its pid namespace."""
    out, done = run_inside(agent, box, "parent-1", ["/bin/sh", "-c", "echo ppid=$PPID"])
    assert out.strip() == "ppid=1", out
    assert done.pid > 1
    deadline = time.monotonic() + 10
    while Path(f"/proc/{done.pid}").exists() and time.monotonic() < deadline:
        # Still there: a zombie nobody reaps would stay for good (its parent gone to the host's init).
        time.sleep(0.1)
    assert not Path(f"/proc/{done.pid}").exists(), Path(f"/proc/{done.pid}/status").read_text()


class _Listener:
    """A TCP server on all the guest's addresses, answering "hi" (a host service a member must not reach)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                with contextlib.suppress(OSError):
                    conn.sendall(b"hi")
                conn.close()

    def close(self) -> None:
        self.sock.close()


def _host_addresses() -> list[str]:
    out = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=False
    ).stdout
    return [
        line.split()[3].split("/")[0] for line in out.splitlines() if " lo " not in line and "inet" in line
    ]


@pytest.mark.parametrize("user", USERS)
def test_no_route_to_host_services_or_siblings(agent: AgentProcess, root: Path, box: str, user: str) -> None:
    service = _Listener()
    agent_port = int((agent.base / "port").read_text())
    sibling = f"sibling-{user}"
    sibling_port = 7000 + len(user)
    agent.create(sibling, root)
    try:
        agent.start_process(sibling, f"listen-{user}", ["/bin/sbx", "listen", str(sibling_port), "60"])
        targets = [("127.0.0.1", service.port), ("127.0.0.1", agent_port)]
        targets += [(addr, service.port) for addr in _host_addresses()]
        probe: list[str] = []
        for addr, port in targets:
            probe += ["connect", addr, str(port)]
        # The sibling's listener is up once its own member can reach it (the control for that route).
        deadline = time.monotonic() + 60
        while True:
            own, _ = run_inside(
                agent,
                sibling,
                f"own-{user}-{time.monotonic_ns()}",
                ["/bin/sbx", "connect", "127.0.0.1", str(sibling_port)],
            )
            if "ok" in own:
                break
            assert time.monotonic() < deadline, own
            time.sleep(0.5)
        out, _ = run_inside(
            agent,
            box,
            f"net-{user}",
            ["/bin/sbx", *probe, "connect", "127.0.0.1", str(sibling_port)],
            **USERS[user],
        )
        got = parse(out)
        assert len(got) == len(targets) + 1, out
        assert all(v != "ok" for v in got.values()), got
        # Controls: the same routes from outside work (the sibling's loopback is not the guest's).
        control = parse(run_outside(root, ["sbx", *probe]))
        assert all(v == "ok" for v in control.values()), control
    finally:
        service.close()
        agent.stub.DestroyContainer(
            pb.DestroyContainerRequest(uid=sibling, grace_period_seconds=0), timeout=120
        )


def test_compat_syscall_of_a_member_never_stops_the_event_stream(agent: AgentProcess, root: Path) -> None:
    """A member's `int $0x80` is reported (compat flag, i386 number) and every other exit still is.

    Through the launcher the seccomp filter kills such a process before the module sees the call, so
    the module's path is exercised with an adopted process (no seccomp), as a hostile member
    without the launcher's layer would be.
    """
    agent.create("int80", root)
    agent.create("int80-others", root)
    start_seq = agent.stub.GetInfo(pb.GetInfoRequest(), timeout=30).last_event_seq
    events: list[pb.StreamEventsResponse] = []
    errors: list[grpc.RpcError] = []
    stream = agent.stub.StreamEvents(pb.StreamEventsRequest(after_seq=start_seq), timeout=240)

    def collect() -> None:
        try:
            events.extend(stream)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                errors.append(exc)

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    try:
        helper = subprocess.Popen(
            [str(root / "bin" / "sbx"), "int80"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        agent.stub.AdoptProcess(
            pb.AdoptProcessRequest(container_uid="int80", process_uid="adopted", pid=helper.pid), timeout=60
        )
        out, _ = helper.communicate("go\n", timeout=60)
        assert out.strip() == "int80 -1", out  # -EPERM from the module
        # Through the launcher: the seccomp filter kills it (SIGSYS) before the call runs.
        _, killed = run_inside(
            agent, "int80-others", "int80-seccomp", ["/bin/sh", "-c", "echo go | /bin/sbx int80"]
        )
        assert killed.exit_code == 128 + 31, killed  # sh reports its child's SIGSYS
        for i in range(3):
            agent.start_process("int80-others", f"after-{i}", ["/bin/sh", "-c", f"exit {10 + i}"])
        deadline = time.monotonic() + 120
        wanted = {"after-0", "after-1", "after-2", "adopted", "int80-seccomp"}
        while time.monotonic() < deadline:
            exited = {e.process_uid for e in events if e.kind == pb.EVENT_KIND_PROCESS_EXITED}
            if wanted <= exited:
                break
            assert not errors, errors
            time.sleep(0.3)
    finally:
        stream.cancel()
        reader.join(10)
    assert not errors, errors
    exited = {e.process_uid: e for e in events if e.kind == pb.EVENT_KIND_PROCESS_EXITED}
    assert wanted <= set(exited), [(e.kind, e.process_uid) for e in events]
    assert [exited[f"after-{i}"].exit_code for i in range(3)] == [10, 11, 12]
    denied = [e for e in events if e.kind == pb.EVENT_KIND_SYSCALL_DENIED and e.container_uid == "int80"]
    assert denied and denied[0].compat_syscall and denied[0].syscall_number == 20, denied
    for uid in ("int80", "int80-others"):
        agent.stub.DestroyContainer(pb.DestroyContainerRequest(uid=uid, grace_period_seconds=0), timeout=120)
