"""A throwaway PostgreSQL server for tests and development: Debian's binaries, a temp dir, a free port.

    with postgres_server() as pg:
        url = pg.create_database("test_models")   # postgresql+psycopg://postgres@127.0.0.1:PORT/test_models
        ...

The server binaries come from ``/usr/lib/postgresql/<version>/bin`` (Debian's ``postgresql`` package;
the newest installed version is used, never a hard-coded one). PostgreSQL refuses to run as root, and
tests run as root, so ``initdb`` and ``pg_ctl`` run as the ``postgres`` user through
``runuser -u postgres`` when we are root (as ourselves otherwise). The data directory and the unix
socket live in a temporary directory owned by that user; the server listens on 127.0.0.1 only, on a
free port, with ``trust`` authentication (nothing but this machine's loopback can reach it). It is
tuned for tests, not durability (``fsync=off``): a crash loses it, which is the point of a throwaway.

Stopping is ``pg_ctl stop -m fast``, then SIGKILL of the postmaster by the pid in ``postmaster.pid``
if it did not go; the temporary directory is removed either way.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "PostgresServer",
    "PostgresUnavailableError",
    "find_pg_bin",
    "postgres_server",
    "postgres_url",
]

PG_ROOT = Path("/usr/lib/postgresql")
SERVICE_USER = "postgres"
_DB_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresUnavailableError(RuntimeError):
    """No PostgreSQL server binaries (or no user to run them as) on this machine."""


def find_pg_bin(root: Path = PG_ROOT) -> Path:
    """The ``bin`` directory of the newest PostgreSQL installed under ``root`` (Debian's layout)."""
    candidates = []
    if root.is_dir():
        for d in root.iterdir():
            if (d / "bin" / "initdb").is_file() and (d / "bin" / "pg_ctl").is_file():
                with contextlib.suppress(ValueError):
                    candidates.append((float(d.name), d / "bin"))
    if not candidates:
        raise PostgresUnavailableError(f"no PostgreSQL server under {root} (Debian package: postgresql)")
    return max(candidates)[1]


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for a reaper that is not us counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split(" ", 1)[0] not in ("Z", "X")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    """A PostgreSQL server in a temporary directory. ``start()``/``stop()`` or use as a context manager."""

    bin_dir: Path | None = None
    port: int = 0
    startup_timeout: float = 60.0
    base_dir: Path | None = field(default=None, init=False)
    _as_user: list[str] = field(default_factory=list, init=False)
    _started: bool = field(default=False, init=False)

    @property
    def data_dir(self) -> Path:
        assert self.base_dir is not None, "server not started"
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.base_dir is not None, "server not started"
        return self.base_dir / "run"

    @property
    def user(self) -> str:
        """The database superuser (the OS user the server runs as)."""
        return SERVICE_USER if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL for ``database`` over TCP on 127.0.0.1 (psycopg 3 driver)."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def _run(self, argv: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._as_user, *argv],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            cwd="/",  # the postgres user may not be able to enter our cwd
        )

    def start(self) -> PostgresServer:
        bin_dir = self.bin_dir or find_pg_bin()
        self.bin_dir = bin_dir
        self.base_dir = Path(tempfile.mkdtemp(prefix="chital-pg-"))
        try:
            self._prepare_user()
            self.socket_dir.mkdir()
            if self._as_user:
                ent = pwd.getpwnam(SERVICE_USER)
                for path in (self.base_dir, self.socket_dir):
                    os.chown(path, ent.pw_uid, ent.pw_gid)
                os.chmod(self.base_dir, 0o700)
            init = self._run(
                [str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", self.user, "-A", "trust",
                 "-E", "UTF8", "--locale=C", "--no-sync"]
            )  # fmt: skip
            if init.returncode != 0:
                raise RuntimeError(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")
            self._start_server()
        except BaseException:
            self._cleanup()
            raise
        return self

    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            self._as_user = []
            return
        try:
            pwd.getpwnam(SERVICE_USER)
        except KeyError as exc:
            raise PostgresUnavailableError(f"no {SERVICE_USER!r} user to run PostgreSQL as") from exc
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        self._as_user = [runuser, "-u", SERVICE_USER, "--"]

    def _start_server(self) -> None:
        assert self.bin_dir is not None
        last_error = ""
        for _attempt in range(3):  # a free port can be taken between choosing and binding
            port = self.port or _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {port} -k {self.socket_dir} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=200 -c shared_buffers=32MB"
            )
            log_file = self.data_dir / "server.log"
            started = self._run(
                [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(log_file), "-o", options,
                 "-w", "-t", str(int(self.startup_timeout)), "start"],
                timeout=self.startup_timeout + 10,
            )  # fmt: skip
            if started.returncode == 0:
                self.port = port
                self._started = True
                return
            last_error = f"{started.stdout}\n{started.stderr}\n{self._log_tail()}"
            self._kill_postmaster()
            if self.port:  # a fixed port was asked for: do not try others
                break
        raise RuntimeError(f"PostgreSQL did not start:\n{last_error}")

    def _log_tail(self) -> str:
        try:
            return (self.data_dir / "server.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def is_running(self) -> bool:
        """True while the postmaster process runs."""
        pid = self._postmaster_pid()
        return pid is not None and _alive(pid)

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _kill_postmaster(self) -> None:
        pid = self._postmaster_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` and return its SQLAlchemy URL."""
        if not _DB_NAME_RE.fullmatch(name):
            raise ValueError(f"database name {name!r} must match {_DB_NAME_RE.pattern}")
        assert self.bin_dir is not None and self._started, "server not started"
        created = self._run(
            [str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name]
        )
        if created.returncode != 0:
            raise RuntimeError(f"createdb {name} failed: {created.stderr.strip()}")
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (fast shutdown, then SIGKILL by pid) and remove its directory."""
        if self._started and self.bin_dir is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._run(
                    [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "20",
                     "stop"],
                    timeout=30,
                )  # fmt: skip
            self._kill_postmaster()
            self._started = False
        self._cleanup()

    def _cleanup(self) -> None:
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def postgres_server(*, bin_dir: Path | None = None) -> Iterator[PostgresServer]:
    """A started throwaway server; stopped and removed on exit."""
    server = PostgresServer(bin_dir=bin_dir)
    with server:
        yield server


@contextlib.contextmanager
def postgres_url(database: str = "chital") -> Iterator[str]:
    """``with postgres_url() as url: make_engine(url)``: a fresh database on a throwaway server."""
    with postgres_server() as server:
        yield server.create_database(database)
