"""The lifecycle of containers, processes and hosts: one table of legal transitions per entity.

The store applies these tables (:meth:`chital.controller.store.Store.transition_container` and the
process and host writes): a caller names the state it wants, never the states it comes from, and an
illegal move is FailedPrecondition naming both states. A move to the state the record is in already
is not a transition: the record is returned unchanged (retries are idempotent).

Two kinds of state (as in Kubernetes' spec and status):

- **observed** state (:class:`~chital.controller.records.ContainerRecordState`,
  :class:`~chital.controller.records.ProcessRecordState`, :class:`~chital.controller.records.HostHealth`)
  is what the controller last learned from the host's agent;
- **desired** state (:class:`ContainerDesiredState`, and a host's
  :class:`~chital.controller.records.AdminState`) is what a client asked for. The per-host
  reconcilers (:mod:`chital.controller.hostsync`) compare the two with the agent's Sync and act:
  :func:`container_action` says what to do for one container.

Rules that used to be spread over the store live here too: CREATED <-> RUNNING follows the number of
running processes (:func:`state_for_running`), and the states a host's loss makes LOST
(:data:`LOST_WITH_HOST`). Restart policies (:class:`RestartPolicy`) decide whether a LOST container
is placed again (:func:`should_restart`, :func:`restart_delay`).

``docs/lifecycle.md`` shows these tables; :func:`transitions_table_markdown` generates them and a unit
test keeps the page equal to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum

from chital.controller.records import (
    AdminState,
    ContainerRecordState,
    HostHealth,
    ProcessRecordState,
)
from chital.errdefs import FailedPrecondition

__all__ = [
    "CONTAINER_TRANSITIONS",
    "HOST_ADMIN_TRANSITIONS",
    "HOST_HEALTH_TRANSITIONS",
    "LOST_WITH_HOST",
    "ON_HOST",
    "PROCESS_TRANSITIONS",
    "ContainerAction",
    "ContainerDesiredState",
    "RestartPolicy",
    "Transition",
    "check_admin",
    "check_container",
    "check_health",
    "check_process",
    "container_action",
    "desired_from_observed",
    "restart_delay",
    "should_restart",
    "state_for_running",
    "transitions_table_markdown",
]

C = ContainerRecordState
P = ProcessRecordState
H = HostHealth
A = AdminState


class ContainerDesiredState(StrEnum):
    """What a client asked of a container; the reconcilers drive its host towards it."""

    #: Exists on its host and takes processes (after a create).
    RUNNING = "RUNNING"
    #: Gone from its host, the record kept (after a stop).
    STOPPED = "STOPPED"
    #: Gone from its host, the record DELETED (after a delete).
    DELETED = "DELETED"


class RestartPolicy(StrEnum):
    """Whether a container that its host lost is created again (on a ready host).

    ``NEVER``: it stays LOST. ``ON_FAILURE``: created again at most ``max_restarts`` times.
    ``ALWAYS``: created again every time. Attempts are spaced by :func:`restart_delay`.
    """

    NEVER = "never"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"


@dataclass(frozen=True)
class Transition:
    """One legal move of one entity, and what causes it (for the docs)."""

    source: Enum
    target: Enum
    cause: str


CONTAINER_TRANSITIONS: tuple[Transition, ...] = (
    Transition(C.PENDING, C.CREATED, "the agent created it"),
    Transition(C.PENDING, C.FAILED, "the agent refused the create"),
    Transition(C.PENDING, C.LOST, "its host was lost before the create"),
    Transition(C.PENDING, C.DELETED, "forced delete"),
    Transition(C.PENDING, C.STOPPING, "stop, forced delete or drain while the create may be under way"),
    Transition(C.CREATED, C.RUNNING, "a process runs in it"),
    Transition(C.CREATED, C.STOPPING, "stop"),
    Transition(C.CREATED, C.LOST, "its host was lost, or the agent no longer has it"),
    Transition(C.CREATED, C.DELETED, "delete"),
    Transition(C.RUNNING, C.CREATED, "its last running process ended"),
    Transition(C.RUNNING, C.STOPPING, "stop"),
    Transition(C.RUNNING, C.LOST, "its host was lost, or the agent no longer has it"),
    Transition(C.RUNNING, C.DELETED, "forced delete"),
    Transition(C.STOPPING, C.STOPPED, "the agent destroyed it"),
    Transition(C.STOPPING, C.LOST, "its host was lost during the stop"),
    Transition(C.STOPPING, C.DELETED, "delete"),
    Transition(C.STOPPED, C.DELETED, "delete"),
    Transition(C.FAILED, C.PENDING, "its restart policy places it again"),
    Transition(C.FAILED, C.DELETED, "delete"),
    Transition(C.LOST, C.PENDING, "its restart policy places it again"),
    Transition(C.LOST, C.DELETED, "delete"),
)

PROCESS_TRANSITIONS: tuple[Transition, ...] = (
    Transition(P.STARTING, P.RUNNING, "the agent started it"),
    Transition(P.STARTING, P.EXITED, "it exited before its start was recorded"),
    Transition(P.STARTING, P.LOST, "the start failed or was never confirmed"),
    Transition(P.RUNNING, P.EXITED, "its exit, from the event stream or a Sync"),
    Transition(P.RUNNING, P.LOST, "its container stopped, was deleted or lost, or the agent lost it"),
    Transition(P.LOST, P.RUNNING, "a late start event: the agent did start it"),
    Transition(P.LOST, P.EXITED, "a late exit event records the real exit"),
)

HOST_HEALTH_TRANSITIONS: tuple[Transition, ...] = (
    Transition(H.NOT_READY, H.READY, "a health check succeeded"),
    Transition(H.NOT_READY, H.LOST, "silent for lost_after"),
    Transition(H.READY, H.NOT_READY, "silent for not_ready_after"),
    Transition(H.READY, H.LOST, "silent for lost_after (a controller that was down meanwhile)"),
    Transition(H.LOST, H.READY, "a health check succeeded: its stale containers are destroyed"),
)

HOST_ADMIN_TRANSITIONS: tuple[Transition, ...] = (
    Transition(A.ACTIVE, A.CORDONED, "cordon"),
    Transition(A.ACTIVE, A.DRAINING, "drain"),
    Transition(A.CORDONED, A.ACTIVE, "uncordon"),
    Transition(A.CORDONED, A.DRAINING, "drain"),
    Transition(A.DRAINING, A.ACTIVE, "uncordon"),
    Transition(A.DRAINING, A.CORDONED, "cordon"),
)


def _allowed(table: tuple[Transition, ...]) -> frozenset[tuple[Enum, Enum]]:
    return frozenset((t.source, t.target) for t in table)


_CONTAINER = _allowed(CONTAINER_TRANSITIONS)
_PROCESS = _allowed(PROCESS_TRANSITIONS)
_HEALTH = _allowed(HOST_HEALTH_TRANSITIONS)
_ADMIN = _allowed(HOST_ADMIN_TRANSITIONS)

#: States in which the container exists (or may exist) on its host: a loss of the host makes them LOST.
#: A STOPPED container is not among them: its stop destroyed it on the host, so nothing of it is
#: there to lose, and its outcome (stopped by a user or a drain) stays known. Were it LOST, a
#: restart policy could place again a container that someone stopped.
LOST_WITH_HOST: tuple[ContainerRecordState, ...] = (C.PENDING, C.CREATED, C.RUNNING, C.STOPPING)
#: States in which the agent must have the container (a Sync that lacks it means the agent lost it).
ON_HOST: tuple[ContainerRecordState, ...] = (C.CREATED, C.RUNNING)


def _check(allowed: frozenset[tuple[Enum, Enum]], what: str, source: Enum, target: Enum) -> bool:
    """True: a transition to make; False: already there (no-op). Illegal: FailedPrecondition."""
    if source is target:
        return False
    if (source, target) not in allowed:
        raise FailedPrecondition(f"{what} is {source.value}; it cannot become {target.value}")
    return True


def check_container(name: str, source: ContainerRecordState, target: ContainerRecordState) -> bool:
    """Whether container ``name`` moves ``source`` -> ``target`` (False: it is there already)."""
    return _check(_CONTAINER, f"container {name}", source, target)


def check_process(uid: str, source: ProcessRecordState, target: ProcessRecordState) -> bool:
    """Whether process ``uid`` moves ``source`` -> ``target`` (False: it is there already)."""
    return _check(_PROCESS, f"process {uid}", source, target)


def check_health(address: str, source: HostHealth, target: HostHealth) -> bool:
    """Whether host ``address``'s health moves ``source`` -> ``target``."""
    return _check(_HEALTH, f"host {address}", source, target)


