"""Unary latency with many attached clients: watchers and ``logs -f`` beside a baseline with none.

Starts a hollow fleet secured as deployed (a controller on SQLite with TLS + bearer token, hollow
agents with FakeDevice behind mutual TLS), creates a container running a process that prints a line
a second, then measures the same unary load (client threads calling GetContainer as fast as they
can, for the same time) in three phases:

1. baseline: no attached client;
2. N idle watchers: each watches a container where nothing happens (attached, receiving nothing:
   what an attached client costs by being there);
3. N watchers of every event (heartbeats on): each receives every event;
4. N attached ``logs -f`` clients of the printing process (StreamLogs with follow: the controller
   proxies each one to the agent's own stream).

During every phase a background client execs a short process once a second, so the watchers have
events to carry while the unary calls run. The attached clients live in a separate process (one
event loop, grpc.aio), so their own work does not compete with the unary clients' threads; that
process reports how many messages each attached client received, which shows that the watchers
got every event and the followers every line while the unary calls were measured.

Printed: calls/s, p50 and p99 of each phase, errors, the ratio to the baseline, the messages the
attached clients received, and the controller's threads and resident memory. Nothing is asserted.

    .venv/bin/python bench/attached_streams.py [--attached 500] [--seconds 10] [--threads 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from chital.api.container.v1 import container_pb2 as cpb
from chital.api.container.v1 import container_pb2_grpc as cpb_grpc
from chital.devcluster.hollow import HollowFleet
from chital.security.tls import TLSFiles, channel_credentials

#: Attached streams per channel in the attaching process (several connections, as many clients).
STREAMS_PER_CHANNEL = 100
PRINTER = "while true; do echo tick; sleep 1; done"


# -- the attaching process ----------------------------------------------------------------------


async def attach(target: str, ca: Path, token: str, kind: str, *, count: int, subject: str) -> None:
    """Open ``count`` streams of ``kind`` (``subject``: the process of ``logs``, the container of
    ``idle``); print "attached" once each has its first message, then count messages until stdin
    closes, then print the counts as JSON."""
    credentials = channel_credentials(TLSFiles(ca=ca))
    metadata = (("authorization", f"Bearer {token}"),)
    channels = [
        grpc.aio.secure_channel(target, credentials, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(max(1, -(-count // STREAMS_PER_CHANNEL)))
    ]
    counts = [0] * count
    first = [asyncio.Event() for _ in range(count)]
    errors: dict[str, int] = {}

    async def one(i: int) -> None:
        stub = cpb_grpc.ContainerServiceStub(channels[i % len(channels)])
        call: Any
        if kind in ("watch", "idle"):
            request = cpb.WatchRequest(
                heartbeat_interval={"seconds": 30}, container=subject if kind == "idle" else ""
            )
            call = stub.Watch(request, metadata=metadata)
        else:
            call = stub.StreamLogs(cpb.StreamLogsRequest(process_uid=subject, follow=True), metadata=metadata)
        try:
            async for message in call:
                if not first[i].is_set():
                    first[i].set()
                    if kind != "logs" and message.heartbeat:
                        continue  # where the watch starts: not an event
                if kind == "logs" or not message.heartbeat:
                    counts[i] += 1
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
        finally:
            first[i].set()

    tasks = [asyncio.create_task(one(i)) for i in range(count)]
    await asyncio.gather(*(f.wait() for f in first))
    print(json.dumps({"attached": count - sum(errors.values()), "errors": errors}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the bench closes our stdin
    start = list(counts)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    print(json.dumps({"counts": start, "errors": errors}), flush=True)


# -- the bench ----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def drive(call: object, threads: int, seconds: float) -> tuple[float, list[float], int]:
    """Call ``call()`` from ``threads`` threads for ``seconds``: (calls/s, latencies, errors)."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker() -> None:
        nonlocal errors
        mine: list[float] = []
        failed = 0
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                call()  # type: ignore[operator]
            except grpc.RpcError:
                failed += 1
                continue
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)
            errors += failed

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    started = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return len(latencies) / (time.monotonic() - started), latencies, errors


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (every process, this bench's and others')."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def process_status(pid: int) -> tuple[int, int]:
    """(threads, resident MiB) of a process."""
    threads = rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            threads = int(line.split()[1])
        elif line.startswith("VmRSS:"):
            rss = int(line.split()[1]) // 1024
    return threads, rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--attached", type=int, default=500, help="attached clients per phase")
    parser.add_argument("--seconds", type=float, default=10.0, help="unary load per phase")
    parser.add_argument("--threads", type=int, default=4, help="unary client threads")
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--attach", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attach:
        target, ca, token, kind, count, subject = args.attach
        asyncio.run(attach(target, Path(ca), token, kind, count=int(count), subject=subject))
        return 0

    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    rows: list[tuple[str, tuple[float, list[float], int], str]] = []
    # Per phase, in cores (CPU s per wall s): controller, agents, attached clients, whole machine.
    cpu: list[tuple[float, float, float, float]] = []
    attacher_pid = 0
    status: dict[str, tuple[int, int]] = {}
    with tempfile.TemporaryDirectory(prefix="chital-bench-") as tmp:
        fleet = HollowFleet(agents=args.agents, workdir=Path(tmp))
        fleet.start()
        try:
            assert fleet.pki is not None and fleet.token is not None and fleet.controller is not None
            client = fleet.client(timeout=30.0)
            box = client.create_container("bench-attached", request_id="bench-attached")
            printer = client.exec(box.uid, ["sh", "-c", PRINTER], request_id="bench-printer")
            quiet = client.create_container("bench-quiet", request_id="bench-quiet")
            channel = grpc.secure_channel(fleet.target, channel_credentials(TLSFiles(ca=fleet.pki.ca)))
            stub = cpb_grpc.ContainerServiceStub(channel)
            metadata = (("authorization", f"Bearer {fleet.token}"),)
            request = cpb.GetContainerRequest(container=box.uid)

            def unary() -> None:
                stub.GetContainer(request, timeout=30.0, metadata=metadata)

            # A short process a second: events for the watchers while the unary calls run.
            stop_events = threading.Event()
            execs = 0

            def make_events() -> None:
                nonlocal execs
                while not stop_events.wait(1.0):
                    try:
                        client.exec(box.uid, ["true"], request_id=f"bench-ev-{execs}")
                        execs += 1
                    except Exception as exc:  # printed, the bench goes on
                        print(f"event maker: {exc}", file=sys.stderr)

            maker = threading.Thread(target=make_events, daemon=True)
            maker.start()
            drive(unary, args.threads, 1.0)  # warm up
            pid = fleet.controller.proc.pid
            agent_pids = [a.proc.pid for a in fleet.agent_procs]

            def measured() -> tuple[float, list[float], int]:
                def sample() -> tuple[float, float, float, float]:
                    attached = cpu_seconds(attacher_pid) if attacher_pid else 0.0
                    return (cpu_seconds(pid), sum(map(cpu_seconds, agent_pids)), attached, machine_busy())

                before, t0 = sample(), time.monotonic()
                result = drive(unary, args.threads, args.seconds)
                wall = time.monotonic() - t0
                after = sample()
                c, a, s, m = ((y - x) / wall for x, y in zip(before, after, strict=True))
                cpu.append((c, a, s, m))
                return result

            status["baseline"] = process_status(pid)
            rows.append(("no attached client", measured(), ""))
            phases = (
                ("idle", "idle watchers", quiet.uid),
                ("watch", "watchers of all", ""),
                ("logs", "logs -f clients", printer.uid),
            )
            for kind, label, subject in phases:
                attacher = subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--attach",
                        fleet.target,
                        str(fleet.pki.ca),
                        fleet.token,
                        kind,
                        str(args.attached),
                        subject or "-",
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                assert attacher.stdin is not None and attacher.stdout is not None
                attacher_pid = attacher.pid
                attached = json.loads(attacher.stdout.readline())
                status[kind] = process_status(pid)
                before = execs
                result = measured()
                during = execs - before
                attacher.stdin.close()
                report = json.loads(attacher.stdout.readline())
                attacher.wait(30)
                attacher_pid = 0
                counts = report["counts"]
                received = (
                    f"each received min {min(counts)} / median {statistics.median(counts):.0f} / "
                    f"max {max(counts)} messages"
                )
                if kind == "watch":
                    received += f" ({during} execs meanwhile, about 3 events each)"
                elif kind == "logs":
                    received += " (the process prints a line a second)"
                if attached["errors"] or report["errors"]:
                    received += f"; stream errors: {attached['errors'] or report['errors']}"
                rows.append((f"{attached['attached']} attached {label}", result, received))
            stop_events.set()
            maker.join(5)
            # Processes outlive their agent (as on a real host): end the printer before the fleet.
            client.signal_process(printer.uid, 9)
            client.wait_process(printer.uid, timeout=30)
            client.close()
            channel.close()
        finally:
            fleet.stop()

    print(
        f"machine: {os.cpu_count()} cores; {args.threads} unary client threads (GetContainer); "
        f"{args.seconds:.0f} s per phase"
    )
    print(
        f"hollow fleet: 1 controller (SQLite WAL; TLS + bearer token) + {args.agents} hollow agents; "
        "one short exec a second during every phase"
    )
    header = f"{'':32}{'calls/s':>10}{'p50':>12}{'p99':>12}{'errors':>8}  {'vs baseline':<22}"
    print(header + "CPU (cores): controller, agents, attached clients, machine")
    base_tput = rows[0][1][0]
    base_p99 = percentile(rows[0][1][1], 0.99)
    for (name, (tput, lat, err), _), usage_of in zip(rows, cpu, strict=True):
        p50 = statistics.median(lat) if lat else float("nan")
        p99 = percentile(lat, 0.99)
        ratio = f"{tput / base_tput:.2f}x, p99 {p99 / base_p99:.1f}x"
        usage = ", ".join(f"{u:.2f}" for u in usage_of)
        print(f"{name:<32}{tput:>10.0f}{fmt_ms(p50):>12}{fmt_ms(p99):>12}{err:>8}  {ratio:<22}{usage}")
    for name, _, received in rows[1:]:
        print(f"{name}: {received}")
    for phase, (threads, rss) in status.items():
        print(f"controller during {phase}: {threads} threads, {rss} MiB resident")
    return 0


if __name__ == "__main__":
    sys.exit(main())
