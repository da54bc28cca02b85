"""``chital rollout start|ls|get|watch|cancel``: the controller's Ansible rollouts.

``start`` and ``watch`` follow the rollout until it ends. On a terminal they draw a live view on
stderr (per host: status, current task, ok/changed/failed counts; an overall bar of the hosts that
are done) and print the final host table on stdout. Off a terminal they print one plain line per
event. With ``-o json`` they print the event stream as JSON Lines (one event object per line, the
SDK's RolloutEvent) on stdout, for scripts; ``-o yaml`` prints the final rollout.

Exit status: 0 when the rollout SUCCEEDED, 1 when it ended otherwise (FAILED, CANCELLED,
INTERRUPTED) or on an error, 130 on Ctrl-C (the rollout keeps running: cancel it with
``chital rollout cancel``).
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import click
from rich.console import Group as RichGroup
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from chital.client import (
    Client,
    Rollout,
    RolloutEvent,
    RolloutEventType,
    RolloutHost,
    RolloutHostStatus,
    RolloutState,
)

from . import _output as out
from . import _params as params
from . import _resolve as resolve
from ._containers import show
from ._root import Group, cli, state

EXIT_OK = 0
EXIT_NOT_SUCCEEDED = 1

HOST_HEADERS = ("HOST", "STATUS", "TASK", "OK", "CHANGED", "FAILED", "UNREACHABLE", "SKIPPED", "MESSAGE")
ROLLOUT_HEADERS = ("ID", "PLAYBOOK", "STATE", "HOSTS", "FAILED", "AGE", "MESSAGE")
_DONE = (
    RolloutHostStatus.SUCCEEDED,
    RolloutHostStatus.FAILED,
    RolloutHostStatus.UNREACHABLE,
    RolloutHostStatus.SKIPPED,
)


@cli.group("rollout", cls=Group)
def rollout_group() -> None:
    """Roll the controller's playbooks out to hosts (admin)."""


def host_row(h: RolloutHost) -> list[str]:
    """One host of a rollout as table cells."""
    return [
        h.name,
        h.status.value,
        h.current_task or "-",
        str(h.ok),
        str(h.changed),
        str(h.failed),
        str(h.unreachable),
        str(h.skipped),
        h.message or "-",
    ]


def rollout_row(r: Rollout) -> list[str]:
    """One rollout as table cells."""
    failed = sum(h.status in (RolloutHostStatus.FAILED, RolloutHostStatus.UNREACHABLE) for h in r.hosts)
    return [
        r.id,
        r.playbook,
        r.state.value,
        str(len(r.hosts)),
        str(failed),
        out.age(r.create_time),
        r.message or "-",
    ]


def _exit_status(rollout: Rollout) -> int:
    return EXIT_OK if rollout.state is RolloutState.SUCCEEDED else EXIT_NOT_SUCCEEDED


def _show_rollout(rollout: Rollout) -> None:
    """``-o json|yaml``: the rollout; else its fields and its hosts' table."""
    st = state()
    if st.structured:
        out.print_data(rollout, st.output)
        return
    out.print_table(ROLLOUT_HEADERS, [rollout_row(rollout)])
    click.echo()
    out.print_table(HOST_HEADERS, [host_row(h) for h in rollout.hosts])


def _event_line(e: RolloutEvent) -> str:
    """A plain line for one event (off a terminal)."""
    if e.type is RolloutEventType.STATE:
        return f"rollout {e.state.value if e.state else '-'}: {e.message}".rstrip(": ")
    if e.type is RolloutEventType.TASK_START:
        return f"TASK [{e.task}]"
    if e.type is RolloutEventType.STATS:
        return "RECAP " + "  ".join(
            f"{h.name}: ok={h.ok} changed={h.changed} failed={h.failed} unreachable={h.unreachable} "
            f"skipped={h.skipped}"
            for h in e.host_summary
        )
    word = {
        RolloutEventType.HOST_OK: "changed" if e.changed else "ok",
        RolloutEventType.HOST_FAILED: "failed",
        RolloutEventType.HOST_UNREACHABLE: "unreachable",
        RolloutEventType.HOST_SKIPPED: "skipping",
        RolloutEventType.HOST_REGISTERED: "registered",
    }[e.type]
    return f"{word}: [{e.host}]" + (f" {e.task}" if e.task else "") + (f": {e.message}" if e.message else "")


