"""The daemons' start-up freeze of the collector."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from chital.daemon import settle_heap


@pytest.fixture
def unfreeze() -> Iterator[None]:
    yield
    gc.unfreeze()  # give the test process its heap back


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_start_up_objects_are_frozen_and_later_cycles_still_collected(unfreeze: None) -> None:
    before = Node()
    frozen = settle_heap()
    assert frozen == gc.get_freeze_count() > 0
    assert not any(o is before for o in gc.get_objects())  # out of the collector's generations

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle made after the freeze: only the collector frees it
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None
