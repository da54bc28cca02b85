"""The ``chital`` command tree's base: the global options, accepted before or after the command.

Every group and command takes the global options (``chital -o json ps`` and ``chital ps -o json``
are the same); a value given later wins. They land in one :class:`State` on the root context,
which also opens the client. The ``context`` commands take only ``-o`` and ``--config``: their
``--controller``, ``--ca``, ``--token``, ... are what they store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from chital.client import Client, RetryPolicy
from chital.client import config as cfg
from chital.security.tls import is_loopback

from ._params import POSITIVE_SECONDS

OUTPUT_FORMATS = ("table", "wide", "json", "yaml")


class SettingsError(Exception):
    """A bad setting found before any call (a one-line error, exit status 1)."""


@dataclass
class State:
    """The global options of one invocation, and the client made from them."""

    output: str = "table"
    config: str | None = None
    timeout: float = 10.0
    controller: str | None = None
    context: str | None = None
    tls_dir: str | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None
    insecure: bool | None = None
    retries: RetryPolicy = field(default_factory=lambda: RetryPolicy(max_attempts=1))
    connection: cfg.Connection | None = None
    _client: Client | None = None

    @property
    def structured(self) -> bool:
        """``-o json`` or ``-o yaml``."""
        return self.output in ("json", "yaml")

    @property
    def wide(self) -> bool:
        return self.output == "wide"

    def load_config(self) -> cfg.Config:
        return cfg.Config.load(self.config)

    def resolve(self) -> cfg.Connection:
        """Where and how to connect: the flags, else the environment, else the context."""
        if self.token is not None and self.token_file is not None:
            raise click.UsageError("--token and --token-file exclude each other")
        overrides = cfg.Overrides(
            target=self.controller,
            context=self.context,
            token=self.token,
            token_file=self.token_file,
            tls_dir=self.tls_dir,
            ca=self.ca,
            cert=self.cert,
            key=self.key,
            insecure=self.insecure,
        )
        connection = cfg.resolve(overrides, config=self.load_config())
        remote = [t for t in connection.target.split(",") if t.strip() and not is_loopback(t.strip())]
        if connection.insecure and remote:
            raise SettingsError(
                f"plaintext ({connection.sources['insecure']}) is only for a controller on loopback, "
                f"not {remote[0]}: a token would cross the network unencrypted"
            )
        return connection

    def client(self) -> Client:
        """The client of this invocation (one; closed when the command ends)."""
        if self._client is None:
            self._client = self.make_client()
        return self._client

    def make_client(
        self, *, timeout: float | None = None, retries: RetryPolicy | None = None, quiet: bool = False
    ) -> Client:
        """A new client from these settings (the caller closes it). A bad setting raises
        :class:`SettingsError`; unreadable TLS files, the SDK's :class:`ChitalError`."""
        try:
            connection = self.resolve()
        except ValueError as exc:  # cfg.ConfigError
            raise SettingsError(str(exc)) from exc
        if not quiet:
            _warn_if_readable(connection.token_path)
        try:
            client = Client(
                connection.target,
                tls=connection.tls,
                token=connection.token,
                insecure=connection.insecure,
                timeout=timeout if timeout is not None else self.timeout,
                retries=retries or self.retries,
            )
        except ValueError as exc:  # the client's checks of its settings
            raise SettingsError(str(exc)) from exc
        self.connection = connection
        return client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _warn_if_readable(path: Path | None) -> None:
    """Like ssh with a private key: say so when the token sits in a file that others may read."""
    try:
        loose = path is not None and path.stat().st_mode & 0o077
    except OSError:
        return
    if loose:
        click.echo(
            f"chital: warning: {path} holds a token and others may read it (chmod 600 {path})", err=True
        )


def state() -> State:
    """The :class:`State` of the running command."""
    root = click.get_current_context().find_root()
    obj = root.ensure_object(State)
    return obj


