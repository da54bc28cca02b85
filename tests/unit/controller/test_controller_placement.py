"""Placement rules."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta

import pytest

from chital.controller.placement import choose_host
from chital.controller.records import Candidate
from chital.errdefs import FailedPrecondition, ResourceExhausted

T0 = datetime(2026, 1, 1)


def cand(i: int, count: int, *, ok: bool = True, cap: int = 0) -> Candidate:
    return Candidate(f"h{i}", f"10.0.0.{i}:7444", ok, cap, count, T0 + timedelta(seconds=i))


def test_fewest_containers_wins() -> None:
    assert choose_host([cand(1, 3), cand(2, 1), cand(3, 2)]) == "h2"
    assert {choose_host([cand(1, 3), cand(2, 1), cand(3, 1)]) for _ in range(50)} <= {"h2", "h3"}


def test_ties_are_spread_over_the_equal_hosts() -> None:
    """Short-lived containers leave every host at zero: ties must not all go to the oldest host."""
    rng = random.Random(11)
    hosts = [cand(1, 0), cand(2, 0), cand(3, 0)]
    counts = Counter(choose_host(hosts, rng=rng) for _ in range(300))
    assert set(counts) == {"h1", "h2", "h3"}
    assert all(0.25 * 300 <= n <= 0.42 * 300 for n in counts.values()), counts


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


def test_placement_and_validation_do_not_import_the_store() -> None:
    """They work on records: importing them loads neither the store nor SQLAlchemy's ORM."""
    code = (
        "import sys; import chital.controller.placement, chital.controller.validation; "
        "print(sorted(m for m in sys.modules if m.startswith(('chital.controller.store', 'sqlalchemy'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
