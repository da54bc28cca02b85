"""``chital-agent serve``: run the agent.

Settings come from flags, ``CHITAL_AGENT_*`` variables and the TOML file (``--config``, default
/etc/chital/agent.toml when it exists), in that order (:mod:`chital.agent.config`). Options go after
the command, every one of them (``chital-agent serve --log-level debug``). Exit statuses are those
of :mod:`chital.daemon.exitcodes`: 0 stopped, 1 failed, 2 usage, 3 incompatible module, 4 config.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from chital.daemon.config import ConfigError
from chital.daemon.exitcodes import EXIT_CONFIG, EXIT_FAILURE, EXIT_INCOMPATIBLE_MODULE, EXIT_OK
from chital.daemon.heap import settle_heap
from chital.daemon.logs import configure_logging
from chital.errdefs import ChitalError

from . import __version__
from .config import SERVE_KEYS, SETTINGS
from .device.linux import IncompatibleModule
from .logfiles import LogLimits
from .server import AgentServer, ServerConfig, transport

__all__ = ["main"]

log = logging.getLogger("chital.agent")

_EPILOG = (
    "exit status: 0 stopped, 1 runtime failure, 2 usage error, 3 incompatible kernel module, "
    "4 configuration error"
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chital-agent", description="chital's per-host agent", epilog=_EPILOG)
    p.add_argument("--version", action="version", version=f"chital-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "serve",
        help="serve AgentService",
        description="Serve AgentService. Each option is also a key of the config file and a "
        "CHITAL_AGENT_<KEY> variable; the flag wins, then the variable, then the file.",
        epilog=_EPILOG,
    )
    SETTINGS.add_config_flag(s)
    SETTINGS.add_flags(s, SERVE_KEYS)
    return p


def _server_config(args: argparse.Namespace) -> ServerConfig:
    try:
        log_limits = LogLimits(max_bytes=args.log_max_bytes, max_files=args.log_max_files)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if args.exited_process_limit < 1:
        raise ConfigError("exited_process_limit must be at least 1")
    return ServerConfig(
        listen=args.listen,
        state_dir=args.state_dir,
        device=args.device,
        device_path=args.device_path,
        max_containers=args.max_containers,
        max_workers=args.max_workers,
        max_streams=args.max_streams,
        port_file=args.port_file,
        metrics_listen=args.metrics_listen,
        metrics_port_file=args.metrics_port_file,
        module_path=str(args.module_path) if args.module_path else None,
        cgroups=args.cgroups,
        cgroup_root=args.cgroup_root,
        cgroup_parent=args.cgroup_parent,
        launcher=args.launcher,
        tls_dir=args.tls_dir,
        insecure=args.insecure,
        allowed_roots=tuple(args.allowed_roots),
        log_limits=log_limits,
        exited_process_limit=args.exited_process_limit,
    )


def main(argv: list[str] | None = None) -> int:
    parsed = _parser().parse_args(argv)
    try:
        args = SETTINGS.resolve(parsed, SERVE_KEYS)
        config = _server_config(args)
        configure_logging(args.log_level, args.log_format)
        # The transport rules (TLS or loopback plaintext) are settings too: refused as such.
        transport(config)
    except (ConfigError, ChitalError) as exc:
        print(f"chital-agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    log.info(
        "chital-agent %s, config file %s",
        __version__,
        args.config_file or f"none ({SETTINGS.default_config} absent)",
    )
    log.debug("settings from: %s", ", ".join(f"{k}={v}" for k, v in args.sources.items()))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        server = AgentServer(config)
        port = server.start()
    except IncompatibleModule as exc:
        log.error("refusing to serve: %s", exc)
        return EXIT_INCOMPATIBLE_MODULE
    except (ChitalError, OSError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        return EXIT_FAILURE
    host = args.listen.rsplit(":", 1)[0]
    print(f"chital-agent listening on {host}:{port}", flush=True)
    log.debug("start-up heap frozen: %d objects", settle_heap())
    while not stop.wait(3600):
        pass
    log.info("stopping (processes keep running)")
    server.stop()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