def _store(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is None or value is False or value == ():  # not given (--insecure has no "off" form)
        return value
    assert param.name is not None
    if isinstance(value, tuple):  # a repeated option (--controller): one comma-separated list
        value = ",".join(value)
    setattr(ctx.find_root().ensure_object(State), param.name, value)
    return value


def _option(*decls: str, **kw: Any) -> click.Option:
    return click.Option(list(decls), expose_value=False, callback=_store, default=None, **kw)


def output_options(*, hidden: bool = False) -> list[click.Parameter]:
    return [
        _option(
            "-o",
            "--output",
            type=click.Choice(OUTPUT_FORMATS),
            help="output format: table (default), wide (more columns), json, yaml",
            hidden=hidden,
        ),
        _option(
            "--config",
            metavar="FILE",
            help=f"config file (env {cfg.ENV_CONFIG}, default ~/.config/chital/config.toml)",
            hidden=hidden,
        ),
    ]


def connection_options(*, hidden: bool = False) -> list[click.Parameter]:
    return [
        _option(
            "--timeout",
            type=POSITIVE_SECONDS,
            help="deadline of each call to the controller (default: 10)",
            hidden=hidden,
        ),
        _option(
            "--controller",
            metavar="HOST:PORT",
            multiple=True,
            help=f"controller address; repeat it (or separate with commas) for several controllers, "
            f"tried in order (env {cfg.ENV_CONTROLLER}, default {cfg.DEFAULT_CONTROLLER})",
            hidden=hidden,
        ),
        _option(
            "--context",
            metavar="NAME",
            help=f"context of the config file (env {cfg.ENV_CONTEXT}, default: its current_context)",
            shell_complete=_complete_contexts,
            hidden=hidden,
        ),
        _option(
            "--tls-dir",
            metavar="DIR",
            type=click.Path(file_okay=False),
            help=(
                "directory with ca.crt, and tls.crt + tls.key for a client certificate "
                f"(env {cfg.ENV_TLS_DIR})"
            ),
            hidden=hidden,
        ),
        _option(
            "--ca",
            metavar="FILE",
            type=click.Path(dir_okay=False),
            help=f"CA certificate that signed the controller's (env {cfg.ENV_CACERT})",
            hidden=hidden,
        ),
        _option(
            "--cert",
            metavar="FILE",
            type=click.Path(dir_okay=False),
            help=f"client certificate (env {cfg.ENV_CLIENT_CERT})",
            hidden=hidden,
        ),
        _option(
            "--key",
            metavar="FILE",
            type=click.Path(dir_okay=False),
            help=f"its private key (env {cfg.ENV_CLIENT_KEY})",
            hidden=hidden,
        ),
        _option(
            "--token",
            metavar="TOKEN",
            help=(
                f"bearer token (env {cfg.ENV_TOKEN}; visible to other local users in ps: prefer --token-file)"
            ),
            hidden=hidden,
        ),
        _option(
            "--token-file",
            metavar="FILE",
            type=click.Path(dir_okay=False),
            help=f"file holding the bearer token (env {cfg.ENV_TOKEN_FILE})",
            hidden=hidden,
        ),
        _option(
            "--insecure",
            is_flag=True,
            flag_value=True,
            help=f"plaintext, to a controller on loopback only (env {cfg.ENV_INSECURE}=1)",
            hidden=hidden,
        ),
    ]


def _complete_contexts(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    try:
        config = cfg.Config.load(ctx.find_root().ensure_object(State).config)
    except (ValueError, OSError):
        return []
    return [name for name in config.contexts if name.startswith(incomplete)]


GLOBAL_NOTE = "The global options (chital --help: -o, --context, --controller, ...) go here too."
LOCAL_NOTE = "Of the global options, -o and --config apply (the others are what context set stores)."


class Command(click.Command):
    """A command with the global options after its own."""

    local = False  # the ``context`` commands: output options only

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("epilog", GLOBAL_NOTE if not self.local else LOCAL_NOTE)
        super().__init__(*args, **kwargs)
        # Accepted here too, but listed once, in chital --help.
        self.params.extend(output_options(hidden=True))
        if not self.local:
            self.params.extend(connection_options(hidden=True))


class LocalCommand(Command):
    """A command that reads only the config file: ``-o`` and ``--config`` of the globals."""

    local = True


class Group(click.Group):
    """A group with the global options, the aliases ``list`` (``ls``) and ``remove`` (``rm``), and
    :class:`Command` commands."""

    command_class = Command

    ALIASES = {"list": "ls", "remove": "rm"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(output_options(hidden=self.name != "chital"))
        self.params.extend(connection_options(hidden=self.name != "chital"))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in self.ALIASES:
            command = super().get_command(ctx, self.ALIASES[cmd_name])
        return command

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        return (command.name if command else name), command, rest


Group.group_class = Group

EPILOG = f"""\b
Exit status:
  0     success
  1     a chital error (printed as one line naming its kind, e.g. "not found")
  2     usage error
  N     run/exec without --detach: the process's own exit code (128+signal if killed)
  124   wait: --wait-timeout expired before the process exited
  130   interrupted (Ctrl-C)

\b
Settings come from the flags, else the environment, else the context of the config file:
  {cfg.ENV_CONTROLLER}   controller address (host:port): --controller
  {cfg.ENV_CONTEXT}      context of the config file: --context (default: its current_context)
  {cfg.ENV_CONFIG}       config file (default: ~/.config/chital/config.toml): --config
  {cfg.ENV_TLS_DIR}      directory with ca.crt (and tls.crt, tls.key): --tls-dir
  {cfg.ENV_CACERT}       CA certificate that signed the controller's: --ca
  {cfg.ENV_CLIENT_CERT}  client certificate and its key: --cert, --key
  {cfg.ENV_CLIENT_KEY}
  {cfg.ENV_TOKEN}        bearer token: --token ({cfg.ENV_TOKEN_FILE}, --token-file: read from a file)
  {cfg.ENV_INSECURE}     1: plaintext, to a controller on loopback only: --insecure

\b
Containers, processes, hosts and rollouts are named by uid, by a unique uid prefix (like docker),
or for containers and hosts by name or address. Global options go before or after the command.
Output is plain (no colour, no progress) when it is not a terminal, and uncoloured with NO_COLOR.
Shell completion: chital completion bash|zsh|fish --help.
"""


@click.group(
    "chital",
    cls=Group,
    epilog=EPILOG,
    invoke_without_command=True,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--version",
    "show_version",
    is_flag=True,
    help="print the client's version, and the controller's and agents' when reachable, and exit",
)
@click.pass_context
def cli(ctx: click.Context, show_version: bool) -> None:
    """Run sandboxed processes across a fleet of hosts."""
    if show_version:
        from ._admin import print_version  # noqa: PLC0415 - the commands import this module

        print_version()
        ctx.exit(0)
    if ctx.invoked_subcommand is None:
        raise click.UsageError("a command is required (chital --help lists them)", ctx)
