"""The ``chital`` command: argument parsing, one function per command, exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal as _signal
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from chital.client import (
    ChitalError,
    Client,
    ContainerState,
    HostState,
    Limits,
    LogStream,
    PermissionDenied,
    Process,
    ProcessState,
    RetryPolicy,
    Sandbox,
    Unauthenticated,
    Unavailable,
)
from chital.client import config as cfg
from chital.security.tls import is_loopback

from . import _output as out

DEFAULT_CONTROLLER = cfg.DEFAULT_CONTROLLER

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130

EPILOG = """\
exit status:
  0     success
  1     a chital error (printed as one line naming its kind, e.g. "not found")
  2     usage error
  N     run/exec without --detach: the process's own exit code (128+signal if killed)
  124   wait: --wait-timeout expired before the process exited
  130   interrupted (Ctrl-C)

settings come from the flags, else the environment, else the context of the config file:
  CHITAL_CONTROLLER   controller address (host:port): --controller
  CHITAL_CONTEXT      context of the config file: --context (default: its current_context)
  CHITAL_CONFIG       config file (default: ~/.config/chital/config.toml): --config
  CHITAL_TLS_DIR      directory with ca.crt (and tls.crt, tls.key): --tls-dir
  CHITAL_CACERT       CA certificate that signed the controller's: --ca
  CHITAL_CLIENT_CERT  client certificate and its key: --cert, --key
  CHITAL_CLIENT_KEY
  CHITAL_TOKEN        bearer token: --token (CHITAL_TOKEN_FILE, --token-file: read from a file)
  CHITAL_INSECURE     1: plaintext, to a controller on loopback only: --insecure
