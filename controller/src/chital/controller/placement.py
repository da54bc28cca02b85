"""Placement: which host gets a new container.

The rule is the simplest that spreads load: among hosts that are READY and neither cordoned nor
draining, and below their capacity (``max_containers``, 0 = unlimited), take the one with the fewest
placed containers (PENDING, CREATED, RUNNING, STOPPING, STOPPED); ties are broken at random, so
equal hosts share the load evenly (with short-lived containers every host often has none: a
fixed tie-break would send every container to the same host).

Errors, chosen so that clients can tell "wait and retry" from "fix the fleet":

- no hosts registered at all (or the pinned host is not eligible): FailedPrecondition;
- hosts exist but none is eligible or all are full: ResourceExhausted.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from chital.controller.records import Candidate
from chital.errdefs import FailedPrecondition, ResourceExhausted

__all__ = ["choose_host"]

_RANDOM = random.Random()  # noqa: S311  # load spreading, not security


def _has_room(candidate: Candidate) -> bool:
    return candidate.max_containers <= 0 or candidate.container_count < candidate.max_containers


def choose_host(
    candidates: Sequence[Candidate], *, pinned: bool = False, rng: random.Random | None = None
) -> str:
    """The id of the host to place a container on, or raise. ``rng`` breaks ties (tests pass a
    seeded one)."""
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
    fewest = min(c.container_count for c in eligible)
    tied = sorted((c for c in eligible if c.container_count == fewest), key=lambda c: c.host_id)
    return (rng or _RANDOM).choice(tied).host_id
