"""Hosts, identity, tokens, the audit log, contexts, completion and versions."""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import click
from click.shell_completion import get_completion_class

from chital.client import (
    ChitalError,
    DeadlineExceeded,
    Host,
    HostState,
    RetryPolicy,
    Unavailable,
    Unimplemented,
    __version__,
)
from chital.client import config as cfg

from . import _complete as complete
from . import _output as out
from . import _params as params
from . import _resolve as resolve
from ._containers import show
from ._root import Group, LocalCommand, SettingsError, cli, state

EXIT_OK = 0
ROLES = ("admin", "operator", "viewer")


def _note(message: str) -> None:
    click.echo(f"chital: {message}", err=True)


# -- hosts ---------------------------------------------------------------------------------------


@cli.group("hosts", cls=Group)
def hosts_group() -> None:
    """Manage hosts (agents registered with the controller)."""


def _show_hosts(hosts: list[Any]) -> None:
    wide = state().wide
    headers = out.HOST_WIDE_HEADERS if wide else out.HOST_HEADERS
    show(hosts, headers, [out.host_row(h, wide=wide) for h in hosts])


def _show_host(host: Any) -> None:
    """One host: an object with -o json|yaml, else a one-row table."""
    if state().structured:
        out.print_data(host, state().output)
    else:
        _show_hosts([host])


@hosts_group.command("add")
@click.argument("address", metavar="ADDRESS")
@click.option("-l", "--label", "labels", type=params.KEY_VALUE, multiple=True, help="label (repeatable)")
@click.option("--max-containers", type=params.COUNT, default=0, help="0: unlimited")
def hosts_add(address: str, labels: tuple[tuple[str, str], ...], max_containers: int) -> int:
    """Register an agent by its address (host:port)."""
    host = state().client().register_host(address, labels=dict(labels), max_containers=max_containers)
    _show_host(host)
    return EXIT_OK


@hosts_group.command("ls")
@click.option(
    "--state",
    "state_",
    type=params.Parsed(params.enum_member(HostState), "STATE"),
    help="only hosts in this state",
)
def hosts_ls(state_: HostState | None) -> int:
    """List hosts."""
    _show_hosts(list(state().client().list_hosts(state=state_)))
    return EXIT_OK


_host_argument = click.argument("host", metavar="HOST", shell_complete=complete.hosts)


@hosts_group.command("get")
@_host_argument
def hosts_get(host: str) -> int:
    """Show one host (id, id prefix or address)."""
    client = state().client()
    show(client.get_host(resolve.host(client, host)))
    return EXIT_OK


@hosts_group.command("cordon")
@_host_argument
def hosts_cordon(host: str) -> int:
    """Stop placing containers on a host."""
    client = state().client()
    _show_host(client.cordon_host(resolve.host(client, host)))
    return EXIT_OK


@hosts_group.command("uncordon")
@_host_argument
def hosts_uncordon(host: str) -> int:
    """Place containers on a cordoned host again."""
    client = state().client()
    _show_host(client.uncordon_host(resolve.host(client, host)))
    return EXIT_OK


@hosts_group.command("drain")
@_host_argument
@click.option("--grace", type=params.SECONDS, default=None, help="grace period per container (default 10 s)")
@click.option(
    "--deadline",
    type=params.SECONDS,
    default=None,
    help="the drain is complete by then: what still runs is killed (default: the grace period)",
)
@click.option(
    "--detach", is_flag=True, help="start the drain and return; `chital hosts get` shows its progress"
)
def hosts_drain(host: str, grace: float | None, deadline: float | None, detach: bool) -> int:
    """Drain a host: no new containers, and each of its containers stopped.

    SIGTERM to their processes, SIGKILL after the grace period or at the deadline, whichever comes
    first. Waits until the drain is complete (unless --detach) and prints the host.
    """
    client = state().client()
    target = resolve.host(client, host)
    with out.progress(f"draining {host}: cordoning it and stopping its containers") as progress:

        def show(current: Host) -> None:
            if current.drain is not None:
                progress.update(
                    f"draining {host}: {current.drain.remaining} of {current.drain.containers} "
                    "container(s) still to stop"
                )

        result = client.drain_host(target, grace=grace, deadline=deadline, wait=not detach, progress=show)
    if state().structured:
        out.print_data(result, state().output)
    else:
        _show_hosts([result.host])
        if detach:
            print(
                f"stopping {result.stopped_containers} container(s); "
                f"`chital hosts get {host}` shows the progress"
            )
        else:
            print(f"stopped {result.stopped_containers} container(s)")
    return EXIT_OK


