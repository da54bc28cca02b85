"""Several controllers behind one client: a channel per address, and failover between them.

A target may name several controllers, ``host:port,host:port`` (``CHITAL_CONTROLLER``, a repeated
``--controller``, a context's ``controllers`` list). They all serve the same API over the same
database (docs/ha.md). The client keeps one channel per address, each with its own TLS check of that
address's certificate (its host name or IP in the certificate's SANs), and sends every call to the
*current* address. A call that fails with UNAVAILABLE (the controller is down, restarting, or is a
follower asked for leader work) makes the next address current; the call itself is then tried there,
within its deadline and at most once per address, when it is safe to repeat (a call that ran out of
time, DEADLINE_EXCEEDED, is not repeated, but the next call goes to the next address: a frozen
controller keeps its connections open and would otherwise hold every call until its deadline):

- reads, and writes that are idempotent (a create, an exec and a rollout carry a ``request_id``
  that the client reuses; the others name their resource) are tried again;
- ``SignalProcess`` and ``CreateToken`` are not (a repeated signal is not harmless, a lost answer
  would leave two tokens): their UNAVAILABLE is raised, and the next call goes to the next address.

Why not gRPC's own load balancing over the list (an ``ipv4:`` target with ``pick_first``)? It takes
IP literals only, and one channel has one authority, so TLS would check every controller against
the same name; a channel per address keeps host names and per-address certificate checks, and
keeps each channel's own retry policy (`_retry`) for the blips of one controller. A TLS
failure is not failed over: it is a configuration error, and it is reported as such.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc

from ._errors import is_tls_failure, status_code
from ._retry import METHOD_CLASSES, RetryClass

__all__ = ["Endpoint", "Endpoints", "may_retry_elsewhere", "should_fail_over", "split_targets"]

_SERVICES = {
    "containers": "chital.api.container.v1.ContainerService",
    "hosts": "chital.api.host.v1.HostService",
    "admin": "chital.api.admin.v1.AdminService",
    "rollouts": "chital.api.rollout.v1.RolloutService",
}
_ROLLOUT = _SERVICES["rollouts"]
#: Rollout calls (not in the channel's retry config: gRPC does not retry them on one address).
_ROLLOUT_CLASSES = {
    (_ROLLOUT, "StartRollout"): RetryClass.IDEMPOTENT_WRITE,  # by request_id
    (_ROLLOUT, "GetRollout"): RetryClass.READ,
    (_ROLLOUT, "ListRollouts"): RetryClass.READ,
    (_ROLLOUT, "WatchRollout"): RetryClass.READ,
    (_ROLLOUT, "CancelRollout"): RetryClass.IDEMPOTENT_WRITE,
}


def split_targets(target: str) -> tuple[str, ...]:
    """``host:port[,host:port...]`` as its addresses, in order, each once; ValueError when empty."""
    seen: dict[str, None] = {}
    for part in target.split(","):
        address = part.strip()
        if address:
            seen.setdefault(address, None)
    if not seen:
        raise ValueError(f"no controller address in {target!r}")
    return tuple(seen)


def should_fail_over(exc: grpc.RpcError) -> bool:
    """Whether an error says this controller is away (the next one should be asked)."""
    return status_code(exc) is grpc.StatusCode.UNAVAILABLE and not is_tls_failure(exc)


def timed_out(exc: grpc.RpcError) -> bool:
    """DEADLINE_EXCEEDED: the controller may be frozen or overloaded. The call is not sent again (a
    write may still be running there), but the next call goes to the next controller; without
    this, a controller that stopped answering (SIGSTOP, a stalled machine: its connections stay
    open) would hold every later call until its deadline too."""
    return status_code(exc) is grpc.StatusCode.DEADLINE_EXCEEDED


def may_retry_elsewhere(service: str, method: str) -> bool:
    """Whether the call may be sent again to another controller after UNAVAILABLE."""
    full = _SERVICES.get(service, service)
    retry_class = METHOD_CLASSES.get((full, method)) or _ROLLOUT_CLASSES.get((full, method))
    return retry_class in (RetryClass.READ, RetryClass.IDEMPOTENT_WRITE)


_Channel = TypeVar("_Channel")


@dataclass(frozen=True)
class Endpoint(Generic[_Channel]):
    """One controller: its address, its channel and the stubs on it."""

    target: str
    channel: _Channel
    stubs: dict[str, Any]


class Endpoints(Generic[_Channel]):
    """The client's controllers and which one is current (thread-safe)."""

    def __init__(
        self,
        targets: Sequence[str],
        connect: Callable[[str], tuple[_Channel, dict[str, Any]]],
    ) -> None:
        self.all: tuple[Endpoint[_Channel], ...] = tuple(Endpoint(t, *connect(t)) for t in targets)
        self._current = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.all)

    def current(self) -> tuple[int, Endpoint[_Channel]]:
        """The index and the endpoint calls go to now."""
        with self._lock:
            return self._current, self.all[self._current]

    def failed(self, index: int) -> None:
        """Endpoint ``index`` answered UNAVAILABLE: the next one becomes current (unless another
        call already moved on)."""
        with self._lock:
            if self._current == index:
                self._current = (index + 1) % len(self.all)
