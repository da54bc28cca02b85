"""``chital-controller``: ``serve`` the API, ``db upgrade`` the schema, make ``token`` entries."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from chital.controller import db, pki_cli
from chital.controller.health import HealthConfig
from chital.controller.server import ControllerConfig, ControllerServer, default_state_dir
from chital.controller.tokens import ROLES, Tokens, create_token, open_database
from chital.errdefs import ChitalError, InvalidArgument

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
        "--metrics-tls",
        action="store_true",
        help="serve /metrics over HTTPS with the --tls-dir certificate",
    )
    serve.add_argument(
        "--prometheus-sd-file", default="", help="keep a Prometheus file_sd file of the agents"
    )
    serve.add_argument("--max-workers", type=int, default=64, help="RPC worker threads")
    serve.add_argument(
        "--tls-dir",
        default="",
        help="the controller's bundle (ca.crt, tls.crt, tls.key): TLS for the API, mTLS to the agents",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext API and agent channels; refused unless every address is loopback",
    )
    serve.add_argument(
        "--mtls-listen", default="", help="host:port of a second API port that requires client certificates"
    )
    serve.add_argument("--mtls-port-file", default="", help="write the bound --mtls-listen port to this file")
    serve.add_argument(
        "--allowed-root",
        action="append",
        default=[],
        metavar="DIR",
        help="container roots must lie under DIR (repeatable; default: anywhere but system directories)",
    )
    _add_token_parser(sub)

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


def _add_token_parser(sub: Any) -> None:
    token = sub.add_parser("token", help="API tokens, read and written directly in the database")
    tsub = token.add_subparsers(dest="token_action", required=True)
    create = tsub.add_parser("create", help="create a token and print it (only this once)")
    create.add_argument("--name", required=True, help="who or what the token is for")
    create.add_argument("--role", required=True, choices=ROLES, help="the token's role")
    create.add_argument(
        "--ttl", default="", help="lifetime: seconds, or a number with s, m, h or d (default: no expiry)"
    )
    ls = tsub.add_parser("ls", help="list the tokens (never their secrets)")
    revoke = tsub.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("id", help="the token's id (12 hex digits)")
    for p in (create, ls, revoke):
        p.add_argument("--database-url", default="", help="SQLAlchemy URL (default: SQLite in the state dir)")
        p.add_argument("--state-dir", default=default_state_dir(), help="where the SQLite database lives")


_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> float | None:
    """``""`` -> None (no expiry); ``"3600"``, ``"90m"``, ``"12h"``, ``"30d"`` -> seconds."""
    text = text.strip().lower()
    if not text:
        return None
    number, unit = (text[:-1], text[-1]) if text[-1] in _TTL_UNITS else (text, "s")
    try:
        seconds = float(number) * _TTL_UNITS[unit]
    except ValueError:
        raise InvalidArgument(f"--ttl {text!r}: want seconds, or a number with s, m, h or d") from None
    if not seconds > 0:
        raise InvalidArgument("--ttl must be positive")
    return seconds


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _token(args: argparse.Namespace) -> int:
    url = args.database_url or db.default_database_url(args.state_dir)
    command: str = args.token_action
    if command == "create":
        bearer, record = create_token(url, name=args.name, role=args.role, ttl_seconds=parse_ttl(args.ttl))
        print(bearer, flush=True)
        print(
            f"token {record.id} ({record.role}, {record.name}, expires {_when(record.expires_at)}): "
            "shown only this once, store it now",
            file=sys.stderr,
        )
        return 0
    engine = open_database(url)
    try:
        tokens = Tokens(engine)
        if command == "revoke":
            record = tokens.revoke(args.id)
            print(f"token {record.id} ({record.name}) revoked at {_when(record.revoked_at)}")
            return 0
        now = datetime.now(UTC).replace(tzinfo=None)
        rows = [("ID", "NAME", "ROLE", "STATE", "CREATED", "EXPIRES", "LAST USED", "CREATED BY")]
        rows += [
            (
                t.id,
                t.name,
                t.role,
                t.state(now),
                _when(t.created_at),
                _when(t.expires_at),
                _when(t.last_used_at),
                t.created_by,
            )
            for t in tokens.list()
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        return 0
    finally:
        engine.dispose()


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
        metrics_tls=args.metrics_tls,
        prometheus_sd_file=args.prometheus_sd_file,
        tls_dir=args.tls_dir,
        insecure=args.insecure,
        mtls_listen=args.mtls_listen,
        mtls_port_file=args.mtls_port_file,
        allowed_roots=tuple(args.allowed_root),
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
    transport = "plaintext, --insecure" if args.insecure else "TLS, bearer tokens"
    print(f"chital-controller listening on {host}:{port} ({transport})", flush=True)
    if server.mtls_port:
        mtls_host = args.mtls_listen.rsplit(":", 1)[0]
        print(
            f"chital-controller listening on {mtls_host}:{server.mtls_port} (TLS, client certificates)",
            flush=True,
        )
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
        if args.command == "token":
            return _token(args)
        url = args.database_url or db.default_database_url(args.state_dir)
        db.upgrade(url, args.revision)
        print(f"database at {args.revision}", flush=True)
        return 0
    except ChitalError as exc:
        print(f"chital-controller: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
