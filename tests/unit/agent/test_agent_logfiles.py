"""Log caps with rotation (chital.agent.logfiles): the writer is a real process appending to its
own fd; nothing it wrote is lost, the live file's disk use stays capped, readers skip what was
released, and StreamLogs (tail and a full read) works across rotations."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chital.agent import logfiles
from chital.agent.device.fake import FakeDevice
from chital.agent.logfiles import LogLimits, data_start, read_from, rotate, rotated_path
from chital.agent.runtime import AgentRuntime, RuntimeConfig

# A writer that appends numbered lines to its stdout (an O_APPEND file) and reports each round on
# stderr, so the test rotates between writes without sleeping.
WRITER = r"""
import os, sys
for r in range(int(sys.argv[1])):
    os.write(1, b"".join(b"round %04d line %04d %s\n" % (r, i, b"x" * 40) for i in range(100)))
    os.write(2, b"r")
    sys.stdin.readline()
"""


def holes_supported(path: Path) -> bool:
    path.write_bytes(b"\0" * 16384)
    with open(path, "r+b") as f:
        try:
            logfiles._punch(f.fileno(), 0, 8192)
        except OSError:
            return False
        return True


def written(rounds: int) -> bytes:
    return b"".join(
        b"".join(b"round %04d line %04d %s\n" % (r, i, b"x" * 40) for i in range(100)) for r in range(rounds)
    )


def run_writer(path: Path, rounds: int, limits: LogLimits) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(rounds)],
            stdin=subprocess.PIPE,
            stdout=fd,
            stderr=subprocess.PIPE,
        )
    finally:
        os.close(fd)
    assert proc.stdin is not None and proc.stderr is not None
    for _ in range(rounds):
        assert proc.stderr.read(1) == b"r"
        rotate(str(path), limits)
        proc.stdin.write(b"\n")
        proc.stdin.flush()
    assert proc.wait(30) == 0


def everything(path: Path, max_files: int) -> bytes:
    parts = [Path(rotated_path(str(path), i)) for i in range(max_files - 1, 0, -1)]
    data = b"".join(p.read_bytes() for p in parts if p.exists())
    with open(path, "rb") as f:
        start = data_start(f.fileno())
        f.seek(start)
        return data + f.read()


def test_rotation_loses_nothing_and_caps_disk_use(tmp_path: Path) -> None:
    if not holes_supported(tmp_path / "probe"):
        pytest.skip("the file system of the temp dir cannot punch holes")
    path = tmp_path / "p.stdout"
    limits = LogLimits(max_bytes=16 << 10, max_files=1000)
    run_writer(path, 40, limits)
    assert everything(path, limits.max_files) == written(40)  # every byte, in order
    st = os.stat(path)
    assert st.st_size == len(written(40))  # appends went on at the end
    assert st.st_blocks * 512 <= limits.max_bytes + 2 * st.st_blksize
    assert Path(rotated_path(str(path), 1)).exists()


def test_only_max_files_are_kept(tmp_path: Path) -> None:
    if not holes_supported(tmp_path / "probe"):
        pytest.skip("the file system of the temp dir cannot punch holes")
    path = tmp_path / "p.stdout"
    limits = LogLimits(max_bytes=8 << 10, max_files=3)
    run_writer(path, 30, limits)
    assert not Path(rotated_path(str(path), 3)).exists()
    assert Path(rotated_path(str(path), 2)).exists()
    kept = everything(path, limits.max_files)
    assert written(30).endswith(kept)  # the newest bytes, contiguous
    # max_files 1: no copies at all.
    single = tmp_path / "q.stdout"
    run_writer(single, 10, LogLimits(max_bytes=8 << 10, max_files=1))
    assert not Path(rotated_path(str(single), 1)).exists()
    assert written(10).endswith(everything(single, 1))


def test_readers_skip_released_bytes_and_follow_truncation(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"a" * 8192 + b"b" * 100)
    if holes_supported(tmp_path / "probe"):
        with open(path, "r+b") as f:
            logfiles._punch(f.fileno(), 0, 8192)
        data, offset = read_from(str(path), 0, 1 << 20)
        assert (data, offset) == (b"b" * 100, 8192)
        assert logfiles.tail_floor(str(path)) == 8192
    # A file truncated under a reader (the fallback) is read again from 0.
    path.write_bytes(b"new\n")
    assert read_from(str(path), 5000, 100) == (b"new\n", 0)


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="negative"):
        LogLimits(max_bytes=-1)
    with pytest.raises(ValueError, match="at least 1"):
        LogLimits(max_files=0)
    assert rotate("/nonexistent/file", LogLimits()) == 0


@pytest.fixture
def device() -> Iterator[FakeDevice]:
    d = FakeDevice()
    yield d
    d.close()


def test_stream_logs_tail_and_read_after_rotation(device: FakeDevice, tmp_path: Path) -> None:
    if not holes_supported(tmp_path / "probe"):
        pytest.skip("the file system of the temp dir cannot punch holes")
    limits = LogLimits(max_bytes=8 << 10, max_files=2)
    rt = AgentRuntime(device, RuntimeConfig(state_dir=tmp_path / "state", log_limits=limits))
    try:
        rt.create_container("c1")
        script = "import os\nfor i in range(2000): os.write(1, b'line %05d\\n' % i)\n"
        p = rt.start_process("c1", "p1", [sys.executable, "-c", script])
        rt.wait_process(p.uid, timeout=60)
        rt._rotator.check_once()  # the round the rotator thread would run within a second
        path = tmp_path / "state" / "containers" / "c1" / "logs" / "p1.stdout"
        assert os.stat(path).st_blocks * 512 <= limits.max_bytes + 2 * os.stat(path).st_blksize
        every = b"".join(b"line %05d\n" % i for i in range(2000))

        def read(tail: int) -> bytes:
            chunks = rt.stream_logs("p1", follow=True, tail_lines=tail, is_active=lambda: True)
            return b"".join(c.data for c in chunks if c.stream == "stdout")

        assert read(3) == b"line 01997\nline 01998\nline 01999\n"
        live = read(0)
        assert live and every.endswith(live) and len(live) < len(every)
        assert every.endswith(Path(rotated_path(str(path), 1)).read_bytes() + live)
    finally:
        for c in rt.sync().containers:
            rt.destroy_container(c.uid, 0)
        rt.close()
