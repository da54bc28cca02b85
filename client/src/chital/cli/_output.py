"""Rendering of SDK values: tables, key/value views, JSON and YAML, colour and progress.

On a terminal, tables are drawn by rich with bold headers and coloured states, and long waits show
a spinner on stderr. Anywhere else (a pipe, a file, a test) the output is plain text: tables aligned
like ``docker ps`` with two spaces between columns, no colour and no progress. ``NO_COLOR`` (any
value) turns colour off on a terminal too; ``TERM=dumb`` counts as no terminal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import enum
import importlib
import json
import os
import shlex
import signal as _signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from chital.client import AuditEntry, Container, Host, Process, ProcessState, Token
from chital.client.config import Context

# PyYAML ships no type hints (and its stubs are not a dependency): used through Any.
yaml: Any = importlib.import_module("yaml")

# Colours of states on a terminal; other values are left plain.
STATE_STYLES = {
    "RUNNING": "green",
    "READY": "green",
    "CREATED": "cyan",
    "STARTING": "cyan",
    "PENDING": "cyan",
    "STOPPING": "yellow",
    "CORDONED": "yellow",
    "DRAINING": "yellow",
    "STOPPED": "dim",
    "EXITED": "dim",
    "DELETED": "dim",
    "FAILED": "red",
    "LOST": "red",
    "NOT_READY": "red",
    "UNREACHABLE": "red",
}


def _dumb_terminal() -> bool:
    return os.environ.get("TERM") == "dumb"


def console(stream: TextIO | None = None) -> Console:
    """A rich console on ``stream`` (default: the current ``sys.stdout``). Not a terminal: plain
    text, no colour, no markup of ours, no line wrapping; rich itself honours ``NO_COLOR``."""
    file = stream or sys.stdout
    is_tty = bool(getattr(file, "isatty", lambda: False)()) and not _dumb_terminal()
    return Console(
        file=file,
        force_terminal=is_tty,
        no_color=no_color() or None,
        highlight=False,
        soft_wrap=not is_tty,
    )


def is_tty(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default ``sys.stdout``) is a terminal we may draw on."""
    file = stream or sys.stdout
    return bool(getattr(file, "isatty", lambda: False)()) and not _dumb_terminal()


def no_color() -> bool:
    """``NO_COLOR`` set (to anything but ""): no colour, and no bold or dim either."""
    return bool(os.environ.get("NO_COLOR"))


def style(name: str) -> str:
    """``name`` (a rich style), or none under ``NO_COLOR``."""
    return "" if no_color() else name


def styled(text: str) -> Text:
    """``text`` coloured as a state when it is one."""
    return Text(text, style=style(STATE_STYLES.get(text, "")))


@contextlib.contextmanager
def progress(message: str) -> Iterator[Any]:
    """A spinner with ``message`` on stderr while the block runs, on a terminal only. Yields an
    object with ``update(message)`` (a no-op off a terminal)."""
    if not is_tty(sys.stderr):
        yield _NoProgress()
        return
    with console(sys.stderr).status(message) as status:
        yield _Progress(status)


class _NoProgress:
    def update(self, message: str) -> None:
        """Nothing to show off a terminal."""


class _Progress:
    def __init__(self, status: Any) -> None:
        self._status = status

    def update(self, message: str) -> None:
        self._status.update(message)


def jsonable(value: Any) -> Any:
    """A JSON-ready copy of an SDK value: enums as their names, times as RFC 3339 UTC strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, _dt.datetime):
        return value.astimezone(_dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def print_json(value: Any, out: TextIO | None = None) -> None:
    """Print ``value`` as indented JSON (field order is the dataclasses' declaration order)."""
    print(json.dumps(jsonable(value), indent=2), file=out or sys.stdout)


def print_yaml(value: Any, out: TextIO | None = None) -> None:
    """Print ``value`` as YAML (the same data as the JSON, in block style, keys in field order)."""
    text = yaml.safe_dump(jsonable(value), sort_keys=False, default_flow_style=False, allow_unicode=True)
    (out or sys.stdout).write(text)


def print_data(value: Any, fmt: str, out: TextIO | None = None) -> None:
    """Print ``value`` as ``json`` or ``yaml``."""
    if fmt == "yaml":
        print_yaml(value, out)
    else:
        print_json(value, out)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    """A rich table of ``rows``: bold headers, coloured states, no borders (for a terminal)."""
    table = Table(box=None, pad_edge=False, header_style=style("bold"), show_edge=False, padding=(0, 2, 0, 0))
    for index, header in enumerate(headers):
        table.add_column(header, no_wrap=index < len(headers) - 1, overflow="fold")
    for row in rows:
        table.add_row(*(styled(cell) for cell in row))
    return table


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO | None = None) -> None:
    """Print rows under headers: a rich table on a terminal, else columns aligned like
    ``docker ps`` (two spaces between, no colour)."""
    if is_tty(out):
        console(out).print(render_table(headers, rows))
        return
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    stream = out or sys.stdout
    for row in [list(headers), *rows]:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip(), file=stream)


def print_fields(value: Any, out: TextIO | None = None) -> None:
    """Print one object as ``Key:  value`` lines (the table view of ``inspect`` and ``get``)."""
    data = jsonable(value)
    rows = [(key.replace("_", " ").capitalize() + ":", _flat(v)) for key, v in data.items()]
    width = max((len(k) for k, _ in rows), default=0)
    stream = out or sys.stdout
    for key, text in rows:
        print(f"{key.ljust(width)}  {text}".rstrip(), file=stream)


