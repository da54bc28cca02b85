"""``chital-agent serve``: run the agent."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from chital.errdefs import ChitalError

from .device.linux import IncompatibleModule
from .module import EXIT_INCOMPATIBLE_MODULE
from .server import DEVICE_PATH, AgentServer, ServerConfig

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chital-agent", description="chital's per-host agent")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve AgentService")
    s.add_argument("--listen", default="127.0.0.1:0", help="host:port (port 0: any free port)")
    s.add_argument(
        "--tls-dir",
        type=Path,
        help="mutual TLS: the agent's bundle from the fleet PKI (ca.crt, tls.crt, tls.key; "
        "<pki>/agents/<host>); callers must present the controller's certificate",
    )
    s.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext without authentication, on a loopback --listen only (development)",
    )
    s.add_argument(
        "--allowed-root",
        action="append",
        default=[],
        metavar="DIR",
        help="accept client-chosen container roots only at or below DIR (repeatable); default: any "
        "directory but / and the host's system directories",
    )
    s.add_argument("--state-dir", type=Path, required=True, help="logs, roots and metadata live here")
    s.add_argument("--device", choices=("fake", "linux", "auto"), default="auto")
    s.add_argument("--device-path", default=DEVICE_PATH)
    s.add_argument("--module-path", help="chital.ko to insmod when the device is missing (default: modprobe)")
    s.add_argument(
        "--cgroups",
        choices=("auto", "required", "off"),
        default="auto",
        help="cgroup v2 limits; auto: required with the real device, best effort with the fake",
    )
    s.add_argument("--cgroup-root", type=Path, help="cgroup2 mount point (default: from mountinfo)")
    s.add_argument("--cgroup-parent", default="chital", help="group under the root that holds containers")
    s.add_argument(
        "--launcher",
        help="the chital-launch binary (default: $CHITAL_LAUNCHER, the checkout's agent/launcher/, "
        "PATH, /usr/libexec/chital/chital-launch)",
    )
    s.add_argument("--port-file", type=Path, help="write the bound port here (atomically) once serving")
    s.add_argument("--max-containers", type=int, default=0, help="0: unlimited")
    s.add_argument(
        "--metrics-listen",
        help="HOST:PORT for Prometheus /metrics (default: none); HTTPS with the agent's certificate "
        "under --tls-dir, plaintext (loopback only) under --insecure",
    )
    s.add_argument("--metrics-port-file", type=Path, help="write the bound /metrics port here")
    s.add_argument("--max-workers", type=int, default=64, help="gRPC worker threads (streams hold one each)")
    s.add_argument("--log-level", default=os.environ.get("CHITAL_LOG_LEVEL", "INFO"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    config = ServerConfig(
        listen=args.listen,
        state_dir=args.state_dir,
        device=args.device,
        device_path=args.device_path,
        max_containers=args.max_containers,
        max_workers=args.max_workers,
        port_file=args.port_file,
        metrics_listen=args.metrics_listen,
        metrics_port_file=args.metrics_port_file,
        module_path=args.module_path,
        cgroups=args.cgroups,
        cgroup_root=args.cgroup_root,
        cgroup_parent=args.cgroup_parent,
        launcher=args.launcher,
        tls_dir=args.tls_dir,
        insecure=args.insecure,
        allowed_roots=tuple(args.allowed_root),
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        server = AgentServer(config)
        port = server.start()
    except IncompatibleModule as exc:
        logging.getLogger("chital.agent").error("refusing to serve: %s", exc)
        return EXIT_INCOMPATIBLE_MODULE
    except (ChitalError, OSError, ValueError) as exc:
        logging.getLogger("chital.agent").error("cannot start: %s", exc)
        return 1
    host = args.listen.rsplit(":", 1)[0]
    print(f"chital-agent listening on {host}:{port}", flush=True)
    while not stop.wait(3600):
        pass
    logging.getLogger("chital.agent").info("stopping (processes keep running)")
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
