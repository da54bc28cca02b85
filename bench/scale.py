"""The controller at fleet scale: 1,000 hollow hosts and 100,000 containers on this machine.

What runs, all on loopback:
- the hosts: hollow agents (``chital.devcluster.hollow_many``), each a real gRPC server on its own
  port with its own FakeDevice, ``--hosts-per-process`` of them per process; the ``--lost`` hosts
  of the loss test run in a process of their own, so killing it kills exactly their servers;
- one controller (``chital-controller serve``; SQLite in its state directory, or
  ``--database-url``), plaintext on loopback with a bearer token, /metrics on;
- one SDK client on one thread, which times every call it makes.

How the fleet is filled: hosts are registered through the API. Containers are **seeded**, not
created through the API (at the create rate of ``bench/create_throughput.py``, 100,000 creates
would take longer than everything else here together). For each step of ``--steps`` the controller
is stopped, every agent creates its share of the new containers in its own runtime (as its
CreateContainer RPC would: the agent's directories, records and FakeDevice containers), and the
matching rows are written to the controller's database in batches: state CREATED on that host,
desired RUNNING, the deny list the agents reported. The controller then starts on a consistent
fleet. Its host syncs compare every agent with the database after the restart; the bench prints the
repairs they made (0 expected: no orphan destroyed, nothing marked LOST). Seeded rows have no
change-feed events: a Watch from revision 0 does not replay them.

The containers of a step were "created" round robin over the hosts, one millisecond apart, so a
host's containers are spread over the whole table, and carry labels ``bench=scale`` and
``app=app-<k>`` (``--label-values`` values, evenly spread).

Per step it prints:
- ListContainers page p99 (100 per page): filtered by host (a random host's first page), and by
  label (``app=app-3``, pages followed by token through the list and started again at its end);
- GetContainer p99 (random containers);
- the controller's resident memory (RSS, and its peak);
- restart-to-serving: from starting the controller process (after the seeding) to its first
  correct ListContainers (a host's page with exactly that host's containers), and to every host
  READY again ("full recovery");
- the controller's CPU seconds per second while idle (no client calls): the cost of health traffic
  to every host; the hollow processes' CPU beside it.
Once, after the last step: the time until ``--lost`` hosts killed at once (SIGKILL of their process)
are all NOT_READY, from the kill.

Targets (the design's, at 1,000 hosts and 100,000 containers): page p99 <= 50 ms, RSS <= 1 GiB,
restart-to-serving <= 10 s, loss detection <= 3 s. Nothing is asserted; figures are printed, and
written as JSON with ``--json`` (``bench/plots.py`` draws them). Everything shares 2 cores: the
hollow hosts' own CPU (answering health checks) competes with the controller's.

    .venv/bin/python bench/scale.py                                  # 1,000 hosts, 100,000 containers
    .venv/bin/python bench/scale.py --hosts 100 --containers 10000   # a quick run
    .venv/bin/python bench/scale.py --steps 10000,25000,50000,100000 --json scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa

from chital.client import Client, ContainerState, HostState
from chital.controller.db import default_database_url, make_engine
from chital.controller.models import ContainerRow
from chital.controller.records import SandboxRecord
from chital.devcluster.hollow import ServiceProcess, bootstrap_token, start_controller
from chital.devcluster.hollow_many import container_uid
from chital.devcluster.security import ClientConfig

PREFIX = "sc"
LABEL_QUERY = {"app": "app-3"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the hollow hosts ------------------------------------------------------------------------------


class HostProcess:
    """One ``hollow_many`` process: ``count`` hosts from ``first_index`` on."""

    def __init__(self, workdir: Path, first_index: int, count: int) -> None:
        self.first_index = first_index
        self.count = count
        self.log_path = workdir / f"hosts-{first_index:05d}.log"
        self._log: IO[bytes] = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chital.devcluster.hollow_many",
                "--hosts",
                str(count),
                "--first-index",
                str(first_index),
                "--workdir",
                str(workdir / "hosts"),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
            start_new_session=True,
        )
        self.ports: list[int] = []

    def read_reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"hollow hosts {self.first_index}+ exited ({self.proc.poll()}): {tail}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"hollow hosts {self.first_index}+: {reply['error']}")
        return reply

    def wait_serving(self) -> None:
        self.ports = list(self.read_reply()["ports"])

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


# -- measuring ---------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(samples: int, call: Callable[[int], None]) -> list[float]:
    out = []
    for i in range(samples):
        start = time.perf_counter()
        call(i)
        out.append(time.perf_counter() - start)
    return out


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "p50_ms": statistics.median(latencies) * 1e3,
        "p90_ms": percentile(latencies, 0.90) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "max_ms": max(latencies) * 1e3,
    }


def rss_bytes(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid``."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    rest = stat[stat.rindex(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def metric_sum(url: str, name: str) -> float:
    """The sum of every series of ``name`` on a Prometheus text page."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(what: str, condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> float:
    """Seconds until ``condition()`` held; TimeoutError after ``timeout``."""
    start = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - start
        except Exception as exc:
            last: Exception | None = exc
        else:
            last = None
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not after {timeout:.0f} s (last error: {last})")
        time.sleep(interval)