class LiveView:
    """The per-host table and the overall bar of a rollout, updated from its events."""

    def __init__(self, rollout: Rollout) -> None:
        self.hosts: dict[str, RolloutHost] = {h.name: h for h in rollout.hosts}
        self.counts: dict[str, list[int]] = {h.name: [h.ok, h.changed, h.failed] for h in rollout.hosts}
        self.tasks: dict[str, str] = {h.name: h.current_task for h in rollout.hosts}
        self.status: dict[str, str] = {h.name: h.status.value for h in rollout.hosts}
        self.state = rollout.state.value
        self.bar = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("hosts done"),
        )
        self.task = self.bar.add_task(rollout.playbook, total=max(1, len(self.hosts)))

    def apply(self, e: RolloutEvent) -> None:
        """Fold one event into the view."""
        if e.host_summary:
            for h in e.host_summary:
                self.counts[h.name] = [h.ok, h.changed, h.failed]
                self.status[h.name] = h.status.value
                self.tasks[h.name] = h.current_task
        if e.state is not None:
            self.state = e.state.value
        if e.host:
            counts = self.counts.setdefault(e.host, [0, 0, 0])
            self.tasks[e.host] = e.task or self.tasks.get(e.host, "")
            if e.type is RolloutEventType.HOST_OK:
                counts[0] += 1
                counts[1] += int(e.changed)
                self.status[e.host] = RolloutHostStatus.RUNNING.value
            elif e.type is RolloutEventType.HOST_FAILED and not e.message.startswith("(ignored)"):
                counts[2] += 1
                self.status[e.host] = RolloutHostStatus.FAILED.value
            elif e.type is RolloutEventType.HOST_UNREACHABLE:
                self.status[e.host] = RolloutHostStatus.UNREACHABLE.value
        done = sum(self.status.get(name) in {s.value for s in _DONE} for name in self.counts)
        self.bar.update(self.task, completed=done, total=max(1, len(self.counts)), description=self.state)

    def render(self) -> Any:
        rows = [
            [name, self.status.get(name, "PENDING"), self.tasks.get(name) or "-", *map(str, c)]
            for name, c in self.counts.items()
        ]
        return RichGroup(
            out.render_table(("HOST", "STATUS", "TASK", "OK", "CHANGED", "FAILED"), rows), self.bar
        )


def follow(client: Client, rollout: Rollout, after: int = 0, stream: TextIO | None = None) -> int:
    """Print the rollout's events until it ends, then the final rollout; the exit status."""
    st = state()
    events: Iterable[RolloutEvent] = client.watch_rollout(rollout.id, after_sequence=after)
    if st.output == "json":
        target = stream or sys.stdout
        for event in events:
            print(json.dumps(out.jsonable(event)), file=target, flush=True)
        return _exit_status(client.get_rollout(rollout.id))
    if out.is_tty(sys.stderr) and not st.structured:
        view = LiveView(rollout)
        with Live(
            view.render(), console=out.console(sys.stderr), refresh_per_second=4, transient=True
        ) as live:
            for event in events:
                view.apply(event)
                live.update(view.render())
    elif st.structured:
        for _ in events:
            pass
    else:
        for event in events:
            click.echo(_event_line(event))
    final = client.get_rollout(rollout.id)
    _show_rollout(final)
    return _exit_status(final)


def _read_inventory(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}", param_hint="--inventory") from None


