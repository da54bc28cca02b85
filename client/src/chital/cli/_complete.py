"""Shell completion of containers, processes and hosts, asked of the controller.

Each lookup is one quick call (a short deadline, no retries) with the settings given so far on the
command line, the environment and the config file; any failure completes nothing rather than
printing an error into the shell, and no warning is printed either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import click
from click.shell_completion import CompletionItem

from chital.client import Client, ProcessState, RetryPolicy

from ._root import State

_DEADLINE = 2.0
_MOST = 200


def _ask(ctx: click.Context, lookup: Callable[[Client], Iterable[CompletionItem]]) -> list[CompletionItem]:
    settings = ctx.find_root().ensure_object(State)
    try:
        with settings.make_client(
            timeout=_DEADLINE, retries=RetryPolicy(max_attempts=1), quiet=True
        ) as client:
            items = []
            for item in lookup(client):
                items.append(item)
                if len(items) >= _MOST:
                    break
            return items
    except Exception:  # noqa: BLE001 - completion must never fail loudly
        return []


def containers(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Container names and uids that start with ``incomplete``."""

    def lookup(client: Client) -> Iterable[CompletionItem]:
        for c in client.list_containers():
            if c.name.startswith(incomplete):
                yield CompletionItem(c.name, help=f"{c.state.value} {c.uid}")
            elif incomplete and c.uid.startswith(incomplete):
                yield CompletionItem(c.uid, help=f"{c.name} {c.state.value}")

    return _ask(ctx, lookup)


def _process_items(client: Client, incomplete: str) -> Iterable[CompletionItem]:
    for p in client.list_processes(""):
        if p.uid.startswith(incomplete) and p.state in (
            ProcessState.STARTING,
            ProcessState.RUNNING,
            ProcessState.EXITED,
        ):
            yield CompletionItem(p.uid, help=f"{p.state.value} {' '.join(p.argv)[:40]}")


def processes(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Process uids that start with ``incomplete``."""
    return _ask(ctx, lambda client: _process_items(client, incomplete))


def processes_and_containers(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Container names and uids, then process uids (``chital logs``)."""

    def lookup(client: Client) -> Iterable[CompletionItem]:
        for c in client.list_containers():
            if c.name.startswith(incomplete):
                yield CompletionItem(c.name, help=f"container {c.uid}")
            elif incomplete and c.uid.startswith(incomplete):
                yield CompletionItem(c.uid, help=f"container {c.name}")
        yield from _process_items(client, incomplete)

    return _ask(ctx, lookup)


def hosts(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Host ids and addresses that start with ``incomplete``."""

    def lookup(client: Client) -> Iterable[CompletionItem]:
        for h in client.list_hosts():
            if h.id.startswith(incomplete):
                yield CompletionItem(h.id, help=f"{h.address} {h.state.value}")
            elif h.address.startswith(incomplete):
                yield CompletionItem(h.address, help=f"{h.id} {h.state.value}")

    return _ask(ctx, lookup)