def check_admin(address: str, source: AdminState, target: AdminState) -> bool:
    """Whether host ``address``'s administrative state moves ``source`` -> ``target``."""
    return _check(_ADMIN, f"host {address}", source, target)


def can_container(source: ContainerRecordState, target: ContainerRecordState) -> bool:
    """Whether ``source`` -> ``target`` is a legal container transition."""
    return (source, target) in _CONTAINER


def can_process(source: ProcessRecordState, target: ProcessRecordState) -> bool:
    """Whether ``source`` -> ``target`` is a legal process transition."""
    return (source, target) in _PROCESS


def state_for_running(state: ContainerRecordState, running: int) -> ContainerRecordState:
    """CREATED <-> RUNNING as processes start and end; other states are left as they are."""
    if state not in (C.CREATED, C.RUNNING):
        return state
    return C.RUNNING if running else C.CREATED


class ContainerAction(StrEnum):
    """What a reconciler does for one container, from its observed and desired state and the agent."""

    NONE = "NONE"
    #: Create it on its host (PENDING; the agent's CreateContainer is idempotent by uid).
    CREATE = "CREATE"
    #: Destroy it on its host (a stop or delete to carry out, or a stale copy).
    DESTROY = "DESTROY"
    #: A stop whose destroy is done (the agent no longer has it): STOPPING -> STOPPED.
    FINISH_STOP = "FINISH_STOP"
    #: The agent no longer has a container the record says it has: mark it LOST.
    MARK_LOST = "MARK_LOST"