def _flat(value: Any) -> str:
    if value is None or value in ("", [], {}):
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_flat(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def age(when: _dt.datetime | None, now: _dt.datetime | None = None) -> str:
    """A short age like kubectl's: ``42s``, ``5m``, ``3h``, ``2d``; ``-`` when unknown."""
    if when is None:
        return "-"
    seconds = int(((now or _dt.datetime.now(_dt.UTC)) - when).total_seconds())
    seconds = max(seconds, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def labels_text(labels: Mapping[str, str]) -> str:
    """``k=v,k2=v2`` sorted by key, ``-`` when empty."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def exit_text(process: Process) -> str:
    """How a process ended: its exit code, the signal's name, ``-`` while it runs."""
    if process.state is not ProcessState.EXITED:
        return "-"
    if process.signal:
        try:
            text = _signal.Signals(process.signal).name
        except ValueError:
            text = f"signal {process.signal}"
    else:
        text = str(process.exit_code)
    return f"{text} (oom)" if process.oom_killed else text


CONTAINER_HEADERS = ("NAME", "UID", "STATE", "HOST", "PROCS", "AGE")
CONTAINER_WIDE_HEADERS = (*CONTAINER_HEADERS, "HOST ID", "LABELS", "MESSAGE")


def container_row(c: Container, *, wide: bool = False) -> list[str]:
    """One ``containers ls`` row (``wide``: with the host id, labels and message)."""
    row = [
        c.name,
        c.uid,
        c.state.value,
        c.host_address or c.host_id or "-",
        str(c.running_processes),
        age(c.create_time),
    ]
    if wide:
        row += [c.host_id or "-", labels_text(c.labels), " ".join(c.message.split()) or "-"]
    return row


PROCESS_HEADERS = ("UID", "CONTAINER", "PID", "STATE", "EXIT", "COMMAND")
PROCESS_WIDE_HEADERS = ("UID", "CONTAINER", "CONTAINER UID", "PID", "STATE", "EXIT", "AGE", "COMMAND")


def process_row(p: Process, container_name: str = "", *, wide: bool = False) -> list[str]:
    """One ``ps`` row: the container by name (its uid when the name is unknown)."""
    name = container_name or p.container_uid
    pid = str(p.pid) if p.pid else "-"
    if wide:
        return [
            p.uid,
            name,
            p.container_uid,
            pid,
            p.state.value,
            exit_text(p),
            age(p.start_time),
            shlex.join(p.argv),
        ]
    return [p.uid, name, pid, p.state.value, exit_text(p), shlex.join(p.argv)]


HOST_HEADERS = ("ID", "ADDRESS", "STATE", "CONTAINERS", "DEVICE", "LAST SEEN", "LABELS")
HOST_WIDE_HEADERS = (*HOST_HEADERS, "AGENT", "KERNEL", "MODULE", "ABI")


def host_row(h: Host, *, wide: bool = False) -> list[str]:
    """One ``hosts ls`` row (``wide``: with the agent's versions and kernel)."""
    capacity = f"{h.container_count}/{h.max_containers}" if h.max_containers else str(h.container_count)
    device = h.agent.device if h.agent and h.agent.device else "-"
    row = [
        h.id,
        h.address,
        h.state.value,
        capacity,
        device,
        age(h.last_seen_time),
        labels_text(h.labels),
    ]
    if wide:
        agent = h.agent
        row += [
            (agent.agent_version if agent else "") or "-",
            (agent.kernel_release if agent else "") or "-",
            (agent.module_version if agent else "") or "-",
            (agent.abi_version if agent else "") or "-",
        ]
    return row


def time_text(when: _dt.datetime | None) -> str:
    """A time as ``2026-11-30 06:41:07Z`` (UTC, to the second), ``-`` when unknown."""
    if when is None:
        return "-"
    return when.astimezone(_dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


TOKEN_HEADERS = ("ID", "NAME", "ROLE", "STATE", "CREATED", "EXPIRES", "LAST USED", "CREATED BY")


def token_row(t: Token) -> list[str]:
    """One ``token ls`` row."""
    state = "revoked" if t.revoked else "expired" if t.expired() else "active"
    return [
        t.id,
        t.name,
        t.role,
        state,
        age(t.create_time),
        time_text(t.expire_time) if t.expire_time else "never",
        age(t.last_used_time),
        t.created_by or "-",
    ]


AUDIT_HEADERS = ("TIME", "PRINCIPAL", "ROLE", "METHOD", "TARGET", "CODE", "REQUEST ID", "DETAIL")


def audit_row(e: AuditEntry) -> list[str]:
    """One ``audit ls`` row: the method without its package (``ContainerService/CreateContainer``)."""
    method = e.method.rsplit(".", 1)[-1] if "." in e.method else e.method.lstrip("/")
    return [
        time_text(e.time),
        e.principal,
        e.role or "-",
        method,
        e.target or "-",
        e.code,
        e.request_id or "-",
        " ".join(e.detail.split()) or "-",
    ]


CONTEXT_HEADERS = ("CURRENT", "NAME", "CONTROLLER", "TLS", "TOKEN")


def context_row(c: Context) -> list[str]:
    """A context's settings for ``context ls`` (after its CURRENT and NAME cells); never the token."""
    if c.insecure:
        tls = "insecure"
    elif c.tls_dir:
        tls = c.tls_dir
    else:
        tls = c.ca or "-"
    token = "inline" if c.token else c.token_file or "-"
    return [", ".join(c.controllers) or "-", tls, token]


def context_json(c: Context) -> dict[str, Any]:
    """A context for ``context ls -o json``: the token itself is shown as ``"<hidden>"``."""
    data: dict[str, Any] = jsonable(c)
    if c.token:
        data["token"] = "<hidden>"  # noqa: S105 - a placeholder, not a secret
    return data
