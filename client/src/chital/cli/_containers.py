"""The container and process commands: run, exec, ps, ls, inspect, stats, top, logs, events, wait,
kill, stop, rm."""

from __future__ import annotations

import datetime as _dt
import json
import shlex
import signal as _signal
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import click
from rich.console import Group as RichGroup
from rich.live import Live
from rich.text import Text

from chital.client import (
    ChitalError,
    Client,
    Container,
    ContainerState,
    ContainerStats,
    EventType,
    Limits,
    LogStream,
    NotFound,
    OutOfRange,
    Process,
    ProcessState,
    Sandbox,
    WatchEvent,
)

from . import _complete as complete
from . import _output as out
from . import _params as params
from . import _resolve as resolve
from ._root import Group, cli, state

EXIT_OK = 0
EXIT_TIMEOUT = 124


class ProcessLostError(Exception):
    """The process we were attached to ended without an exit status (its host was lost)."""


# -- helpers -------------------------------------------------------------------------------------


def write_output(stream: Any, data: bytes) -> None:
    """Write process output bytes as they are, even when the text stream has no binary buffer."""
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        stream.write(data.decode("utf-8", "replace"))
        stream.flush()
        return
    stream.flush()
    buffer.write(data)
    buffer.flush()


def _note(message: str) -> None:
    click.echo(f"chital: {message}", err=True)


def show(value: Any, headers: Sequence[str] = (), rows: Sequence[Sequence[str]] = ()) -> None:
    """``value`` as JSON or YAML with ``-o json|yaml``, else the table ``headers`` + ``rows`` (or
    ``Key: value`` lines when no headers are given)."""
    st = state()
    if st.structured:
        out.print_data(value, st.output)
    elif headers:
        out.print_table(headers, rows)
    else:
        out.print_fields(value)


def show_containers(containers: Sequence[Container]) -> None:
    wide = state().wide
    headers = out.CONTAINER_WIDE_HEADERS if wide else out.CONTAINER_HEADERS
    show(list(containers), headers, [out.container_row(c, wide=wide) for c in containers])


def show_processes(processes: Sequence[Process], names: dict[str, str]) -> None:
    wide = state().wide
    headers = out.PROCESS_WIDE_HEADERS if wide else out.PROCESS_HEADERS
    rows = [out.process_row(p, names.get(p.container_uid, ""), wide=wide) for p in processes]
    show(list(processes), headers, rows)


def container_names(client: Client) -> dict[str, str]:
    """Container uid -> name, of the containers the controller lists (not the deleted ones)."""
    return {c.uid: c.name for c in client.list_containers()}


def _strip_dashes(command: tuple[str, ...]) -> tuple[str, ...]:
    """After a positional argument, click leaves a ``--`` in the command: drop it."""
    command = command[1:] if command[:1] == ("--",) else command
    if not command:
        raise click.UsageError("a command to run is required (after --)")
    return command


def _attach(client: Client, process: Process, *, detach_note: bool = True) -> int:
    """Copy a process's output to ours until it exits; return its exit status."""
    try:
        for chunk in client.stream_logs(process.uid, follow=True):
            write_output(sys.stderr if chunk.stream is LogStream.STDERR else sys.stdout, chunk.data)
        final = client.wait_process(process.uid)
    except KeyboardInterrupt:
        if detach_note:
            # Detaching is all Ctrl-C does here: the process is the controller's, not ours.
            _note(f"detached; process {process.uid} keeps running (chital kill {process.uid})")
        raise
    if final.state is not ProcessState.EXITED:
        detail = f": {final.message}" if final.message else ""
        raise ProcessLostError(f"process {final.uid} is {final.state.value.lower()}{detail}")
    return final.shell_exit_status


def process_options(func: Any) -> Any:
    """``-e``, ``--cwd``, ``-u``, ``-d`` (in this order in ``--help``)."""
    for decorator in reversed(
        [
            click.option(
                "-e", "--env", "env", type=params.ENV_ITEM, multiple=True, help="environment (repeatable)"
            ),
            click.option("--cwd", default="", metavar="DIR", help="working directory in the container"),
            click.option(
                "-u",
                "--user",
                type=params.USER,
                default=None,
                help="numeric user (and group) id (default 65534:65534; 0 is root without capabilities)",
            ),
            click.option(
                "-d", "--detach", is_flag=True, help="print the process and return instead of waiting"
            ),
        ]
    ):
        func = decorator(func)
    return func


