"""``chital-controller``: ``serve`` the API, or ``db upgrade`` the schema."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from chital.controller import db, pki_cli
from chital.controller.health import HealthConfig
from chital.controller.server import ControllerConfig, ControllerServer, default_state_dir
from chital.errdefs import ChitalError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chital-controller", description="chital's control plane")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve ContainerService and HostService")
    serve.add_argument("--listen", default="127.0.0.1:7443", help="host:port (port 0: any free port)")
    serve.add_argument("--database-url", default="", help="SQLAlchemy URL (default: SQLite in the state dir)")
    serve.add_argument("--state-dir", default=default_state_dir(), help="where the SQLite database lives")
    serve.add_argument("--migrate", action="store_true", help="apply database migrations before serving")
    serve.add_argument("--port-file", default="", help="write the bound port to this file once serving")
    serve.add_argument("--health-interval", type=float, default=0.5, help="seconds between health checks")
    serve.add_argument(
        "--not-ready-after", type=float, default=3.0, help="seconds without success: NOT_READY"
    )
    serve.add_argument("--lost-after", type=float, default=60.0, help="seconds without success: LOST")
    serve.add_argument("--agent-timeout", type=float, default=5.0, help="deadline of agent calls, seconds")
    serve.add_argument(
        "--metrics-listen", default="", help="host:port for Prometheus /metrics (default: off)"
    )
    serve.add_argument("--metrics-port-file", default="", help="write the bound /metrics port to this file")
    serve.add_argument(
        "--prometheus-sd-file", default="", help="keep a Prometheus file_sd file of the agents"
    )
    serve.add_argument("--max-workers", type=int, default=64, help="RPC worker threads")

    dbp = sub.add_parser("db", help="database schema")
    dbsub = dbp.add_subparsers(dest="db_command", required=True)
    upgrade = dbsub.add_parser("upgrade", help="apply the migrations")
    upgrade.add_argument(
        "--database-url", default="", help="SQLAlchemy URL (default: SQLite in the state dir)"
    )
    upgrade.add_argument("--state-dir", default=default_state_dir(), help="where the SQLite database lives")
    upgrade.add_argument("--revision", default="head", help="target revision")
    pki_cli.add_parser(sub)
    return parser


def _serve(args: argparse.Namespace) -> int:
    config = ControllerConfig(
        listen=args.listen,
        database_url=args.database_url,
        state_dir=args.state_dir,
        migrate=args.migrate,
        port_file=args.port_file,
        health=HealthConfig(
            interval=args.health_interval, not_ready_after=args.not_ready_after, lost_after=args.lost_after
        ),
        agent_timeout=args.agent_timeout,
        max_workers=args.max_workers,
        metrics_listen=args.metrics_listen,
        metrics_port_file=args.metrics_port_file,
        prometheus_sd_file=args.prometheus_sd_file,
    )
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("chital.controller").info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    server = ControllerServer(config)
    port = server.start()
    host = args.listen.rsplit(":", 1)[0]
    print(f"chital-controller listening on {host}:{port}", flush=True)
    stop.wait()
    server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "pki":
            return pki_cli.run(args)
        if args.command == "serve":
            return _serve(args)
        url = args.database_url or db.default_database_url(args.state_dir)
        db.upgrade(url, args.revision)
        print(f"database at {args.revision}", flush=True)
        return 0
    except ChitalError as exc:
        print(f"chital-controller: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