@hosts_group.command("rm")
@_host_argument
@click.option("-f", "--force", is_flag=True, help="even with live containers")
def hosts_rm(host: str, force: bool) -> int:
    """Forget a host."""
    client = state().client()
    target = resolve.host(client, host)
    client.remove_host(target, force=force)
    if state().structured:
        out.print_data({"removed": target}, state().output)
    else:
        print(f"removed host {target}")
    return EXIT_OK


# -- identity, tokens, audit log -----------------------------------------------------------------


@cli.command("whoami")
def whoami_command() -> int:
    """Show who the controller takes you for (name, role, how)."""
    show(state().client().whoami())
    return EXIT_OK


@cli.group("token", cls=Group)
def token_group() -> None:
    """Manage API tokens (needs the admin role)."""


@token_group.command("create")
@click.option("--name", required=True, help="a name to recognise it by ([A-Za-z0-9._@-], 1-63)")
@click.option("--role", required=True, type=click.Choice(ROLES), help="what it may do")
@click.option("--ttl", type=params.TTL, default=None, help="lifetime, e.g. 12h or 30d (default: none)")
def token_create(name: str, role: str, ttl: float | None) -> int:
    """Create a token; it is printed only this once."""
    created = state().client().create_token(name, role, ttl=ttl)
    if state().structured:
        out.print_data({"bearer_token": created.bearer_token, "token": created.token}, state().output)
        return EXIT_OK
    # The token alone on stdout, so that `TOKEN=$(chital token create ...)` works; the rest on stderr.
    print(created.bearer_token, flush=True)
    token = created.token
    expires = out.time_text(token.expire_time) if token.expire_time else "never"
    _note(
        f"token {token.id} ({token.name}, role {token.role}, expires {expires}): "
        "shown only this once, store it now"
    )
    return EXIT_OK


@token_group.command("ls")
@click.option("-a", "--all", "show_all", is_flag=True, help="include revoked and expired tokens")
def token_ls(show_all: bool) -> int:
    """List tokens (never their secrets)."""
    tokens = state().client().list_tokens()
    if not show_all:
        tokens = [t for t in tokens if not t.revoked and not t.expired()]
    show(tokens, out.TOKEN_HEADERS, [out.token_row(t) for t in tokens])
    return EXIT_OK


@token_group.command("revoke")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
def token_revoke(ids: tuple[str, ...]) -> int:
    """Revoke tokens by id (12 hex digits, or a unique prefix of one)."""
    client = state().client()
    for token_id in ids:
        token = client.revoke_token(resolve.token(client, token_id))
        if state().structured:
            out.print_data(token, state().output)
        else:
            print(f"revoked token {token.id} ({token.name})")
    return EXIT_OK


@cli.group("audit", cls=Group)
def audit_group() -> None:
    """Read the audit log (needs the admin role)."""


@audit_group.command("ls")
@click.option(
    "--principal", metavar="WHO", help="only this principal: cert:NAME, token:NAME or token:NAME/ID"
)
@click.option("--limit", type=params.COUNT, default=100, help="at most N entries (100; 0: all)")
def audit_ls(principal: str | None, limit: int) -> int:
    """List audited calls, newest first."""
    entries = []
    page_size = min(limit, 1000) if limit else 0
    for entry in state().client().list_audit_log(principal=principal or "", page_size=page_size):
        entries.append(entry)
        if limit and len(entries) >= limit:
            break
    show(entries, out.AUDIT_HEADERS, [out.audit_row(e) for e in entries])
    return EXIT_OK


# -- contexts (the config file only; no controller is called) ------------------------------------


@cli.group("context", cls=Group)
def context_group() -> None:
    """Manage the contexts of the config file.

    Contexts are named sets of controller address, TLS files and token in the config file
    (~/.config/chital/config.toml, or $CHITAL_CONFIG). Flags and CHITAL_* variables override the
    context's settings.
    """


def _context_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    try:
        config = ctx.find_root().ensure_object(type(state())).load_config()
    except (ValueError, OSError):
        return []
    return [name for name in config.contexts if name.startswith(incomplete)]


@context_group.command("ls", cls=LocalCommand)
def context_ls() -> int:
    """List contexts (* marks the current)."""
    config = state().load_config()
    if state().structured:
        data = [
            {"name": name, "current": name == config.current_context, **out.context_json(context)}
            for name, context in config.contexts.items()
        ]
        out.print_data(data, state().output)
        return EXIT_OK
    rows = [
        ["*" if name == config.current_context else "", name, *out.context_row(context)]
        for name, context in config.contexts.items()
    ]
    out.print_table(out.CONTEXT_HEADERS, rows)
    return EXIT_OK


