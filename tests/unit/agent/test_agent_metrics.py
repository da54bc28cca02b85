"""The agent's metrics: the instrumented device, the container collector, exposition conventions."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chital.agent.device.base import KernelContainerSpec
from chital.agent.device.fake import FakeDevice
from chital.agent.metrics import (
    AgentMetrics,
    InstrumentedDevice,
    exit_reason,
    parse_listen,
    read_cgroup_usage,
    read_proc_usage,
    start_metrics_server,
)
from chital.agent.syscalls import NUMBERS
from chital.errdefs import NotFound


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "30"])
    yield proc
    proc.kill()
    proc.wait()


def samples(metrics: AgentMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_every_device_call_is_timed_and_errors_counted_by_class(tmp_path: Path) -> None:
    m = AgentMetrics()
    dev = InstrumentedDevice(FakeDevice(), m)
    cid = dev.create(KernelContainerSpec(name="c1", root=str(tmp_path)))
    dev.info(cid)
    with pytest.raises(NotFound):
        dev.info(cid + 100)
    s = samples(m)
    assert s[("chital_agent_device_ioctl_duration_seconds_count", (("command", "CREATE"),))] == 1
    assert s[("chital_agent_device_ioctl_duration_seconds_count", (("command", "INFO"),))] == 2
    assert s[("chital_agent_device_ioctl_errors_total", (("command", "INFO"), ("error", "NotFound")))] == 1


def test_events_are_counted_by_kind_and_drops_summed(
    sleeper: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    m = AgentMetrics()
    fake = FakeDevice(queue_len=1)
    dev = InstrumentedDevice(fake, m)
    cid = dev.create(
        KernelContainerSpec(name="c1", root=str(tmp_path), deny_syscalls=frozenset({NUMBERS["ptrace"]}))
    )
    dev.add_proc(cid, sleeper.pid)
    fake.record_syscall(sleeper.pid, NUMBERS["ptrace"])  # DENIED, queued
    fake.record_syscall(sleeper.pid, NUMBERS["getpid"])  # allowed: no event
    fake.notify_exit(sleeper.pid, 0)  # EXIT and EMPTY: the queue of one drops both
    batch = dev.read_events()
    assert batch.dropped == 2
    s = samples(m)
    assert s[("chital_agent_device_events_total", (("kind", "DENIED"),))] == 1
    assert s[("chital_agent_device_events_dropped_total", ())] == 2


def test_test_hooks_of_the_fake_pass_through(tmp_path: Path) -> None:
    dev = InstrumentedDevice(FakeDevice(), AgentMetrics())
    assert dev.container_of(1) is None  # FakeDevice-only method


def test_container_collector_reads_members_counters_and_usage(
    sleeper: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    m = AgentMetrics()
    fake = FakeDevice()
    m.watch_containers(fake)
    cid = fake.create(
        KernelContainerSpec(name="box", root=str(tmp_path), deny_syscalls=frozenset({NUMBERS["ptrace"]}))
    )
    fake.add_proc(cid, sleeper.pid)
    for _ in range(3):
        fake.record_syscall(sleeper.pid, NUMBERS["read"])
    fake.record_syscall(sleeper.pid, NUMBERS["ptrace"])
    s = samples(m)
    c = (("container", "box"),)
    assert s[("chital_agent_containers", ())] == 1
    assert s[("chital_agent_processes", ())] == 1
    assert s[("chital_agent_container_processes", c)] == 1
    assert s[("chital_agent_container_syscalls_total", c)] == 4
    assert s[("chital_agent_container_denied_syscalls_total", c)] == 1
    assert s[("chital_agent_syscall_calls_total", (("container", "box"), ("syscall", "read")))] == 3
    assert s[("chital_agent_syscall_denials_total", (("container", "box"), ("syscall", "ptrace")))] == 1
    assert ("chital_agent_syscall_denials_total", (("container", "box"), ("syscall", "read"))) not in s
    # No cgroup given: usage from /proc of the members.
    assert s[("chital_agent_container_memory_usage_bytes", c)] > 0
    assert s[("chital_agent_container_pids", c)] == 1
    assert ("chital_agent_container_cpu_usage_seconds_total", c) in s


def test_destroyed_containers_disappear_from_the_scrape(tmp_path: Path) -> None:
    m = AgentMetrics()
    fake = FakeDevice()
    m.watch_containers(fake)
    cid = fake.create(KernelContainerSpec(name="gone", root=str(tmp_path)))
    assert ("chital_agent_container_processes", (("container", "gone"),)) in samples(m)
    fake.destroy(cid)
    s = samples(m)
    assert s[("chital_agent_containers", ())] == 0
    assert not [k for k in s if ("container", "gone") in k[1]]


def test_cgroup_usage_and_its_absence(tmp_path: Path) -> None:
    cg = tmp_path / "cg"
    cg.mkdir()
    (cg / "memory.current").write_text("1048576\n")
    (cg / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
    (cg / "pids.current").write_text("3\n")
    usage = read_cgroup_usage(cg)
    assert usage is not None
    assert (usage.memory_bytes, usage.cpu_seconds, usage.pids) == (1048576, 2.5, 3)
    (cg / "pids.current").unlink()
    partial = read_cgroup_usage(cg)
    assert partial is not None and partial.pids is None and partial.memory_bytes == 1048576
    assert read_cgroup_usage(tmp_path / "missing") is None


def test_collector_prefers_the_cgroup(tmp_path: Path) -> None:
    cg = tmp_path / "cg"
    cg.mkdir()
    (cg / "memory.current").write_text("4096\n")
    m = AgentMetrics()
    fake = FakeDevice()
    m.watch_containers(fake, cgroup_dir_of=lambda name: cg if name == "box" else None)
    fake.create(KernelContainerSpec(name="box", root=str(tmp_path)))
    s = samples(m)
    assert s[("chital_agent_container_memory_usage_bytes", (("container", "box"),))] == 4096
    assert ("chital_agent_container_pids", (("container", "box"),)) not in s  # absent file: no series


def test_proc_usage_skips_vanished_pids() -> None:
    usage = read_proc_usage([2**22 + 7])  # above pid_max: never a process
    assert (usage.memory_bytes, usage.cpu_seconds, usage.pids) == (0, 0.0, 0)


@pytest.mark.parametrize(
    ("code", "sig", "oom", "reason"),
    [
        (0, 0, False, "exited"),
        (3, 0, False, "failed"),
        (-1, 9, False, "signaled"),
        (-1, 9, True, "oom_killed"),
    ],
)
def test_exit_reasons(code: int, sig: int, oom: bool, reason: str) -> None:
    assert exit_reason(code, sig, oom) == reason
    m = AgentMetrics()
    m.record_exit(code, sig, oom)
    assert samples(m)[("chital_agent_process_exits_total", (("reason", reason),))] == 1


def test_registries_are_separate() -> None:
    a, b = AgentMetrics(), AgentMetrics()
    a.processes_started.inc()
    assert samples(b)[("chital_agent_processes_started_total", ())] == 0


def test_no_created_series_and_promtool_clean(sleeper: subprocess.Popen[bytes], tmp_path: Path) -> None:
    m = AgentMetrics()
    fake = FakeDevice()
    dev = InstrumentedDevice(fake, m)
    m.watch_containers(dev)
    cid = dev.create(KernelContainerSpec(name="c", root=str(tmp_path)))
    dev.add_proc(cid, sleeper.pid)
    m.record_exit(0, 0)
    server = start_metrics_server("127.0.0.1:0", m.registry, port_file=tmp_path / "port")
    try:
        assert int((tmp_path / "port").read_text()) == server.port
        url = f"http://127.0.0.1:{server.port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read()
        openmetrics = urllib.request.urlopen(
            urllib.request.Request(url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}),
            timeout=5,
        ).read()
    finally:
        server.stop()
    assert b"_created" not in text
    assert b"_created" not in openmetrics
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:9472") == ("::1", 9472)
    assert parse_listen(":9472") == ("0.0.0.0", 9472)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen("localhost")
