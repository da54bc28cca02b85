"""``chital-controller``: ``serve`` the API, ``db upgrade`` the schema, make ``token`` entries.

Settings come from flags, ``CHITAL_CONTROLLER_*`` variables and the TOML file (``--config``,
default /etc/chital/controller.toml when it exists), in that order (:mod:`chital.controller.config`).
Options go after the command, every one of them (``chital-controller serve --log-level debug``).
Exit statuses are those of :mod:`chital.daemon.exitcodes`: 0 success, 1 failed, 2 usage, 4 config.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import stat
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import sqlalchemy as sa

from chital.controller import __version__, db, pki_cli
from chital.controller.config import DATABASE_KEYS, SERVE_KEYS, SETTINGS
from chital.controller.health import HealthConfig
from chital.controller.retention import RetentionPolicy
from chital.controller.rollouts import RolloutSettings, default_playbooks_dir
from chital.controller.server import ControllerConfig, ControllerServer
from chital.controller.tokens import ROLES, AuditLog, Tokens, local_principal, open_database
from chital.daemon.config import ConfigError
from chital.daemon.exitcodes import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from chital.daemon.heap import settle_heap
from chital.daemon.logs import configure_logging
from chital.errdefs import ChitalError, InvalidArgument, Unavailable

__all__ = ["main"]

log = logging.getLogger("chital.controller")

_T = TypeVar("_T")
# How the audit log names the token commands (as their AdminService calls are named).
ADMIN_METHOD = "/chital.api.admin.v1.AdminService/"


_EPILOG = (
    "exit status: 0 success, 1 runtime failure, 2 usage error, 4 configuration error; options go "
    "after the command (chital-controller serve --log-level debug)"
)


def _leaf(sub: Any, name: str, keys: tuple[str, ...], **kw: Any) -> argparse.ArgumentParser:
    """A command that reads the settings ``keys`` (flags, CHITAL_CONTROLLER_*, the config file)."""
    parser: argparse.ArgumentParser = sub.add_parser(name, epilog=_EPILOG, **kw)
    SETTINGS.add_config_flag(parser)
    SETTINGS.add_flags(parser, keys)
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chital-controller", description="chital's control plane", epilog=_EPILOG
    )
    parser.add_argument("--version", action="version", version=f"chital-controller {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _leaf(
        sub,
        "serve",
        SERVE_KEYS,
        help="serve ContainerService and HostService",
        description="Serve the API. Each option is also a key of the config file and a "
        "CHITAL_CONTROLLER_<KEY> variable; the flag wins, then the variable, then the file.",
    )
    _add_token_parser(sub)

    dbp = sub.add_parser("db", help="database schema")
    dbsub = dbp.add_subparsers(dest="db_command", required=True)
    upgrade = _leaf(dbsub, "upgrade", DATABASE_KEYS, help="apply the migrations")
    upgrade.add_argument("--revision", default="head", help="target revision")
    pki_cli.add_parser(sub)
    return parser


def _add_token_parser(sub: Any) -> None:
    token = sub.add_parser("token", help="API tokens, read and written directly in the database")
    tsub = token.add_subparsers(dest="token_action", required=True)
    create = _leaf(tsub, "create", DATABASE_KEYS, help="create a token and print it (only this once)")
    create.add_argument("--name", required=True, help="who or what the token is for")
    create.add_argument("--role", required=True, choices=ROLES, help="the token's role")
    create.add_argument(
        "--ttl", default="", help="lifetime: seconds, or a number with s, m, h or d (default: no expiry)"
    )
    _leaf(tsub, "ls", DATABASE_KEYS, help="list the tokens (never their secrets)")
    revoke = _leaf(tsub, "revoke", DATABASE_KEYS, help="revoke a token by id")
    revoke.add_argument("id", help="the token's id (12 hex digits)")


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


def _audited(audit: AuditLog, method: str, target: str, change: Callable[[], _T]) -> _T:
    """Run ``change`` (a token made or revoked directly in the database) and write it to the audit
    log as the API would, with its outcome: the local user is the principal, and having the database
    is the bootstrap admin's path (docs/auth.md)."""
    entry = {"principal": local_principal(), "role": "admin", "method": method, "target": target}
    try:
        result = change()
    except ChitalError as exc:
        audit.append(**entry, request_id="", code=exc.code.name, detail=str(exc))
        raise
    audit.append(**entry, request_id="", code="OK")
    return result


def _token(args: argparse.Namespace) -> int:
    url = args.database_url or db.default_database_url(args.state_dir)
    command: str = args.token_action
    ttl = parse_ttl(args.ttl) if command == "create" else None  # a bad value writes nothing
    engine = open_database(url)
    audit = AuditLog(engine)
    try:
        tokens = Tokens(engine)
        if command == "create":
            bearer, record = _audited(
                audit,
                ADMIN_METHOD + "CreateToken",
                args.name,
                lambda: tokens.create(args.name, args.role, ttl, local_principal()),
            )
            print(bearer, flush=True)
            print(
                f"token {record.id} ({record.role}, {record.name}, expires {_when(record.expires_at)}): "
                "shown only this once, store it now",
                file=sys.stderr,
            )
            return 0
        if command == "revoke":
            record = _audited(audit, ADMIN_METHOD + "RevokeToken", args.id, lambda: tokens.revoke(args.id))
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
        audit.close()  # writes what waits
        engine.dispose()


