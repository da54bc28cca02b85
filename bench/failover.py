"""Controller failover: how long until a new leader, and how long clients wait, after the leader dies.

Starts a throwaway PostgreSQL server, a hollow fleet (two agents, mutual TLS) and two controllers
on the one database. Clients that know both addresses create containers without pause (each create
with its own request_id, retried until acknowledged). Each run then fails the leader one way and
measures:

- ``kill``: SIGKILL of the leader. *failover*: from the kill until the other controller holds the
  lease (read from pg_locks every 10 ms). *client gap*: from the last create acknowledged before
  the kill to the first one after it (what clients saw: their calls to the dead address fail, then
  move to the other one).
- ``freeze``: SIGSTOP of the leader (a stalled machine: its connections stay open). *failover*:
  until the other controller holds the lease, which needs the server to end the frozen leader's
  idle session (``--lease-timeout``, 3 s by default). *client gap*: as above; calls that were
  waiting on the frozen controller end only at their deadline (5 s here). Then SIGCONT: the old
  leader finds its lease gone, stops its leader work and exits (*fenced exit*: from SIGCONT until
  the process ended, its graceful API shutdown included).

Each run starts fresh (a new database and fleet). Printed per run and as median and spread over
the runs. Nothing is asserted.

    .venv/bin/python bench/failover.py [--runs 3] [--mode kill|freeze|both] [--threads 4]
"""

from __future__ import annotations

import argparse
import math
import signal
import statistics
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import sqlalchemy as sa

from chital.client import ChitalError, Client, RetryPolicy
from chital.controller.leader import leader_query
from chital.devcluster.hollow import HollowFleet, ServiceProcess, start_controller
from chital.devcluster.postgres import PostgresServer
from chital.security.tls import TLSFiles

RETRIES = RetryPolicy(max_attempts=2, initial_backoff=0.05, max_backoff=0.2)


def holder(url: str) -> str:
    """The application_name of the lease's session ("" when nobody holds it)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = [r[0] for r in conn.exec_driver_sql(leader_query())]
    finally:
        engine.dispose()
    return rows[0] if rows else ""


def is_holder(name: str, proc: ServiceProcess) -> bool:
    port = proc.address.rsplit(":", 1)[1]
    return f":{port} pid {proc.proc.pid}" in name


@dataclass
class Load:
    """Creates without pause from ``threads`` clients that list both controllers."""

    fleet: HollowFleet
    targets: str
    threads: int
    acks: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._workers.append(t)

    def finish(self) -> None:
        self.stop.set()
        for t in self._workers:
            t.join(60)

    def _run(self, worker: int) -> None:
        assert self.fleet.pki is not None and self.fleet.token is not None
        tls = TLSFiles(ca=self.fleet.pki.ca)
        with Client(self.targets, tls=tls, token=self.fleet.token, timeout=5.0, retries=RETRIES) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                name = f"b{worker}-{n}-{uuid.uuid4().hex[:6]}"
                while not self.stop.is_set():
                    try:
                        client.create_container(name, request_id=f"rq-{name}")
                    except ChitalError as exc:
                        with self.lock:
                            self.errors[f"{type(exc).__name__}: {str(exc)[:70]}"] += 1
                        time.sleep(0.05)
                        continue
                    with self.lock:
                        self.acks.append(time.monotonic())
                    break

    def acked_after(self, moment: float) -> bool:
        with self.lock:
            return any(a > moment for a in self.acks)

    def gap_around(self, moment: float) -> float:
        """The time without any acknowledged create around ``moment``: from the last one before it
        to the first one after it (NaN: none after it yet)."""
        with self.lock:
            acks = sorted(self.acks)
        before = [a for a in acks if a <= moment]
        after = [a for a in acks if a > moment]
        if not after:
            return float("nan")
        return after[0] - (before[-1] if before else moment)


def wait_for(predicate, timeout: float, step: float = 0.01) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``predicate()`` held (NaN: never, within ``timeout``)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(step)
    return float("nan")


def one_run(pg: PostgresServer, mode: str, threads: int) -> dict[str, float]:
    url = pg.create_database(f"failover_{uuid.uuid4().hex[:8]}")
    with HollowFleet(agents=2, database_url=url) as fleet:
        assert fleet.workdir is not None and fleet.pki is not None and fleet.controller is not None
        a = fleet.controller
        b = start_controller(
            fleet.workdir / "controller-b", database_url=url, tls_dir=fleet.pki.controller(), timeout=120.0
        )
        try:
            # Usually the first controller; whichever holds the lease is failed.
            wait_for(lambda: is_holder(holder(url), a) or is_holder(holder(url), b), 30, 0.1)
            leader, other = (a, b) if is_holder(holder(url), a) else (b, a)
            load = Load(fleet, f"{leader.address},{other.address}", threads)
            load.start()
            wait_for(lambda: len(load.acks) >= 200, 120, 0.05)
            out: dict[str, float] = {}
            if mode == "kill":
                moment = time.monotonic()
                leader.kill()
                out["failover"] = wait_for(lambda: is_holder(holder(url), other), 30)
                wait_for(lambda: load.acked_after(moment), 60)
                out["client_gap"] = load.gap_around(moment)
            else:
                moment = time.monotonic()
                leader.proc.send_signal(signal.SIGSTOP)
                out["failover"] = wait_for(lambda: is_holder(holder(url), other), 60)
                # Calls already sent to the frozen controller wait for their deadline (5 s here):
                # DEADLINE_EXCEEDED is not failed over (a write may still be running there).
                wait_for(lambda: load.acked_after(moment), 60)
                out["client_gap"] = load.gap_around(moment)
                leader.proc.send_signal(signal.SIGCONT)
                out["fenced_exit"] = wait_for(lambda: leader.proc.poll() is not None, 60)
            load.finish()
            out["creates"] = float(len(load.acks))
            out["client_errors"] = float(sum(load.errors.values()))
            for error, n in load.errors.most_common(3):
                print(f"    client error x{n}: {error}", flush=True)
            if other.proc.poll() is not None:
                # No supervisor here: a new leader that lost its lease (a starved machine) is gone.
                print(f"    the new leader exited too (status {other.proc.returncode})", flush=True)
            return out
        finally:
            b.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mode", choices=("kill", "freeze", "both"), default="both")
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    modes = ("kill", "freeze") if args.mode == "both" else (args.mode,)
    with PostgresServer() as pg:
        for mode in modes:
            results = []
            for i in range(args.runs):
                r = one_run(pg, mode, args.threads)
                results.append(r)
                extra = f", fenced exit {r['fenced_exit']:.2f} s after SIGCONT" if "fenced_exit" in r else ""
                print(
                    f"{mode} run {i + 1}: new leader after {r['failover']:.2f} s, longest client gap "
                    f"{r['client_gap']:.2f} s{extra} ({int(r['creates'])} creates, "
                    f"{int(r['client_errors'])} client errors retried)",
                    flush=True,
                )
            for key in ("failover", "client_gap", "fenced_exit"):
                measured = [r[key] for r in results if key in r]
                values = [v for v in measured if not math.isnan(v)]
                never = len(measured) - len(values)
                if values:
                    print(
                        f"{mode} {key}: median {statistics.median(values):.2f} s, "
                        f"min {min(values):.2f} s, max {max(values):.2f} s over {len(values)} runs"
                        + (f" ({never} runs: not within 60 s)" if never else ""),
                        flush=True,
                    )
                elif never:
                    print(f"{mode} {key}: not within 60 s in {never} runs", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
