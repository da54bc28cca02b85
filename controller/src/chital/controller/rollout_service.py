"""chital.api.rollout.v1.RolloutService: the gRPC adapter over :mod:`chital.controller.rollouts`.

Protobuf stops here; errors are errdefs exceptions mapped by the server's error interceptor.
"""

# ruff: noqa: N802 - gRPC servicer methods carry the RPC names from the proto.

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from chital.api.rollout.v1 import rollout_pb2, rollout_pb2_grpc
from chital.controller.auth import current_principal
from chital.controller.rollouts import (
    RolloutEventRecord,
    RolloutHostRecord,
    RolloutRecord,
    RolloutRecordState,
    Rollouts,
    RolloutSpec,
)
from chital.errdefs import InvalidArgument

__all__ = ["RolloutServicer", "event_to_pb", "rollout_to_pb"]

_MAX_ID = 64


def _ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def host_to_pb(h: RolloutHostRecord) -> rollout_pb2.RolloutHost:
    """A host's progress as the API's message."""
    return rollout_pb2.RolloutHost(
        name=h.name,
        status=rollout_pb2.RolloutHostStatus.Value(f"ROLLOUT_HOST_STATUS_{h.status.value}"),
        current_task=h.current_task,
        ok=h.ok,
        changed=h.changed,
        failed=h.failed,
        unreachable=h.unreachable,
        skipped=h.skipped,
        message=h.message,
        registered_host_id=h.registered_host_id,
    )


def _state_pb(state: RolloutRecordState) -> int:
    return rollout_pb2.RolloutState.Value(f"ROLLOUT_STATE_{state.value}")


def rollout_to_pb(r: RolloutRecord) -> rollout_pb2.Rollout:
    """A rollout as the API's message."""
    return rollout_pb2.Rollout(
        id=r.id,
        request_id=r.request_id,
        playbook=r.playbook,
        state=_state_pb(r.state),  # type: ignore[arg-type]
        batch_size=r.batch_size,
        extra_vars=r.extra_vars,
        hosts=[host_to_pb(h) for h in r.hosts],
        message=r.message,
        return_code=r.return_code,
        last_sequence=r.last_sequence,
        created_by=r.created_by,
        create_time=_ts(r.created),
        start_time=_ts(r.started),
        end_time=_ts(r.ended),
        dropped_events=r.dropped_events,
    )


def event_to_pb(e: RolloutEventRecord) -> rollout_pb2.RolloutEvent:
    """An event as the API's message."""
    return rollout_pb2.RolloutEvent(
        sequence=e.sequence,
        type=rollout_pb2.RolloutEventType.Value(f"ROLLOUT_EVENT_TYPE_{e.type.value}"),
        time=_ts(e.time),
        host=e.host,
        task=e.task,
        changed=e.changed,
        message=e.message,
        state=_state_pb(e.state) if e.state is not None else 0,  # type: ignore[arg-type]
        host_summary=[host_to_pb(h) for h in e.host_summary],
    )


def _rollout_id(value: str) -> str:
    if not value or len(value) > _MAX_ID:
        raise InvalidArgument(f"id is required (at most {_MAX_ID} characters)")
    return value


class RolloutServicer(rollout_pb2_grpc.RolloutServiceServicer):
    """chital.api.rollout.v1.RolloutService."""

    def __init__(self, rollouts: Rollouts) -> None:
        self._rollouts = rollouts

    def StartRollout(self, request: Any, context: grpc.ServicerContext) -> Any:
        target = request.WhichOneof("target")
        selector = request.selector
        spec = RolloutSpec(
            request_id=request.request_id,
            playbook=request.playbook,
            inventory=request.inventory,
            use_selector=target == "selector",
            selector_labels=selector.label_selector,
            selector_hosts=tuple(selector.hosts),
            batch_size=request.batch_size,
            extra_vars=dict(request.extra_vars),
            register_hosts=request.register_hosts,
        )
        if target is None:
            raise InvalidArgument("an inventory or a host selector is required")
        caller = current_principal()
        record = self._rollouts.start_rollout(spec, caller.id if caller is not None else "")
        return rollout_pb2.StartRolloutResponse(rollout=rollout_to_pb(record))

    def GetRollout(self, request: Any, context: grpc.ServicerContext) -> Any:
        record = self._rollouts.get(_rollout_id(request.id))
        return rollout_pb2.GetRolloutResponse(rollout=rollout_to_pb(record))

    def ListRollouts(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            name = rollout_pb2.RolloutState.Name(request.state).removeprefix("ROLLOUT_STATE_")
        except ValueError:
            raise InvalidArgument(f"state: unknown value {request.state}") from None
        state = None if name == "UNSPECIFIED" else RolloutRecordState(name)
        page = self._rollouts.list_rollouts(request.page_size, request.page_token, state)
        return rollout_pb2.ListRolloutsResponse(
            rollouts=[rollout_to_pb(r) for r in page.items], next_page_token=page.next_page_token
        )

    def WatchRollout(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        events = self._rollouts.watch(_rollout_id(request.id), request.after_sequence, context.is_active)
        for event in events:
            yield rollout_pb2.WatchRolloutResponse(event=event_to_pb(event))

    def CancelRollout(self, request: Any, context: grpc.ServicerContext) -> Any:
        record = self._rollouts.cancel(_rollout_id(request.id))
        return rollout_pb2.CancelRolloutResponse(rollout=rollout_to_pb(record))
