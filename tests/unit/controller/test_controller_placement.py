"""Placement rules."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from chital.controller.placement import choose_host
from chital.controller.store import Candidate
from chital.errdefs import FailedPrecondition, ResourceExhausted

T0 = datetime(2026, 1, 1)


def cand(i: int, count: int, *, ok: bool = True, cap: int = 0) -> Candidate:
    return Candidate(f"h{i}", f"10.0.0.{i}:7444", ok, cap, count, T0 + timedelta(seconds=i))


def test_fewest_containers_wins_ties_to_oldest() -> None:
    assert choose_host([cand(1, 3), cand(2, 1), cand(3, 1)]) == "h2"


def test_unschedulable_and_full_hosts_are_skipped() -> None:
    assert choose_host([cand(1, 0, ok=False), cand(2, 2, cap=2), cand(3, 5)]) == "h3"


def test_no_room_is_resource_exhausted() -> None:
    with pytest.raises(ResourceExhausted):
        choose_host([cand(1, 0, ok=False), cand(2, 2, cap=2)])


def test_no_hosts_is_failed_precondition() -> None:
    with pytest.raises(FailedPrecondition):
        choose_host([])


def test_pinned_host() -> None:
    assert choose_host([cand(1, 9)], pinned=True) == "h1"
    with pytest.raises(FailedPrecondition):
        choose_host([cand(1, 0, ok=False)], pinned=True)
    with pytest.raises(ResourceExhausted):
        choose_host([cand(1, 1, cap=1)], pinned=True)
