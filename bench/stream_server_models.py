"""Which gRPC server model for many attached streams: the threaded server or grpc.aio.

A bare gRPC server (no chital code) in its own process serves a unary echo and a server stream
that sends one message and then stays open until its client leaves (an idle watcher). Three
server models, each measured with 0 and N attached streams:

- ``threaded``: ``grpc.server`` with a pool of 64 threads for the unary calls plus one thread per
  attached stream (the controller's design: the streams' own budget beside the short calls');
- ``aio+sync``: ``grpc.aio.server`` with the stream as a coroutine and the unary handler a plain
  function run in a 64-thread pool, which is what porting the controller would give (its use
  cases, store and agent calls are synchronous);
- ``aio``: both handlers coroutines (the floor of the async model; not reachable for the
  controller without rewriting the store and the agent pool as async code).

The client (this process) attaches the streams on grpc.aio channels (100 streams each), then
drives the echo from ``--threads`` threads for ``--seconds``. Printed: calls/s, p50, p99, the
server's CPU time per unary call and its resident memory. Nothing is asserted.

    .venv/bin/python bench/stream_server_models.py [--attached 1000] [--seconds 5] [--threads 4]
"""

from __future__ import annotations

import os

# gRPC reads it when it starts: before the import (its shutdown notices are not figures).
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse
import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from pathlib import Path

import grpc

MODELS = ("threaded", "aio+sync", "aio")
STREAMS_PER_CHANNEL = 100


def _identity(data: bytes) -> bytes:
    return data


def serve(model: str, attached: int) -> None:
    """The server (child process): prints its port, serves until stdin closes."""
    if model == "threaded":

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            return request

        def watch(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            ended = threading.Event()
            context.add_callback(ended.set)
            yield b"attached"
            ended.wait()

        handler = grpc.method_handlers_generic_handler(
            "bench.S",
            {
                "Unary": grpc.unary_unary_rpc_method_handler(unary, _identity, _identity),
                "Watch": grpc.unary_stream_rpc_method_handler(watch, _identity, _identity),
            },
        )
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=64 + attached), handlers=[handler])
        print(server.add_insecure_port("127.0.0.1:0"), flush=True)
        server.start()
        sys.stdin.read()
        server.stop(grace=None)
        return

    async def main() -> None:
        async def unary_async(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            return request

        def unary_sync(request: bytes, context: grpc.ServicerContext) -> bytes:
            return request

        async def watch(
            request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
        ) -> AsyncIterator[bytes]:
            yield b"attached"
            await asyncio.Event().wait()  # until the client leaves (the task is cancelled)

        handler = grpc.method_handlers_generic_handler(
            "bench.S",
            {
                "Unary": grpc.unary_unary_rpc_method_handler(
                    unary_async if model == "aio" else unary_sync, _identity, _identity
                ),
                "Watch": grpc.unary_stream_rpc_method_handler(watch, _identity, _identity),
            },
        )
        server = grpc.aio.server(
            migration_thread_pool=futures.ThreadPoolExecutor(max_workers=64), handlers=[handler]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.stop(None)

    asyncio.run(main())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0


def measure(model: str, attached: int, seconds: float, threads: int) -> str:
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", model, str(attached)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    address = f"127.0.0.1:{int(server.stdout.readline())}"
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
    loop_thread.start()

    async def attach() -> tuple[list[grpc.aio.Channel], list[object], int]:
        channels = [
            grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(max(1, -(-attached // STREAMS_PER_CHANNEL)))
        ]
        calls = [channels[i % len(channels)].unary_stream("/bench.S/Watch")(b"") for i in range(attached)]
        results = await asyncio.gather(*(call.read() for call in calls), return_exceptions=True)  # type: ignore[attr-defined]
        return channels, calls, sum(1 for r in results if isinstance(r, BaseException))

    channels, calls, failed = asyncio.run_coroutine_threadsafe(attach(), loop).result(300)
    channel = grpc.insecure_channel(address)
    echo = channel.unary_unary("/bench.S/Unary")
    for _ in range(200):  # warm up
        echo(b"x", timeout=30)
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker() -> None:
        mine = []
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            echo(b"x", timeout=30)
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall, cpu = time.monotonic() - t0, cpu_seconds(server.pid) - cpu0
    rss = rss_mib(server.pid)
    for call in calls:
        call.cancel()  # type: ignore[attr-defined]

    async def close() -> None:
        for c in channels:
            await c.close()

    asyncio.run_coroutine_threadsafe(close(), loop).result(60)
    loop.call_soon_threadsafe(loop.stop)
    loop_thread.join(10)
    channel.close()
    server.stdin.close()
    server.wait(30)
    latencies.sort()
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    note = f"  ({failed} streams failed to attach)" if failed else ""
    return (
        f"{model:<10}{attached - failed:>9}{len(latencies) / wall:>10.0f}{p50 * 1e3:>9.2f} ms"
        f"{p99 * 1e3:>9.2f} ms{cpu / len(latencies) * 1e6:>10.0f} us{rss:>8} MiB{note}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--attached", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return 0
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    print(
        f"machine: {os.cpu_count()} cores; {args.threads} unary client threads; {args.seconds:.0f} s per run"
    )
    print(f"{'model':<10}{'attached':>9}{'calls/s':>10}{'p50':>12}{'p99':>12}{'CPU/call':>13}{'RSS':>12}")
    for attached in (0, args.attached):
        for model in MODELS:
            print(measure(model, attached, args.seconds, args.threads), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