def _warn_if_password_readable(args: argparse.Namespace) -> None:
    """A database password in a config file that every local user can read deserves a warning."""
    if args.sources.get("database_url") != "file" or args.config_file is None:
        return
    try:
        password = sa.make_url(args.database_url).password
        mode = os.stat(args.config_file).st_mode
    except (sa.exc.ArgumentError, OSError):
        return
    if password and mode & stat.S_IROTH:
        log.warning(
            "%s holds the database password and every local user can read it: chmod 0640 it "
            "(root:chital) or set CHITAL_CONTROLLER_DATABASE_URL instead",
            args.config_file,
        )


def _serve(args: argparse.Namespace) -> int:
    try:
        retention = RetentionPolicy(
            event_retention=args.event_retention,
            max_events=args.max_events,
            deleted_retention=args.deleted_retention,
            audit_retention=args.audit_retention,
            interval=args.retention_interval,
        )
        health = HealthConfig(
            interval=args.health_interval, not_ready_after=args.not_ready_after, lost_after=args.lost_after
        )
    except ValueError as exc:
        print(f"chital-controller: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    config = ControllerConfig(
        listen=args.listen,
        database_url=args.database_url,
        state_dir=args.state_dir,
        migrate=args.migrate,
        port_file=args.port_file,
        health=health,
        agent_timeout=args.agent_timeout,
        max_workers=args.max_workers,
        max_streams=args.max_streams,
        metrics_listen=args.metrics_listen,
        metrics_port_file=args.metrics_port_file,
        metrics_tls=args.metrics_tls,
        prometheus_sd_file=args.prometheus_sd_file,
        tls_dir=args.tls_dir,
        insecure=args.insecure,
        mtls_listen=args.mtls_listen,
        mtls_port_file=args.mtls_port_file,
        allowed_roots=tuple(args.allowed_roots),
        lease_timeout=args.lease_timeout,
        rollouts=RolloutSettings(
            playbooks_dir=args.playbooks_dir or default_playbooks_dir(),
            work_dir=str(Path(args.state_dir) / "rollouts"),
        ),
        retention=retention,
    )
    try:
        # The transport and root rules are settings: refused as a configuration error.
        config.check_security()
    except ChitalError as exc:
        print(f"chital-controller: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    log.info(
        "chital-controller %s, config file %s",
        __version__,
        args.config_file or f"none ({SETTINGS.default_config} absent)",
    )
    log.debug("settings from: %s", ", ".join(f"{k}={v}" for k, v in args.sources.items()))
    _warn_if_password_readable(args)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("chital.controller").info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        server = ControllerServer(config)
        port = server.start()
    except OSError as exc:
        raise Unavailable(f"cannot start: {exc}") from exc
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig or exc).strip().splitlines()[0]
        raise Unavailable(f"cannot reach the database: {reason}") from None
    host = args.listen.rsplit(":", 1)[0]
    transport = "plaintext, --insecure" if args.insecure else "TLS, bearer tokens"
    print(f"chital-controller listening on {host}:{port} ({transport})", flush=True)
    if server.mtls_port:
        mtls_host = args.mtls_listen.rsplit(":", 1)[0]
        print(
            f"chital-controller listening on {mtls_host}:{server.mtls_port} (TLS, client certificates)",
            flush=True,
        )

    log.debug("start-up heap frozen: %d objects", settle_heap())

    # A controller that lost the leader's lease exits (after stopping the leader's work at once):
    # its supervisor starts it again as a follower, with none of the old term's memory (docs/ha.md).
    def _on_lost_leadership() -> None:
        server.leadership_lost.wait()
        stop.set()

    threading.Thread(target=_on_lost_leadership, name="leadership-lost", daemon=True).start()
    stop.wait()
    server.stop()
    if server.leadership_lost.is_set():
        print(
            f"chital-controller: lost the leadership ({server.lost_reason}); exiting so that the "
            "supervisor starts this controller again as a follower",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_FAILURE
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return _serve(args)
    if args.command == "token":
        return _token(args)
    url = args.database_url or db.default_database_url(args.state_dir)
    db.upgrade(url, args.revision)
    print(f"database at {args.revision}", flush=True)
    return EXIT_OK


def _failed(exc: ChitalError) -> int:
    """A command's error: a refused argument value is a usage error, anything else a failure."""
    print(f"chital-controller: {exc}", file=sys.stderr)
    return EXIT_USAGE if isinstance(exc, InvalidArgument) else EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    """Entry point. Exit statuses: :mod:`chital.daemon.exitcodes`."""
    parsed = _parser().parse_args(argv)
    if parsed.command == "pki":
        configure_logging()
        try:
            return pki_cli.run(parsed)
        except ChitalError as exc:
            return _failed(exc)
    keys = SERVE_KEYS if parsed.command == "serve" else DATABASE_KEYS
    try:
        args = SETTINGS.resolve(parsed, keys)
        configure_logging(args.log_level, args.log_format)
    except ConfigError as exc:
        print(f"chital-controller: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    for name, value in vars(parsed).items():  # the command's own arguments (--revision, --name, ...)
        if not hasattr(args, name):
            setattr(args, name, value)
    try:
        return _run(args)
    except ChitalError as exc:
        return _failed(exc)


if __name__ == "__main__":
    sys.exit(main())
