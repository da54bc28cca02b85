"""Rollouts: the controller runs its Ansible playbooks over a fleet with ansible-runner.

How a rollout goes (docs/rollouts.md is the user's view):

1. :meth:`Rollouts.start` (the StartRollout RPC) checks the playbook name against the files of the
   playbooks directory (a plain file name, no directories, no symlink leaving it), writes the inline
   inventory (or one built from registered hosts) to a private file and parses it with
   ``ansible-inventory --list`` restricted to the ``yaml`` and ``ini`` plugins, with unparsed sources
   an error. Any of these failing is INVALID_ARGUMENT and nothing is recorded or run. It then records
   a PENDING rollout in one transaction, unless one of its machines (ansible_host, else the inventory
   name) belongs to a PENDING or RUNNING rollout: that is FAILED_PRECONDITION (refused, not queued,
   so that an operator never has a rollout start later than they expect).
2. A bounded pool of worker threads each runs ``ansible_runner.run`` in a helper process,
   :mod:`chital.controller.rollout_runner` (never in the controller's own process: see why there),
   with the venv's ``bin`` first on PATH, and reads its events as JSON lines. The events
   update each host's progress and append to the rollout's event log, both in SQL. The log keeps at
   most ``max_events`` events per rollout: beyond that the oldest task events are deleted (STATE and
   STATS events stay) and counted in ``dropped_events``. ansible-runner's artifacts live under
   ``<state dir>/rollouts/runner/artifacts``, at most ``rotate_artifacts`` runs of them.
3. The run's status and return code decide the end state: SUCCEEDED only for ``successful`` with
   rc 0 (a missing ansible-playbook is rc 127: FAILED with that said), CANCELLED after
   :meth:`Rollouts.cancel` (SIGTERM to the helper, whose ansible-runner stops the playbook's
   process group), FAILED otherwise.
4. With ``register_hosts``, every host of the ``chital_agents`` group that ended the playbook
   without failure is registered with the controller and must pass a health check (READY) within
   ``register_timeout``; otherwise the host and the rollout are FAILED. The playbooks are given
   ``chital_register_hosts: false`` then, so site.yml's own CLI-based registration stays out of it.
5. A controller that starts marks every PENDING or RUNNING rollout INTERRUPTED: the
   ansible-playbook it ran died with the old process, and a rollout is never resumed blindly.
   With several controllers on one PostgreSQL database, run rollouts through one of them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from chital.controller import db
from chital.controller.models import RolloutEventRow, RolloutRow
from chital.controller.store.paging import Filter, decode_page_token, encode_page_token
from chital.controller.validation import (
    page_size,
    parse_label_selector,
)
from chital.errdefs import FailedPrecondition, InvalidArgument, NotFound, Unavailable

__all__ = [
    "RolloutEventRecord",
    "RolloutEventRecordType",
    "RolloutHostRecord",
    "RolloutHostRecordStatus",
    "RolloutPage",
    "RolloutRecord",
    "RolloutRecordState",
    "RolloutSettings",
    "RolloutSpec",
    "Rollouts",
    "default_playbooks_dir",
    "resolve_playbook",
]

log = logging.getLogger("chital.controller.rollouts")

PLAYBOOK_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,126}\.ya?ml")
REQUEST_ID_MAX = 128
MAX_INVENTORY_BYTES = 1 << 20
MAX_EXTRA_VARS = 256
EXTRA_VAR_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MAX_EXTRA_VAR_VALUE = 64 * 1024
MAX_BATCH_SIZE = 10_000
MAX_MESSAGE = 2048
AGENTS_GROUP = "chital_agents"
DEFAULT_AGENT_PORT = 7444
# ansible-runner event name -> our event type (runner_item_on_* are per loop item: the task's own
# runner_on_* event follows them).
_HOST_EVENTS = {
    "runner_on_ok": "HOST_OK",
    "runner_on_failed": "HOST_FAILED",
    "runner_on_unreachable": "HOST_UNREACHABLE",
    "runner_on_skipped": "HOST_SKIPPED",
}


class RolloutRecordState(StrEnum):
    """Where a rollout is in its life, as stored (the API's and the SDK's is ``RolloutState``)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    INTERRUPTED = "INTERRUPTED"

    @property
    def ended(self) -> bool:
        """Whether nothing will change any more."""
        return self not in (RolloutRecordState.PENDING, RolloutRecordState.RUNNING)


