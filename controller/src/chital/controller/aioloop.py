"""An asyncio event loop in a thread of its own, for the controller's long-lived agent streams.

The health monitor reads every host's heartbeat stream on one such loop and the event ingestor
every host's event stream on another: an idle stream then costs a coroutine, not a thread (with a
thread per stream, a fleet of 1,000 hosts cost the controller thousands of threads). Work that
blocks (database writes) does not run on a loop: it goes to a small pool of threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread"]

log = logging.getLogger("chital.controller.aioloop")

T = TypeVar("T")


class LoopThread:
    """An asyncio event loop running in a daemon thread named ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coroutine`` on the loop (from any thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def call(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the loop (from any thread)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to do there
            self.loop.call_soon_threadsafe(fn)

    def close(self, timeout: float) -> None:
        """Cancel what runs on the loop, wait for it (channels close), stop the thread."""

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=timeout)

        try:
            asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(timeout + 1)
        except (concurrent.futures.TimeoutError, RuntimeError):
            log.warning("the %s loop's streams did not end in %.1f s", self.name, timeout)
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()
