"""Placement: which host gets a new container.

The rule is the simplest that spreads load: among hosts that are READY and neither cordoned nor
draining, and below their capacity (``max_containers``, 0 = unlimited), take the one with the fewest
placed containers (PENDING, CREATED, RUNNING, STOPPING, STOPPED); ties go to the oldest host.

Errors, chosen so that clients can tell "wait and retry" from "fix the fleet":

- no hosts registered at all (or the pinned host is not eligible): FailedPrecondition;
- hosts exist but none is eligible or all are full: ResourceExhausted.
"""

from __future__ import annotations

from collections.abc import Sequence

from chital.controller.store import Candidate
from chital.errdefs import FailedPrecondition, ResourceExhausted

__all__ = ["choose_host"]


def _has_room(candidate: Candidate) -> bool:
    return candidate.max_containers <= 0 or candidate.container_count < candidate.max_containers


def choose_host(candidates: Sequence[Candidate], *, pinned: bool = False) -> str:
    """The id of the host to place a container on, or raise."""
    if not candidates:
        raise FailedPrecondition("no hosts are registered")
    if pinned:
        (host,) = candidates
        if not host.schedulable:
            raise FailedPrecondition(f"host {host.address} is not ready for new containers")
        if not _has_room(host):
            raise ResourceExhausted(f"host {host.address} is full ({host.max_containers} containers)")
        return host.host_id
    eligible = [c for c in candidates if c.schedulable and _has_room(c)]
    if not eligible:
        ready = sum(1 for c in candidates if c.schedulable)
        raise ResourceExhausted(
            f"no host has room: {len(candidates)} hosts, {ready} ready for placement, all full or unavailable"
        )
    best = min(eligible, key=lambda c: (c.container_count, c.created, c.host_id))
    return best.host_id
