"""Rollouts in the SDK: the types, their conversion from the API, and the calls that Client and
AsyncClient share (like `chital.client._ops`)."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from chital.api.rollout.v1 import rollout_pb2 as rpb

from ._ops import Call, StreamCall
from ._types import Page

__all__ = [
    "ROLLOUTS",
    "Rollout",
    "RolloutEvent",
    "RolloutEventType",
    "RolloutHost",
    "RolloutHostStatus",
    "RolloutState",
]

#: The key of the RolloutService stub in a client's stubs.
ROLLOUTS = "rollouts"


class RolloutState(StrEnum):
    """Where a rollout is in its life."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    INTERRUPTED = "INTERRUPTED"

    @property
    def ended(self) -> bool:
        """Whether the rollout will not change any more."""
        return self not in (RolloutState.PENDING, RolloutState.RUNNING)


class RolloutHostStatus(StrEnum):
    """Where one host is in a rollout."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    UNREACHABLE = "UNREACHABLE"
    SKIPPED = "SKIPPED"


class RolloutEventType(StrEnum):
    """What a rollout event reports."""

    STATE = "STATE"
    TASK_START = "TASK_START"
    HOST_OK = "HOST_OK"
    HOST_FAILED = "HOST_FAILED"
    HOST_UNREACHABLE = "HOST_UNREACHABLE"
    HOST_SKIPPED = "HOST_SKIPPED"
    STATS = "STATS"
    HOST_REGISTERED = "HOST_REGISTERED"


@dataclass(frozen=True)
class RolloutHost:
    """One host's progress in a rollout (ok counts the changed tasks too, as Ansible does)."""

    name: str
    status: RolloutHostStatus
    current_task: str = ""
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    message: str = ""
    registered_host_id: str = ""


@dataclass(frozen=True)
class Rollout:
    """A run of one of the controller's playbooks."""

    id: str
    request_id: str
    playbook: str
    state: RolloutState
    batch_size: int
    extra_vars: dict[str, str]
    hosts: list[RolloutHost]
    message: str
    return_code: int
    last_sequence: int
    dropped_events: int
    created_by: str
    create_time: _dt.datetime | None
    start_time: _dt.datetime | None
    end_time: _dt.datetime | None


@dataclass(frozen=True)
class RolloutEvent:
    """One step of a rollout, numbered by ``sequence`` from 1."""

    sequence: int
    type: RolloutEventType
    time: _dt.datetime | None
    host: str = ""
    task: str = ""
    changed: bool = False
    message: str = ""
    state: RolloutState | None = None
    host_summary: list[RolloutHost] = field(default_factory=list)


def _name(enum: Any, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix)


def _time(message: Any, name: str) -> _dt.datetime | None:
    if not message.HasField(name):
        return None
    return getattr(message, name).ToDatetime(tzinfo=_dt.UTC)  # type: ignore[no-any-return]


def _host(h: Any) -> RolloutHost:
    return RolloutHost(
        name=h.name,
        status=RolloutHostStatus(_name(rpb.RolloutHostStatus, h.status, "ROLLOUT_HOST_STATUS_")),
        current_task=h.current_task,
        ok=h.ok,
        changed=h.changed,
        failed=h.failed,
        unreachable=h.unreachable,
        skipped=h.skipped,
        message=h.message,
        registered_host_id=h.registered_host_id,
    )


def rollout_from_pb(r: Any) -> Rollout:
    """A Rollout from the API's message."""
    return Rollout(
        id=r.id,
        request_id=r.request_id,
        playbook=r.playbook,
        state=RolloutState(_name(rpb.RolloutState, r.state, "ROLLOUT_STATE_")),
        batch_size=r.batch_size,
        extra_vars=dict(r.extra_vars),
        hosts=[_host(h) for h in r.hosts],
        message=r.message,
        return_code=r.return_code,
        last_sequence=r.last_sequence,
        dropped_events=r.dropped_events,
        created_by=r.created_by,
        create_time=_time(r, "create_time"),
        start_time=_time(r, "start_time"),
        end_time=_time(r, "end_time"),
    )


def event_from_pb(response: Any) -> RolloutEvent:
    """A RolloutEvent from a WatchRolloutResponse."""
    e = response.event
    state = _name(rpb.RolloutState, e.state, "ROLLOUT_STATE_")
    return RolloutEvent(
        sequence=e.sequence,
        type=RolloutEventType(_name(rpb.RolloutEventType, e.type, "ROLLOUT_EVENT_TYPE_")),
        time=_time(e, "time"),
        host=e.host,
        task=e.task,
        changed=e.changed,
        message=e.message,
        state=None if state == "UNSPECIFIED" else RolloutState(state),
        host_summary=[_host(h) for h in e.host_summary],
    )


def _rollout(response: Any) -> Rollout:
    return rollout_from_pb(response.rollout)


def start_rollout(
    request_id: str,
    playbook: str,
    *,
    inventory: str | None,
    label_selector: str,
    hosts: Sequence[str],
    batch_size: int,
    extra_vars: Mapping[str, str] | None,
    register_hosts: bool,
) -> Call[Rollout]:
    """StartRollout: an inline ``inventory``, else registered hosts by labels and/or ids."""
    request = rpb.StartRolloutRequest(
        request_id=request_id,
        playbook=playbook,
        batch_size=batch_size,
        extra_vars=dict(extra_vars or {}),
        register_hosts=register_hosts,
    )
    if inventory is not None:
        request.inventory = inventory
    else:
        request.selector.CopyFrom(rpb.HostSelector(label_selector=label_selector, hosts=list(hosts)))
    return Call(ROLLOUTS, "StartRollout", request, _rollout)


def get_rollout(rollout_id: str) -> Call[Rollout]:
    """GetRollout."""
    return Call(ROLLOUTS, "GetRollout", rpb.GetRolloutRequest(id=rollout_id), _rollout)


def _page(response: Any) -> Page[Rollout]:
    return Page([rollout_from_pb(r) for r in response.rollouts], response.next_page_token)


def list_rollouts(*, page_size: int, page_token: str, state: RolloutState | None) -> Call[Page[Rollout]]:
    """ListRollouts (newest first)."""
    request = rpb.ListRolloutsRequest(
        page_size=page_size,
        page_token=page_token,
        state=rpb.RolloutState.Value(f"ROLLOUT_STATE_{state.value}") if state else 0,  # type: ignore[arg-type]
    )
    return Call(ROLLOUTS, "ListRollouts", request, _page)


def watch_rollout(rollout_id: str, after_sequence: int) -> StreamCall[RolloutEvent]:
    """WatchRollout: ends by itself when the rollout has ended."""
    request = rpb.WatchRolloutRequest(id=rollout_id, after_sequence=after_sequence)
    return StreamCall(ROLLOUTS, "WatchRollout", request, event_from_pb)


def cancel_rollout(rollout_id: str) -> Call[Rollout]:
    """CancelRollout."""
    return Call(ROLLOUTS, "CancelRollout", rpb.CancelRolloutRequest(id=rollout_id), _rollout)