@context_group.command("use", cls=LocalCommand)
@click.argument("name", shell_complete=_context_names)
def context_use(name: str) -> int:
    """Make a context the current one."""
    config = state().load_config()
    config.use_context(name)
    config.save()
    click.echo(f'switched to context "{name}"', err=True)
    return EXIT_OK


@context_group.command("current", cls=LocalCommand)
def context_current() -> int:
    """Print the name of the context in use.

    --context, else $CHITAL_CONTEXT, else the file's current_context.
    """
    name = state().context or os.environ.get(cfg.ENV_CONTEXT) or state().load_config().current_context
    if not name:
        _note("no context in use")
        return 1
    print(name)
    return EXIT_OK


def _absolute_path(text: str) -> str | None:
    """An option's path made absolute (the file is read later, from another directory); "" unsets."""
    if text == "":
        return None
    return str(Path(text).expanduser().absolute())


@context_group.command("set", cls=LocalCommand)
@click.argument("name", shell_complete=_context_names)
@click.option(
    "--controller",
    "set_controllers",
    multiple=True,
    metavar="HOST:PORT",
    help="controller address (repeatable: several controllers of one cluster, tried in order)",
)
@click.option("--tls-dir", "set_tls_dir", metavar="DIR", help="directory with ca.crt (tls.crt, tls.key)")
@click.option("--ca", "set_ca", metavar="FILE", help="CA certificate")
@click.option("--cert", "set_cert", metavar="FILE", help="client certificate")
@click.option("--key", "set_key", metavar="FILE", help="client key")
@click.option(
    "--token", "set_token", metavar="TOKEN", help='bearer token, stored in the file ("-": read stdin)'
)
@click.option("--token-file", "set_token_file", metavar="FILE", help="file holding the token")
@click.option(
    "--insecure/--no-insecure",
    "set_insecure",
    default=None,
    help="plaintext, to a controller on loopback only",
)
@click.option("--use", is_flag=True, help="make it the current context")
def context_set(
    *,
    name: str,
    set_controllers: tuple[str, ...],
    set_tls_dir: str | None,
    set_ca: str | None,
    set_cert: str | None,
    set_key: str | None,
    set_token: str | None,
    set_token_file: str | None,
    set_insecure: bool | None,
    use: bool,
) -> int:
    """Create or update a context.

    Only the settings given change; an empty value removes a setting (--ca ""), --controller
    replaces the whole list, and a token replaces a token file (and the other way round). The
    first context becomes current.
    """
    if set_token is not None and set_token_file is not None:
        raise click.UsageError("--token and --token-file exclude each other")
    config = state().load_config()
    existed = name in config.contexts
    old = config.contexts.get(name, cfg.Context())
    changes: dict[str, Any] = {}
    if set_controllers:
        changes["controllers"] = tuple(c for c in set_controllers if c)
    given = {
        "tls_dir": set_tls_dir,
        "ca": set_ca,
        "cert": set_cert,
        "key": set_key,
        "token_file": set_token_file,
    }
    for key, value in given.items():
        if value is not None:
            changes[key] = _absolute_path(value)
    if set_token is not None:
        # "-": from stdin, so that the token is not in the process list or the shell history.
        from_stdin = set_token == "-"  # noqa: S105 - the stdin marker, not a secret
        token = sys.stdin.readline() if from_stdin else set_token
        changes["token"] = token.strip() or None
    # A token and a token file exclude each other: setting one replaces the other.
    if changes.get("token"):
        changes["token_file"] = None
    if changes.get("token_file"):
        changes["token"] = None
    if set_insecure is not None:
        changes["insecure"] = set_insecure
    try:
        context = dataclasses.replace(old, **changes)
    except cfg.ConfigError as exc:
        raise cfg.ConfigError(f'context "{name}": {exc}') from None
    for key in ("tls_dir", "ca", "cert", "key", "token_file"):
        path = getattr(context, key)
        if key in changes and path is not None and not Path(path).exists():
            _note(f"warning: {key} {path} does not exist (yet)")
    config.set_context(name, context)
    if use or config.current_context is None:
        config.current_context = name
    config.save()
    verb = "updated" if existed else "added"
    current = " (current)" if config.current_context == name else ""
    click.echo(f'{verb} context "{name}"{current} in {config.path}', err=True)
    return EXIT_OK


