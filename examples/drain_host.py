#!/usr/bin/env python3
"""Take a host out of service safely: cordon it, let its work finish, then stop what is left.

    python examples/drain_host.py 10.0.0.7:7444 --wait 300 --grace 30 --remove

1. Refuses when no other host is READY to take new containers (``--force`` to go on anyway).
2. Cordons the host: nothing new is placed on it; what runs there keeps running.
3. Waits up to ``--wait`` seconds for the processes on the host to exit by themselves.
4. Drains it: each remaining container gets SIGTERM, then SIGKILL after ``--grace`` seconds.
5. With ``--remove``, deletes the host's stopped containers and forgets the host.

The controller comes from the environment (CHITAL_CONTROLLER, CHITAL_CACERT or CHITAL_TLS_DIR,
CHITAL_TOKEN) or the config file's current context; ``--context`` picks another one. ``--dry-run``
only shows what would be stopped. Exits 0 when done, 1 on an error, 3 when it refused.
"""

from __future__ import annotations

import argparse
import sys
import time

from chital.client import ChitalError, Client, Container, ContainerState, HostState

_LIVE = (ContainerState.PENDING, ContainerState.CREATED, ContainerState.RUNNING, ContainerState.STOPPING)


def live_containers(client: Client, host_id: str) -> list[Container]:
    """The host's containers that are not stopped, failed or lost."""
    return [c for c in client.iter_containers(host=host_id) if c.state in _LIVE]


def wait_for_idle(client: Client, host_id: str, seconds: float) -> int:
    """Wait up to ``seconds`` for no process to run on the host; returns how many still run."""
    deadline = time.monotonic() + seconds
    while True:
        running = sum(c.running_processes for c in live_containers(client, host_id))
        if running == 0 or time.monotonic() >= deadline:
            return running
        print(f"  {running} processes still running", flush=True)
        time.sleep(min(5.0, max(deadline - time.monotonic(), 0.1)))


def drain(client: Client, args: argparse.Namespace) -> int:
    """Steps 1-5 of the module's docstring; returns the exit status."""
    host = client.get_host(args.host)
    others = [h for h in client.iter_hosts(state=HostState.READY) if h.id != host.id]
    if not others and not args.force:
        print(f"refusing: {host.address} is the only READY host (--force to drain it anyway)")
        return 3
    containers = live_containers(client, host.id)
    print(f"host {host.address} ({host.state.name}): {len(containers)} live containers")
    for c in containers:
        print(f"  {c.name}\t{c.state.name}\t{c.running_processes} running")
    if args.dry_run:
        return 0
    client.cordon_host(host.id)
    print(f"cordoned {host.address}")
    if args.wait > 0:
        left = wait_for_idle(client, host.id, args.wait)
        print(f"waited: {left} processes left to stop")
    result = client.drain_host(host.id, grace=args.grace)
    print(f"drained {result.host.address}: stopped {result.stopped_containers} containers")
    if args.remove:
        still = live_containers(client, host.id)
        if any(c.running_processes for c in still):
            print(f"not removed: {len(still)} containers still run processes")
            return 1
        for c in client.iter_containers(host=host.id):
            client.delete_container(c.uid)
        client.remove_host(host.id)
        print(f"removed {host.address}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and drain; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host", help="the host to drain (id or address)")
    parser.add_argument("--context", help="the config file's context to use (default: current)")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to let processes finish")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("--remove", action="store_true", help="forget the host afterwards")
    parser.add_argument("--force", action="store_true", help="drain even the last READY host")
    parser.add_argument("--dry-run", action="store_true", help="only show what would be stopped")
    args = parser.parse_args(argv)
    try:
        with Client.from_config(args.context) as client:
            return drain(client, args)
    except (ChitalError, ValueError) as exc:
        print(f"drain_host: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
