"""The lifecycle tables: every legal transition allowed, every other one refused, the docs fresh."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from chital.controller import lifecycle
from chital.controller.lifecycle import (
    ContainerAction,
    ContainerDesiredState,
    RestartPolicy,
    container_action,
)
from chital.controller.records import AdminState, ContainerRecordState, HostHealth, ProcessRecordState
from chital.errdefs import FailedPrecondition

DOC = Path(__file__).resolve().parents[3] / "docs" / "lifecycle.md"
C = ContainerRecordState
P = ProcessRecordState

CASES = [
    (ContainerRecordState, lifecycle.CONTAINER_TRANSITIONS, lifecycle.check_container),
    (ProcessRecordState, lifecycle.PROCESS_TRANSITIONS, lifecycle.check_process),
    (HostHealth, lifecycle.HOST_HEALTH_TRANSITIONS, lifecycle.check_health),
    (AdminState, lifecycle.HOST_ADMIN_TRANSITIONS, lifecycle.check_admin),
]


@pytest.mark.parametrize(("states", "table", "check"), CASES, ids=["container", "process", "health", "admin"])
def test_every_pair_is_allowed_exactly_when_listed(states, table, check) -> None:  # type: ignore[no-untyped-def]
    legal = {(t.source, t.target) for t in table}
    assert len(legal) == len(table), "a transition is listed twice"
    refused = 0
    for source, target in itertools.product(states, states):
        if source is target:
            assert check("x", source, target) is False  # already there: a no-op, not an error
        elif (source, target) in legal:
            assert check("x", source, target) is True
        else:
            with pytest.raises(
                FailedPrecondition, match=f"is {source.value}; it cannot become {target.value}"
            ):
                check("x", source, target)
            refused += 1
    assert refused + len(legal) == len(states) * (len(states) - 1)


def test_terminal_states_have_no_way_out() -> None:
    assert not [t for t in lifecycle.CONTAINER_TRANSITIONS if t.source is C.DELETED]
    assert not [t for t in lifecycle.PROCESS_TRANSITIONS if t.source is P.EXITED]


def test_every_state_can_be_deleted_and_every_live_process_lost() -> None:
    for state in C:
        if state is not C.DELETED:
            assert lifecycle.can_container(state, C.DELETED), state
    for state in (P.STARTING, P.RUNNING):
        assert lifecycle.can_process(state, P.LOST)


def test_created_and_running_follow_the_running_processes() -> None:
    assert lifecycle.state_for_running(C.CREATED, 1) is C.RUNNING
    assert lifecycle.state_for_running(C.RUNNING, 0) is C.CREATED
    assert lifecycle.state_for_running(C.RUNNING, 3) is C.RUNNING
    for other in (C.PENDING, C.STOPPING, C.STOPPED, C.FAILED, C.LOST, C.DELETED):
        assert lifecycle.state_for_running(other, 1) is other
        assert lifecycle.state_for_running(other, 0) is other


def test_a_lost_host_loses_what_it_may_hold() -> None:
    assert set(lifecycle.LOST_WITH_HOST) == {C.PENDING, C.CREATED, C.RUNNING, C.STOPPING}
    for state in lifecycle.LOST_WITH_HOST:
        assert lifecycle.can_container(state, C.LOST)
    # A stopped container was destroyed on its host: the host's loss leaves its outcome as it was.
    assert not lifecycle.can_container(C.STOPPED, C.LOST)


@pytest.mark.parametrize(
    ("observed", "desired", "on_agent", "action"),
    [
        (C.PENDING, ContainerDesiredState.RUNNING, False, ContainerAction.CREATE),
        (C.PENDING, ContainerDesiredState.RUNNING, True, ContainerAction.CREATE),
        (C.CREATED, ContainerDesiredState.RUNNING, True, ContainerAction.NONE),
        (C.RUNNING, ContainerDesiredState.RUNNING, False, ContainerAction.MARK_LOST),
        (C.STOPPING, ContainerDesiredState.STOPPED, True, ContainerAction.DESTROY),
        (C.STOPPING, ContainerDesiredState.STOPPED, False, ContainerAction.FINISH_STOP),
        (C.RUNNING, ContainerDesiredState.STOPPED, True, ContainerAction.DESTROY),
        (C.STOPPED, ContainerDesiredState.STOPPED, True, ContainerAction.DESTROY),
        (C.STOPPED, ContainerDesiredState.STOPPED, False, ContainerAction.NONE),
        (C.LOST, ContainerDesiredState.RUNNING, True, ContainerAction.DESTROY),
        (C.LOST, ContainerDesiredState.RUNNING, False, ContainerAction.NONE),
        (C.FAILED, ContainerDesiredState.RUNNING, True, ContainerAction.DESTROY),
        (C.DELETED, ContainerDesiredState.DELETED, True, ContainerAction.DESTROY),
        (C.DELETED, ContainerDesiredState.DELETED, False, ContainerAction.NONE),
    ],
)
def test_container_action(
    observed: ContainerRecordState, desired: ContainerDesiredState, on_agent: bool, action: ContainerAction
) -> None:
    assert container_action(observed, desired, on_agent) is action


def test_desired_state_of_records_written_without_one() -> None:
    assert lifecycle.desired_from_observed(C.RUNNING) is ContainerDesiredState.RUNNING
    assert lifecycle.desired_from_observed(C.STOPPING) is ContainerDesiredState.STOPPED
    assert lifecycle.desired_from_observed(C.DELETED) is ContainerDesiredState.DELETED


def test_restart_policies_and_backoff() -> None:
    assert not lifecycle.should_restart(RestartPolicy.NEVER, 0, 0)
    assert lifecycle.should_restart(RestartPolicy.ALWAYS, 1000, 1)
    assert lifecycle.should_restart(RestartPolicy.ON_FAILURE, 2, 3)
    assert not lifecycle.should_restart(RestartPolicy.ON_FAILURE, 3, 3)
    assert lifecycle.should_restart(RestartPolicy.ON_FAILURE, 50, 0)  # 0: no maximum
    delays = [lifecycle.restart_delay(n) for n in range(12)]
    assert delays[:3] == [1.0, 2.0, 4.0]
    assert delays == sorted(delays) and max(delays) == lifecycle.BACKOFF_MAX
    assert lifecycle.restart_delay(10_000) == lifecycle.BACKOFF_MAX


def test_docs_show_the_tables_of_the_code() -> None:
    text = DOC.read_text()
    begin, end = "<!-- BEGIN LIFECYCLE_TABLES -->\n", "<!-- END LIFECYCLE_TABLES -->"
    assert begin in text and end in text
    shown = text.split(begin, 1)[1].split(end, 1)[0]
    assert shown.strip() == lifecycle.transitions_table_markdown().strip(), (
        "docs/lifecycle.md is out of date: paste "
        "chital.controller.lifecycle.transitions_table_markdown() between the markers"
    )
