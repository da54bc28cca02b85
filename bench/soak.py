"""Soak: container lifecycles on a hollow fleet for a while, and what they leave behind.

Starts a hollow fleet (a controller on SQLite, or on ``--database-url``, and N hollow agents) with
short retention windows, then runs create -> exec -> wait -> stop -> delete cycles from several
client threads for ``--seconds``. Every ``--interval`` seconds it samples:

- the database's size (SQLite: the file plus its WAL; PostgreSQL: ``pg_database_size``) and the
  rows of each table;
- the agents' container directories (how many, and their bytes on disk).

It prints the samples as a curve, then the database bytes per container lifecycle: overall, and
the growth per lifecycle over the second half of the run (near zero when the curve is flat: the
janitor removes as much as the cycles add). Nothing is asserted: the figures are printed for the
benchmarks page and for trends.

    .venv/bin/python bench/soak.py [--seconds 240] [--interval 15] [--threads 4] [--agents 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from chital.client import Client, ContainerState, NotFound
from chital.devcluster.hollow import HollowFleet


@dataclass(frozen=True)
class Sample:
    at: float
    cycles: int
    db_bytes: int
    rows: dict[str, int]
    agent_dirs: int
    agent_bytes: int


def disk_bytes(root: Path) -> tuple[int, int]:
    """(container directories, bytes they use on disk) under ``root``."""
    dirs = total = 0
    try:
        entries = list(root.iterdir())
    except OSError:
        return 0, 0
    for cdir in entries:
        dirs += 1
        for base, _, files in os.walk(cdir):
            for name in files:
                with contextlib.suppress(OSError):  # removed while we walk
                    total += os.lstat(os.path.join(base, name)).st_blocks * 512
    return dirs, total


class Database:
    """Read-only views of the controller's database for the samples."""

    def __init__(self, url: str, sqlite_path: Path | None) -> None:
        self.engine = sa.create_engine(url)
        self.sqlite_path = sqlite_path

    def size(self) -> int:
        if self.sqlite_path is not None:
            return sum(
                p.stat().st_size for p in (self.sqlite_path, Path(f"{self.sqlite_path}-wal")) if p.exists()
            )
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar_one())

    def rows(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            tables = sorted(sa.inspect(conn).get_table_names())
            return {
                t: int(conn.execute(sa.text(f'SELECT count(*) FROM "{t}"')).scalar_one())
                for t in tables
                if t != "alembic_version"
            }


def lifecycle(client: Client) -> None:
    c = client.create_container(f"soak-{uuid.uuid4().hex[:12]}")
    p = client.exec(c.uid, ["/bin/echo", "soak"])
    client.wait_process(p.uid)
    client.stop_container(c.uid, grace=0)
    client.delete_container(c.uid)
    # Intent first: the delete may be recorded before the agent has destroyed the container.
    while True:
        try:
            if client.get_container(c.uid).state is ContainerState.DELETED:
                return
        except NotFound:
            return
        time.sleep(0.01)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--interval", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--event-retention", type=float, default=30.0, help="seconds (controller)")
    parser.add_argument("--deleted-retention", type=float, default=30.0, help="seconds (controller)")
    parser.add_argument("--retention-interval", type=float, default=5.0, help="seconds (controller)")
    parser.add_argument("--audit-retention", type=float, default=30.0, help="seconds (controller)")
    parser.add_argument(
        "--exited-process-limit", type=int, default=200, help="exited processes an agent remembers"
    )
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (default: SQLite in a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="chital-soak-") as tmp:
        workdir = Path(tmp)
        sqlite_path = None if args.database_url else workdir / "controller.db"
        url = args.database_url or f"sqlite:///{sqlite_path}"
        controller_args = [
            "--event-retention",
            str(args.event_retention),
            "--deleted-retention",
            str(args.deleted_retention),
            "--retention-interval",
            str(args.retention_interval),
            "--audit-retention",
            str(args.audit_retention),
        ]
        agent_args = ["--exited-process-limit", str(args.exited_process_limit)]
        fleet = HollowFleet(
            agents=args.agents,
            workdir=workdir,
            database_url=url,
            controller_args=controller_args,
            agent_args=agent_args,
        )
        with fleet:
            db = Database(url, sqlite_path)
            agent_roots = [workdir / f"agent-{i}" / "state" / "containers" for i in range(args.agents)]
            cycles = 0
            errors = 0
            lock = threading.Lock()
            stop = threading.Event()

            def worker() -> None:
                nonlocal cycles, errors
                with fleet.client(timeout=30.0) as client:
                    while not stop.is_set():
                        try:
                            lifecycle(client)
                        except Exception as exc:  # counted and printed: a soak reports, not stops
                            with lock:
                                errors += 1
                                if errors <= 5:
                                    print(f"cycle failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                            continue
                        with lock:
                            cycles += 1

            def sample(start: float) -> Sample:
                dirs = [disk_bytes(r) for r in agent_roots]
                with lock:
                    done = cycles
                return Sample(
                    at=time.monotonic() - start,
                    cycles=done,
                    db_bytes=db.size(),
                    rows=db.rows(),
                    agent_dirs=sum(d for d, _ in dirs),
                    agent_bytes=sum(b for _, b in dirs),
                )

            print(
                f"soak: {args.seconds:.0f} s, {args.threads} client threads, {args.agents} hollow agents, "
                f"{'PostgreSQL' if args.database_url else 'SQLite'}; event_retention "
                f"{args.event_retention:g} s, deleted_retention {args.deleted_retention:g} s, "
                f"audit_retention {args.audit_retention:g} s, "
                f"retention_interval {args.retention_interval:g} s, "
                f"exited_process_limit {args.exited_process_limit}",
                flush=True,
            )
            start = time.monotonic()
            samples = [sample(start)]
            threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.threads)]
            for t in threads:
                t.start()
            tables = sorted(samples[0].rows)
            header = f"{'t (s)':>6} {'cycles':>7} {'DB bytes':>10} " + " ".join(f"{t:>11}" for t in tables)
            header += f" {'agent dirs':>10} {'agent bytes':>11}"
            print(header, flush=True)

            def show(s: Sample) -> None:
                row = f"{s.at:6.0f} {s.cycles:7d} {human(s.db_bytes):>10} "
                row += " ".join(f"{s.rows.get(t, 0):11d}" for t in tables)
                print(row + f" {s.agent_dirs:10d} {human(s.agent_bytes):>11}", flush=True)

            show(samples[0])
            while time.monotonic() - start < args.seconds:
                time.sleep(min(args.interval, max(0.0, args.seconds - (time.monotonic() - start))))
                samples.append(sample(start))
                show(samples[-1])
            stop.set()
            for t in threads:
                t.join(60)

            last = samples[-1]
            mid = min(samples, key=lambda s: abs(s.at - last.at / 2))
            elapsed = last.at - samples[0].at
            print()
            print(
                f"cycles: {last.cycles} in {elapsed:.0f} s ({last.cycles / elapsed:.1f}/s), {errors} failed"
            )
            print(f"DB bytes at the end: {human(last.db_bytes)} ({last.db_bytes} B)")
            if last.cycles:
                print(f"DB bytes per container lifecycle, overall: {last.db_bytes / last.cycles:.0f} B")
            if last.cycles > mid.cycles:
                growth = (last.db_bytes - mid.db_bytes) / (last.cycles - mid.cycles)
                print(
                    f"DB growth per lifecycle over the second half ({mid.at:.0f}-{last.at:.0f} s, "
                    f"{last.cycles - mid.cycles} cycles): {growth:.1f} B"
                )
            half = [s for s in samples if s.at >= mid.at]
            print(
                f"DB bytes over the second half: {human(min(s.db_bytes for s in half))} to "
                f"{human(max(s.db_bytes for s in half))}"
            )
            peak = max(samples, key=lambda s: s.db_bytes)
            print(f"DB bytes peak: {human(peak.db_bytes)} at {peak.at:.0f} s")
            print(
                f"agent dirs at the end: {last.agent_dirs} ({human(last.agent_bytes)}); "
                f"peak {max(s.agent_dirs for s in samples)}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
