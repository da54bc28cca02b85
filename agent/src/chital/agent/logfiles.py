"""Size caps on process log files, with rotation, that never block or kill the process.

Who writes the logs: the launcher opens ``logs/<process>.stdout`` and ``.stderr`` with
``O_APPEND`` and hands them to the program as fds 1 and 2; the program writes to the files itself,
with no pipe and no agent in the way. That is what lets programs outlive agent restarts and never
block on a slow or absent reader, so rotation keeps it: the agent never touches the program's fds.

How a file is capped (:func:`rotate`, every second by :class:`LogRotator` for each running or
just-exited process): when the live bytes of a file pass ``max_bytes``, the bytes from the oldest
live byte up to the last whole file-system block are copied to ``<file>.1`` (older copies move to
``.2`` ... up to ``max_files - 1``; the oldest is dropped), and then that range is released from
the live file with ``fallocate(FALLOC_FL_PUNCH_HOLE)``. The writer's appends go on at the end of
the file, untouched and unaware, and nothing written is lost: the range released was copied
first and holds only bytes written before. The file keeps its apparent size (a sparse file); its
disk use is what is left after the hole, so the disk use of one stream stays under about
``max_files * max_bytes`` plus what the program writes in one second. Readers start at the first
byte that is not a hole (``SEEK_DATA``): :func:`data_start`.

On a file system that cannot punch holes, the fallback is copy-and-truncate (logrotate's
``copytruncate``): the whole file is copied and truncated to zero; ``O_APPEND`` makes the writer go
on at the new end. Bytes written between the copy and the truncation (microseconds) are lost
there; readers notice the truncation and start again at offset 0.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["LogLimits", "LogRotator", "data_start", "read_from", "rotate", "rotated_path", "tail_floor"]

log = logging.getLogger("chital.agent.logfiles")

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_COPY_CHUNK = 1 << 20

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int


@dataclass(frozen=True)
class LogLimits:
    """Per stream (stdout, stderr) of a process: live bytes before a rotation (0: no cap), and
    how many files to keep, the live one included (1: no rotated copies, the oldest bytes are
    dropped)."""

    max_bytes: int = 10 << 20
    max_files: int = 5

    def __post_init__(self) -> None:
        if self.max_bytes < 0:
            raise ValueError("log_max_bytes must not be negative")
        if self.max_files < 1:
            raise ValueError("log_max_files must be at least 1")


def rotated_path(path: str, index: int) -> str:
    """The ``index``-th rotated copy of ``path`` (1 is the newest)."""
    return f"{path}.{index}"


def data_start(fd: int) -> int:
    """The offset of the first byte of ``fd`` that is not a hole (its size if all of it is)."""
    try:
        return os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no data at all: an empty file, or all of it released
            return os.fstat(fd).st_size
        if exc.errno == errno.EINVAL:  # no SEEK_DATA here: every byte is data
            return 0
        raise


def _copy_range(fd: int, start: int, end: int, dest: str) -> None:
    tmp = dest + ".tmp"
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        offset = start
        while offset < end:
            data = os.pread(fd, min(_COPY_CHUNK, end - offset), offset)
            if not data:
                break
            os.write(out, data)
            offset += len(data)
    finally:
        os.close(out)
    os.replace(tmp, dest)


def _shift(path: str, max_files: int) -> None:
    for index in range(max_files - 1, 1, -1):
        with contextlib.suppress(FileNotFoundError):
            os.replace(rotated_path(path, index - 1), rotated_path(path, index))


def _punch(fd: int, start: int, length: int) -> bool:
    if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, start, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS):
        return False
    raise OSError(err, os.strerror(err))


def rotate(path: str, limits: LogLimits) -> int:
    """Rotate ``path`` if its live bytes pass ``limits.max_bytes``; returns how many bytes left the
    live file (0: nothing to do). See the module docstring."""
    if not limits.max_bytes:
        return 0
    try:
        # One stat for the common case: the live bytes are allocated, so a file whose size or
        # disk use is under the cap has nothing to rotate (no open, no seek).
        st = os.stat(path)
        if min(st.st_size, st.st_blocks * 512) <= limits.max_bytes:
            return 0
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        return _rotate_open(fd, path, limits)
    finally:
        os.close(fd)


def _rotate_open(fd: int, path: str, limits: LogLimits) -> int:
    st = os.fstat(fd)
    start = data_start(fd)
    block = st.st_blksize or 4096
    cut = st.st_size // block * block
    if st.st_size - start <= limits.max_bytes or cut <= start:
        return 0
    keep = limits.max_files > 1
    if keep:
        _shift(path, limits.max_files)
        _copy_range(fd, start, cut, rotated_path(path, 1))
    if _punch(fd, start, cut - start):
        return cut - start
    # No holes on this file system: copy everything and truncate (see the module docstring).
    end = os.fstat(fd).st_size
    if keep:
        _copy_range(fd, start, end, rotated_path(path, 1))
    os.ftruncate(fd, 0)
    return end - start


class LogRotator:
    """Calls :func:`rotate` on ``paths()`` every ``interval`` seconds, on its own thread."""

    def __init__(self, paths: Callable[[], Iterable[str]], limits: LogLimits, interval: float = 1.0) -> None:
        self._paths = paths
        self.limits = limits
        self._interval = interval
        self._stop = threading.Event()
        self.rotated_bytes = 0
        self._thread = threading.Thread(target=self._run, name="log-rotator", daemon=True)
        if limits.max_bytes:
            self._thread.start()

    def check_once(self) -> int:
        """One round over the files; bytes rotated out of live files."""
        total = 0
        for path in self._paths():
            try:
                total += rotate(path, self.limits)
            except OSError as exc:
                log.warning("rotating %s failed: %s", path, exc)
        self.rotated_bytes += total
        return total

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.check_once()
            except Exception:  # one bad round must not stop the caps (logged)
                log.exception("log rotation round failed")


def read_from(path: str, offset: int, size: int) -> tuple[bytes, int]:
    """Up to ``size`` bytes of ``path`` from ``offset``, and the offset they start at: past the
    bytes a rotation released (a reader slower than the rotation skips to the oldest byte kept),
    or 0 when the file was truncated (the copy-and-truncate fallback). ``FileNotFoundError`` when
    the file does not exist."""
    with open(path, "rb") as f:
        fd = f.fileno()
        if offset > os.fstat(fd).st_size:
            offset = 0  # truncated by the fallback rotation: its new bytes start at 0
        offset = max(offset, data_start(fd))
        data = os.pread(fd, size, offset)
        released = data_start(fd)
        if data and released > offset:
            # A rotation released part of what was just read (it may have read as zeros).
            cut = min(released - offset, len(data))
            data, offset = data[cut:], offset + cut
        return data, offset


def tail_floor(path: str) -> int:
    """Where a tail of ``path`` may start at the earliest: its first byte that is not a hole."""
    try:
        with open(path, "rb") as f:
            return data_start(f.fileno())
    except OSError:
        return 0
