"""The ``chital`` command: ``main(argv)`` runs the click command tree and maps errors to exit codes.

The commands live in ``_containers`` (containers and processes) and ``_admin`` (hosts, identity,
tokens, audit, contexts, completion, versions); ``_root`` holds the global options.
"""

from __future__ import annotations

import os
import re
import signal as _signal
import sys
from collections.abc import Sequence

import click

from chital.client import (
    ChitalError,
    Client,
    PermissionDenied,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
)
from chital.client import config as cfg

from . import _admin, _containers, _rollouts  # noqa: F401 - _rollouts registers its commands
from ._params import signal_number as _signal_number
from ._params import size as _size
from ._resolve import AmbiguousError
from ._root import SettingsError, State, cli

DEFAULT_CONTROLLER = cfg.DEFAULT_CONTROLLER

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130

# Retries for the CLI: a few quick ones, so an unreachable controller is reported in about a second.
CLI_RETRIES = RetryPolicy(max_attempts=4, initial_backoff=0.1, max_backoff=1.0)

__all__ = [
    "CLI_RETRIES",
    "DEFAULT_CONTROLLER",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "Client",
    "_signal_number",
    "_size",
    "cli",
    "main",
]


def _error_kind(exc: ChitalError) -> str:
    """``NotFound`` -> ``not found``: the error's class, readable."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", type(exc).__name__).lower()


def _error_line(exc: Exception, connection: cfg.Connection | None) -> str:
    if connection is None or not isinstance(exc, ChitalError):
        return f"{_error_kind(exc)}: {exc}" if isinstance(exc, ChitalError) else str(exc)
    sources = connection.sources
    if isinstance(exc, Unauthenticated):
        if connection.token is None:
            where = f"in context {connection.context!r}" if connection.context else "in a context"
            hint = (
                f"no token was given: pass --token or --token-file, set {cfg.ENV_TOKEN}, "
                f"or set token or token_file {where}"
            )
        else:
            hint = f"the token from {sources['token']}"
        return f"unauthenticated: {exc} ({hint})"
    if isinstance(exc, PermissionDenied):
        who = f"; the token from {sources['token']}" if connection.token is not None else ""
        return f"permission denied: {exc}{who}"
    if isinstance(exc, Unavailable):
        where = f"controller {connection.target}"
        if str(exc).startswith("TLS handshake failed") and connection.tls is not None:
            where += f", CA {connection.tls.ca} from {sources['ca']}"
        elif "Socket closed" in str(exc) and connection.insecure:
            where += f"; plaintext from {sources['insecure']}: does the controller expect TLS? (--ca)"
        elif "Socket closed" in str(exc) and connection.tls is not None:
            cert = f"certificate {connection.tls.cert}" if connection.tls.cert else "no client certificate"
            where += (
                f"; closed during the handshake? a port that requires client certificates refuses {cert}"
                " unless the fleet CA signed it (--tls-dir, or --cert and --key)"
            )
        return f"unavailable: {exc} ({where})"
    return f"{_error_kind(exc)}: {exc}"


def _fail(message: str) -> int:
    click.echo(f"chital: error: {' '.join(message.split())}", err=True)
    return EXIT_ERROR


def _complete(args: list[str]) -> int:
    """Shell completion (the scripts of ``chital completion`` call ``chital`` with
    ``_CHITAL_COMPLETE`` set): click answers and exits."""
    try:
        cli.main(args, prog_name="chital", complete_var=_admin.COMPLETE_VAR, obj=State(retries=CLI_RETRIES))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 - one exit status per kind of end
    """Run the ``chital`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get(_admin.COMPLETE_VAR):
        return _complete(args)
    settings = State(retries=CLI_RETRIES)
    try:
        try:
            with cli.make_context("chital", args, obj=settings) as ctx:
                result = cli.invoke(ctx)
        finally:
            settings.close()
    except click.exceptions.Exit as exc:  # --help, --version
        return exc.exit_code
    except click.ClickException as exc:  # usage errors: exit status 2
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("chital: interrupted", err=True)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        click.echo("chital: interrupted", err=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``chital ps | head``): stop quietly, as other Unix tools do.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 128 + int(_signal.SIGPIPE)
    except ChitalError as exc:
        return _fail(_error_line(exc, settings.connection))
    except (_containers.ProcessLostError, AmbiguousError, SettingsError, cfg.ConfigError, OSError) as exc:
        return _fail(str(exc))
    return result if isinstance(result, int) else EXIT_OK