def _exec_kwargs(env: tuple[tuple[str, str], ...], cwd: str, user: tuple[int, int] | None) -> dict[str, Any]:
    return {
        "env": dict(env),
        "cwd": cwd,
        "user_id": user[0] if user else None,
        "group_id": user[1] if user else None,
    }


# -- run, exec -----------------------------------------------------------------------------------

_NOT_OPTIONS = {"allow_interspersed_args": False}


@cli.command("run", context_settings=_NOT_OPTIONS)
@click.option("--name", metavar="NAME", help="container name (default: run-<random>)")
@click.option("-l", "--label", "labels", type=params.KEY_VALUE, multiple=True, help="label (repeatable)")
@click.option("--memory", type=params.SIZE, default=0, help="memory limit, e.g. 256M")
@click.option("--pids", type=params.COUNT, default=0, help="most processes")
@click.option("--cpus", type=params.CPUS, default=0, help="CPU quota, e.g. 0.5")
@click.option("--root", default="", metavar="DIR", help="root directory on the host")
@click.option(
    "--deny",
    multiple=True,
    metavar="SYSCALL,...",
    help="system calls to deny in addition to the host's default list (repeatable)",
)
@click.option(
    "--allow",
    multiple=True,
    metavar="SYSCALL,...",
    help="system calls to remove from the host's default deny list (repeatable; admin only)",
)
@click.option(
    "--allow-raw-sockets",
    is_flag=True,
    help="allow AF_PACKET and SOCK_RAW sockets (denied by default; admin only)",
)
@click.option(
    "--cap-add",
    multiple=True,
    metavar="CAP,...",
    help="capability the processes keep, e.g. NET_BIND_SERVICE (repeatable; none by default; admin only)",
)
@click.option(
    "--network",
    type=click.Choice(("private", "host")),
    default="private",
    help="private: own loopback only (default); host: the host's network (admin only, trusted workloads)",
)
@click.option(
    "--host",
    default="",
    metavar="HOST",
    help="place on this host (id, id prefix or address)",
    shell_complete=complete.hosts,
)
@click.option("--rm", is_flag=True, help="delete the container when the process exits (and on Ctrl-C)")
@click.option(
    "--grace",
    type=params.SECONDS,
    default=None,
    help="with --rm, on Ctrl-C: seconds between SIGTERM and SIGKILL (server default 10)",
)
@process_options
@click.argument("command", nargs=-1, required=True, metavar="[--] CMD...")
def run_command(
    *,
    name: str | None,
    labels: tuple[tuple[str, str], ...],
    memory: int,
    pids: int,
    cpus: int,
    root: str,
    deny: tuple[str, ...],
    allow: tuple[str, ...],
    allow_raw_sockets: bool,
    cap_add: tuple[str, ...],
    network: str,
    host: str,
    rm: bool,
    grace: float | None,
    env: tuple[tuple[str, str], ...],
    cwd: str,
    user: tuple[int, int] | None,
    detach: bool,
    command: tuple[str, ...],
) -> int:
    """Create a container and run a command in it.

    Without -d, the command's output is copied to ours and its exit status is ours (128+signal if
    it was killed). Ctrl-C detaches, and the process keeps running; with --rm, Ctrl-C stops it
    (SIGTERM, SIGKILL after --grace) and deletes the container.
    """
    command = _strip_dashes(command)
    client = state().client()
    sandbox = Sandbox(
        allow_syscalls=params.names(allow),
        allow_raw_sockets=allow_raw_sockets,
        capabilities=tuple(
            c.upper() if c.upper().startswith("CAP_") else f"CAP_{c.upper()}" for c in params.names(cap_add)
        ),
        host_network=network == "host",
    )
    name = name or f"run-{uuid.uuid4().hex[:8]}"
    with out.progress(f"creating container {name}") as progress:
        container = client.create_container(
            name,
            labels=dict(labels),
            limits=Limits(memory_max_bytes=memory, pids_max=pids, cpu_max_millicores=cpus),
            root=root,
            deny_syscalls=params.names(deny),
            host=resolve.host(client, host) if host else "",
            sandbox=sandbox,
        )
        where = f" on {container.host_address}" if container.host_address else ""
        progress.update(f"starting {shlex.join(command)} in {container.name}{where}")
        try:
            process = client.exec(container.uid, command, **_exec_kwargs(env, cwd, user))
        except ChitalError:
            if rm:
                client.delete_container(container.uid, force=True)
            raise
        except KeyboardInterrupt:
            if rm:  # the process may have started: delete with force, which kills it
                _note(f"interrupted while starting: deleting container {container.name}")
                client.delete_container(container.uid, force=True)
            else:
                _note(f"interrupted while starting; container {container.name} is left ({container.uid})")
            raise
    if detach:
        show(
            {"container": container, "process": process},
            ("CONTAINER", "CONTAINER UID", "PROCESS UID"),
            [[container.name, container.uid, process.uid]],
        )
        return EXIT_OK
    if not rm:
        return _attach(client, process)
    try:
        code = _attach(client, process, detach_note=False)
    except KeyboardInterrupt:
        _stop_and_delete(client, container, process, grace)
        raise
    except BaseException:
        client.delete_container(container.uid, force=True)
        raise
    client.delete_container(container.uid, force=True)
    return code


