"""Host health at scale: the controller's CPU for heartbeats, false NOT_READY under a saturating
create load, and the detection time of a killed and of a frozen (SIGSTOP) agent.

Starts, on this machine and in this run:
- a hollow fleet in plaintext on loopback (a controller on SQLite with /metrics, and two hollow agents
  in processes of their own: the victims of the detection runs);
- ``--hosts`` more hollow agents, ``--per-process`` of them per process (each a real ``AgentServer``
  with a ``FakeDevice`` and a ``grpc.server`` on its own port), registered with the controller,

then prints:
1. the controller's CPU while idle with the 2 victims, then with every host READY: the difference
   per host and per second is the cost of the heartbeats (the rest of the controller's idle work
   is in both figures);
2. for comparison, the CPU of the previous scheme's traffic: a GetInfo call to every host every
   0.5 s, timed in this process (the caller's side of the polling);
3. ``--threads`` clients creating containers as fast as the controller takes them for
   ``--load-seconds``: creates/s, the controller's CPU use, and the READY -> NOT_READY flips the
   controller counted meanwhile (``chital_controller_host_state_transitions_total``; must be 0);
4. while the load goes on: SIGKILL of one victim and SIGSTOP of the other, each timed from the
   signal to NOT_READY as the API reports it (polled every 20 ms), then SIGCONT to READY.

Nothing here is asserted: the figures are printed for the notes and for trends.

    .venv/bin/python bench/health_under_load.py [--hosts 200] [--per-process 100] [--interval 1.0]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc

from chital.agent.server import AgentServer, ServerConfig
from chital.api.agent.v1 import agent_pb2, agent_pb2_grpc
from chital.devcluster.hollow import HollowFleet

CLK_TCK = os.sysconf("SC_CLK_TCK")


def serve_agents(count: int, workdir: Path) -> int:
    """Child process: ``count`` hollow agents; prints their ports as JSON, serves until stdin ends."""
    logging.basicConfig(level=logging.ERROR)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    servers = []
    for i in range(count):
        config = ServerConfig(
            state_dir=workdir / f"host-{i:05d}",
            device="fake",
            insecure=True,
            cgroups="off",
            max_workers=4,
            max_streams=8,
        )
        server = AgentServer(config)
        server.start()
        servers.append(server)
    print(json.dumps([s.port for s in servers]), flush=True)
    sys.stdin.read()
    os._exit(0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_over(pid: int, seconds: float) -> float:
    """CPU seconds ``pid`` used over the next ``seconds``."""
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - before


def transitions(metrics_url: str, state: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    pattern = rf'^chital_controller_host_state_transitions_total\{{state="{state}"\}} (\S+)$'
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def poll_cost(addresses: list[str], seconds: float) -> float:
    """This process's CPU for GetInfo to every address every 0.5 s (futures, as the old monitor)."""
    stubs = [agent_pb2_grpc.AgentServiceStub(grpc.insecure_channel(a)) for a in addresses]
    for stub in stubs:  # connect first: the steady state is what counts
        stub.GetInfo(agent_pb2.GetInfoRequest(), timeout=10)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    before = usage.ru_utime + usage.ru_stime
    end = time.monotonic() + seconds
    failed = 0
    while time.monotonic() < end:
        tick = time.monotonic()
        calls = [stub.GetInfo.future(agent_pb2.GetInfoRequest(), timeout=0.4) for stub in stubs]
        for call in calls:
            try:
                call.result()
            except grpc.RpcError:
                failed += 1
        time.sleep(max(0.0, 0.5 - (time.monotonic() - tick)))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    if failed:
        print(f"  (polling: {failed} GetInfo calls failed)")
    return usage.ru_utime + usage.ru_stime - before


