"""The agent removes the directories of destroyed containers (AgentRuntime with FakeDevice, real
processes and log files): at destroy once no exited process of theirs is remembered, and at
start-up those of containers nobody knows, never one in which a process still runs."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from chital.agent.device.fake import FakeDevice
from chital.agent.dirs import DirReaper, live_pids_recorded, stale_dirs
from chital.agent.runtime import AgentRuntime, RuntimeConfig


@pytest.fixture
def device() -> Iterator[FakeDevice]:
    d = FakeDevice()
    yield d
    d.close()


def runtime(device: FakeDevice, state: Path, exited_limit: int = 10_000) -> AgentRuntime:
    return AgentRuntime(device, RuntimeConfig(state_dir=state, exited_process_limit=exited_limit))


def settle(rt: AgentRuntime) -> None:
    """Wait until the reaper thread has done what was queued (closing it joins it)."""
    rt._dirs.close()
    rt._dirs = DirReaper(Path(rt._containers_root), rt._is_live_container)


def test_destroy_without_remembered_processes_removes_the_directory(
    device: FakeDevice, tmp_path: Path
) -> None:
    rt = runtime(device, tmp_path / "state")
    try:
        rt.create_container("c1")
        rt.create_container("c2")
        cdir = tmp_path / "state" / "containers"
        assert (cdir / "c1" / "logs").is_dir()
        rt.destroy_container("c1", 0)
        settle(rt)
        assert not (cdir / "c1").exists()
        assert (cdir / "c2" / "logs").is_dir()  # a live container's files stay
    finally:
        rt.close()


def test_logs_stay_readable_until_the_exited_process_is_forgotten(device: FakeDevice, tmp_path: Path) -> None:
    rt = runtime(device, tmp_path / "state", exited_limit=1)
    try:
        cdir = tmp_path / "state" / "containers"
        rt.create_container("c1")
        p = rt.start_process("c1", "p1", ["/bin/echo", "hello"])
        assert rt.wait_process(p.uid, timeout=30).state.value == "EXITED"
        rt.destroy_container("c1", 0)
        settle(rt)
        # Stopped, but its process is remembered: its logs are still served.
        chunks = list(rt.stream_logs("p1", follow=False, tail_lines=0, is_active=lambda: True))
        assert b"".join(c.data for c in chunks) == b"hello\n"
        assert (cdir / "c1" / "logs" / "p1.stdout").exists()
        # Another exit pushes p1 out of the memory of exited processes (limit 1): the directory goes.
        rt.create_container("c2")
        q = rt.start_process("c2", "p2", ["/bin/true"])
        rt.wait_process(q.uid, timeout=30)
        settle(rt)
        assert not (cdir / "c1").exists()
        assert (cdir / "c2").is_dir()
    finally:
        rt.close()


def test_start_up_removes_directories_nobody_knows(device: FakeDevice, tmp_path: Path) -> None:
    state = tmp_path / "state"
    cdir = state / "containers"
    (cdir / "gone" / "logs").mkdir(parents=True)
    (cdir / "gone" / "logs" / "p.stdout").write_bytes(b"x" * 100)
    (cdir / "gone" / "processes").mkdir()
    # A directory whose recorded process still runs: kept, whatever else is true.
    proc = subprocess.Popen(["sleep", "60"])
    try:
        (cdir / "busy" / "processes").mkdir(parents=True)
        (cdir / "busy" / "processes" / "p.json").write_text(json.dumps({"pid": proc.pid, "state": "RUNNING"}))
        rt = runtime(device, state)
        try:
            live = rt.create_container("live")
            assert not (cdir / "gone").exists()
            assert (cdir / "busy").is_dir()
            assert (cdir / live.uid / "logs").is_dir()
        finally:
            rt.close()
    finally:
        proc.kill()
        proc.wait()


def test_stale_dirs_and_live_pids(tmp_path: Path) -> None:
    root = tmp_path / "containers"
    for name in ("known", "old", "running"):
        (root / name / "processes").mkdir(parents=True)
    (root / "running" / "processes" / "a.json").write_text(
        json.dumps({"pid": os.getpid(), "state": "RUNNING", "start_ticks": 42})
    )
    (root / "old" / "processes" / "b.json").write_text(json.dumps({"pid": os.getpid(), "state": "EXITED"}))
    (root / "file").write_text("not a directory")
    (root / "link").symlink_to(root / "old")
    ticks = {os.getpid(): 42}
    assert live_pids_recorded(root / "running", ticks.get) == [os.getpid()]
    # The same pid with another start time is another process: not live.
    assert live_pids_recorded(root / "running", {os.getpid(): 7}.get) == []
    assert [p.name for p in stale_dirs(root, lambda uid: uid == "known", ticks.get)] == ["old"]
