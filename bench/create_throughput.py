"""Control-plane create throughput beside a bare gRPC echo round trip.

Starts, on this machine and in this run:
- a bare gRPC echo server (threaded ``grpc.server``, the same server type the controller uses) in
  its own process, and
- a hollow fleet: a controller (SQLite, WAL) and N hollow agents (FakeDevice),
then drives both with the same number of client threads for the same time and prints:
- peak throughput (calls/s) and p50/p99 latency of each, and their ratio (the figure we track:
  target create >= 0.4 x echo);
- p99 create latency at half of the measured peak create rate beside the echo p99 at half of its
  peak (target <= 10 x).

Nothing here is asserted: the figures are printed for the issue notes and for trends.

    .venv/bin/python bench/create_throughput.py [--seconds 10] [--threads 8] [--agents 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc

from chital.client import Client
from chital.devcluster.hollow import HollowFleet

ECHO_METHOD = "/bench.Echo/Echo"


def serve_echo() -> None:
    """Run the echo server (child process): prints its port, serves until stdin closes."""

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(grace=None)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def drive(
    call: Callable[[], None], threads: int, seconds: float, rate: float | None = None
) -> tuple[float, list[float], int]:
    """Run ``call`` from ``threads`` threads for ``seconds``; optionally paced to ``rate`` calls/s.

    Returns (calls per second, latencies in seconds, errors).
    """
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    deadline = time.monotonic() + seconds
    interval = threads / rate if rate else 0.0

    def worker(i: int) -> None:
        next_at = time.monotonic() + (interval * i / threads)
        while True:
            now = time.monotonic()
            if now >= deadline:
                return
            if interval:
                if now < next_at:
                    time.sleep(next_at - now)
                next_at += interval
            t0 = time.perf_counter()
            try:
                call()
            except Exception:
                errors[i] += 1
                continue
            latencies[i].append(time.perf_counter() - t0)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    start = time.monotonic()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.monotonic() - start
    flat = [x for lat in latencies for x in lat]
    return len(flat) / elapsed, flat, sum(errors)


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--serve-echo", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo:
        serve_echo()
        return 0

    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    echo_proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-echo"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert echo_proc.stdout is not None
    echo_port = int(echo_proc.stdout.readline())
    channel = grpc.insecure_channel(f"127.0.0.1:{echo_port}")
    echo_rpc = channel.unary_unary(ECHO_METHOD)
    payload = b"x" * 64
    with tempfile.TemporaryDirectory(prefix="chital-bench-") as tmp:
        fleet = HollowFleet(agents=args.agents, workdir=Path(tmp))
        fleet.start()
        try:
            client = Client(fleet.target, timeout=30.0)
            run_id = uuid.uuid4().hex[:8]
            counter = iter(range(10**9))
            lock = threading.Lock()

            def create() -> None:
                with lock:
                    n = next(counter)
                client.create_container(f"b-{run_id}-{n}", request_id=f"{run_id}-{n}")

            def echo() -> None:
                echo_rpc(payload, timeout=30.0)

            # Warm up both paths (channels, database, agents).
            drive(echo, args.threads, 1.0)
            drive(create, args.threads, 1.0)
            echo_tput, echo_lat, echo_err = drive(echo, args.threads, args.seconds)
            create_tput, create_lat, create_err = drive(create, args.threads, args.seconds)
            echo_half_tput, echo_half_lat, _ = drive(echo, args.threads, args.seconds / 2, echo_tput / 2)
            create_half_tput, create_half_lat, _ = drive(
                create, args.threads, args.seconds / 2, create_tput / 2
            )
            client.close()
        finally:
            fleet.stop()
    channel.close()
    assert echo_proc.stdin is not None
    echo_proc.stdin.close()
    echo_proc.wait(10)

    print(f"machine: {os.cpu_count()} cores; {args.threads} client threads; {args.seconds:.0f} s per run")
    print(f"hollow fleet: 1 controller (SQLite WAL) + {args.agents} hollow agents (FakeDevice)")
    print(f"{'':24}{'calls/s':>10}{'p50':>12}{'p99':>12}{'errors':>8}")
    for name, tput, lat, err in (
        ("echo (bare gRPC)", echo_tput, echo_lat, echo_err),
        ("create (controller)", create_tput, create_lat, create_err),
    ):
        p50 = statistics.median(lat) if lat else float("nan")
        print(f"{name:<24}{tput:>10.0f}{fmt_ms(p50):>12}{fmt_ms(percentile(lat, 0.99)):>12}{err:>8}")
    ratio = create_tput / echo_tput if echo_tput else float("nan")
    print(f"create/echo throughput ratio: {ratio:.2f} (target >= 0.40)")
    echo_p99 = percentile(echo_half_lat, 0.99)
    create_p99 = percentile(create_half_lat, 0.99)
    print(
        f"at half of peak: echo {echo_half_tput:.0f}/s p99 {fmt_ms(echo_p99)}; "
        f"create {create_half_tput:.0f}/s p99 {fmt_ms(create_p99)}; "
        f"ratio {create_p99 / echo_p99:.1f} x (target <= 10 x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
