#!/usr/bin/env python3
"""Show the fleet's hosts, then print every container and process change as it happens.

    python examples/watch_fleet.py                 # live changes, until Ctrl-C
    python examples/watch_fleet.py --since 1200    # replay everything after revision 1200 first

The controller comes from the environment (CHITAL_CONTROLLER, CHITAL_CACERT or CHITAL_TLS_DIR,
CHITAL_TOKEN) or the config file's current context; ``--context`` picks another one. The watch
survives controller restarts and broken connections: the SDK resumes it from the last revision
printed, so no change is missed or shown twice. Start again with ``--since`` and the last revision
printed to continue where a previous run stopped.
"""

from __future__ import annotations

import argparse
import sys

from chital.client import ChitalError, Client, EventType, WatchEvent


def describe(event: WatchEvent) -> str:
    """One line for an event: revision, what changed, its new state."""
    if event.type is EventType.CONTAINER_CHANGED and event.container is not None:
        c = event.container
        where = f" on {c.host_address}" if c.host_address else ""
        return f"{event.revision}\tcontainer {c.name} ({c.uid[:12]})\t{c.state.name}{where}"
    if event.type is EventType.PROCESS_CHANGED and event.process is not None:
        p = event.process
        state = p.state.name + (f" exit={p.shell_exit_status}" if p.exited else "")
        return f"{event.revision}\tprocess {p.uid[:12]} {' '.join(p.argv)[:40]}\t{state}"
    return f"{event.revision}\t{event.type.name}"


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, print the hosts, then the events; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", help="the config file's context to use (default: current)")
    parser.add_argument("--since", type=int, default=0, help="replay events after this revision first")
    parser.add_argument("--container", default="", help="only this container's events (uid or name)")
    parser.add_argument("--count", type=int, default=0, help="stop after this many events (0: never)")
    args = parser.parse_args(argv)
    try:
        with Client.from_config(args.context) as client:
            for host in client.iter_hosts():
                print(f"host {host.address}\t{host.state.name}\t{host.container_count} containers")
            for seen, event in enumerate(
                client.watch(since_revision=args.since, container=args.container), start=1
            ):
                print(describe(event), flush=True)
                if seen == args.count:
                    break
    except KeyboardInterrupt:
        return 130
    except (ChitalError, ValueError) as exc:
        print(f"watch_fleet: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
