"""Control-plane create throughput beside a bare gRPC echo round trip, in plaintext and over TLS.

Starts, on this machine and in this run:
- a bare gRPC echo server (threaded ``grpc.server``, the same server type the controller uses) in
  its own process, with two ports: plaintext, and TLS with the controller's certificate (as the
  controller's API port: server certificate, no client certificate, a bearer token in metadata);
- a relay in a process of its own: the same TLS server, whose every call makes one TLS call to the
  echo server before it answers. It is a create with everything but the two gRPC hops taken out
  (no database, no checks): the ceiling of any create that waits for its agent on this machine;
- a hollow fleet, secured as deployed: a controller (SQLite, WAL; TLS + token for clients, mutual TLS
  to agents) and N hollow agents (FakeDevice);
- then a second hollow fleet whose controller runs on PostgreSQL: a throwaway server (Debian's
  binaries, see chital.devcluster.postgres) with fsync and synchronous commit turned back on, or
  the database of ``--database-url``. Without the server binaries the PostgreSQL row says why it is
  missing (an error with CHITAL_REQUIRE_POSTGRES=1); ``--no-postgres`` skips it;
then drives them with the same number of client threads for the same time and prints:
- peak throughput (calls/s) and p50/p99 latency of each, and the ratio create / TLS echo on each
  database (the figure we track: target >= 0.4), with create / plaintext echo beside it so the cost
  of TLS itself stays visible, and relay / TLS echo: the ratio no create can pass. A create waits
  for its agent (the SDK's default): it is acknowledged once the container exists on its host and
  its record is committed;
- p99 create latency at half of the measured peak create rate beside the TLS echo p99 at half of its
  peak (target <= 10 x);
- the first call on a fresh channel (connect + handshake) beside a steady call: every client here
  uses one channel, so the TLS handshake happens once per channel, never per call.

Nothing here is asserted: the figures are printed for the issue notes and for trends.

    .venv/bin/python bench/create_throughput.py [--seconds 10] [--threads 8] [--agents 3]
        [--database-url postgresql+psycopg://...] [--no-postgres]
"""

from __future__ import annotations

import argparse
import contextlib
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
from typing import Any

import grpc
import sqlalchemy as sa

from chital.devcluster.hollow import HollowFleet
from chital.devcluster.postgres import PostgresServer, PostgresUnavailableError
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


def serve_relay(tls_dir: Path, echo_port: int) -> None:
    """Run the relay server (child process): TLS like the controller's API port, and every call
    makes one TLS call to the echo server (as a create calls its agent) before it answers; no
    database, no other work. Prints its port, serves until stdin closes."""
    ca_only = channel_credentials(TLSFiles(ca=TLSFiles.from_dir(tls_dir).ca))
    channel = grpc.secure_channel(f"127.0.0.1:{echo_port}", ca_only)
    downstream = channel.unary_unary(ECHO_METHOD)

    def relay(request: bytes, context: grpc.ServicerContext) -> bytes:
        return downstream(request, timeout=30.0)

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(relay)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    server.add_generic_rpc_handlers((handler,))
    credentials = server_credentials(TLSFiles.from_dir(tls_dir), require_client_cert=False)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(grace=None)
    channel.close()


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


