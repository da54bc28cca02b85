"""Group commit: writes that arrive together share one transaction.

A caller hands its item to :meth:`GroupCommitter.submit` and blocks. One committer thread takes
every item waiting when it is free (up to ``max_batch``), writes them with one call of the
``write`` function, which runs them in ONE transaction, and then wakes every waiter of the batch
with its own outcome. Nothing waits for a batch to fill: while a transaction commits, the items
that arrive meanwhile queue up and form the next batch, so a lone caller pays one commit and a
hundred callers together pay about one commit each hundred.

Outcomes:

- ``write`` returns one outcome per item, in order: the item's result, or the
  :class:`~chital.errdefs.ChitalError` that refuses that item alone (for example a name that is
  taken). A refused item must have written nothing; the others of the batch commit all the same.
- If ``write`` raises (the transaction failed: a constraint a concurrent writer broke, a lost
  connection), nothing of the batch was committed. A batch of one gets that error. A larger batch
  is written again one item at a time, so that an item that broke the transaction fails alone;
  when the database is unavailable (:class:`~chital.errdefs.Unavailable`), every waiter of the
  batch gets that error at once instead.
- A waiter is woken only once its item's transaction has committed (or failed): a caller that
  acknowledges after :meth:`~GroupCommitter.submit` returns never acknowledges a write that a crash
  can take back.

The committer thread starts with the first item; :meth:`GroupCommitter.close` writes what is
queued, then ends it. Items submitted after close are refused with Unavailable.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

from chital.errdefs import ChitalError, Internal, Unavailable

__all__ = ["GroupCommitter"]

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("chital.controller.groupcommit")


@dataclass
class _Waiter(Generic[T, R]):
    item: T
    done: threading.Event = field(default_factory=threading.Event)
    result: R | None = None
    error: BaseException | None = None
    answered: bool = False


class GroupCommitter(Generic[T, R]):
    """Batches ``submit``-ted items into shared transactions, written by one thread."""

    def __init__(
        self,
        write: Callable[[Sequence[T]], Sequence[R | ChitalError]],
        *,
        name: str = "group-commit",
        max_batch: int = 256,
        observe: Callable[[int, float], None] | None = None,
    ) -> None:
        """``write(items)`` writes all of ``items`` in one transaction and returns one outcome per
        item (see the module docstring); ``observe(batch size, seconds)`` is called after every
        batch (metrics, tests)."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._write = write
        self._name = name
        self._max_batch = max_batch
        self._observe = observe
        self._cond = threading.Condition()
        self._queue: deque[_Waiter[T, R]] = deque()
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, item: T) -> R:
        """Write ``item`` in the next transaction and return its result once committed; raise its
        refusal, or the error of the transaction that could not commit it."""
        waiter: _Waiter[T, R] = _Waiter(item)
        with self._cond:
            if self._closed:
                raise Unavailable(f"{self._name}: the controller is shutting down")
            self._queue.append(waiter)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()
        waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error
        return cast(R, waiter.result)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the committer thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue) or self._closed)
                if not self._queue:
                    return  # closed and drained
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._max_batch))]
            self._commit(batch)

    def _commit(self, batch: list[_Waiter[T, R]]) -> None:
        start = time.perf_counter()
        try:
            try:
                self._apply(batch)
            except Unavailable as exc:
                self._fail(batch, exc)
            except Exception as exc:  # noqa: BLE001 - every waiter must be woken, with the error
                if len(batch) == 1:
                    self._fail(batch, exc)
                else:
                    # One item may have broken the transaction for all: each on its own now.
                    log.warning(
                        "%s: a batch of %d failed (%s: %s); writing its items one at a time",
                        self._name,
                        len(batch),
                        type(exc).__name__,
                        exc,
                    )
                    for waiter in batch:
                        try:
                            self._apply([waiter])
                        except Exception as one:  # noqa: BLE001 - handed to its waiter
                            self._fail([waiter], one)
        finally:
            for waiter in batch:
                if not waiter.answered:  # pragma: no cover - a bug
                    waiter.error = Internal(f"{self._name}: the item was neither written nor refused")
                waiter.done.set()
            if self._observe is not None:
                self._observe(len(batch), time.perf_counter() - start)

    def _apply(self, batch: list[_Waiter[T, R]]) -> None:
        outcomes = self._write([w.item for w in batch])
        if len(outcomes) != len(batch):
            raise Internal(f"{self._name}: {len(outcomes)} outcomes for {len(batch)} items")
        for waiter, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, ChitalError):
                waiter.error = outcome
            else:
                waiter.result = outcome
            waiter.answered = True

    @staticmethod
    def _fail(batch: list[_Waiter[T, R]], exc: BaseException) -> None:
        for waiter in batch:
            waiter.result = None
            # Each waiter raises its own copy: raising one instance in several threads at once
            # would tangle their tracebacks.
            waiter.error = exc if len(batch) == 1 else _copy_of(exc)
            waiter.answered = True


def _copy_of(exc: BaseException) -> BaseException:
    """A copy of ``exc`` caused by it, or ``exc`` itself if it cannot be copied."""
    try:
        twin = copy.copy(exc)
    except Exception:  # noqa: BLE001 - an exception class whose constructor copy cannot call
        return exc
    twin.__cause__ = exc
    return twin
