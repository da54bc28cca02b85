"""Control-plane create throughput beside a bare gRPC echo round trip, in plaintext and over TLS.

Starts, on this machine and in this run:
- a bare gRPC echo server (threaded ``grpc.server``, the same server type the controller uses) in
  its own process, with two ports: plaintext, and TLS with the controller's certificate (as the
  controller's API port: server certificate, no client certificate, a bearer token in metadata);
- a hollow fleet, secured as deployed: a controller (SQLite, WAL; TLS + token for clients, mutual TLS
  to agents) and N hollow agents (FakeDevice),
then drives them with the same number of client threads for the same time and prints:
- peak throughput (calls/s) and p50/p99 latency of each, and the ratio create / TLS echo (the
  figure we track: target >= 0.4), with create / plaintext echo beside it so the cost of TLS itself
  stays visible;
- p99 create latency at half of the measured peak create rate beside the TLS echo p99 at half of its
  peak (target <= 10 x);
- the first call on a fresh channel (connect + handshake) beside a steady call: every client here
  uses one channel, so the TLS handshake happens once per channel, never per call.

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

from chital.devcluster.hollow import HollowFleet
from chital.security.tls import TLSFiles, channel_credentials, server_credentials

ECHO_METHOD = "/bench.Echo/Echo"


def serve_echo(tls_dir: Path) -> None:
    """Run the echo server (child process): prints its plaintext and TLS ports, serves until stdin
    closes."""

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    plain_port = server.add_insecure_port("127.0.0.1:0")
    credentials = server_credentials(TLSFiles.from_dir(tls_dir), require_client_cert=False)
    tls_port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    print(plain_port, tls_port, flush=True)
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


def first_and_steady(
    open_channel: Callable[[], grpc.Channel], payload: bytes, runs: int = 20
) -> tuple[float, float]:
    """Median latency of the first call on a fresh channel (connect, and the TLS handshake if any)
    and of the calls after it on the same channel."""
    first, steady = [], []
    for _ in range(runs):
        channel = open_channel()
        rpc = channel.unary_unary(ECHO_METHOD)
        for i in range(6):
            t0 = time.perf_counter()
            rpc(payload, timeout=30.0)
            (first if i == 0 else steady).append(time.perf_counter() - t0)
        channel.close()
    return statistics.median(first), statistics.median(steady)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--serve-echo", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo:
        serve_echo(args.serve_echo)
        return 0

    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    payload = b"x" * 64
    with tempfile.TemporaryDirectory(prefix="chital-bench-") as tmp:
        fleet = HollowFleet(agents=args.agents, workdir=Path(tmp))
        fleet.start()
        assert fleet.pki is not None and fleet.token is not None
        echo_proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-echo", str(fleet.pki.directory / "controller")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert echo_proc.stdout is not None
            plain_port, tls_port = (int(p) for p in echo_proc.stdout.readline().split())
            ca_only = channel_credentials(TLSFiles(ca=fleet.pki.ca))
            bearer = (("authorization", f"Bearer {fleet.token}"),)  # the same metadata as the SDK's

            def plain_channel() -> grpc.Channel:
                return grpc.insecure_channel(f"127.0.0.1:{plain_port}")

            def tls_channel() -> grpc.Channel:
                return grpc.secure_channel(f"127.0.0.1:{tls_port}", ca_only)

            # One channel per client, shared by its threads: one handshake per channel.
            plain, tls = plain_channel(), tls_channel()
            plain_rpc, tls_rpc = plain.unary_unary(ECHO_METHOD), tls.unary_unary(ECHO_METHOD)
            client = fleet.client(timeout=30.0)
            run_id = uuid.uuid4().hex[:8]
            counter = iter(range(10**9))
            lock = threading.Lock()

            def create() -> None:
                with lock:
                    n = next(counter)
                client.create_container(f"b-{run_id}-{n}", request_id=f"{run_id}-{n}")

            def echo_plain() -> None:
                plain_rpc(payload, timeout=30.0)

            def echo_tls() -> None:
                tls_rpc(payload, timeout=30.0, metadata=bearer)

            # Warm up every path (channels, handshakes, database, agents).
            for call in (echo_plain, echo_tls, create):
                drive(call, args.threads, 1.0)
            results = {}
            for name, call in (("plain", echo_plain), ("tls", echo_tls), ("create", create)):
                results[name] = drive(call, args.threads, args.seconds)
            half = {}
            for name, call in (("tls", echo_tls), ("create", create)):
                half[name] = drive(call, args.threads, args.seconds / 2, results[name][0] / 2)
            handshake = {
                "plaintext": first_and_steady(plain_channel, payload),
                "TLS": first_and_steady(tls_channel, payload),
            }
            client.close()
            plain.close()
            tls.close()
        finally:
            if echo_proc.stdin is not None:
                echo_proc.stdin.close()
            echo_proc.wait(10)
            fleet.stop()

    print(f"machine: {os.cpu_count()} cores; {args.threads} client threads; {args.seconds:.0f} s per run")
    print(
        f"hollow fleet: 1 controller (SQLite WAL; TLS + bearer token) + {args.agents} hollow agents "
        "(FakeDevice; mutual TLS from the controller)"
    )
    print(f"{'':28}{'calls/s':>10}{'p50':>12}{'p99':>12}{'errors':>8}")
    rows = (
        ("echo (plaintext gRPC)", results["plain"]),
        ("echo (TLS gRPC + token)", results["tls"]),
        ("create (controller, TLS)", results["create"]),
    )
    for name, (tput, lat, err) in rows:
        p50 = statistics.median(lat) if lat else float("nan")
        print(f"{name:<28}{tput:>10.0f}{fmt_ms(p50):>12}{fmt_ms(percentile(lat, 0.99)):>12}{err:>8}")
    plain_tput, tls_tput, create_tput = (results[k][0] for k in ("plain", "tls", "create"))
    print(f"TLS echo / plaintext echo throughput: {tls_tput / plain_tput:.2f}")
    print(f"create / TLS echo throughput ratio: {create_tput / tls_tput:.2f} (target >= 0.40)")
    print(f"create / plaintext echo throughput ratio: {create_tput / plain_tput:.2f} (for reference)")
    (echo_half_tput, echo_half_lat, _), (create_half_tput, create_half_lat, _) = half["tls"], half["create"]
    echo_p99 = percentile(echo_half_lat, 0.99)
    create_p99 = percentile(create_half_lat, 0.99)
    print(
        f"at half of peak: TLS echo {echo_half_tput:.0f}/s p99 {fmt_ms(echo_p99)}; "
        f"create {create_half_tput:.0f}/s p99 {fmt_ms(create_p99)}; "
        f"ratio {create_p99 / echo_p99:.1f} x (target <= 10 x)"
    )
    for name, (first, steady) in handshake.items():
        print(
            f"fresh {name} channel: first call {fmt_ms(first)} "
            f"(connect{' + handshake' if name == 'TLS' else ''}), "
            f"then {fmt_ms(steady)} per call on the same channel"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
