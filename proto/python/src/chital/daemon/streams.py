"""A separate, capped budget of threads for the calls that stay open: streams and waits.

The daemons serve gRPC from a thread pool. A call that stays open (a Watch, a ``logs -f``, a
WaitProcess, an agent's event stream) holds its thread for as long as its client is attached, so
with one pool for everything, as many attached clients as threads starve every other call. The
servers therefore size their pool as ``max_workers + max_streams`` and install
:class:`StreamLimitInterceptor` with ``max_streams``: at most that many long-lived calls run at
once, so at least ``max_workers`` threads always remain for the short calls; one more long-lived
call is refused at once with ``RESOURCE_EXHAUSTED`` (the client retries later or elsewhere),
instead of queueing behind the others without a word.

A call is long-lived when it streams (responses, requests or both) or when its full method name is
in ``long_unary`` (unary calls that wait for something, like WaitProcess). An idle attached stream
costs a blocked thread: no CPU, a stack's resident pages (measured in docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc

from chital.errdefs.grpc import rewrap_handler

__all__ = ["DEFAULT_MAX_STREAMS", "StreamLimitInterceptor"]

log = logging.getLogger("chital.daemon.streams")

#: Long-lived calls a daemon serves at once unless configured otherwise.
DEFAULT_MAX_STREAMS = 4096
# The refusal is logged at most this often (a client retrying in a loop must not flood the log).
_LOG_EVERY_SECONDS = 60.0


class StreamLimitInterceptor(grpc.ServerInterceptor):
    """Admits at most ``limit`` long-lived calls at once; refuses more with RESOURCE_EXHAUSTED.

    Put it after the authentication interceptor (a caller that is refused anyway takes no slot)
    and before the error interceptor. A slot is freed when gRPC ends the call (its termination
    callback: the client left, or the handler finished) or when the handler returns, whichever
    comes first.
    """

    def __init__(self, limit: int, long_unary: Iterable[str] = ()) -> None:
        if limit < 1:
            raise ValueError(f"max_streams must be at least 1, got {limit}")
        self._limit = limit
        self._long_unary = frozenset(long_unary)
        self._lock = threading.Lock()
        self._in_use = 0
        self._refused = 0
        self._last_log = -_LOG_EVERY_SECONDS

    @property
    def limit(self) -> int:
        """How many long-lived calls may run at once."""
        return self._limit

    def in_use(self) -> int:
        """How many long-lived calls run now."""
        with self._lock:
            return self._in_use

    def refused(self) -> int:
        """How many long-lived calls were refused since the start."""
        with self._lock:
            return self._refused

    def _admit(self, context: grpc.ServicerContext, method: str) -> Callable[[], None]:
        """Take a slot for the call, or abort it; returns the slot's release (idempotent)."""
        with self._lock:
            if self._in_use >= self._limit:
                self._refused += 1
                now = time.monotonic()
                noisy = now - self._last_log >= _LOG_EVERY_SECONDS
                if noisy:
                    self._last_log = now
            else:
                self._in_use += 1
                noisy = None
        if noisy is not None:
            if noisy:
                log.warning(
                    "refused %s: %d streams and waits are open, the most this server serves "
                    "(max_streams); refusals are logged once a minute",
                    method,
                    self._limit,
                )
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this server already serves {self._limit} streams and waits (max_streams): retry later",
            )
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                self._in_use -= 1

        context.add_callback(release)
        return release

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        streaming = handler.request_streaming or handler.response_streaming
        if not streaming and method not in self._long_unary:
            return handler

        def wrap_unary(fn: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                release = self._admit(context, method)
                try:
                    return fn(request, context)
                finally:
                    release()

            return call

        def wrap_stream(fn: Callable[[Any, grpc.ServicerContext], Iterator[Any]]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                release = self._admit(context, method)
                try:
                    yield from fn(request, context)
                finally:
                    release()

            return call

        return rewrap_handler(handler, wrap_unary, wrap_stream)