"""

# Retries for the CLI: a few quick ones, so an unreachable controller is reported in about a second.
CLI_RETRIES = RetryPolicy(max_attempts=4, initial_backoff=0.1, max_backoff=1.0)

_Handler = Callable[[Client, argparse.Namespace], int]
_LocalHandler = Callable[[argparse.Namespace], int]


class _UsageError(Exception):
    """A bad value found after parsing (reported like argparse's errors, exit status 2)."""


# -- argument types ------------------------------------------------------------------------------


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _env_item(text: str) -> tuple[str, str]:
    # Like docker: "-e NAME" passes the caller's own value of NAME.
    if "=" not in text:
        if text not in os.environ:
            raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE and is not set here")
        return text, os.environ[text]
    return _key_value(text)


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:ib?|b)?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size like 256M or 1G, got {text!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def _cpus(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of CPUs like 0.5, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("--cpus must not be negative")
    return round(value * 1000)


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _user(text: str) -> tuple[int, int]:
    user, _, group = text.partition(":")
    if not user.isdigit() or not (group or user).isdigit():
        raise argparse.ArgumentTypeError(f"expected numeric UID[:GID], got {text!r}")
    return int(user), int(group or user)


def _signal_number(text: str) -> int:
    if text.isdigit():
        number = int(text)
        if 1 <= number <= 64:
            return number
    else:
        name = text.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        try:
            return int(_signal.Signals[name])
        except KeyError:
            pass
    raise argparse.ArgumentTypeError(f"unknown signal {text!r}")


def _enum_choice(enum_cls: Any) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return enum_cls[text.upper().replace("-", "_")]
        except KeyError:
            names = ", ".join(m.value.lower() for m in enum_cls if m.name != "UNSPECIFIED")
            raise argparse.ArgumentTypeError(f"unknown state {text!r} (one of: {names})") from None

    parse.__name__ = "state"
    return parse


# -- output helpers ------------------------------------------------------------------------------


def _json(args: argparse.Namespace) -> bool:
    return bool(args.output == "json")


def _write_output(stream: Any, data: bytes) -> None:
    """Write process output bytes as they are, even when the text stream has no binary buffer."""
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        stream.write(data.decode("utf-8", "replace"))
        stream.flush()
        return
    stream.flush()
    buffer.write(data)
    buffer.flush()


def _show_containers(args: argparse.Namespace, containers: Sequence[Any]) -> None:
    if _json(args):
        out.print_json(list(containers))
    else:
        out.print_table(out.CONTAINER_HEADERS, [out.container_row(c) for c in containers])


def _show_processes(args: argparse.Namespace, processes: Sequence[Process]) -> None:
    if _json(args):
        out.print_json(list(processes))
    else:
        out.print_table(out.PROCESS_HEADERS, [out.process_row(p) for p in processes])


def _show_hosts(args: argparse.Namespace, hosts: Sequence[Any]) -> None:
    if _json(args):
        out.print_json(list(hosts))
    else:
        out.print_table(out.HOST_HEADERS, [out.host_row(h) for h in hosts])


def _show_row(
    args: argparse.Namespace, value: Any, show: Callable[[argparse.Namespace, Sequence[Any]], None]
) -> None:
    """One value: a JSON object, or a one-row table (``show`` renders the table)."""
    if _json(args):
        out.print_json(value)
    else:
        show(args, [value])


def _show_one(args: argparse.Namespace, value: Any) -> None:
    if _json(args):
        out.print_json(value)
    else:
        out.print_fields(value)


# -- commands: hosts -----------------------------------------------------------------------------


def _hosts_add(client: Client, args: argparse.Namespace) -> int:
    host = client.register_host(args.address, labels=dict(args.label), max_containers=args.max_containers)
    _show_row(args, host, _show_hosts)
    return EXIT_OK


def _hosts_ls(client: Client, args: argparse.Namespace) -> int:
    _show_hosts(args, list(client.list_hosts(state=args.state)))
    return EXIT_OK


def _hosts_get(client: Client, args: argparse.Namespace) -> int:
    _show_one(args, client.get_host(args.host))
    return EXIT_OK


def _hosts_cordon(client: Client, args: argparse.Namespace) -> int:
    host = client.cordon_host(args.host)
    _show_row(args, host, _show_hosts)
    return EXIT_OK


def _hosts_uncordon(client: Client, args: argparse.Namespace) -> int:
    host = client.uncordon_host(args.host)
    _show_row(args, host, _show_hosts)
    return EXIT_OK


def _hosts_drain(client: Client, args: argparse.Namespace) -> int:
    result = client.drain_host(args.host, grace=args.grace)
    if _json(args):
        out.print_json(result)
    else:
        _show_hosts(args, [result.host])
        print(f"stopped {result.stopped_containers} container(s)")
    return EXIT_OK


def _hosts_rm(client: Client, args: argparse.Namespace) -> int:
    client.remove_host(args.host, force=args.force)
    if _json(args):
        out.print_json({"removed": args.host})
    else:
        print(f"removed host {args.host}")
    return EXIT_OK


# -- commands: containers and processes ----------------------------------------------------------


def _attach(client: Client, process: Process) -> int:
    """Copy a process's output to ours until it exits; return its exit status."""
    try:
        for chunk in client.stream_logs(process.uid, follow=True):
            _write_output(sys.stderr if chunk.stream is LogStream.STDERR else sys.stdout, chunk.data)
        final = client.wait_process(process.uid)
    except KeyboardInterrupt:
        # Detaching is all Ctrl-C does here: the process is the controller's, not ours.
        print(
            f"chital: detached; process {process.uid} keeps running (chital kill {process.uid})",
            file=sys.stderr,
        )
        raise
    if final.state is not ProcessState.EXITED:
        detail = f": {final.message}" if final.message else ""
        raise _ProcessLostError(f"process {final.uid} is {final.state.value.lower()}{detail}")
    return final.shell_exit_status


class _ProcessLostError(Exception):
    """The process we were attached to ended without an exit status (its host was lost)."""


def _names(groups: list[str]) -> tuple[str, ...]:
    """Comma-separated names from a repeatable option."""
    return tuple(name.strip() for group in groups for name in group.split(",") if name.strip())


def _capability(name: str) -> str:
    """``net_bind_service`` or ``CAP_NET_BIND_SERVICE`` -> ``CAP_NET_BIND_SERVICE``."""
    name = name.upper()
    return name if name.startswith("CAP_") else f"CAP_{name}"


def _run(client: Client, args: argparse.Namespace) -> int:
    limits = Limits(memory_max_bytes=args.memory, pids_max=args.pids, cpu_max_millicores=args.cpus)
    sandbox = Sandbox(
        allow_syscalls=_names(args.allow),
        allow_raw_sockets=args.allow_raw_sockets,
        capabilities=tuple(
            c.upper() if c.upper().startswith("CAP_") else f"CAP_{c.upper()}" for c in _names(args.cap_add)
        ),
        host_network=args.network == "host",
    )
    container = client.create_container(
        args.name or f"run-{uuid.uuid4().hex[:8]}",
        labels=dict(args.label),
        limits=limits,
        root=args.root,
        deny_syscalls=_names(args.deny),
        host=args.host,
        sandbox=sandbox,
    )
    try:
        process = client.exec(
            container.uid,
            args.command,
            env=dict(args.env),
            cwd=args.cwd,
            user_id=args.user[0] if args.user else None,
            group_id=args.user[1] if args.user else None,
        )
    except ChitalError:
        if args.rm:
            client.delete_container(container.uid, force=True)
        raise
    if args.detach:
        if _json(args):
            out.print_json({"container": container, "process": process})
        else:
            out.print_table(
                ("CONTAINER", "CONTAINER UID", "PROCESS UID"), [[container.name, container.uid, process.uid]]
            )
        return EXIT_OK
    try:
        return _attach(client, process)
    finally:
        if args.rm:
            client.delete_container(container.uid, force=True)


def _exec(client: Client, args: argparse.Namespace) -> int:
    process = client.exec(
        args.container,
        args.command,
        env=dict(args.env),
        cwd=args.cwd,
        user_id=args.user[0] if args.user else None,
        group_id=args.user[1] if args.user else None,
    )
    if args.detach:
        _show_row(args, process, _show_processes)
        return EXIT_OK
    return _attach(client, process)


def _ps(client: Client, args: argparse.Namespace) -> int:
    processes = [
        p
        for p in client.list_processes(args.container or "")
        if args.all or p.state in (ProcessState.STARTING, ProcessState.RUNNING)
    ]
    _show_processes(args, processes)
    return EXIT_OK


def _containers_ls(client: Client, args: argparse.Namespace) -> int:
    containers = client.list_containers(
        label_selector=",".join(f"{k}={v}" for k, v in args.label) or None,
        state=args.state,
        host=args.host or "",
    )
    _show_containers(args, list(containers))
    return EXIT_OK


def _inspect(client: Client, args: argparse.Namespace) -> int:
    _show_one(args, client.get_container(args.container))
    return EXIT_OK


def _stats(client: Client, args: argparse.Namespace) -> int:
    stats = client.get_container_stats(args.container)
    if _json(args):
        out.print_json(stats)
        return EXIT_OK
    if not stats.sandboxed:
        print("note: this host runs without the kernel module; no system call is counted", file=sys.stderr)
    rows = [[s.name, str(s.number), str(s.calls), str(s.denied)] for s in stats.syscalls[: args.top]]
    out.print_table(["SYSCALL", "NR", "CALLS", "DENIED"], rows)
    print(
        f"\ntotal {stats.syscalls_total} calls, {stats.denied_total} denied; {stats.members} member(s); "
        f"memory {stats.memory_current_bytes} bytes, pids {stats.pids_current}, "
        f"cpu {stats.cpu_usage_usec} us, oom kills {stats.oom_kills}"
    )
    return EXIT_OK


def _logs(client: Client, args: argparse.Namespace) -> int:
    for chunk in client.stream_logs(args.process, follow=args.follow, tail=args.tail):
        _write_output(sys.stderr if chunk.stream is LogStream.STDERR else sys.stdout, chunk.data)
    return EXIT_OK


def _wait(client: Client, args: argparse.Namespace) -> int:
    process = client.wait_process(args.process, timeout=args.wait_timeout)
    if _json(args):
        out.print_json(process)
    elif process.state is ProcessState.EXITED:
        print(process.shell_exit_status)
    if process.state is ProcessState.EXITED:
        return EXIT_OK
    if process.state is ProcessState.LOST:
        raise _ProcessLostError(
            f"process {process.uid} is lost" + (f": {process.message}" if process.message else "")
        )
    print(f"chital: process {process.uid} still {process.state.value.lower()}", file=sys.stderr)
    return EXIT_TIMEOUT


def _kill(client: Client, args: argparse.Namespace) -> int:
    process = client.signal_process(args.process, args.signal)
    if _json(args):
        out.print_json(process)
    else:
        print(process.uid)
    return EXIT_OK


def _stop(client: Client, args: argparse.Namespace) -> int:
    container = client.stop_container(args.container, grace=args.grace)
    _show_row(args, container, _show_containers)
    return EXIT_OK


def _rm(client: Client, args: argparse.Namespace) -> int:
    container = client.delete_container(args.container, force=args.force)
    if _json(args):
        out.print_json(container)
    else:
        print(container.name or container.uid)
    return EXIT_OK


# -- commands: identity, tokens, audit log -------------------------------------------------------


def _whoami(client: Client, args: argparse.Namespace) -> int:
    identity = client.whoami()
    if _json(args):
        out.print_json(identity)
    else:
        out.print_fields(identity)
    return EXIT_OK


def _token_create(client: Client, args: argparse.Namespace) -> int:
    created = client.create_token(args.name, args.role, ttl=args.ttl)
    if _json(args):
        out.print_json({"bearer_token": created.bearer_token, "token": created.token})
        return EXIT_OK
    # The token alone on stdout, so that `TOKEN=$(chital token create ...)` works; the rest on stderr.
    print(created.bearer_token, flush=True)
    token = created.token
    expires = out.time_text(token.expire_time) if token.expire_time else "never"
    print(
        f"chital: token {token.id} ({token.name}, role {token.role}, expires {expires}): "
        "shown only this once, store it now",
        file=sys.stderr,
    )
    return EXIT_OK


def _token_ls(client: Client, args: argparse.Namespace) -> int:
    tokens = client.list_tokens()
    if not args.all:
        tokens = [t for t in tokens if not t.revoked and not t.expired()]
    if _json(args):
        out.print_json(tokens)
    else:
        out.print_table(out.TOKEN_HEADERS, [out.token_row(t) for t in tokens])
    return EXIT_OK


def _token_revoke(client: Client, args: argparse.Namespace) -> int:
    for token_id in args.ids:
        token = client.revoke_token(token_id)
        if _json(args):
            out.print_json(token)
        else:
            print(f"revoked token {token.id} ({token.name})")
    return EXIT_OK


def _audit_ls(client: Client, args: argparse.Namespace) -> int:
    entries = []
    page_size = min(args.limit, 1000) if args.limit else 0
    for entry in client.list_audit_log(principal=args.principal or "", page_size=page_size):
        entries.append(entry)
        if args.limit and len(entries) >= args.limit:
            break
    if _json(args):
        out.print_json(entries)
    else:
        out.print_table(out.AUDIT_HEADERS, [out.audit_row(e) for e in entries])
    return EXIT_OK


# -- commands: contexts (the config file only; no controller is called) -------------------------


def _load_config(args: argparse.Namespace) -> cfg.Config:
    return cfg.Config.load(args.config)


def _context_ls(args: argparse.Namespace) -> int:
    config = _load_config(args)
    if _json(args):
        out.print_json(
            [
                {"name": name, "current": name == config.current_context, **out.context_json(context)}
                for name, context in config.contexts.items()
            ]
        )
        return EXIT_OK
    rows = [
        ["*" if name == config.current_context else "", name, *out.context_row(context)]
        for name, context in config.contexts.items()
    ]
    out.print_table(out.CONTEXT_HEADERS, rows)
    return EXIT_OK


def _context_use(args: argparse.Namespace) -> int:
    config = _load_config(args)
    config.use_context(args.name)
    config.save()
    print(f'switched to context "{args.name}"', file=sys.stderr)
    return EXIT_OK


def _absolute_path(text: str) -> str | None:
    """An option's path made absolute (the file is read later, from another directory); "" unsets."""
    if text == "":
        return None
    return str(Path(text).expanduser().absolute())


def _context_set(args: argparse.Namespace) -> int:
    config = _load_config(args)
    existed = args.name in config.contexts
    old = config.contexts.get(args.name, cfg.Context())
    changes: dict[str, Any] = {}
    if args.set_controllers is not None:
        changes["controllers"] = tuple(c for c in args.set_controllers if c)
    for key in ("tls_dir", "ca", "cert", "key", "token_file"):
        value = getattr(args, f"set_{key}")
        if value is not None:
            changes[key] = _absolute_path(value)
    if args.set_token is not None:
        # "-": from stdin, so that the token is not in the process list or the shell history.
        from_stdin = args.set_token == "-"  # noqa: S105 - the stdin marker, not a secret
        token = sys.stdin.readline() if from_stdin else args.set_token
        changes["token"] = token.strip() or None
    # A token and a token file exclude each other: setting one replaces the other.
    if changes.get("token"):
        changes["token_file"] = None
    if changes.get("token_file"):
        changes["token"] = None
    if args.set_insecure is not None:
        changes["insecure"] = args.set_insecure
    try:
        context = dataclasses.replace(old, **changes)
    except cfg.ConfigError as exc:
        raise cfg.ConfigError(f'context "{args.name}": {exc}') from None
    for key in ("tls_dir", "ca", "cert", "key", "token_file"):
        path = getattr(context, key)
        if key in changes and path is not None and not Path(path).exists():
            print(f"chital: warning: {key} {path} does not exist (yet)", file=sys.stderr)
    config.set_context(args.name, context)
    if args.use or config.current_context is None:
        config.current_context = args.name
    config.save()
    verb = "updated" if existed else "added"
    current = " (current)" if config.current_context == args.name else ""
    print(f'{verb} context "{args.name}"{current} in {config.path}', file=sys.stderr)
    return EXIT_OK


def _context_rm(args: argparse.Namespace) -> int:
    config = _load_config(args)
    for name in args.names:
        config.remove_context(name)
    config.save()
    for name in args.names:
        print(f'removed context "{name}"', file=sys.stderr)
    return EXIT_OK


# -- the parser ----------------------------------------------------------------------------------


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool, connection: bool = True) -> None:
    """The options every command takes. Sub-commands get them too (with no defaults of their own),
    so ``chital ps -o json`` works as well as ``chital -o json ps``. The ``context`` commands take
    only the output options: their ``--ca``, ``--token``, ... are what they store."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "-o",
        "--output",
        choices=("table", "json"),
        default=default("table"),
        help="output format (default: table)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=default(None),
        help=f"config file (env {cfg.ENV_CONFIG}, default ~/.config/chital/config.toml)",
    )
    if not connection:
        return
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        metavar="SECONDS",
        default=default(10.0),
        help="deadline of each call to the controller (default: 10)",
    )
    group = parser.add_argument_group("connection (flags > CHITAL_* environment > context > defaults)")
    group.add_argument(
        "--controller",
        metavar="HOST:PORT",
        default=default(None),
        help=f"controller address (env {cfg.ENV_CONTROLLER}, default {DEFAULT_CONTROLLER})",
    )
    group.add_argument(
        "--context",
        metavar="NAME",
        default=default(None),
        help=f"context of the config file (env {cfg.ENV_CONTEXT}, default: its current_context)",
    )
    group.add_argument(
        "--tls-dir",
        metavar="DIR",
        default=default(None),
        help=f"directory with ca.crt, and tls.crt + tls.key for a client certificate (env {cfg.ENV_TLS_DIR})",
    )
    group.add_argument(
        "--ca",
        metavar="FILE",
        default=default(None),
        help=f"CA certificate that signed the controller's (env {cfg.ENV_CACERT})",
    )
    group.add_argument(
        "--cert",
        metavar="FILE",
        default=default(None),
        help=f"client certificate (env {cfg.ENV_CLIENT_CERT})",
    )
    group.add_argument(
        "--key", metavar="FILE", default=default(None), help=f"its private key (env {cfg.ENV_CLIENT_KEY})"
    )
    tokens = group.add_mutually_exclusive_group()
    tokens.add_argument(
        "--token",
        metavar="TOKEN",
        default=default(None),
        help=f"bearer token (env {cfg.ENV_TOKEN}; visible to other local users in ps: prefer --token-file)",
    )
    tokens.add_argument(
        "--token-file",
        metavar="FILE",
        default=default(None),
        help=f"file holding the bearer token (env {cfg.ENV_TOKEN_FILE})",
    )
    group.add_argument(
        "--insecure",
        action="store_const",
        const=True,
        default=default(None),
        help=f"plaintext, to a controller on loopback only (env {cfg.ENV_INSECURE}=1)",
    )


def _container_create_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="container name (default: run-<random>)")
    parser.add_argument(
        "--label",
        "-l",
        type=_key_value,
        action="append",
        default=[],
        metavar="K=V",
        help="label (repeatable)",
    )
    parser.add_argument("--memory", type=_size, default=0, metavar="SIZE", help="memory limit, e.g. 256M")
    parser.add_argument("--pids", type=_non_negative_int, default=0, metavar="N", help="most processes")
    parser.add_argument("--cpus", type=_cpus, default=0, metavar="CPUS", help="CPU quota, e.g. 0.5")
    parser.add_argument("--root", default="", metavar="DIR", help="root directory on the host")
    parser.add_argument(
        "--deny",
        action="append",
        default=[],
        metavar="SYSCALL,...",
        help="system calls to deny in addition to the host's default list (repeatable)",
    )
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="SYSCALL,...",
        help="system calls to remove from the host's default deny list (repeatable)",
    )
    parser.add_argument(
        "--allow-raw-sockets",
        action="store_true",
        help="allow AF_PACKET and SOCK_RAW sockets (denied by default)",
    )
    parser.add_argument(
        "--cap-add",
        action="append",
        default=[],
        metavar="CAP,...",
        help="capability the processes keep, e.g. NET_BIND_SERVICE (repeatable; none by default)",
    )
    parser.add_argument(
        "--network",
        choices=("private", "host"),
        default="private",
        help="private: own loopback only (default); host: the host's network, for trusted workloads only",
    )
    parser.add_argument("--host", default="", help="place on this host (id or address)")
    parser.add_argument("--rm", action="store_true", help="delete the container when the process exits")


def _process_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-e",
        "--env",
        type=_env_item,
        action="append",
        default=[],
        metavar="K=V",
        help="environment (repeatable)",
    )
    parser.add_argument("--cwd", default="", metavar="DIR", help="working directory in the container")
    parser.add_argument(
        "-u",
        "--user",
        type=_user,
        default=None,
        metavar="UID[:GID]",
        help="numeric user (and group) id (default 65534:65534; 0 is root without capabilities)",
    )
    parser.add_argument(
        "-d", "--detach", action="store_true", help="print the process and return instead of waiting"
    )
    parser.add_argument("command", nargs="+", metavar="CMD", help="program and arguments, after --")


def build_parser() -> argparse.ArgumentParser:
    """The full ``chital`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="chital",
        description="Run sandboxed processes across a fleet of hosts.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    local = argparse.ArgumentParser(add_help=False)
    _global_options(local, suppress=True, connection=False)
    commands = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)

    def add(
        group: Any, name: str, handler: _Handler, help_text: str, aliases: Sequence[str] = ()
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name, help=help_text, description=help_text, parents=[common], aliases=list(aliases)
        )
        sub.set_defaults(handler=handler)
        return sub

    def add_local(
        group: Any, name: str, handler: _LocalHandler, help_text: str, aliases: Sequence[str] = ()
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name, help=help_text, description=help_text, parents=[local], aliases=list(aliases)
        )
        sub.set_defaults(local_handler=handler)
        return sub

    _add_host_commands(commands, add)
    _add_container_commands(commands, add)
    _add_auth_commands(commands, add)
    _add_context_commands(commands, add_local)
    return parser


_Add = Callable[..., argparse.ArgumentParser]


def _add_host_commands(commands: Any, add: _Add) -> None:
    hosts = commands.add_parser("hosts", help="manage hosts", description="Manage hosts.")
    host_commands = hosts.add_subparsers(dest="hosts_command", metavar="COMMAND", required=True)
    sub = add(host_commands, "add", _hosts_add, "register an agent by its address")
    sub.add_argument("address", metavar="ADDRESS", help="host:port of the agent")
    sub.add_argument("--label", "-l", type=_key_value, action="append", default=[], metavar="K=V")
    sub.add_argument("--max-containers", type=_non_negative_int, default=0, metavar="N", help="0: unlimited")
    sub = add(host_commands, "ls", _hosts_ls, "list hosts", aliases=["list"])
    sub.add_argument("--state", type=_enum_choice(HostState), help="only hosts in this state")
    for name, handler, text in (
        ("get", _hosts_get, "show one host"),
        ("cordon", _hosts_cordon, "stop placing containers on a host"),
        ("uncordon", _hosts_uncordon, "place containers on a cordoned host again"),
    ):
        add(host_commands, name, handler, text).add_argument("host", metavar="HOST", help="id or address")
    sub = add(host_commands, "drain", _hosts_drain, "cordon a host and stop its containers")
    sub.add_argument("host", metavar="HOST", help="id or address")
    sub.add_argument("--grace", type=_seconds, metavar="SECONDS", help="grace period per container")
    sub = add(host_commands, "rm", _hosts_rm, "forget a host", aliases=["remove"])
    sub.add_argument("host", metavar="HOST", help="id or address")
    sub.add_argument("-f", "--force", action="store_true", help="even with live containers")


def _add_container_commands(commands: Any, add: _Add) -> None:

    sub = add(commands, "run", _run, "create a container and run a command in it")
    _container_create_options(sub)
    _process_options(sub)

    sub = add(commands, "exec", _exec, "run a command in an existing container")
    sub.add_argument("container", metavar="CONTAINER", help="uid or name")
    _process_options(sub)

    sub = add(commands, "ps", _ps, "list processes (running ones unless -a)")
    sub.add_argument("container", nargs="?", metavar="CONTAINER", help="only this container's")
    sub.add_argument("-a", "--all", action="store_true", help="include exited processes")

    containers = commands.add_parser("containers", help="manage containers", description="Manage containers.")
    container_commands = containers.add_subparsers(
        dest="containers_command", metavar="COMMAND", required=True
    )
    for group, name, aliases in ((container_commands, "ls", ["list"]), (commands, "ls", [])):
        sub = add(group, name, _containers_ls, "list containers", aliases=aliases)
        sub.add_argument(
            "--label", "-l", type=_key_value, action="append", default=[], metavar="K=V", help="label filter"
        )
        sub.add_argument("--state", type=_enum_choice(ContainerState), help="only containers in this state")
        sub.add_argument("--host", help="only containers on this host (id or address)")

    sub = add(commands, "inspect", _inspect, "show one container")
    sub.add_argument("container", metavar="CONTAINER", help="uid or name")

    sub = add(commands, "stats", _stats, "show a container's system call counters (kernel module)")
    sub.add_argument("container", metavar="CONTAINER", help="uid or name")
    sub.add_argument("--top", type=_non_negative_int, default=20, metavar="N", help="most called N (20)")

    sub = add(commands, "logs", _logs, "print a process's output")
    sub.add_argument("process", metavar="PROCESS_UID")
    sub.add_argument("-f", "--follow", action="store_true", help="keep printing until the process exits")
    sub.add_argument("--tail", type=_non_negative_int, default=0, metavar="N", help="last N lines per stream")

    sub = add(commands, "wait", _wait, "wait for a process to exit and print its exit status")
    sub.add_argument("process", metavar="PROCESS_UID")
    sub.add_argument(
        "--wait-timeout", type=_seconds, metavar="SECONDS", help="give up after this long (exit status 124)"
    )

    sub = add(commands, "kill", _kill, "send a signal to a process")
    sub.add_argument("process", metavar="PROCESS_UID")
    sub.add_argument(
        "-s",
        "--signal",
        type=_signal_number,
        default=int(_signal.SIGTERM),
        metavar="SIG",
        help="default TERM",
    )

    sub = add(commands, "stop", _stop, "stop a container's processes")
    sub.add_argument("container", metavar="CONTAINER", help="uid or name")
    sub.add_argument("--grace", type=_seconds, metavar="SECONDS", help="before SIGKILL (server default 10)")

    sub = add(commands, "rm", _rm, "delete a container")
    sub.add_argument("container", metavar="CONTAINER", help="uid or name")
    sub.add_argument("-f", "--force", action="store_true", help="kill its processes first")


def _ttl(text: str) -> float:
    """``3600``, ``90s``, ``30m``, ``12h``, ``7d`` or ``2w`` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration like 3600, 12h or 30d, got {text!r}")
    seconds = float(match.group(1)) * _TTL_UNITS[match.group(2)]
    if seconds < 1:
        raise argparse.ArgumentTypeError("must be at least one second")
    return seconds


_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
ROLES = ("admin", "operator", "viewer")


def _add_auth_commands(commands: Any, add: _Add) -> None:
    add(commands, "whoami", _whoami, "show who the controller takes you for (name, role, how)")

    tokens = commands.add_parser(
        "token", help="manage API tokens (admin)", description="Manage API tokens (needs the admin role)."
    )
    token_commands = tokens.add_subparsers(dest="token_command", metavar="COMMAND", required=True)
    sub = add(token_commands, "create", _token_create, "create a token; it is printed only this once")
    sub.add_argument("--name", required=True, help="a name to recognise it by ([A-Za-z0-9._@-], 1-63)")
    sub.add_argument("--role", required=True, choices=ROLES, help="what it may do")
    sub.add_argument("--ttl", type=_ttl, metavar="DURATION", help="lifetime, e.g. 12h or 30d (default: none)")
    sub = add(token_commands, "ls", _token_ls, "list tokens (never their secrets)", aliases=["list"])
    sub.add_argument("-a", "--all", action="store_true", help="include revoked and expired tokens")
    sub = add(token_commands, "revoke", _token_revoke, "revoke tokens by id")
    sub.add_argument("ids", nargs="+", metavar="ID", help="token id (12 hex digits)")

    audit = commands.add_parser(
        "audit", help="read the audit log (admin)", description="Read the audit log (needs the admin role)."
    )
    audit_commands = audit.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)
    sub = add(audit_commands, "ls", _audit_ls, "list audited calls, newest first", aliases=["list"])
    sub.add_argument(
        "--principal", metavar="WHO", help="only this principal: cert:NAME, token:NAME or token:NAME/ID"
    )
    sub.add_argument(
        "--limit", type=_non_negative_int, default=100, metavar="N", help="at most N entries (100; 0: all)"
    )


def _add_context_commands(commands: Any, add_local: Callable[..., argparse.ArgumentParser]) -> None:
    contexts = commands.add_parser(
        "context",
        help="manage contexts of the config file",
        description=(
            "Manage the contexts of the config file (~/.config/chital/config.toml, or $CHITAL_CONFIG): "
            "named sets of controller address, TLS files and token. Flags and CHITAL_* variables "
            "override the context's settings."
        ),
    )
    context_commands = contexts.add_subparsers(dest="context_command", metavar="COMMAND", required=True)
    add_local(context_commands, "ls", _context_ls, "list contexts (* marks the current)", aliases=["list"])
    sub = add_local(context_commands, "use", _context_use, "make a context the current one")
    sub.add_argument("name", metavar="NAME")
    sub = add_local(
        context_commands,
        "set",
        _context_set,
        "create or update a context (an empty value removes a setting; the first context becomes current)",
    )
    sub.add_argument("name", metavar="NAME")
    sub.add_argument(
        "--controller",
        dest="set_controllers",
        action="append",
        metavar="HOST:PORT",
        help="controller address (repeatable: the first is dialled)",
    )
    sub.add_argument(
        "--tls-dir", dest="set_tls_dir", metavar="DIR", help="directory with ca.crt (tls.crt, tls.key)"
    )
    sub.add_argument("--ca", dest="set_ca", metavar="FILE", help="CA certificate")
    sub.add_argument("--cert", dest="set_cert", metavar="FILE", help="client certificate")
    sub.add_argument("--key", dest="set_key", metavar="FILE", help="client key")
    tokens = sub.add_mutually_exclusive_group()
    tokens.add_argument(
        "--token",
        dest="set_token",
        metavar="TOKEN",
        help='bearer token, stored in the file ("-": read stdin)',
    )
    tokens.add_argument("--token-file", dest="set_token_file", metavar="FILE", help="file holding the token")
    sub.add_argument(
        "--insecure",
        dest="set_insecure",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="plaintext, to a controller on loopback only",
    )
    sub.add_argument("--use", action="store_true", help="make it the current context")
    sub = add_local(context_commands, "rm", _context_rm, "remove contexts", aliases=["remove"])
    sub.add_argument("names", nargs="+", metavar="NAME")


# -- main ----------------------------------------------------------------------------------------


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
    print(f"chital: error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_ERROR


def _connection(args: argparse.Namespace) -> cfg.Connection:
    """Where and how to connect: the flags, else the environment, else the context."""
    overrides = cfg.Overrides(
        target=args.controller,
        context=args.context,
        token=args.token,
        token_file=args.token_file,
        tls_dir=args.tls_dir,
        ca=args.ca,
        cert=args.cert,
        key=args.key,
        insecure=args.insecure,
    )
    connection = cfg.resolve(overrides, config=cfg.Config.load(args.config))
    _warn_if_readable(connection.token_path)
    return connection


def _warn_if_readable(path: Path | None) -> None:
    """Like ssh with a private key: say so when the token sits in a file that others may read."""
    try:
        loose = path is not None and path.stat().st_mode & 0o077
    except OSError:
        return
    if loose:
        print(
            f"chital: warning: {path} holds a token and others may read it (chmod 600 {path})",
            file=sys.stderr,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``chital`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed.
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        local: _LocalHandler | None = getattr(args, "local_handler", None)
        if local is not None:
            try:
                return local(args)
            except (cfg.ConfigError, OSError) as exc:
                return _fail(str(exc))
        return _call(args)
    except KeyboardInterrupt:
        print("chital: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``chital ps | head``): stop quietly, as other Unix tools do.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 128 + int(_signal.SIGPIPE)


def _call(args: argparse.Namespace) -> int:
    """Run a command that calls the controller."""
    handler: _Handler = args.handler
    try:
        connection = _connection(args)
        if connection.insecure and not is_loopback(connection.target):
            return _fail(
                f"plaintext ({connection.sources['insecure']}) is only for a controller on loopback, "
                f"not {connection.target}: a token would cross the network unencrypted"
            )
        client = Client(
            connection.target,
            tls=connection.tls,
            token=connection.token,
            insecure=connection.insecure,
            timeout=args.timeout,
            retries=CLI_RETRIES,
        )
    except ValueError as exc:  # cfg.ConfigError, and the client's checks of its settings.
        return _fail(str(exc))
    except ChitalError as exc:  # the TLS files cannot be read
        return _fail(_error_line(exc, None))
    try:
        with client:
            return handler(client, args)
    except (ChitalError, _ProcessLostError) as exc:
        return _fail(_error_line(exc, connection))