class RolloutHostRecordStatus(StrEnum):
    """Where one host is in a rollout, as stored (the API's and the SDK's is ``RolloutHostStatus``)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    UNREACHABLE = "UNREACHABLE"
    SKIPPED = "SKIPPED"


class RolloutEventRecordType(StrEnum):
    """What an event reports, as stored (the API's and the SDK's is ``RolloutEventType``)."""

    STATE = "STATE"
    TASK_START = "TASK_START"
    HOST_OK = "HOST_OK"
    HOST_FAILED = "HOST_FAILED"
    HOST_UNREACHABLE = "HOST_UNREACHABLE"
    HOST_SKIPPED = "HOST_SKIPPED"
    STATS = "STATS"
    HOST_REGISTERED = "HOST_REGISTERED"


# Kept when the event log is trimmed: they say how the rollout went.
_KEPT_EVENTS = (RolloutEventRecordType.STATE.value, RolloutEventRecordType.STATS.value)


@dataclass
class RolloutHostRecord:
    """One host's progress (mutable while the worker owns it; copied out to callers)."""

    name: str
    status: RolloutHostRecordStatus = RolloutHostRecordStatus.PENDING
    current_task: str = ""
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    message: str = ""
    registered_host_id: str = ""

    def to_json(self) -> dict[str, Any]:
        """As stored in SQL."""
        return {
            "name": self.name,
            "status": self.status.value,
            "current_task": self.current_task,
            "ok": self.ok,
            "changed": self.changed,
            "failed": self.failed,
            "unreachable": self.unreachable,
            "skipped": self.skipped,
            "message": self.message,
            "registered_host_id": self.registered_host_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RolloutHostRecord:
        """From :meth:`to_json`."""
        return cls(
            name=str(data["name"]),
            status=RolloutHostRecordStatus(data.get("status", "PENDING")),
            current_task=str(data.get("current_task", "")),
            ok=int(data.get("ok", 0)),
            changed=int(data.get("changed", 0)),
            failed=int(data.get("failed", 0)),
            unreachable=int(data.get("unreachable", 0)),
            skipped=int(data.get("skipped", 0)),
            message=str(data.get("message", "")),
            registered_host_id=str(data.get("registered_host_id", "")),
        )


@dataclass(frozen=True)
class RolloutRecord:
    """A rollout as callers see it."""

    id: str
    request_id: str
    playbook: str
    state: RolloutRecordState
    batch_size: int
    extra_vars: dict[str, str]
    register_hosts: bool
    hosts: list[RolloutHostRecord]
    message: str
    return_code: int
    last_sequence: int
    dropped_events: int
    created_by: str
    created: datetime
    started: datetime | None
    ended: datetime | None


@dataclass(frozen=True)
class RolloutEventRecord:
    """One step of a rollout."""

    sequence: int
    type: RolloutEventRecordType
    time: datetime
    host: str = ""
    task: str = ""
    changed: bool = False
    message: str = ""
    state: RolloutRecordState | None = None
    host_summary: list[RolloutHostRecord] = field(default_factory=list)


@dataclass(frozen=True)
class RolloutPage:
    """One page of rollouts, newest first."""

    items: list[RolloutRecord]
    next_page_token: str


@dataclass(frozen=True)
class RolloutSpec:
    """What StartRollout asks for (``inventory`` or ``selector_*``)."""

    request_id: str
    playbook: str
    inventory: str = ""
    use_selector: bool = False
    selector_labels: str = ""
    selector_hosts: tuple[str, ...] = ()
    batch_size: int = 0
    extra_vars: dict[str, str] = field(default_factory=dict)
    register_hosts: bool = False


def default_playbooks_dir() -> str:
    """``$CHITAL_PLAYBOOKS_DIR``; else the checkout's ``playbooks/`` when the controller runs from a
    source checkout (an editable install); else ``/usr/share/chital/playbooks``."""
    configured = os.environ.get("CHITAL_PLAYBOOKS_DIR")
    if configured:
        return configured
    checkout = Path(__file__).resolve().parents[4] / "playbooks"
    if (checkout / "site.yml").is_file():
        return str(checkout)
    return "/usr/share/chital/playbooks"


@dataclass(frozen=True)
class RolloutSettings:
    """How rollouts run."""

    playbooks_dir: str = field(default_factory=default_playbooks_dir)
    # ansible-runner's private data dir (artifacts) and the inventories being run.
    work_dir: str = "/var/lib/chital/controller/rollouts"
    # Where ansible-playbook and ansible-inventory are: first on PATH (default: this Python's bin).
    ansible_bin_dir: str = field(default_factory=lambda: str(Path(sys.executable).parent))
    # Rollouts run at once (each on its own machines).
    workers: int = 2
    # Events kept per rollout; older task events are dropped beyond it.
    max_events: int = 5000
    # Artifact directories kept (ansible-runner's rotate_artifacts), at least workers + 1.
    rotate_artifacts: int = 20
    # Seconds for ansible-inventory to parse an inventory.
    inventory_timeout: float = 60.0
    # Seconds a registered host has to become READY.
    register_timeout: float = 120.0


# Registers an agent address and returns (host id, READY?); raises an errdefs error on failure.
RegisterHost = Callable[[str], tuple[str, bool]]
# Whether a host id is READY now.
HostReady = Callable[[str], bool]


@dataclass(frozen=True)
class _Inventory:
    """A parsed inventory: host names (in order), their raw vars, and the chital_agents members."""

    hosts: list[str]
    hostvars: dict[str, dict[str, Any]]
    agents: set[str]

    def target(self, name: str) -> str:
        """The machine a host name stands for."""
        host = self.hostvars.get(name, {}).get("ansible_host")
        return str(host) if isinstance(host, str | int) and str(host) else name

    def agent_address(self, name: str) -> str:
        """Where the controller dials the host's agent (as playbooks/group_vars/all.yml says)."""
        vars_ = self.hostvars.get(name, {})
        host = vars_.get("chital_agent_address") or vars_.get("ansible_host") or name
        port = vars_.get("chital_agent_port") or DEFAULT_AGENT_PORT
        address = f"{host}:{port}"
        if "{{" in address:
            raise InvalidArgument(f"the agent address of {name} is a template ({address}); give it literally")
        return address


def resolve_playbook(playbooks_dir: str, name: str) -> Path:
    """The playbook file ``name`` directly in ``playbooks_dir``; INVALID_ARGUMENT otherwise."""
    if not PLAYBOOK_RE.fullmatch(name or ""):
        raise InvalidArgument(
            f"playbook {name[:80]!r} is not a playbook file name (like site.yml: no directories)"
        )
    base = Path(playbooks_dir)
    if not base.is_dir():
        raise FailedPrecondition(f"the controller has no playbooks directory ({playbooks_dir})")
    base = base.resolve()
    path = (base / name).resolve()
    if path.parent != base or not path.is_file():
        raise InvalidArgument(f"playbook {name!r} is not one of the controller's playbooks")
    return path


def _check_spec(spec: RolloutSpec) -> None:
    if not 1 <= len(spec.request_id) <= REQUEST_ID_MAX:
        raise InvalidArgument(f"request_id is required (1-{REQUEST_ID_MAX} characters)")
    if not 0 <= spec.batch_size <= MAX_BATCH_SIZE:
        raise InvalidArgument(f"batch_size must be 0-{MAX_BATCH_SIZE}")
    if len(spec.extra_vars) > MAX_EXTRA_VARS:
        raise InvalidArgument(f"at most {MAX_EXTRA_VARS} extra_vars")
    for key, value in spec.extra_vars.items():
        if not EXTRA_VAR_RE.fullmatch(key):
            raise InvalidArgument(f"extra_vars name {key[:80]!r} is not a variable name")
        if len(value) > MAX_EXTRA_VAR_VALUE:
            raise InvalidArgument(f"extra_vars {key} is longer than {MAX_EXTRA_VAR_VALUE} characters")
    if spec.use_selector:
        parse_label_selector(spec.selector_labels)
    else:
        if not spec.inventory.strip():
            raise InvalidArgument("an inventory or a host selector is required")
        if len(spec.inventory.encode()) > MAX_INVENTORY_BYTES:
            raise InvalidArgument(f"the inventory is larger than {MAX_INVENTORY_BYTES} bytes")


def ansible_env(bin_dir: str) -> dict[str, str]:
    """The environment of ansible-inventory and ansible-playbook: our venv first on PATH; inventories
    only from the yaml and ini plugins (an inventory can never run a script), and an inventory
    that parses as nothing is an error, not an empty fleet."""
    env = dict(os.environ)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", os.defpath)
    env["ANSIBLE_INVENTORY_ENABLED"] = "yaml,ini"
    env["ANSIBLE_INVENTORY_UNPARSED_FAILED"] = "True"
    env["ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED"] = "True"
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    return env


def parse_inventory(path: Path, settings: RolloutSettings) -> _Inventory:
    """``ansible-inventory --list`` of the file: INVALID_ARGUMENT with ansible's words if it fails."""
    exe = shutil.which("ansible-inventory", path=ansible_env(settings.ansible_bin_dir)["PATH"])
    if exe is None:
        raise FailedPrecondition("ansible-inventory is not installed with the controller (ansible-core)")
    try:
        proc = subprocess.run(
            [exe, "-i", str(path), "--list"],
            env=ansible_env(settings.ansible_bin_dir),
            capture_output=True,
            text=True,
            timeout=settings.inventory_timeout,
            cwd=str(path.parent),
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise InvalidArgument(
            f"the inventory took longer than {settings.inventory_timeout:g} s to parse"
        ) from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        why = " ".join(lines)[-MAX_MESSAGE:] or f"ansible-inventory exited with {proc.returncode}"
        raise InvalidArgument(f"the inventory does not parse: {why}")
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"ansible-inventory printed no inventory: {exc}") from None
    hostvars: dict[str, dict[str, Any]] = data.get("_meta", {}).get("hostvars", {})
    hosts: list[str] = []

    def members(group: str, seen: set[str]) -> list[str]:
        if group in seen:
            return []
        seen.add(group)
        entry = data.get(group, {})
        out = list(entry.get("hosts", []))
        for child in entry.get("children", []):
            out.extend(members(child, seen))
        return out

    for name in [*members("all", set()), *hostvars]:
        if name not in hosts:
            hosts.append(name)
    if not hosts:
        raise InvalidArgument("the inventory has no hosts")
    agents = set(members(AGENTS_GROUP, set()))
    return _Inventory(hosts=hosts, hostvars=hostvars, agents=agents)


def selector_inventory(hosts: list[tuple[str, str]]) -> str:
    """A YAML inventory of registered hosts ``(id, address)``: group chital_agents, each host named
    after its address's host part (``_<port>`` added when two share it)."""
    parts = [(hid, *address.rsplit(":", 1)) for hid, address in hosts]
    seen: dict[str, int] = {}
    for _, host, _ in parts:
        seen[host] = seen.get(host, 0) + 1
    entries: dict[str, Any] = {}
    for _, host, port in parts:
        bare = host.strip("[]")
        name = bare if seen[host] == 1 else f"{bare}_{port}"
        entries[name] = {"ansible_host": bare, "chital_agent_address": bare, "chital_agent_port": int(port)}
    # JSON is YAML: the yaml inventory plugin reads it.
    return json.dumps({"all": {"children": {AGENTS_GROUP: {"hosts": entries}}}}, indent=2)


class _RolloutStore:
    """The rollouts and their events in SQL."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._read = engine.execution_options(**{db.READONLY_OPTION: True})

    @staticmethod
    def _record(row: RolloutRow) -> RolloutRecord:
        return RolloutRecord(
            id=row.id,
            request_id=row.request_id,
            playbook=row.playbook,
            state=RolloutRecordState(row.state),
            batch_size=row.batch_size,
            extra_vars=dict(row.extra_vars),
            register_hosts=row.register_hosts,
            hosts=[RolloutHostRecord.from_json(h) for h in row.hosts],
            message=row.message,
            return_code=row.return_code,
            last_sequence=row.last_sequence,
            dropped_events=row.dropped_events,
            created_by=row.created_by,
            created=row.created,
            started=row.started,
            ended=row.ended,
        )

    @staticmethod
    def _event(row: RolloutEventRow) -> RolloutEventRecord:
        return RolloutEventRecord(
            sequence=row.sequence,
            type=RolloutEventRecordType(row.type),
            time=row.time,
            host=row.host,
            task=row.task,
            changed=row.changed,
            message=row.message,
            state=RolloutRecordState(row.state) if row.state else None,
            host_summary=[RolloutHostRecord.from_json(h) for h in row.host_summary],
        )

    def by_request_id(self, request_id: str) -> RolloutRecord | None:
        with Session(self._read) as session:
            row = session.scalars(sa.select(RolloutRow).where(RolloutRow.request_id == request_id)).first()
            return None if row is None else self._record(row)

    def get(self, rollout_id: str) -> RolloutRecord:
        with Session(self._read) as session:
            row = session.get(RolloutRow, rollout_id)
            if row is None:
                raise NotFound(f"rollout {rollout_id[:80]!r} not found")
            return self._record(row)

    def create(self, row: RolloutRow, event: RolloutEventRow) -> RolloutRecord:
        """Insert a PENDING rollout unless its machines are busy; the same request id returns the first."""
        try:
            with Session(self._engine) as session, session.begin():
                first = session.scalars(
                    sa.select(RolloutRow).where(RolloutRow.request_id == row.request_id)
                ).first()
                if first is not None:
                    return self._record(first)
                busy = session.scalars(
                    sa.select(RolloutRow).where(
                        RolloutRow.state.in_(
                            [RolloutRecordState.PENDING.value, RolloutRecordState.RUNNING.value]
                        )
                    )
                ).all()
                wanted = set(row.targets)
                for other in busy:
                    overlap = sorted(wanted & set(other.targets))
                    if overlap:
                        raise FailedPrecondition(
                            f"rollout {other.id} ({other.state}) is running on {', '.join(overlap[:5])}: "
                            "wait for it or cancel it"
                        )
                session.add(row)
                session.flush()
                session.add(event)
                return self._record(row)
        except IntegrityError:
            # A concurrent start with the same request id won the race.
            first_record = self.by_request_id(row.request_id)
            if first_record is None:
                raise
            return first_record

    def page(self, size: int, page_token: str, state: RolloutRecordState | None) -> RolloutPage:
        limit = page_size(size)
        filters: Filter = {"state": state}
        cursor = decode_page_token(page_token, "ListRollouts", filters)
        query = sa.select(RolloutRow)
        if state is not None:
            query = query.where(RolloutRow.state == state.value)
        if cursor is not None:
            created, key = cursor
            query = query.where(
                sa.or_(
                    RolloutRow.created < created,
                    sa.and_(RolloutRow.created == created, RolloutRow.id < key),
                )
            )
        query = query.order_by(RolloutRow.created.desc(), RolloutRow.id.desc()).limit(limit + 1)
        with Session(self._read) as session:
            rows = list(session.scalars(query))
        items = [self._record(r) for r in rows[:limit]]
        token = ""
        if len(rows) > limit:
            token = encode_page_token("ListRollouts", filters, (items[-1].created, items[-1].id))
        return RolloutPage(items, token)

    def events(self, rollout_id: str, after: int, limit: int = 500) -> list[RolloutEventRecord]:
        with Session(self._read) as session:
            rows = session.scalars(
                sa.select(RolloutEventRow)
                .where(RolloutEventRow.rollout_id == rollout_id, RolloutEventRow.sequence > after)
                .order_by(RolloutEventRow.sequence)
                .limit(limit)
            )
            return [self._event(r) for r in rows]

    def append(
        self,
        rollout_id: str,
        now: datetime,
        events: list[dict[str, Any]],
        *,
        hosts: list[RolloutHostRecord] | None = None,
        max_events: int,
        only_from: tuple[RolloutRecordState, ...] = (RolloutRecordState.PENDING, RolloutRecordState.RUNNING),
        **changes: Any,
    ) -> RolloutRecord | None:
        """Apply ``changes`` (and ``hosts``) to the rollout and append ``events`` in one transaction,
        if the rollout is in one of the ``only_from`` states (else nothing happens: None)."""
        with Session(self._engine) as session, session.begin():
            row = session.get(RolloutRow, rollout_id, with_for_update=True)
            if row is None:
                raise NotFound(f"rollout {rollout_id!r} not found")
            if RolloutRecordState(row.state) not in only_from:
                return None
            for key, value in changes.items():
                setattr(row, key, value)
            if hosts is not None:
                row.hosts = [h.to_json() for h in hosts]
            row.updated = now
            for event in events:
                row.last_sequence += 1
                session.add(
                    RolloutEventRow(rollout_id=rollout_id, sequence=row.last_sequence, time=now, **event)
                )
            if events and row.last_sequence - row.dropped_events > max_events:
                self._trim(session, row, max_events)
            return self._record(row)

    @staticmethod
    def _trim(session: Session, row: RolloutRow, max_events: int) -> None:
        """Drop the oldest task events down to 90% of the cap (so that trimming is not per event)."""
        session.flush()
        stored = session.scalar(
            sa.select(sa.func.count())
            .select_from(RolloutEventRow)
            .where(RolloutEventRow.rollout_id == row.id)
        )
        excess = int(stored or 0) - (max_events * 9) // 10
        if excess <= 0:
            return
        oldest = (
            sa.select(RolloutEventRow.id)
            .where(RolloutEventRow.rollout_id == row.id, RolloutEventRow.type.not_in(_KEPT_EVENTS))
            .order_by(RolloutEventRow.sequence)
            .limit(excess)
        )
        ids = list(session.scalars(oldest))
        if ids:
            session.execute(sa.delete(RolloutEventRow).where(RolloutEventRow.id.in_(ids)))
            row.dropped_events += len(ids)

    def request_cancel(self, rollout_id: str) -> RolloutRecord:
        with Session(self._engine) as session, session.begin():
            row = session.get(RolloutRow, rollout_id)
            if row is None:
                raise NotFound(f"rollout {rollout_id[:80]!r} not found")
            if not RolloutRecordState(row.state).ended:
                row.cancel_requested = True
            return self._record(row)

    def cancel_requested(self, rollout_id: str) -> bool:
        with Session(self._read) as session:
            return bool(
                session.scalar(sa.select(RolloutRow.cancel_requested).where(RolloutRow.id == rollout_id))
            )

    def unfinished(self) -> list[str]:
        with Session(self._read) as session:
            return list(
                session.scalars(
                    sa.select(RolloutRow.id).where(
                        RolloutRow.state.in_(
                            [RolloutRecordState.PENDING.value, RolloutRecordState.RUNNING.value]
                        )
                    )
                )
            )

    def count_by_state(self) -> dict[str, int]:
        with Session(self._read) as session:
            rows = session.execute(sa.select(RolloutRow.state, sa.func.count()).group_by(RolloutRow.state))
            return {state: int(n) for state, n in rows}


def _short(text: Any) -> str:
    return str(text or "").strip()[:MAX_MESSAGE]


def _result_message(res: dict[str, Any]) -> str:
    """The words of a failed task: msg, else stderr, else the return code."""
    for key in ("msg", "stderr", "reason"):
        if res.get(key):
            return _short(res[key])
    if "rc" in res:
        return f"rc={res['rc']}"
    return ""


class _Run:
    """One rollout in the worker: turns ansible-runner events into host progress and stored events."""

    def __init__(self, rollouts: Rollouts, record: RolloutRecord) -> None:
        self.rollouts = rollouts
        self.id = record.id
        self.hosts = {h.name: replace(h) for h in record.hosts}
        self.lock = threading.Lock()
        self.runner_error = ""

    def host(self, name: str) -> RolloutHostRecord:
        if name not in self.hosts:  # a host added by add_host or a dynamic group
            self.hosts[name] = RolloutHostRecord(name=name)
        return self.hosts[name]

    def snapshot(self) -> list[RolloutHostRecord]:
        return [replace(h) for h in self.hosts.values()]

    def on_event(self, event: dict[str, Any]) -> bool:
        """ansible-runner's event_handler: True keeps the event in the artifacts."""
        try:
            self._on_event(event)
        except Exception:
            log.exception("rollout %s: event %s not recorded", self.id, event.get("event"))
        return True

    def _on_event(self, event: dict[str, Any]) -> None:
        name = event.get("event", "")
        if not name and event.get("uuid"):
            # ansible-runner could not read the event's data (its partial file): only stdout is left.
            log.warning("rollout %s: event %s came without its data", self.id, event.get("counter"))
            return
        data = event.get("event_data") or {}
        task = _short(data.get("task"))
        out: list[dict[str, Any]] = []
        with self.lock:
            if name == "playbook_on_task_start":
                out.append({"type": RolloutEventRecordType.TASK_START.value, "task": task})
            elif name == "runner_on_start":
                host = self.host(str(data.get("host", "")))
                host.status = (
                    RolloutHostRecordStatus.RUNNING
                    if host.status is RolloutHostRecordStatus.PENDING
                    else host.status
                )
                host.current_task = task
                # Progress only: no event of its own (TASK_START said it for the batch).
            elif name in _HOST_EVENTS:
                out.append(self._host_result(name, data, task))
            elif name == "playbook_on_stats":
                self._stats(data)
                out.append(
                    {
                        "type": RolloutEventRecordType.STATS.value,
                        "host_summary": [h.to_json() for h in self.hosts.values()],
                    }
                )
            else:
                return
            hosts = self.snapshot()
        self.rollouts._record_events(self.id, out, hosts)

    def _host_result(self, name: str, data: dict[str, Any], task: str) -> dict[str, Any]:
        host = self.host(str(data.get("host", "")))
        res = data.get("res") or {}
        changed = bool(res.get("changed")) if isinstance(res, dict) else False
        message = _result_message(res) if isinstance(res, dict) else ""
        host.current_task = task
        kind = _HOST_EVENTS[name]
        if host.status is RolloutHostRecordStatus.PENDING:
            host.status = RolloutHostRecordStatus.RUNNING
        if kind == "HOST_OK":
            host.ok += 1
            host.changed += int(changed)
            message = ""
        elif kind == "HOST_FAILED":
            if data.get("ignore_errors"):
                host.ok += 1
                message = f"(ignored) {message}"
            else:
                host.failed += 1
                host.status = RolloutHostRecordStatus.FAILED
                host.message = f"{task}: {message}" if message else task
        elif kind == "HOST_UNREACHABLE":
            host.unreachable += 1
            host.status = RolloutHostRecordStatus.UNREACHABLE
            host.message = message
        else:
            host.skipped += 1
            message = ""
        return {"type": kind, "host": host.name, "task": task, "changed": changed, "message": message}

    def _stats(self, data: dict[str, Any]) -> None:
        """The recap is authoritative for the counts (ok includes changed, as Ansible counts)."""
        for key, attr in (
            ("ok", "ok"),
            ("changed", "changed"),
            ("failures", "failed"),
            ("dark", "unreachable"),
            ("skipped", "skipped"),
        ):
            for name, count in (data.get(key) or {}).items():
                setattr(self.host(str(name)), attr, int(count))
        # The recap also settles a host whose failure event was not seen.
        for host in self.hosts.values():
            if host.unreachable and host.status is not RolloutHostRecordStatus.UNREACHABLE:
                host.status = RolloutHostRecordStatus.UNREACHABLE
                host.message = host.message or "unreachable (from the recap)"
            elif host.failed and host.status is not RolloutHostRecordStatus.FAILED:
                host.status = RolloutHostRecordStatus.FAILED
                host.message = host.message or "failed (from the recap)"


class Rollouts:
    """The rollout use cases and the worker that runs them."""

    def __init__(
        self,
        engine: Engine,
        settings: RolloutSettings,
        clock: Callable[[], datetime],
        new_id: Callable[[], str],
        *,
        register_host: RegisterHost | None = None,
        host_ready: HostReady | None = None,
        list_hosts: Callable[[], list[tuple[str, str, dict[str, str]]]] | None = None,
        on_end: Callable[[RolloutRecord], None] | None = None,
    ) -> None:
        if settings.rotate_artifacts < settings.workers + 1:
            raise InvalidArgument("rotate_artifacts must be at least workers + 1")
        self._store = _RolloutStore(engine)
        self.settings = settings
        self._clock = clock
        self._new_id = new_id
        self._register_host = register_host
        self._host_ready = host_ready
        self._list_hosts = list_hosts
        self._on_end = on_end
        self._start_lock = threading.Lock()
        self._changed = threading.Condition()
        self._version = 0  # bumped with every append by this process (wakes watchers)
        self._cancels: dict[str, threading.Event] = {}  # running rollouts: set to cancel
        # Rollouts queued on this process's workers: stop() ends only these (with several
        # controllers, the others belong to another one).
        self._queued: set[str] = set()
        self._stopping = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._work = Path(settings.work_dir)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Mark what an earlier process left unfinished INTERRUPTED, then take new rollouts."""
        for rollout_id in self._store.unfinished():
            self._end(
                rollout_id,
                RolloutRecordState.INTERRUPTED,
                "the controller restarted during the rollout",
                None,
            )
            log.warning("rollout %s was left unfinished by an earlier controller: INTERRUPTED", rollout_id)
        shutil.rmtree(self._work / "inventories", ignore_errors=True)
        self._pool = ThreadPoolExecutor(max_workers=self.settings.workers, thread_name_prefix="rollout")

    def stop(self) -> None:
        """Cancel the running playbooks and wait for the workers; what they leave is INTERRUPTED."""
        self._stopping.set()
        for cancel in list(self._cancels.values()):
            cancel.set()
        with self._changed:
            self._changed.notify_all()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for rollout_id in self._store.unfinished():
            if rollout_id in self._queued:
                self._end(
                    rollout_id,
                    RolloutRecordState.INTERRUPTED,
                    "the controller stopped during the rollout",
                    None,
                )

    # -- use cases -------------------------------------------------------------------------------

    def start_rollout(self, spec: RolloutSpec, created_by: str) -> RolloutRecord:
        """Validate, record PENDING and queue; a retried request id returns the first rollout."""
        _check_spec(spec)
        first = self._store.by_request_id(spec.request_id)
        if first is not None:
            return first
        playbook = resolve_playbook(self.settings.playbooks_dir, spec.playbook)
        if self._pool is None or self._stopping.is_set():
            # Retryable: another controller (the leader, with several) takes it.
            raise Unavailable(
                "this controller is not running rollouts (not the leader, or starting or stopping): "
                "retry, or ask another controller"
            )
        inventory_text = self._selector_inventory(spec) if spec.use_selector else spec.inventory
        rollout_id = self._new_id()
        inventory_path = self._write_inventory(rollout_id, inventory_text)
        try:
            inventory = parse_inventory(inventory_path, self.settings)
            now = self._clock()
            hosts = [RolloutHostRecord(name=h) for h in inventory.hosts]
            row = RolloutRow(
                id=rollout_id,
                request_id=spec.request_id,
                playbook=playbook.name,
                state=RolloutRecordState.PENDING.value,
                batch_size=spec.batch_size,
                extra_vars=dict(spec.extra_vars),
                register_hosts=spec.register_hosts,
                hosts=[h.to_json() for h in hosts],
                targets=sorted({inventory.target(h) for h in inventory.hosts}),
                message="waiting for a worker",
                return_code=-1,
                last_sequence=1,
                dropped_events=0,
                cancel_requested=False,
                created_by=created_by,
                created=now,
                started=None,
                ended=None,
                updated=now,
            )
            event = RolloutEventRow(
                rollout_id=rollout_id,
                sequence=1,
                type=RolloutEventRecordType.STATE.value,
                host="",
                task="",
                changed=False,
                message="waiting for a worker",
                state=RolloutRecordState.PENDING.value,
                host_summary=row.hosts,
                time=now,
            )
            with self._start_lock:
                record = self._store.create(row, event)
        except BaseException:
            shutil.rmtree(inventory_path.parent, ignore_errors=True)
            raise
        if record.id != rollout_id:  # a retry that raced the first
            shutil.rmtree(inventory_path.parent, ignore_errors=True)
            return record
        self._queued.add(record.id)
        self._pool.submit(self._run, record, inventory_path, inventory)
        log.info("rollout %s: %s on %d host(s) queued", record.id, record.playbook, len(record.hosts))
        return record

    def get(self, rollout_id: str) -> RolloutRecord:
        """One rollout."""
        return self._store.get(rollout_id)

    def list_rollouts(
        self, size: int = 0, page_token: str = "", state: RolloutRecordState | None = None
    ) -> RolloutPage:
        """A page of rollouts, newest first."""
        return self._store.page(size, page_token, state)

    def cancel(self, rollout_id: str) -> RolloutRecord:
        """Ask the worker to stop the rollout; an ended one is returned as it is."""
        record = self._store.request_cancel(rollout_id)
        running = self._cancels.get(rollout_id)
        if running is not None:
            running.set()
        if record.state is RolloutRecordState.PENDING:
            # Not started: ended here unless the worker took it meanwhile (then its cancel
            # callback sees the request). The worker skips a rollout that is no longer PENDING.
            self._end(
                rollout_id,
                RolloutRecordState.CANCELLED,
                "cancelled before it started",
                None,
                only_from=(RolloutRecordState.PENDING,),
            )
            return self._store.get(rollout_id)
        return record

    def counts(self) -> dict[str, int]:
        """Rollouts by state (for /metrics)."""
        return self._store.count_by_state()

    def watch(
        self, rollout_id: str, after: int, is_active: Callable[[], bool], poll: float = 1.0
    ) -> Iterator[RolloutEventRecord]:
        """Events after ``after``, then live ones; ends once the rollout has ended and all were sent.

        Woken by this process's appends; ``poll`` bounds the wait for those of another controller.
        """
        if after < 0:
            raise InvalidArgument("after_sequence must not be negative")
        self._store.get(rollout_id)  # NotFound before the stream starts
        while is_active() and not self._stopping.is_set():
            with self._changed:
                version = self._version
            events = self._store.events(rollout_id, after)
            if not events:
                # The end state is written in the same transaction as the last event: ended and
                # still nothing after ``after`` means everything was sent.
                if self._store.get(rollout_id).state.ended and not self._store.events(rollout_id, after):
                    return
                with self._changed:
                    if self._version == version:
                        self._changed.wait(poll)
                continue
            for event in events:
                yield event
                after = event.sequence

    # -- the worker ------------------------------------------------------------------------------

    def _selector_inventory(self, spec: RolloutSpec) -> str:
        if self._list_hosts is None:
            raise FailedPrecondition("this controller cannot select registered hosts")
        wanted = parse_label_selector(spec.selector_labels)
        refs = set(spec.selector_hosts)
        chosen = []
        for host_id, address, labels in self._list_hosts():
            if refs and host_id not in refs and address not in refs:
                continue
            if any(labels.get(k) != v for k, v in wanted.items()):
                continue
            chosen.append((host_id, address))
        if not chosen:
            raise FailedPrecondition("no registered host matches the selector")
        return selector_inventory(chosen)

    def _write_inventory(self, rollout_id: str, text: str) -> Path:
        """The inventory in its own 0700 directory (it may hold connection secrets); no extension,
        so that both the yaml and the ini plugin may read it."""
        directory = self._work / "inventories" / rollout_id
        directory.mkdir(parents=True, mode=0o700)
        path = directory / "hosts"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path

    def _record_events(
        self,
        rollout_id: str,
        events: list[dict[str, Any]],
        hosts: list[RolloutHostRecord],
        only_from: tuple[RolloutRecordState, ...] = (RolloutRecordState.PENDING, RolloutRecordState.RUNNING),
        **changes: Any,
    ) -> RolloutRecord | None:
        full = [
            {
                "host": "",
                "task": "",
                "changed": False,
                "message": "",
                "state": "",
                "host_summary": [],
                **e,
            }
            for e in events
        ]
        record = self._store.append(
            rollout_id,
            self._clock(),
            full,
            hosts=hosts,
            max_events=self.settings.max_events,
            only_from=only_from,
            **changes,
        )
        with self._changed:
            self._version += 1
            self._changed.notify_all()
        return record

    def _end(
        self,
        rollout_id: str,
        state: RolloutRecordState,
        message: str,
        run: _Run | None,
        *,
        return_code: int | None = None,
        only_from: tuple[RolloutRecordState, ...] = (RolloutRecordState.PENDING, RolloutRecordState.RUNNING),
    ) -> None:
        """The final state, with unfinished hosts settled (nothing if the rollout left ``only_from``)."""
        current = self._store.get(rollout_id)
        if current.state.ended:
            return
        hosts = run.snapshot() if run is not None else [replace(h) for h in current.hosts]
        for host in hosts:
            if host.status is RolloutHostRecordStatus.PENDING:
                host.status = RolloutHostRecordStatus.SKIPPED
                host.message = host.message or "not run: the playbook did not reach this host"
            elif host.status is RolloutHostRecordStatus.RUNNING:
                if state in (RolloutRecordState.SUCCEEDED, RolloutRecordState.FAILED) and run is not None:
                    host.status = RolloutHostRecordStatus.SUCCEEDED
                else:
                    host.status = RolloutHostRecordStatus.SKIPPED
                    host.message = f"{state.value.lower()} before the host finished"
            host.current_task = host.current_task if host.status is RolloutHostRecordStatus.FAILED else ""
        changes: dict[str, Any] = {"state": state.value, "message": _short(message), "ended": self._clock()}
        if return_code is not None:
            changes["return_code"] = return_code
        event = {
            "type": RolloutEventRecordType.STATE.value,
            "state": state.value,
            "message": _short(message),
            "host_summary": [h.to_json() for h in hosts],
        }
        record = self._record_events(rollout_id, [event], hosts, only_from, **changes)
        if record is not None:
            log.info("rollout %s: %s (%s)", rollout_id, state.value, message)
            if self._on_end is not None:
                self._on_end(record)

    def _run(self, record: RolloutRecord, inventory_path: Path, inventory: _Inventory) -> None:
        try:
            self._run_playbook(record, inventory_path, inventory)
        except Exception as exc:
            log.exception("rollout %s failed in the controller", record.id)
            try:
                self._end(
                    record.id, RolloutRecordState.FAILED, f"the controller failed to run it: {exc}", None
                )
            except Exception:
                log.exception("rollout %s: its failure not recorded", record.id)
        finally:
            shutil.rmtree(inventory_path.parent, ignore_errors=True)

    def _run_playbook(self, record: RolloutRecord, inventory_path: Path, inventory: _Inventory) -> None:
        run = _Run(self, record)
        started = self._record_events(
            record.id,
            [
                {
                    "type": RolloutEventRecordType.STATE.value,
                    "state": RolloutRecordState.RUNNING.value,
                    "message": "running",
                }
            ],
            run.snapshot(),
            (RolloutRecordState.PENDING,),  # not when cancelled (or interrupted) while queued
            state=RolloutRecordState.RUNNING.value,
            message="running",
            started=self._clock(),
        )
        if started is None:
            return
        extra: dict[str, Any] = dict(record.extra_vars)
        if record.batch_size:
            # The playbooks' serial batch variables (upgrade.yml; docs/rollouts.md).
            extra["chital_batch_size"] = record.batch_size
            extra["chital_upgrade_batch_size"] = record.batch_size
        if record.register_hosts:
            extra["chital_register_hosts"] = False
        runner_dir = self._work / "runner"
        runner_dir.mkdir(parents=True, exist_ok=True)
        env = ansible_env(self.settings.ansible_bin_dir)
        kwargs = {
            "private_data_dir": str(runner_dir),
            "project_dir": str(Path(self.settings.playbooks_dir).resolve()),
            "ident": record.id,
            "playbook": record.playbook,
            "inventory": str(inventory_path),
            "extravars": extra,
            "envvars": {k: env[k] for k in env if k == "PATH" or k.startswith("ANSIBLE_")},
            "rotate_artifacts": self.settings.rotate_artifacts,
            "suppress_env_files": True,
        }
        cancelled = self._cancels.setdefault(record.id, threading.Event())
        try:
            status, rc = self._run_helper(
                record.id, run, kwargs=kwargs, env=env, scratch=inventory_path.parent, cancelled=cancelled
            )
        finally:
            self._cancels.pop(record.id, None)
        if status == "canceled" or cancelled.is_set():
            if self._stopping.is_set():
                self._end(
                    record.id,
                    RolloutRecordState.INTERRUPTED,
                    "the controller stopped during the rollout",
                    run,
                    return_code=rc,
                )
            else:
                self._end(record.id, RolloutRecordState.CANCELLED, "cancelled", run, return_code=rc)
            return
        if status != "successful" or rc != 0:
            self._end(
                record.id,
                RolloutRecordState.FAILED,
                self._failure_message(run, status, rc),
                run,
                return_code=rc,
            )
            return
        if record.register_hosts:
            failed = self._register(record.id, run, inventory)
            if failed:
                self._end(
                    record.id,
                    RolloutRecordState.FAILED,
                    f"registration failed on {', '.join(failed)}",
                    run,
                    return_code=rc,
                )
                return
        self._end(record.id, RolloutRecordState.SUCCEEDED, "every host ok", run, return_code=rc)

    def _run_helper(
        self,
        rollout_id: str,
        run: _Run,
        *,
        kwargs: dict[str, Any],
        env: dict[str, str],
        scratch: Path,
        cancelled: threading.Event,
    ) -> tuple[str, int]:
        """ansible-runner in :mod:`chital.controller.rollout_runner` (a process of its own: see why
        there); its events go to ``run``. SIGTERM cancels it. Returns (status, rc)."""
        stderr_path = scratch / "runner.stderr"
        with open(stderr_path, "w", encoding="utf-8") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "chital.controller.rollout_runner"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=env,
                cwd=str(self._work),
                start_new_session=True,  # a Ctrl-C of the controller's terminal is not a cancel
            )
        done = threading.Event()

        def cancel_when_asked() -> None:
            # Woken by cancel() and stop() of this controller; the database covers the others.
            while not done.is_set():
                if cancelled.wait(1.0) or self._stopping.is_set() or self._store.cancel_requested(rollout_id):
                    cancelled.set()
                    if not done.is_set():
                        proc.send_signal(signal.SIGTERM)
                    return

        watcher = threading.Thread(
            target=cancel_when_asked, name=f"rollout-cancel-{rollout_id[:8]}", daemon=True
        )
        watcher.start()
        result: dict[str, Any] | None = None
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(kwargs))
            proc.stdin.close()
            for line in proc.stdout:
                try:
                    message = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("rollout %s: the runner printed %r", rollout_id, line[:200])
                    continue
                if "result" in message:
                    result = message["result"]
                else:
                    run.on_event(message)
        finally:
            proc.wait()
            done.set()
            watcher.join(timeout=5)
        if result is None:
            # The helper itself failed (ansible-runner missing, a crash): its last words say why.
            tail = stderr_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
            run.runner_error = _short(" ".join(tail)) or f"the rollout runner exited with {proc.returncode}"
            return "failed", proc.returncode
        rc = result.get("rc")
        return str(result.get("status")), int(rc) if isinstance(rc, int) else -1

    @staticmethod
    def _failure_message(run: _Run, status: str, rc: int) -> str:
        if run.runner_error:
            return f"the rollout runner failed: {run.runner_error}"
        if rc == 127:
            return "ansible-playbook was not found (rc 127): install ansible-core with the controller"
        bad = [
            h.name
            for h in run.hosts.values()
            if h.status in (RolloutHostRecordStatus.FAILED, RolloutHostRecordStatus.UNREACHABLE)
        ]
        if bad:
            return f"failed on {', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''} (rc {rc})"
        return f"ansible-playbook ended {status} with rc {rc}"

    def _register(self, rollout_id: str, run: _Run, inventory: _Inventory) -> list[str]:
        """Register each clean agent host and wait until it is READY; the names that failed."""
        failed: list[str] = []
        for name in inventory.hosts:
            host = run.hosts.get(name)
            if name not in inventory.agents or host is None or host.failed or host.unreachable or not host.ok:
                continue
            event: dict[str, Any] = {"type": RolloutEventRecordType.HOST_REGISTERED.value, "host": name}
            try:
                if self._register_host is None or self._host_ready is None:
                    raise FailedPrecondition("this controller cannot register hosts")
                address = inventory.agent_address(name)
                host_id, ready = self._register_host(address)
                deadline = time.monotonic() + self.settings.register_timeout
                while not ready and time.monotonic() < deadline and not self._stopping.is_set():
                    self._stopping.wait(1.0)
                    ready = self._host_ready(host_id)
                if not ready:
                    raise FailedPrecondition(
                        f"{address} registered as host {host_id} but not READY within "
                        f"{self.settings.register_timeout:g} s"
                    )
                host.registered_host_id = host_id
                host.message = f"registered as {host_id} ({address}), READY"
                event["message"] = host.message
            except Exception as exc:  # noqa: BLE001 - any failure is this host's, reported on it
                host.status = RolloutHostRecordStatus.FAILED
                host.message = _short(f"registration: {exc}")
                event["message"] = host.message
                failed.append(name)
            with run.lock:
                hosts = run.snapshot()
            self._record_events(rollout_id, [event], hosts)
        return failed