# -- the bench ---------------------------------------------------------------------------------------


class ScaleBench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.database_url: str | None = args.database_url
        self.controller_dir = workdir / "controller"
        self.controller: ServiceProcess | None = None
        self.client: Client | None = None
        self.token = ""
        self.groups: list[HostProcess] = []
        self.victims: HostProcess | None = None
        self.addresses: list[str] = []  # by host index
        self.host_ids: list[str] = []  # by host index
        self.per_host = 0
        self.effective_deny: list[str] = []
        self.created_base = datetime(2026, 1, 1)

    # fleet ------------------------------------------------------------------------------------------

    def start_hosts(self) -> None:
        hosts, lost, per = self.args.hosts, self.args.lost, self.args.hosts_per_process
        steady = hosts - lost
        for first in range(0, steady, per):
            self.groups.append(HostProcess(self.workdir, first, min(per, steady - first)))
        if lost:
            self.victims = HostProcess(self.workdir, steady, lost)
            self.groups.append(self.victims)
        for group in self.groups:
            group.wait_serving()
        self.addresses = [f"127.0.0.1:{port}" for group in self.groups for port in group.ports]

    def start_controller(self) -> float:
        """Start the controller; seconds from starting it to its first correct ListContainers."""
        start = time.monotonic()
        self.controller = start_controller(
            self.controller_dir,
            database_url=self.database_url,
            insecure=True,
            metrics=True,
            timeout=120.0,
            extra_args=["--log-level", "warning"],
            listen=self.controller.address if self.controller is not None else "127.0.0.1:0",
        )
        if not self.token:
            self.token = bootstrap_token(self.controller_dir, self.database_url, "scale-bench")
        if self.client is not None:
            self.client.close()
        self.client = ClientConfig(self.controller.address, self.token, insecure=True).client(timeout=60.0)
        if not self.host_ids:
            return time.monotonic() - start
        client = self.client
        probe = len(self.host_ids) // 2
        expected = {container_uid(PREFIX, probe, n) for n in range(min(self.per_host, 100))}

        def serves_correctly() -> bool:
            page = client.list_containers_page(page_size=100, host=self.host_ids[probe], timeout=5.0)
            return {c.uid for c in page.items} == expected

        wait_for("a correct ListContainers", serves_correctly, 120.0, interval=0.02)
        return time.monotonic() - start

    def stop_controller(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.controller is not None:
            self.controller.stop(timeout=30.0)

    def register_hosts(self) -> None:
        client = self.client
        assert client is not None

        def register(index: int) -> str:
            labels = {"bench": "scale", "index": str(index)}
            return client.register_host(self.addresses[index], labels=labels).id

        with ThreadPoolExecutor(16) as pool:
            self.host_ids = list(pool.map(register, range(len(self.addresses))))

    def ready_hosts(self) -> int:
        assert self.client is not None
        return sum(1 for _ in self.client.iter_hosts(state=HostState.READY, page_size=1000))

    def seed(self, per_host: int) -> None:
        """Grow every host to ``per_host`` containers: agents first, then the database."""
        for group in self.groups:
            group.send(f"seed {per_host} {PREFIX}")
        for group in self.groups:
            self.effective_deny = group.read_reply()["effective_deny_syscalls"]
        url = self.database_url or default_database_url(self.controller_dir / "state")
        engine = make_engine(url)
        hosts = len(self.host_ids)
        sandbox = SandboxRecord().to_json()
        rows: list[dict[str, Any]] = []
        table = ContainerRow.__table__
        try:
            for n in range(self.per_host, per_host):
                for index, host_id in enumerate(self.host_ids):
                    order = n * hosts + index
                    created = self.created_base + timedelta(milliseconds=order)
                    uid = container_uid(PREFIX, index, n)
                    rows.append(
                        {
                            "uid": uid,
                            "name": uid,
                            "live_name": uid,
                            "request_id": None,
                            "labels": {"bench": "scale", "app": f"app-{order % self.args.label_values}"},
                            "memory_max_bytes": 0,
                            "pids_max": 0,
                            "cpu_max_millicores": 0,
                            "root": "",
                            "deny_syscalls": [],
                            "sandbox": sandbox,
                            "effective_deny_syscalls": self.effective_deny,
                            "requested_host": "",
                            "state": "CREATED",
                            "desired_state": "RUNNING",
                            "stop_deadline": None,
                            "restart_policy": "never",
                            "max_restarts": 0,
                            "restart_count": 0,
                            "restart_at": None,
                            "host_id": host_id,
                            "message": "",
                            "created": created,
                            "updated": created,
                            "revision": 2,
                        }
                    )
                    if len(rows) >= 5000:
                        with engine.begin() as conn:
                            conn.execute(sa.insert(table), rows)
                        rows = []
            if rows:
                with engine.begin() as conn:
                    conn.execute(sa.insert(table), rows)
        finally:
            engine.dispose()
        self.per_host = per_host

    # measurements ------------------------------------------------------------------------------------

    def settle(self) -> dict[str, float]:
        """After a restart: seconds until every host is READY and every host was synced once."""
        assert self.controller is not None and self.controller.metrics_url is not None
        hosts = len(self.host_ids)
        all_ready = wait_for("every host READY", lambda: self.ready_hosts() == hosts, 600.0, 0.5)
        url = self.controller.metrics_url
        synced = wait_for(
            "every host synced",
            lambda: metric_sum(url, "chital_controller_host_syncs_total") >= hosts,
            600.0,
            0.5,
        )
        return {"all_ready_s": all_ready, "synced_s": all_ready + synced}

    def measure_step(self, containers: int) -> dict[str, Any]:
        client = self.client
        assert client is not None and self.controller is not None
        samples = self.args.samples
        rng = random.Random(containers)
        hosts = len(self.host_ids)

        def by_host(_: int) -> None:
            client.list_containers_page(page_size=100, host=self.host_ids[rng.randrange(hosts)])

        token = ""

        def by_label(_: int) -> None:
            nonlocal token
            page = client.list_containers_page(page_size=100, label_selector=LABEL_QUERY, page_token=token)
            token = page.next_page_token

        def get(_: int) -> None:
            index = rng.randrange(hosts)
            client.get_container(container_uid(PREFIX, index, rng.randrange(self.per_host)))

        # Warm the paths (the first calls pay connection set-up and cold caches).
        for call in (by_host, by_label, get):
            timed(5, call)
        token = ""
        result: dict[str, Any] = {
            "containers": containers,
            "list_by_host": summary(timed(samples, by_host)),
            "list_by_label": summary(timed(samples, by_label)),
            "get": summary(timed(samples, get)),
        }
        pid = self.controller.proc.pid
        group_pids = [g.proc.pid for g in self.groups if g.proc.poll() is None]
        seconds = self.args.idle_seconds
        c0, h0 = cpu_seconds(pid), sum(cpu_seconds(p) for p in group_pids)
        time.sleep(seconds)
        c1, h1 = cpu_seconds(pid), sum(cpu_seconds(p) for p in group_pids)
        rss, peak = rss_bytes(pid)
        result.update(
            rss_bytes=rss,
            rss_peak_bytes=peak,
            idle_controller_cpu=(c1 - c0) / seconds,
            idle_hosts_cpu=(h1 - h0) / seconds,
            sync_repairs=metric_sum(
                self.controller.metrics_url or "", "chital_controller_sync_repairs_total"
            ),
            lost_containers=len(client.list_containers_page(page_size=100, state=ContainerState.LOST).items),
        )
        return result

    def loss_detection(self) -> dict[str, Any]:
        """SIGKILL the victims' process; seconds until all of its hosts are NOT_READY."""
        assert self.client is not None and self.victims is not None
        client = self.client
        first = self.victims.first_index
        victims = self.host_ids[first : first + self.victims.count]
        seen: dict[str, float] = {}
        start = time.monotonic()
        self.victims.kill()
        deadline = start + 60.0
        while len(seen) < len(victims) and time.monotonic() < deadline:
            for host_id in victims:
                if host_id not in seen and client.get_host(host_id).state is not HostState.READY:
                    seen[host_id] = time.monotonic() - start
            time.sleep(0.05)
        return {
            "hosts": len(victims),
            "detected": len(seen),
            "all_not_ready_s": max(seen.values()) if len(seen) == len(victims) else None,
            "first_not_ready_s": min(seen.values()) if seen else None,
        }

    def close(self) -> None:
        self.stop_controller()
        for group in self.groups:
            group.stop()


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def ms(value: float) -> str:
    return f"{value:.1f} ms"


def write_json(path: Path | None, figures: dict[str, Any]) -> None:
    if path is not None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(figures, indent=2) + "\n")
        tmp.replace(path)