def durable_postgres(server: PostgresServer) -> str:
    """A database on ``server`` with the durability the throwaway server turns off for tests
    (fsync, synchronous commit, full-page writes) turned on again: a commit waits for its WAL flush,
    as in production."""
    url = server.create_database("bench_creates")
    engine = sa.create_engine(server.url(), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                conn.exec_driver_sql(f"ALTER SYSTEM SET {setting} = on")
            conn.exec_driver_sql("SELECT pg_reload_conf()")
    finally:
        engine.dispose()
    return url


def measure_creates(
    fleet: HollowFleet, threads: int, seconds: float
) -> tuple[tuple[float, list[float], int], tuple[float, list[float], int]]:
    """Peak creates (warmed up first), then creates paced at half of that peak."""
    client = fleet.client(timeout=30.0)
    run_id = uuid.uuid4().hex[:8]
    counter = iter(range(10**9))
    lock = threading.Lock()

    def create() -> None:
        with lock:
            n = next(counter)
        client.create_container(f"b-{run_id}-{n}", request_id=f"{run_id}-{n}")

    try:
        drive(create, threads, 1.0)
        peak = drive(create, threads, seconds)
        half = drive(create, threads, seconds / 2, peak[0] / 2)
    finally:
        client.close()
    return peak, half


def measure_postgres(args: argparse.Namespace, workdir: Path, creates: dict[str, Any]) -> str:
    """Creates on PostgreSQL (``--database-url``, else a throwaway server) into ``creates``; returns
    what the PostgreSQL figure was measured on, or why it is missing."""
    with contextlib.ExitStack() as stack:
        url = args.database_url
        note = "PostgreSQL at --database-url"
        if not url:
            try:
                url = durable_postgres(stack.enter_context(PostgresServer()))
            except PostgresUnavailableError as exc:
                if os.environ.get("CHITAL_REQUIRE_POSTGRES") == "1":
                    raise
                return f"not measured: {exc}"
            note = "throwaway server, fsync and synchronous_commit on"
        try:
            fleet = stack.enter_context(HollowFleet(agents=args.agents, workdir=workdir, database_url=url))
        except (RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:  # SQLite figures stand
            if os.environ.get("CHITAL_REQUIRE_POSTGRES") == "1":
                raise
            return f"not measured: the fleet did not start: {exc}"
        creates["PostgreSQL"] = measure_creates(fleet, args.threads, args.seconds)
    return note


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument(
        "--database-url",
        default="",
        help="measure creates on this PostgreSQL database instead of a throwaway server",
    )
    parser.add_argument("--no-postgres", action="store_true", help="measure creates on SQLite only")
    parser.add_argument("--serve-echo", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve-relay", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo:
        serve_echo(args.serve_echo)
        return 0
    if args.serve_relay:
        serve_relay(Path(args.serve_relay[0]), int(args.serve_relay[1]))
        return 0

    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    load_before = os.getloadavg()[0]
    payload = b"x" * 64
    creates: dict[str, tuple[tuple[float, list[float], int], tuple[float, list[float], int]]] = {}
    postgres_note = ""
    with tempfile.TemporaryDirectory(prefix="chital-bench-") as tmp:
        fleet = HollowFleet(agents=args.agents, workdir=Path(tmp) / "sqlite")
        fleet.start()
        assert fleet.pki is not None and fleet.token is not None
        echo_proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-echo", str(fleet.pki.directory / "controller")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        relay_proc: subprocess.Popen[str] | None = None
        try:
            assert echo_proc.stdout is not None
            plain_port, tls_port = (int(p) for p in echo_proc.stdout.readline().split())
            relay_proc = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--serve-relay",
                    str(fleet.pki.directory / "controller"),
                    f"{tls_port}",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert relay_proc.stdout is not None
            relay_port = int(relay_proc.stdout.readline())
            ca_only = channel_credentials(TLSFiles(ca=fleet.pki.ca))
            bearer = (("authorization", f"Bearer {fleet.token}"),)  # the same metadata as the SDK's

            def plain_channel() -> grpc.Channel:
                return grpc.insecure_channel(f"127.0.0.1:{plain_port}")

            def tls_channel() -> grpc.Channel:
                return grpc.secure_channel(f"127.0.0.1:{tls_port}", ca_only)

            # One channel per client, shared by its threads: one handshake per channel.
            plain, tls = plain_channel(), tls_channel()
            relay = grpc.secure_channel(f"127.0.0.1:{relay_port}", ca_only)
            plain_rpc, tls_rpc = plain.unary_unary(ECHO_METHOD), tls.unary_unary(ECHO_METHOD)
            relay_rpc = relay.unary_unary(ECHO_METHOD)

            def echo_plain() -> None:
                plain_rpc(payload, timeout=30.0)

            def echo_tls() -> None:
                tls_rpc(payload, timeout=30.0, metadata=bearer)

            def relay_tls() -> None:
                relay_rpc(payload, timeout=30.0, metadata=bearer)

            # Warm up every path (channels, handshakes).
            for call in (echo_plain, echo_tls, relay_tls):
                drive(call, args.threads, 1.0)
            results = {}
            for name, call in (("plain", echo_plain), ("tls", echo_tls), ("relay", relay_tls)):
                results[name] = drive(call, args.threads, args.seconds)
            echo_half = drive(echo_tls, args.threads, args.seconds / 2, results["tls"][0] / 2)
            handshake = {
                "plaintext": first_and_steady(plain_channel, payload),
                "TLS": first_and_steady(tls_channel, payload),
            }
            plain.close()
            tls.close()
            relay.close()
            creates["SQLite"] = measure_creates(fleet, args.threads, args.seconds)
        finally:
            for proc in (relay_proc, echo_proc):
                if proc is not None and proc.stdin is not None:
                    proc.stdin.close()
                    proc.wait(10)
            fleet.stop()
        if not args.no_postgres:
            postgres_note = measure_postgres(args, Path(tmp) / "postgres", creates)

    print(f"machine: {os.cpu_count()} cores; {args.threads} client threads; {args.seconds:.0f} s per run")
    # Other work on the machine skews every figure: the load average says how busy it was.
    print(f"load average (1 min): {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(
        f"hollow fleet: 1 controller (TLS + bearer token) + {args.agents} hollow agents "
        "(FakeDevice; mutual TLS from the controller); creates wait for the agent (the SDK's default)"
    )
    print(f"databases: SQLite (WAL); PostgreSQL: {postgres_note or 'skipped (--no-postgres)'}")
    print(f"{'':30}{'calls/s':>10}{'p50':>12}{'p99':>12}{'errors':>8}")
    rows = [
        ("echo (plaintext gRPC)", results["plain"]),
        ("echo (TLS gRPC + token)", results["tls"]),
        ("relay (TLS, one call on)", results["relay"]),
    ]
    rows += [(f"create ({db}, TLS)", peak) for db, (peak, _) in creates.items()]
    for name, (tput, lat, err) in rows:
        p50 = statistics.median(lat) if lat else float("nan")
        print(f"{name:<30}{tput:>10.0f}{fmt_ms(p50):>12}{fmt_ms(percentile(lat, 0.99)):>12}{err:>8}")
    plain_tput, tls_tput = results["plain"][0], results["tls"][0]
    print(f"TLS echo / plaintext echo throughput: {tls_tput / plain_tput:.2f}")
    ratios = "; ".join(f"{db} {peak[0] / tls_tput:.2f}" for db, (peak, _) in creates.items())
    print(f"create / TLS echo throughput ratio: {ratios} (target >= 0.40)")
    print(
        f"relay / TLS echo throughput: {results['relay'][0] / tls_tput:.2f} (the most any create "
        "that waits for its agent can reach here: two gRPC hops, nothing else)"
    )
    ratios = "; ".join(f"{db} {peak[0] / results['relay'][0]:.2f}" for db, (peak, _) in creates.items())
    print(f"create / relay throughput: {ratios}")
    ratios = "; ".join(f"{db} {peak[0] / plain_tput:.2f}" for db, (peak, _) in creates.items())
    print(f"create / plaintext echo throughput ratio: {ratios} (for reference)")
    echo_half_tput, echo_half_lat, _ = echo_half
    echo_p99 = percentile(echo_half_lat, 0.99)
    for db, (_, (create_half_tput, create_half_lat, _)) in creates.items():
        create_p99 = percentile(create_half_lat, 0.99)
        print(
            f"at half of peak ({db}): TLS echo {echo_half_tput:.0f}/s p99 {fmt_ms(echo_p99)}; "
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