def _stop_and_delete(client: Client, container: Container, process: Process, grace: float | None) -> None:
    """``run --rm`` interrupted: stop the process (SIGTERM, then SIGKILL after the grace period),
    delete the container, and say what happened. A second Ctrl-C leaves the container behind."""
    after = f"{grace:g} s" if grace is not None else "the server's grace period"
    _note(f"interrupted: stopping process {process.uid} (SIGTERM, then SIGKILL after {after})")
    try:
        with out.progress(f"stopping {container.name}"):
            client.stop_container(container.uid, grace=grace)
        final = client.get_process(process.uid)
        if final.state is ProcessState.EXITED:
            how = f"ended ({out.exit_text(final)})"
        else:
            how = f"was still {final.state.value.lower()}, killed with the container"
        with out.progress(f"deleting {container.name}"):
            client.delete_container(container.uid, force=True)
    except KeyboardInterrupt:
        _note(f"left container {container.name} behind: chital rm -f {container.uid}")
        raise
    except ChitalError as exc:
        _note(f"could not clean up container {container.name} ({exc}): chital rm -f {container.uid}")
        return
    _note(f"process {process.uid} {how}; deleted container {container.name}")


@cli.command("exec", context_settings=_NOT_OPTIONS)
@process_options
@click.argument("container", shell_complete=complete.containers)
@click.argument("command", nargs=-1, required=True, metavar="[--] CMD...")
def exec_command(
    *,
    env: tuple[tuple[str, str], ...],
    cwd: str,
    user: tuple[int, int] | None,
    detach: bool,
    container: str,
    command: tuple[str, ...],
) -> int:
    """Run a command in an existing container.

    CONTAINER is a name, a uid or a unique uid prefix.

    Without -d, the output is copied to ours and the exit status is the command's. Ctrl-C
    detaches; the process keeps running.
    """
    command = _strip_dashes(command)
    client = state().client()
    target = resolve.container(client, container)
    with out.progress(f"starting {shlex.join(command)} in {container}"):
        process = client.exec(target, command, **_exec_kwargs(env, cwd, user))
    if detach:
        if state().structured:
            out.print_data(process, state().output)
        else:
            show_processes(
                [process], {process.container_uid: client.get_container(process.container_uid).name}
            )
        return EXIT_OK
    return _attach(client, process)


# -- listing and inspecting ----------------------------------------------------------------------