def print_step(step: dict[str, Any]) -> None:
    print(
        f"{step['containers']:>10,}"
        f"{step['list_by_host']['p99_ms']:>12.1f}"
        f"{step['list_by_label']['p99_ms']:>12.1f}"
        f"{step['get']['p99_ms']:>10.1f}"
        f"{step['rss_bytes'] / 2**20:>9.0f}"
        f"{step['restart_to_serving_s']:>10.2f}"
        f"{step['all_ready_s']:>10.1f}"
        f"{step['idle_controller_cpu']:>10.2f}"
        f"{step['idle_hosts_cpu']:>9.2f}"
        f"{step['sync_repairs']:>8.0f}"
        f"   {step['load']}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--containers", type=int, default=100_000, help="containers at the last step")
    parser.add_argument(
        "--steps",
        default="",
        help="container counts to measure at, comma-separated (default: only --containers)",
    )
    parser.add_argument("--hosts-per-process", type=int, default=100)
    parser.add_argument("--lost", type=int, default=10, help="hosts killed at once at the end (0: skip)")
    parser.add_argument("--samples", type=int, default=300, help="calls timed per figure")
    parser.add_argument("--label-values", type=int, default=10, help="values of the app label")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--database-url", help="controller database (default: SQLite in the workdir)")
    parser.add_argument("--workdir", type=Path, help="default: a temporary directory, removed after")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    steps = sorted({int(s) for s in args.steps.split(",") if s.strip()} | {args.containers})
    if args.hosts < 2 or not 0 <= args.lost < args.hosts:
        parser.error("need at least 2 hosts and fewer --lost than --hosts")
    if any(s % args.hosts for s in steps):
        parser.error("every container count must be a multiple of --hosts (equal shares)")

    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="chital-scale-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        bench = ScaleBench(args, workdir)
        database = "PostgreSQL" if args.database_url and "postgres" in args.database_url else "SQLite"
        figures: dict[str, Any] = {
            "hosts": args.hosts,
            "hosts_per_process": args.hosts_per_process,
            "database": database,
            "cpus": os.cpu_count(),
            "steps": [],
        }
        try:
            t0 = time.monotonic()
            bench.start_hosts()
            bench.start_controller()
            bench.register_hosts()
            bench.settle()
            print(
                f"fleet: {args.hosts} hollow hosts in {len(bench.groups)} processes, 1 controller "
                f"({database}), up and registered in {time.monotonic() - t0:.0f} s; "
                f"{os.cpu_count()} cores; load {load_average()}",
                flush=True,
            )
            print(
                f"{'containers':>10}{'list/host':>12}{'list/label':>12}{'get':>10}{'RSS MiB':>9}"
                f"{'restart s':>10}{'READY s':>10}{'ctl CPU':>10}{'hosts':>9}{'repairs':>8}   load"
            )
            print(
                f"{'':>10}{'p99 ms':>12}{'p99 ms':>12}{'p99 ms':>10}{'':>9}{'':>10}{'':>10}"
                f"{'s/s':>10}{'s/s':>9}"
            )
            for containers in steps:
                bench.stop_controller()
                seed_start = time.monotonic()
                bench.seed(containers // args.hosts)
                seed_s = time.monotonic() - seed_start
                restart = bench.start_controller()
                settled = bench.settle()
                step = bench.measure_step(containers)
                step.update(settled, restart_to_serving_s=restart, seed_s=seed_s, load=load_average())
                figures["steps"].append(step)
                print_step(step)
                write_json(args.json, figures)  # each step as it comes: a long run keeps what it measured
            if args.lost:
                loss = bench.loss_detection()
                loss["load"] = load_average()
                figures["loss"] = loss
                write_json(args.json, figures)
        finally:
            bench.close()

    last = figures["steps"][-1]
    gib = 2**30
    print()
    print(f"at {last['containers']:,} containers on {args.hosts} hosts ({database}; load {last['load']}):")
    rows = [
        (
            "ListContainers p99, by host",
            ms(last["list_by_host"]["p99_ms"]),
            "<= 50 ms",
            last["list_by_host"]["p99_ms"] <= 50,
        ),
        (
            "ListContainers p99, by label",
            ms(last["list_by_label"]["p99_ms"]),
            "<= 50 ms",
            last["list_by_label"]["p99_ms"] <= 50,
        ),
        ("GetContainer p99", ms(last["get"]["p99_ms"]), "", None),
        (
            "controller RSS",
            f"{last['rss_bytes'] / 2**20:.0f} MiB (peak {last['rss_peak_bytes'] / 2**20:.0f})",
            "<= 1 GiB",
            last["rss_peak_bytes"] <= gib,
        ),
        (
            "restart to serving",
            f"{last['restart_to_serving_s']:.2f} s",
            "<= 10 s",
            last["restart_to_serving_s"] <= 10,
        ),
        (
            "restart to all hosts READY",
            f"{last['all_ready_s'] + last['restart_to_serving_s']:.1f} s",
            "",
            None,
        ),
        ("idle controller CPU (health)", f"{last['idle_controller_cpu']:.2f} s/s", "", None),
        ("idle hollow hosts CPU", f"{last['idle_hosts_cpu']:.2f} s/s", "", None),
        ("sync repairs after restart", f"{last['sync_repairs']:.0f}", "0", last["sync_repairs"] == 0),
    ]
    if "loss" in figures:
        loss = figures["loss"]
        value = loss["all_not_ready_s"]
        text = (
            f"{value:.2f} s" if value is not None else f"only {loss['detected']} of {loss['hosts']} in 60 s"
        )
        rows.append(
            (f"{loss['hosts']} hosts lost: all NOT_READY", text, "<= 3 s", value is not None and value <= 3)
        )
    for name, value, target, ok in rows:
        verdict = "" if ok is None else ("holds" if ok else "MISSED")
        print(f"  {name:<32}{value:>24}  {target:<10}{verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