def desired_from_observed(observed: ContainerRecordState) -> ContainerDesiredState:
    """The desired state a record implies when none was stored (records written before intent)."""
    if observed in (C.STOPPING, C.STOPPED):
        return ContainerDesiredState.STOPPED
    if observed is C.DELETED:
        return ContainerDesiredState.DELETED
    return ContainerDesiredState.RUNNING


def container_action(
    observed: ContainerRecordState, desired: ContainerDesiredState, on_agent: bool
) -> ContainerAction:
    """What to do about a container whose record is ``observed``/``desired``, and which the
    agent's Sync lists (``on_agent``) or not.

    - Wanted RUNNING: PENDING is created (again: idempotent); CREATED/RUNNING missing from the
      agent is MARK_LOST.
    - Wanted STOPPED or DELETED: whatever the agent still has is destroyed; a STOPPING record
      whose container is gone is finished (STOPPED).
    - STOPPED, FAILED, LOST and DELETED records never have a copy on the agent: one found there is
      stale (a host that came back, a forced delete that could not reach it) and is destroyed.
    """
    if desired is ContainerDesiredState.RUNNING and observed is C.PENDING:
        return ContainerAction.CREATE
    if desired is ContainerDesiredState.RUNNING and observed in ON_HOST:
        return ContainerAction.NONE if on_agent else ContainerAction.MARK_LOST
    if observed is C.STOPPING and not on_agent:
        return ContainerAction.FINISH_STOP
    return ContainerAction.DESTROY if on_agent else ContainerAction.NONE


#: Restart backoff: the first retry after BACKOFF_BASE seconds, doubling, at most BACKOFF_MAX.
BACKOFF_BASE = 1.0
BACKOFF_MAX = 300.0


def should_restart(policy: RestartPolicy, restarts: int, max_restarts: int) -> bool:
    """Whether a lost (or failed) container that was restarted ``restarts`` times is placed again."""
    if policy is RestartPolicy.ALWAYS:
        return True
    if policy is RestartPolicy.ON_FAILURE:
        return max_restarts <= 0 or restarts < max_restarts
    return False


def restart_delay(restarts: int) -> float:
    """Seconds before restart attempt number ``restarts + 1`` (exponential, capped)."""
    return min(BACKOFF_MAX, BACKOFF_BASE * float(2 ** min(restarts, 30)))


def _table(title: str, table: tuple[Transition, ...]) -> list[str]:
    lines = [f"**{title}**", "", "| From | To | When |", "|---|---|---|"]
    lines += [f"| {t.source.value} | {t.target.value} | {t.cause} |" for t in table]
    return [*lines, ""]


def transitions_table_markdown() -> str:
    """The transition tables as Markdown (docs/lifecycle.md shows them; a test keeps them equal)."""
    lines = [
        *_table("Containers", CONTAINER_TRANSITIONS),
        *_table("Processes", PROCESS_TRANSITIONS),
        *_table("Host health", HOST_HEALTH_TRANSITIONS),
        *_table("Host administrative state", HOST_ADMIN_TRANSITIONS),
    ]
    return "\n".join(lines).rstrip() + "\n"
