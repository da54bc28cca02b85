#!/usr/bin/env python3
"""Run a batch of shell commands in one container, all at once, and collect their exit codes.

    python examples/batch_job.py 'make test' 'make lint' 'exit 3'

The controller comes from the environment (CHITAL_CONTROLLER, CHITAL_CACERT or CHITAL_TLS_DIR,
CHITAL_TOKEN) or the config file's current context; ``--context`` picks another one. Prints one
line per command and exits 0 when every command exited 0, else 1 (2 when the batch could not run).
Uses the asyncio client: the commands start together and are waited for together.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid

from chital.client import ChitalError, Process
from chital.client.aio import AsyncClient


async def run_batch(
    client: AsyncClient, commands: list[str], *, name: str, host: str, keep: bool
) -> list[Process]:
    """Start every command in a new container, wait for all of them, return them in order."""
    container = await client.create_container(name, labels={"example": "batch-job"}, host=host)
    try:
        started = await asyncio.gather(*(client.exec(container.uid, ["sh", "-c", c]) for c in commands))
        return list(await asyncio.gather(*(client.wait_process(p.uid) for p in started)))
    finally:
        if not keep:
            await client.delete_container(container.uid, force=True)


async def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the batch, print the outcome; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commands", nargs="+", metavar="COMMAND", help="a shell command (sh -c)")
    parser.add_argument("--context", help="the config file's context to use (default: current)")
    parser.add_argument("--name", default=f"batch-{uuid.uuid4().hex[:8]}", help="container name")
    parser.add_argument("--host", default="", help="run on this host (id or address)")
    parser.add_argument("--keep", action="store_true", help="keep the container afterwards")
    args = parser.parse_args(argv)
    try:
        async with AsyncClient.from_config(args.context) as client:
            done = await run_batch(client, args.commands, name=args.name, host=args.host, keep=args.keep)
    except (ChitalError, ValueError) as exc:
        print(f"batch_job: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    for index, (command, process) in enumerate(zip(args.commands, done, strict=True)):
        how = f"killed by signal {process.signal}" if process.signal else f"exit {process.exit_code}"
        print(f"{index}\t{how}\t{command}")
    failed = sum(1 for p in done if p.shell_exit_status != 0)
    print(f"{len(done) - failed} of {len(done)} succeeded")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
