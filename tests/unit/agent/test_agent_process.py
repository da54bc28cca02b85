"""ProcessRunner + exec helper: start through fork+exec of the helper, reap through pidfds."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import pytest

from chital.agent.process import ExitStatus, LaunchSpec, ProcessRunner
from chital.errdefs import InvalidArgument, NotFound, Unavailable


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
        "container_id": 1,
        "device_path": None,
    }
    args.update(kw)
    return LaunchSpec(**args)  # type: ignore[arg-type]


def test_exit_code_and_env(
    runner: ProcessRunner, exits: queue.Queue[tuple[int, ExitStatus]], tmp_path: Path
) -> None:
    pid = runner.start(spec(tmp_path, ["sh", "-c", "echo $X; exit 7"], env={"X": "y"}))
    runner.watch(pid)
    got_pid, status = exits.get(timeout=10)
    assert got_pid == pid
    assert (status.exit_code, status.signal) == (7, 0)
    assert (tmp_path / "out").read_bytes() == b"y\n"


def test_killed_by_signal(
    runner: ProcessRunner, exits: queue.Queue[tuple[int, ExitStatus]], tmp_path: Path
) -> None:
    pid = runner.start(spec(tmp_path, ["sleep", "30"]))
    runner.watch(pid)
    runner.send_signal(pid, 9)
    _, status = exits.get(timeout=10)
    assert (status.exit_code, status.signal) == (-1, 9)


def test_helper_errors_are_typed(runner: ProcessRunner, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        runner.start(spec(tmp_path, ["/no/such/program"]))
    with pytest.raises(InvalidArgument):
        runner.start(spec(tmp_path, ["true"], cwd="/missing-dir"))
    # Real-device mode with a device that is not there: the helper refuses before exec.
    with pytest.raises(Unavailable):
        runner.start(spec(tmp_path, ["true"], device_path=str(tmp_path / "no-chital")))