def wait_for(condition: Callable[[], bool], timeout: float, step: float = 0.02) -> float | None:
    """Seconds until ``condition`` held, or None after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(step)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", type=int, default=200, help="hollow hosts besides the two victims")
    parser.add_argument("--per-process", type=int, default=100, help="hollow agents per process")
    parser.add_argument("--interval", type=float, default=1.0, help="the controller's --health-interval")
    parser.add_argument(
        "--not-ready-after", type=float, default=3.0, help="the controller's --not-ready-after"
    )
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--load-seconds", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=8, help="create clients")
    parser.add_argument("--serve-agents", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_agents:
        return serve_agents(args.serve_agents, args.workdir)

    print(
        f"health under load: {args.hosts} + 2 hollow hosts, heartbeat every {args.interval} s, "
        f"{os.cpu_count()} cores"
    )
    with tempfile.TemporaryDirectory(prefix="chital-health-bench-") as tmp:
        farms: list[subprocess.Popen[str]] = []
        fleet = HollowFleet(
            agents=2,
            insecure=True,
            metrics=True,
            workdir=Path(tmp) / "fleet",
            controller_args=[
                "--health-interval",
                str(args.interval),
                "--not-ready-after",
                str(args.not_ready_after),
            ],
        )
        try:
            fleet.start()
            assert fleet.controller is not None and fleet.controller.metrics_url is not None
            pid, metrics_url = fleet.controller.proc.pid, fleet.controller.metrics_url
            with fleet.client(timeout=30) as client:
                time.sleep(2)
                idle_base = cpu_over(pid, args.idle_seconds)
                print(f"controller idle, 2 hosts: {idle_base / args.idle_seconds * 100:.1f} % of a core")

                addresses: list[str] = []
                for n in range(0, args.hosts, args.per_process):
                    count = min(args.per_process, args.hosts - n)
                    farm = subprocess.Popen(
                        [
                            sys.executable,
                            __file__,
                            "--serve-agents",
                            str(count),
                            "--workdir",
                            f"{tmp}/farm-{n}",
                        ],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                        env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
                    )
                    farms.append(farm)
                    assert farm.stdout is not None
                    addresses += [f"127.0.0.1:{p}" for p in json.loads(farm.stdout.readline())]
                start = time.monotonic()
                with futures.ThreadPoolExecutor(8) as pool:
                    list(pool.map(lambda a: client.register_host(a, labels={"fleet": "bench"}), addresses))
                total = args.hosts + 2
                took = wait_for(
                    lambda: sum(h.state.name == "READY" for h in client.list_hosts()) == total, 120, 0.5
                )
                print(f"{total} hosts registered and READY in {time.monotonic() - start:.1f} s ({took})")
                time.sleep(max(3.0, 2 * args.interval))  # past the first writes of every host
                idle_all = cpu_over(pid, args.idle_seconds)
                per_host = (idle_all - idle_base) / (args.hosts * args.idle_seconds)
                print(
                    f"controller idle, {total} hosts: {idle_all / args.idle_seconds * 100:.1f} % of a core; "
                    f"heartbeats: {per_host * 1e6:.1f} us CPU per host per second "
                    f"({per_host * 1000 * 100:.1f} % of a core for 1,000 hosts)"
                )
                polled = poll_cost(addresses, args.idle_seconds)
                per_host_poll = polled / (args.hosts * args.idle_seconds)
                print(
                    "for comparison, GetInfo polling every 0.5 s (caller's side): "
                    f"{per_host_poll * 1e6:.1f} us CPU per host per second "
                    f"({per_host_poll * 1000 * 100:.1f} % of a core for 1,000 hosts)"
                )

                flips_before = transitions(metrics_url, "NOT_READY")
                log_before = fleet.controller.log_path.stat().st_size
                stop_load = threading.Event()
                created = [0]
                failed = [0]

                def load() -> None:
                    with fleet.client(timeout=30) as c:
                        while not stop_load.is_set():
                            try:
                                c.create_container(f"load-{uuid.uuid4().hex[:12]}")
                                created[0] += 1
                            except Exception:  # counted: overload answers are part of the picture
                                failed[0] += 1

                workers = [threading.Thread(target=load, daemon=True) for _ in range(args.threads)]
                for w in workers:
                    w.start()
                busy = cpu_over(pid, args.load_seconds)
                flips = transitions(metrics_url, "NOT_READY") - flips_before
                print(
                    f"create load: {created[0] / args.load_seconds:.0f} creates/s with {args.threads} "
                    f"clients ({failed[0]} failed), "
                    f"controller at {busy / args.load_seconds * 100:.0f} % of a core; "
                    f"READY -> NOT_READY flips: {flips:.0f}"
                )
                with fleet.controller.log_path.open(errors="replace") as log:
                    log.seek(log_before)
                    for line in log:
                        if "is NOT_READY" in line:
                            print(f"  flip: {line.strip()}")

                killed, frozen = fleet.agent_procs
                os.kill(killed.proc.pid, signal.SIGKILL)
                t_kill = wait_for(lambda: client.get_host(killed.address).state.name == "NOT_READY", 30)
                print(f"killed agent (SIGKILL) NOT_READY after {t_kill:.2f} s (under load)")
                os.kill(frozen.proc.pid, signal.SIGSTOP)
                t_stop = wait_for(lambda: client.get_host(frozen.address).state.name == "NOT_READY", 30)
                print(f"frozen agent (SIGSTOP) NOT_READY after {t_stop:.2f} s (under load)")
                os.kill(frozen.proc.pid, signal.SIGCONT)
                t_cont = wait_for(lambda: client.get_host(frozen.address).state.name == "READY", 30)
                print(f"frozen agent READY again {t_cont:.2f} s after SIGCONT (under load)")
                stop_load.set()
                for w in workers:
                    w.join(60)
        finally:
            for farm in farms:
                if farm.stdin is not None:
                    farm.stdin.close()
                try:
                    farm.wait(30)
                except subprocess.TimeoutExpired:
                    farm.kill()
                    farm.wait()
            fleet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