@context_group.command("rm", cls=LocalCommand)
@click.argument("names", nargs=-1, required=True, metavar="NAME...", shell_complete=_context_names)
def context_rm(names: tuple[str, ...]) -> int:
    """Remove contexts."""
    config = state().load_config()
    for name in names:
        config.remove_context(name)
    config.save()
    for name in names:
        click.echo(f'removed context "{name}"', err=True)
    return EXIT_OK


# -- completion ----------------------------------------------------------------------------------

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_CHITAL_COMPLETE"


@cli.command("completion", cls=LocalCommand)
@click.argument("shell", type=click.Choice(SHELLS))
def completion_command(shell: str) -> int:
    """Print the shell completion script.

    \b
    bash:  eval "$(chital completion bash)"     (in ~/.bashrc)
    zsh:   eval "$(chital completion zsh)"      (in ~/.zshrc, after compinit)
    fish:  chital completion fish > ~/.config/fish/completions/chital.fish

    Commands, options and choices complete offline; container names and uids, process uids and
    hosts are asked of the controller (with the context in use, one quick call).
    """
    completer = get_completion_class(shell)
    assert completer is not None
    root = click.get_current_context().find_root()
    print(completer(cli, {}, root.info_name or "chital", COMPLETE_VAR).source())
    return EXIT_OK


# -- versions ------------------------------------------------------------------------------------


def _kind(exc: ChitalError) -> str:
    """``PermissionDenied`` -> ``permission denied``."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", type(exc).__name__).lower()


def version_report() -> dict[str, Any]:
    """The client's version, and what a reachable controller says of itself and its agents."""
    report: dict[str, Any] = {"client": __version__, "controller": None}
    settings = state()
    try:
        client = settings.make_client(timeout=min(settings.timeout, 5.0), retries=RetryPolicy(max_attempts=1))
        target = settings.connection.target if settings.connection else ""
    except (ValueError, ChitalError, SettingsError) as exc:
        report["controller"] = {"reachable": False, "error": str(exc)}
        return report
    with client:
        controller: dict[str, Any] = {"target": target, "reachable": False, "version": None}
        report["controller"] = controller
        try:
            identity = client.whoami()
        except (Unavailable, DeadlineExceeded) as exc:
            controller["error"] = f"{exc}"
            return report
        except ChitalError as exc:  # it answered, and refused
            controller["reachable"] = True
            controller["error"] = f"{_kind(exc)}: {exc}"
            return report
        controller["reachable"] = True
        controller["as"] = f"{identity.name} ({identity.role})"
        try:
            info = client.server_info()
        except Unimplemented:
            controller["version_error"] = "the controller is older than GetServerInfo"
        except ChitalError as exc:
            controller["version_error"] = f"{_kind(exc)}: {exc}"
        else:
            controller["version"] = info.version
            controller["api_versions"] = list(info.api_versions)
            controller["database"] = info.database
            controller["leader"] = info.leader
        try:
            hosts = list(client.list_hosts())
        except ChitalError:
            return report
        versions = Counter((h.agent.agent_version if h.agent else "") or "unknown" for h in hosts)
        report["agents"] = dict(sorted(versions.items()))
    return report


def print_version() -> None:
    report = version_report()
    if state().structured:
        out.print_data(report, state().output)
        return
    print(f"client:     chital {report['client']}")
    controller = report["controller"]
    if controller is None or not controller.get("reachable"):
        reason = (controller or {}).get("error", "not configured")
        where = f" {controller['target']}" if controller and controller.get("target") else ""
        print(f"server:    {where} not reachable ({' '.join(str(reason).split())}); its version is unknown")
        return
    if "error" in controller:
        reason = " ".join(str(controller["error"]).split())
        print(f"server:     {controller['target']} answered but refused ({reason}); its version is unknown")
        return
    where = f"{controller['target']}, reachable as {controller['as']}"
    if controller["version"] is None:
        reason = " ".join(str(controller["version_error"]).split())
        print(f"server:     {where}; version unknown ({reason})")
    else:
        database = controller["database"] or "unknown"
        role = "the leader" if controller.get("leader") else "a follower"
        print(f"server:     chital {controller['version']} at {where}; database {database}; {role}")
        print(f"apis:       {', '.join(controller['api_versions']) or 'none reported'}")
    agents = report.get("agents")
    if agents:
        print("agents:     " + ", ".join(f"{v} ({n} host{'s' if n != 1 else ''})" for v, n in agents.items()))


__all__ = ["COMPLETE_VAR", "Group", "print_version"]
