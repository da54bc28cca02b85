"""Many hollow agents in one process: each a real gRPC server on its own loopback port.

A fleet of a thousand hosts does not fit on one machine as a thousand agent processes (a Python
agent costs tens of MB and a few threads). This module runs N agents in one process instead: each
has its own :class:`~chital.agent.server.AgentServer` (runtime, ``FakeDevice``, state directory and
``grpc.server`` with a small thread pool on its own ``127.0.0.1`` port), so the controller sees N
independent hosts and every call it makes goes over a real socket. ``bench/scale.py`` starts several
such processes.

The agents are plaintext on loopback (``--insecure``): a benchmark of the controller's list paths
and health traffic, not of TLS handshakes. Processes they would start are not sandboxed (there is no
kernel module), as with every hollow agent.

Protocol on stdin/stdout, one line each, so a driver can seed containers consistently with the
controller's database (the containers exist on the agents before the rows that name them):

- once every server serves, the process prints ``{"ports": [p0, p1, ...]}`` (host ``i`` of this
  process listens on ``127.0.0.1:p<i>``);
- ``seed PER_HOST PREFIX`` creates containers on each agent until it holds ``PER_HOST`` of them,
  with uid and name ``PREFIX-<host index>-<n>`` (``<host index>`` is ``--first-index`` + i, five
  digits; ``<n>`` five digits), directly through each agent's runtime (as its CreateContainer RPC
  would), and answers ``{"seeded": PER_HOST, "effective_deny_syscalls": [...]}``;
- ``quit`` or end of input stops the process.

    python -m chital.devcluster.hollow_many --hosts 100 --workdir DIR [--first-index 0]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
from collections.abc import Sequence
from pathlib import Path

from chital.agent.server import AgentServer, ServerConfig

__all__ = ["HollowHosts", "container_uid", "main"]


def container_uid(prefix: str, host_index: int, n: int) -> str:
    """The uid (and name) of the ``n``-th seeded container of host ``host_index``."""
    return f"{prefix}-{host_index:05d}-{n:05d}"


class HollowHosts:
    """``count`` agents (FakeDevice each) on free loopback ports, in this process."""

    def __init__(self, count: int, workdir: Path, *, first_index: int = 0, workers: int = 4) -> None:
        self.first_index = first_index
        self.servers: list[AgentServer] = []
        self.seeded = 0
        try:
            for i in range(count):
                config = ServerConfig(
                    listen="127.0.0.1:0",
                    state_dir=workdir / f"host-{first_index + i:05d}",
                    device="fake",
                    insecure=True,
                    cgroups="off",
                    # Short calls (GetInfo, Sync, creates) need few threads; a stream (the
                    # controller's StreamEvents) takes one of max_streams beside them.
                    max_workers=workers,
                    max_streams=8,
                )
                server = AgentServer(config)
                self.servers.append(server)
                server.start()
        except BaseException:
            self.stop()
            raise

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]

    def seed(self, per_host: int, prefix: str) -> list[str]:
        """Create containers until every agent holds ``per_host`` seeded ones; returns the deny list
        the agents report as enforced (the same for every default container)."""
        effective: list[str] = []
        for i, server in enumerate(self.servers):
            for n in range(self.seeded, per_host):
                uid = container_uid(prefix, self.first_index + i, n)
                view = server.runtime.create_container(uid, uid)
                effective = list(view.effective_deny_syscalls)
        self.seeded = max(self.seeded, per_host)
        return effective

    def stop(self, grace: float = 0.0) -> None:
        for server in self.servers:
            server.stop(grace)


def _raise_fd_limit() -> None:
    # Each agent holds a listening socket, its controller connections and an eventfd.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _reply(data: object) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chital.devcluster.hollow_many", description=__doc__)
    parser.add_argument("--hosts", type=int, required=True, help="agents in this process")
    parser.add_argument("--workdir", type=Path, required=True, help="state directories (host-NNNNN)")
    parser.add_argument("--first-index", type=int, default=0, help="index of this process's first host")
    parser.add_argument("--workers", type=int, default=4, help="threads for short calls per agent")
    args = parser.parse_args(argv)
    if args.hosts < 1:
        parser.error("--hosts must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Each agent would warn that it is plaintext and not sandboxed: once for all of them is enough.
    logging.getLogger("chital.agent").setLevel(logging.ERROR)
    logging.getLogger("chital.devcluster").warning(
        "%d hollow agents: FakeDevice (processes NOT sandboxed), plaintext on loopback", args.hosts
    )
    _raise_fd_limit()
    hosts = HollowHosts(args.hosts, args.workdir, first_index=args.first_index, workers=args.workers)
    _reply({"ports": hosts.ports})
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        if words[0] == "seed" and len(words) == 3:
            effective = hosts.seed(int(words[1]), words[2])
            _reply({"seeded": hosts.seeded, "effective_deny_syscalls": effective})
        else:
            _reply({"error": f"unknown command {line.strip()!r}"})
    # Everything these agents hold is in memory (FakeDevice) and nothing runs in their containers:
    # a graceful stop of every server would only cost time.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