@cli.command("ps")
@click.argument("container", required=False, shell_complete=complete.containers)
@click.option("-a", "--all", "show_all", is_flag=True, help="include exited processes")
def ps_command(container: str | None, show_all: bool) -> int:
    """List processes (running ones unless -a).

    All containers' processes, or CONTAINER's; with the container's name.
    """
    client = state().client()
    if container:
        target = resolve.container(client, container)
        owner = client.get_container(target)
        names = {owner.uid: owner.name}
        listed: Iterable[Process] = client.list_processes(owner.uid)
    else:
        listed = client.list_processes("")
        names = {}
    processes = [p for p in listed if show_all or p.state in (ProcessState.STARTING, ProcessState.RUNNING)]
    if not container and processes and not state().structured:
        names = container_names(client)
    show_processes(processes, names)
    return EXIT_OK


def _ls_options(func: Any) -> Any:
    func = click.option(
        "--host",
        default="",
        metavar="HOST",
        help="only containers on this host (id, id prefix or address)",
        shell_complete=complete.hosts,
    )(func)
    func = click.option(
        "--state",
        "state_",
        type=params.Parsed(params.enum_member(ContainerState), "STATE"),
        help="only containers in this state",
    )(func)
    return click.option("-l", "--label", "labels", type=params.KEY_VALUE, multiple=True, help="label filter")(
        func
    )


def _containers_ls(labels: tuple[tuple[str, str], ...], state_: ContainerState | None, host: str) -> int:
    client = state().client()
    containers = client.list_containers(
        label_selector=",".join(f"{k}={v}" for k, v in labels) or None,
        state=state_,
        host=resolve.host(client, host) if host else "",
    )
    show_containers(list(containers))
    return EXIT_OK


@cli.command("ls")
@_ls_options
def ls_command(labels: tuple[tuple[str, str], ...], state_: ContainerState | None, host: str) -> int:
    """List containers.

    All but the deleted ones, unless --state deleted.
    """
    return _containers_ls(labels, state_, host)


@cli.group("containers", cls=Group)
def containers_group() -> None:
    """List containers (containers ls).

    The other container commands are at the top level: run, exec, inspect, stop, rm, ...
    """


@containers_group.command("ls")
@_ls_options
def containers_ls_command(
    labels: tuple[tuple[str, str], ...], state_: ContainerState | None, host: str
) -> int:
    """List containers.

    All but the deleted ones, unless --state deleted.
    """
    return _containers_ls(labels, state_, host)


@cli.command("inspect")
@click.argument("container", shell_complete=complete.containers)
def inspect_command(container: str) -> int:
    """Show one container (every field)."""
    client = state().client()
    show(client.get_container(resolve.container(client, container)))
    return EXIT_OK


@cli.command("stats")
@click.argument("container", shell_complete=complete.containers)
@click.option("--top", "top_n", type=params.COUNT, default=20, help="most called N (20)")
def stats_command(container: str, top_n: int) -> int:
    """Show a container's system call counters.

    The counters come from the kernel module; also the resource use.
    """
    client = state().client()
    stats = client.get_container_stats(resolve.container(client, container))
    if state().structured:
        out.print_data(stats, state().output)
        return EXIT_OK
    if not stats.sandboxed:
        _note("note: this host runs without the kernel module; no system call is counted")
    rows = [[s.name, str(s.number), str(s.calls), str(s.denied)] for s in stats.syscalls[:top_n]]
    out.print_table(["SYSCALL", "NR", "CALLS", "DENIED"], rows)
    print(
        f"\ntotal {stats.syscalls_total} calls, {stats.denied_total} denied; {stats.members} member(s); "
        f"memory {stats.memory_current_bytes} bytes, pids {stats.pids_current}, "
        f"cpu {stats.cpu_usage_usec} us, oom kills {stats.oom_kills}"
    )
    return EXIT_OK


# -- top -----------------------------------------------------------------------------------------