@rollout_group.command("start")
@click.argument("playbook", metavar="PLAYBOOK")
@click.option("-i", "--inventory", metavar="FILE", help="an Ansible inventory file (YAML or INI; -: stdin)")
@click.option(
    "-l",
    "--selector",
    "selector",
    type=params.KEY_VALUE,
    multiple=True,
    help="registered hosts with label K=V",
)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="HOST",
    help="a registered host (id, unique id prefix or address)",
)
@click.option(
    "-b", "--batch-size", type=params.COUNT, default=0, help="hosts per serial batch (0: the playbook's)"
)
@click.option(
    "-e", "--extra-var", "extra_vars", type=params.KEY_VALUE, multiple=True, help="K=V (repeatable)"
)
@click.option("--register-hosts", is_flag=True, help="register the agent hosts that end ok, wait until READY")
@click.option("--request-id", default=None, help="idempotency key (default: a fresh one)")
@click.option("-d", "--detach", is_flag=True, help="print the rollout and return instead of following it")
def rollout_start(
    *,
    playbook: str,
    inventory: str | None,
    selector: tuple[tuple[str, str], ...],
    hosts: tuple[str, ...],
    batch_size: int,
    extra_vars: tuple[tuple[str, str], ...],
    register_hosts: bool,
    request_id: str | None,
    detach: bool,
) -> int:
    """Run PLAYBOOK (a file of the controller's playbooks directory, e.g. site.yml) on an inventory
    (-i) or on registered hosts (-l/--host; neither: every registered host), and follow it."""
    if inventory is not None and (selector or hosts):
        raise click.UsageError("give an inventory (-i) or registered hosts (-l/--host), not both")
    client = state().client()
    rollout = client.start_rollout(
        playbook,
        inventory=_read_inventory(inventory) if inventory is not None else None,
        label_selector=dict(selector),
        hosts=[resolve.host(client, h) for h in hosts],
        batch_size=batch_size,
        extra_vars=dict(extra_vars),
        register_hosts=register_hosts,
        request_id=request_id,
    )
    if detach:
        _show_rollout(rollout)
        return EXIT_OK
    if state().output != "json":
        click.echo(
            f"chital: rollout {rollout.id} of {rollout.playbook} on {len(rollout.hosts)} host(s)", err=True
        )
    return follow(client, rollout)


@rollout_group.command("ls")
@click.option(
    "--state",
    "state_",
    type=params.Parsed(params.enum_member(RolloutState), "STATE"),
    help="only rollouts in this state",
)
@click.option("-n", "--limit", type=params.COUNT, default=20, help="at most this many, newest first (0: all)")
def rollout_ls(state_: RolloutState | None, limit: int) -> int:
    """List rollouts, newest first."""
    client = state().client()
    rollouts = list(itertools.islice(client.iter_rollouts(state=state_), limit or None))
    show(rollouts, ROLLOUT_HEADERS, [rollout_row(r) for r in rollouts])
    return EXIT_OK


@rollout_group.command("get")
@click.argument("rollout_id", metavar="ID")
def rollout_get(rollout_id: str) -> int:
    """Show a rollout and its hosts."""
    client = state().client()
    _show_rollout(client.get_rollout(resolve.rollout(client, rollout_id)))
    return EXIT_OK


@rollout_group.command("watch")
@click.argument("rollout_id", metavar="ID")
@click.option("--after", type=params.COUNT, default=0, help="resume after this event sequence number")
def rollout_watch(rollout_id: str, after: int) -> int:
    """Follow a rollout until it ends (exit status 0 only if it SUCCEEDED)."""
    client = state().client()
    return follow(client, client.get_rollout(resolve.rollout(client, rollout_id)), after)


@rollout_group.command("cancel")
@click.argument("rollout_id", metavar="ID")
def rollout_cancel(rollout_id: str) -> int:
    """Stop a rollout (it becomes CANCELLED once ansible-playbook has stopped)."""
    client = state().client()
    _show_rollout(client.cancel_rollout(resolve.rollout(client, rollout_id)))
    return EXIT_OK
