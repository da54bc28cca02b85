"""The daemons' heap and Python's cyclic garbage collector.

A full collection walks every object the collector tracks. Most of a daemon's objects are made
while it starts (modules, SQLAlchemy's metadata and compiled statements, protobuf descriptors,
gRPC's handlers) and live until it exits; walking them in every full collection made each one a
pause of tens of milliseconds with the GIL held, in which no call was answered: the tail of the
create latency under a steady load. :func:`settle_heap` moves them out of the collector's reach
once the daemon serves, so that a full collection walks only what was made since.
"""

from __future__ import annotations

import gc

__all__ = ["settle_heap"]


def settle_heap() -> int:
    """Collect once, then freeze what is left (``gc.freeze``): the objects of the start-up are
    never walked again (they are still freed by reference counting). Call it once the daemon is
    serving. Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