def _bytes_text(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError


def top_view(
    container: Container, stats: ContainerStats, previous: ContainerStats | None, elapsed: float, limit: int
) -> tuple[list[str], list[str], list[list[str]]]:
    """(summary lines, headers, rows) of one ``top`` frame; rates need ``previous``."""
    memory = _bytes_text(stats.memory_current_bytes)
    if container.limits.memory_max_bytes:
        memory += f" / {_bytes_text(container.limits.memory_max_bytes)}"
    pids = str(stats.pids_current) + (f" / {container.limits.pids_max}" if container.limits.pids_max else "")
    cpu = f"{stats.cpu_usage_usec / 1e6:.2f} s"
    if previous is not None and elapsed > 0:
        share = (stats.cpu_usage_usec - previous.cpu_usage_usec) / 1e6 / elapsed * 100
        cpu += f" ({share:.1f}% of a CPU)"
    host = container.host_address or container.host_id or "-"
    summary = [
        f"{container.name}  {container.uid}  {container.state.value}  on {host}",
        f"memory {memory}   pids {pids}   cpu {cpu}   members {stats.members}   oom kills {stats.oom_kills}",
        f"system calls {stats.syscalls_total} ({stats.denied_total} denied)"
        + ("" if stats.sandboxed else "   (no kernel module on this host: no system call is counted)"),
    ]
    before = {s.number: s for s in previous.syscalls} if previous is not None else {}
    headers = ["SYSCALL", "NR", "CALLS", "DENIED"] + (["CALLS/S", "DENIED/S"] if previous is not None else [])
    rows = []
    ranked = (
        sorted(
            stats.syscalls,
            key=lambda s: (s.calls - before[s.number].calls if s.number in before else s.calls, s.calls),
            reverse=True,
        )
        if previous is not None
        else list(stats.syscalls)
    )
    for s in ranked[:limit]:
        row = [s.name, str(s.number), str(s.calls), str(s.denied)]
        if previous is not None:
            old = before.get(s.number)
            rate = (s.calls - (old.calls if old else 0)) / elapsed if elapsed > 0 else 0.0
            denied = (s.denied - (old.denied if old else 0)) / elapsed if elapsed > 0 else 0.0
            row += [f"{rate:.1f}", f"{denied:.1f}"]
        rows.append(row)
    return summary, headers, rows


@cli.command("top")
@click.argument("container", shell_complete=complete.containers)
@click.option("-n", "--syscalls", "limit", type=params.COUNT, default=15, help="system calls shown (15)")
@click.option("--interval", type=params.POSITIVE_SECONDS, default=2.0, help="seconds between refreshes (2)")
@click.option("--once", is_flag=True, help="print one snapshot and exit (the default off a terminal)")
def top_command(container: str, limit: int, interval: float, once: bool) -> int:
    """Live view of a container's system calls and resources.

    On a terminal, refreshes every --interval seconds until Ctrl-C, ranking system calls by their
    rate; elsewhere (or with --once, or -o json|yaml) prints one snapshot.
    """
    client = state().client()
    target = resolve.container(client, container)
    record = client.get_container(target)
    stats = client.get_container_stats(record.uid)
    if state().structured:
        out.print_data({"container": record, "stats": stats}, state().output)
        return EXIT_OK
    if once or not out.is_tty():
        summary, headers, rows = top_view(record, stats, None, 0.0, limit)
        for line in summary:
            print(line)
        print()
        out.print_table(headers, rows)
        return EXIT_OK

    def frame(previous: ContainerStats | None, current: ContainerStats, elapsed: float) -> Any:
        summary, headers, rows = top_view(record, current, previous, elapsed, limit)
        lines = [Text(summary[0], style=out.style("bold")), *(Text(line) for line in summary[1:]), Text("")]
        footer = Text(f"every {interval:g} s; Ctrl-C to quit", style=out.style("dim"))
        return RichGroup(*lines, out.render_table(headers, rows), footer)

    previous, taken = stats, time.monotonic()
    with Live(frame(None, stats, 0.0), console=out.console(), auto_refresh=False, screen=False) as live:
        while True:
            time.sleep(interval)
            record = client.get_container(record.uid)
            current = client.get_container_stats(record.uid)
            now = time.monotonic()
            live.update(frame(previous, current, now - taken), refresh=True)
            previous, taken = current, now


# -- logs ----------------------------------------------------------------------------------------


class _Prefixer:
    """Lines of several processes' output, each prefixed with its process, written whole."""

    def __init__(self, width: int) -> None:
        self._lock = threading.Lock()
        self.width = width

    def write(self, prefix: str, stream: LogStream, data: bytes) -> None:
        target = sys.stderr if stream is LogStream.STDERR else sys.stdout
        text = data.decode("utf-8", "replace")
        with self._lock:
            for line in text.splitlines(keepends=True):
                target.write(f"{prefix.ljust(self.width)} | {line}")
            if text and not text.endswith("\n"):
                target.write("\n")
            target.flush()


def _follow_all(
    client: Client, processes: Sequence[Process], prefixes: dict[str, str], *, follow: bool, tail: int
) -> None:
    writer = _Prefixer(max(len(p) for p in prefixes.values()))
    errors: list[BaseException] = []

    def copy(process: Process) -> None:
        pending: dict[LogStream, bytes] = {}
        try:
            for chunk in client.stream_logs(process.uid, follow=follow, tail=tail):
                # Whole lines only, so that lines of different processes do not mix.
                data = pending.pop(chunk.stream, b"") + chunk.data
                head, sep, rest = data.rpartition(b"\n")
                if sep:
                    writer.write(prefixes[process.uid], chunk.stream, head + sep)
                if rest:
                    pending[chunk.stream] = rest
            for stream, rest in pending.items():
                writer.write(prefixes[process.uid], stream, rest)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    if not follow:  # one after the other, in order: the output is all there already
        for process in processes:
            copy(process)
            if errors:
                raise errors[0]
        return
    threads = [threading.Thread(target=copy, args=(p,), daemon=True) for p in processes]
    for thread in threads:
        thread.start()
    # Until every stream ends; the first error ends the command (the other streams are daemons).
    while any(thread.is_alive() for thread in threads) and not errors:
        time.sleep(0.1)
    if errors:
        raise errors[0]


@cli.command("logs")
@click.argument("target", metavar="PROCESS|CONTAINER", shell_complete=complete.processes_and_containers)
@click.option("-f", "--follow", is_flag=True, help="keep printing until the process(es) exit")
@click.option("--tail", type=params.COUNT, default=0, help="last N lines per stream (0: all)")
@click.option(
    "-a",
    "--all",
    "show_all",
    is_flag=True,
    help="a container's exited processes too (default: only when none runs)",
)
def logs_command(target: str, follow: bool, tail: int, show_all: bool) -> int:
    """Print the output of a process or a container.

    PROCESS|CONTAINER is a process uid, a container name or uid, or a unique prefix of either uid. A container
    with one process prints its output as it is; with several, every line is prefixed with its
    process (short uid and command). The container's running processes are shown (all of them, if
    none runs, or with -a).
    """
    client = state().client()
    kind, ref = resolve.process_or_container(client, target)
    if kind == "process":
        for chunk in client.stream_logs(ref, follow=follow, tail=tail):
            write_output(sys.stderr if chunk.stream is LogStream.STDERR else sys.stdout, chunk.data)
        return EXIT_OK
    processes = list(client.list_processes(ref))
    running = [p for p in processes if p.state in (ProcessState.STARTING, ProcessState.RUNNING)]
    chosen = processes if show_all or not running else running
    if not chosen:
        _note(f"container {target} has no process")
        return EXIT_OK
    if len(chosen) == 1:
        for chunk in client.stream_logs(chosen[0].uid, follow=follow, tail=tail):
            write_output(sys.stderr if chunk.stream is LogStream.STDERR else sys.stdout, chunk.data)
        return EXIT_OK
    uids = [p.uid for p in chosen]
    prefixes = {
        p.uid: f"{resolve.short(p.uid, uids, 8)} {p.argv[0] if p.argv else ''}".rstrip() for p in chosen
    }
    _follow_all(client, chosen, prefixes, follow=follow, tail=tail)
    return EXIT_OK


# -- events --------------------------------------------------------------------------------------

EVENT_HEADERS = ("TIME", "REVISION", "KIND", "CONTAINER", "PROCESS", "STATE", "HOST", "DETAIL")
_KINDS = {"container": EventType.CONTAINER_CHANGED, "process": EventType.PROCESS_CHANGED}


def _event_row(event: WatchEvent, names: dict[str, str], hosts: dict[str, str]) -> list[str]:
    when = event.time.astimezone(_dt.UTC).strftime("%H:%M:%S") if event.time else "-"
    if event.container is not None:
        c = event.container
        return [
            when,
            str(event.revision),
            "container",
            c.name,
            "-",
            c.state.value,
            c.host_address or c.host_id or "-",
            " ".join(c.message.split()) or "-",
        ]
    p = event.process
    if p is None:
        return [when, str(event.revision), event.type.value.lower(), "-", "-", "-", "-", "-"]
    detail = shlex.join(p.argv)
    if p.state is ProcessState.EXITED:
        detail = f"exit {out.exit_text(p)}: {detail}"
    elif p.message:
        detail = f"{' '.join(p.message.split())}: {detail}"
    return [
        when,
        str(event.revision),
        "process",
        names.get(p.container_uid, p.container_uid),
        p.uid,
        p.state.value,
        hosts.get(p.container_uid, "-"),
        detail,
    ]


@cli.command("events")
@click.option(
    "--kind",
    "kinds",
    type=click.Choice(tuple(_KINDS)),
    multiple=True,
    help="only events of this kind (repeatable)",
)
@click.option(
    "--container",
    default="",
    metavar="CONTAINER",
    help="only this container's events (name, uid or uid prefix)",
    shell_complete=complete.containers,
)
@click.option(
    "--host",
    default="",
    metavar="HOST",
    help="only events of containers on this host (id, id prefix or address)",
    shell_complete=complete.hosts,
)
@click.option(
    "--since",
    type=params.COUNT,
    default=0,
    metavar="REVISION",
    help="replay events after this revision first (0: live events only)",
)
@click.option("-n", "--count", type=params.COUNT, default=0, help="exit after N events (0: run until Ctrl-C)")
def events_command(*, kinds: tuple[str, ...], container: str, host: str, since: int, count: int) -> int:
    """Print container and process events as they happen.

    The controller's Watch stream, one line per event; with -o json or -o yaml, one JSON object
    per line or one YAML document per event. Ctrl-C ends it (exit status 130), as does reaching
    --count.
    """
    client = state().client()
    ref = resolve.container(client, container) if container else ""
    host_keys: set[str] = set()
    if host:
        h = client.get_host(resolve.host(client, host))
        host_keys = {h.id, h.address}
    wanted = {_KINDS[k] for k in kinds}
    names: dict[str, str] = {}
    hosts: dict[str, str] = {}
    host_ids: dict[str, str] = {}

    def learn(uid: str) -> None:
        if uid in names:
            return
        try:
            c = client.get_container(uid)
        except NotFound:
            names[uid], hosts[uid], host_ids[uid] = uid, "-", ""
            return
        names[uid], hosts[uid], host_ids[uid] = c.name, c.host_address or c.host_id or "-", c.host_id

    st = state()
    table_started = False
    seen = 0
    for event in _watch_events(client, since, ref):
        if wanted and event.type not in wanted:
            continue
        if event.container is not None:
            c = event.container
            names[c.uid], hosts[c.uid], host_ids[c.uid] = (
                c.name,
                c.host_address or c.host_id or "-",
                c.host_id,
            )
            on = {c.host_id, c.host_address}
        elif event.process is not None:
            learn(event.process.container_uid)
            on = {host_ids.get(event.process.container_uid, ""), hosts.get(event.process.container_uid, "")}
        else:
            on = set()
        if host_keys and not (host_keys & on):
            continue
        if st.output == "json":
            print(json.dumps(out.jsonable(event)), flush=True)
        elif st.output == "yaml":
            print("---", flush=True)
            out.print_yaml(event)
            sys.stdout.flush()
        else:
            row = _event_row(event, names, hosts)
            if not table_started:
                table_started = True
                # A stream: the columns cannot be measured ahead, so they are fixed.
                print(_event_line(list(EVENT_HEADERS)))
            print(_event_line(row), flush=True)
        seen += 1
        if count and seen >= count:
            break
    return EXIT_OK


def _watch_events(client: Client, since: int, ref: str) -> Iterator[WatchEvent]:
    """The watch, with a compacted --since explained in CLI terms."""
    try:
        yield from client.watch(since_revision=since, container=ref)
    except OutOfRange as exc:
        hint = (
            f"--since {exc.compact_revision} continues from the oldest event kept (the ones between are lost)"
            if exc.compact_revision
            else "a newer --since continues from the oldest event kept"
        )
        raise OutOfRange(
            f"{exc}. The controller keeps events for its event_retention; {hint}; chital ps shows the "
            "current state",
            exc.compact_revision,
        ) from exc


_EVENT_WIDTHS = (8, 8, 9, 20, 32, 9, 21)


def _event_line(cells: list[str]) -> str:
    fixed = [cell.ljust(width) for cell, width in zip(cells, _EVENT_WIDTHS, strict=False)]
    return "  ".join([*fixed, *cells[len(_EVENT_WIDTHS) :]]).rstrip()


# -- wait, kill, stop, rm ------------------------------------------------------------------------


@cli.command("wait")
@click.argument("process", metavar="PROCESS", shell_complete=complete.processes)
@click.option(
    "--wait-timeout", type=params.SECONDS, default=None, help="give up after this long (exit status 124)"
)
def wait_command(process: str, wait_timeout: float | None) -> int:
    """Wait for a process to exit; print its exit status."""
    client = state().client()
    uid = resolve.process(client, process)
    with out.progress(f"waiting for process {uid}"):
        final = client.wait_process(uid, timeout=wait_timeout)
    if state().structured:
        out.print_data(final, state().output)
    elif final.state is ProcessState.EXITED:
        print(final.shell_exit_status)
    if final.state is ProcessState.EXITED:
        return EXIT_OK
    if final.state is ProcessState.LOST:
        raise ProcessLostError(
            f"process {final.uid} is lost" + (f": {final.message}" if final.message else "")
        )
    _note(f"process {final.uid} still {final.state.value.lower()}")
    return EXIT_TIMEOUT


@cli.command("kill")
@click.argument("process", metavar="PROCESS", shell_complete=complete.processes)
@click.option(
    "-s", "--signal", "signal_", type=params.SIGNAL, default=int(_signal.SIGTERM), help="default TERM"
)
def kill_command(process: str, signal_: int) -> int:
    """Send a signal to a process (default TERM)."""
    client = state().client()
    result = client.signal_process(resolve.process(client, process), signal_)
    if state().structured:
        out.print_data(result, state().output)
    else:
        print(result.uid)
    return EXIT_OK


@cli.command("stop")
@click.argument("container", shell_complete=complete.containers)
@click.option("--grace", type=params.SECONDS, default=None, help="seconds before SIGKILL (server default 10)")
def stop_command(container: str, grace: float | None) -> int:
    """Stop a container's processes.

    SIGTERM to each, then SIGKILL after the grace period.
    """
    client = state().client()
    target = resolve.container(client, container)
    after = "the grace period" if grace is None else f"{grace:g} s"
    with out.progress(f"stopping {container} (SIGTERM, SIGKILL after {after})"):
        result = client.stop_container(target, grace=grace)
    if state().structured:
        out.print_data(result, state().output)
    else:
        show_containers([result])
    return EXIT_OK


@cli.command("rm")
@click.argument(
    "containers", nargs=-1, required=True, metavar="CONTAINER...", shell_complete=complete.containers
)
@click.option("-f", "--force", is_flag=True, help="kill its processes first")
@click.option("--wait", "wait_", is_flag=True, help="wait until the controller lists it as deleted")
def rm_command(containers: tuple[str, ...], force: bool, wait_: bool) -> int:
    """Delete containers (stopped ones unless -f)."""
    client = state().client()
    for container in containers:
        target = resolve.container(client, container)
        with out.progress(f"deleting {container}") as progress:
            result = client.delete_container(target, force=force)
            if wait_:
                progress.update(f"waiting until {container} is deleted")
                result = _wait_deleted(client, result)
        if state().structured:
            out.print_data(result, state().output)
        else:
            print(result.name or result.uid)
    return EXIT_OK


def _wait_deleted(client: Client, container: Container) -> Container:
    delay = 0.05
    while container.state is not ContainerState.DELETED:
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
        try:
            container = client.get_container(container.uid)
        except NotFound:
            break
    return container
