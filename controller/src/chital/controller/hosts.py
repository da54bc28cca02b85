"""Host use cases: register, list, cordon, drain, remove.

- Register is idempotent by address: registering it again updates labels and capacity and returns the
  same host. The host is checked at once (GetInfo), so a reachable agent is READY when the call
  returns; an unreachable one is registered NOT_READY and the monitor keeps trying.
- Cordon: no new placements. Drain (like ``nomad node drain``): a long-running operation with a
  deadline. DrainHost records it and returns: the host is DRAINING (no placements) and every container
  on it is stopping, each with SIGTERM and SIGKILL at the grace period or the drain's deadline,
  whichever comes first, so the drain completes by its deadline. GetHost shows its progress
  (containers remaining); containers are not moved elsewhere. Uncordon: back to ACTIVE from either
  (containers already stopping stay stopping).
- Remove: FAILED_PRECONDITION while containers are placed there, unless ``force`` (they become LOST).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta

from chital.controller.agents import AgentPool
from chital.controller.containers import Containers, Page, _grace, _page
from chital.controller.health import HostMonitor
from chital.controller.records import AdminState, HostRecord, HostRecordState
from chital.controller.store import Store
from chital.controller.store.paging import Filter, decode_page_token
from chital.controller.validation import (
    page_size,
    validate_labels,
    validate_ref,
)
from chital.errdefs import InvalidArgument

__all__ = ["Hosts", "validate_address"]

ADDRESS_RE = re.compile(
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):(?P<port>[0-9]{1,5})"
)


def validate_address(address: str) -> str:
    """``host:port`` (``[v6]:port`` too) with a port of 1-65535."""
    if not address or len(address) > 255:
        raise InvalidArgument("address is required (host:port, at most 255 characters)")
    match = ADDRESS_RE.fullmatch(address)
    if match is None or not 1 <= int(match.group("port")) <= 65535:
        raise InvalidArgument(f"address {address[:80]!r} is not host:port")
    return address


class Hosts:
    """The host use cases."""

    def __init__(
        self,
        store: Store,
        pool: AgentPool,
        monitor: HostMonitor,
        containers: Containers,
        *,
        clock: Callable[[], datetime],
        new_id: Callable[[], str],
    ) -> None:
        self._store = store
        self._pool = pool
        self._monitor = monitor
        self._containers = containers
        self._clock = clock
        self._new_id = new_id

    def register(self, address: str, labels: dict[str, str], max_containers: int) -> HostRecord:
        """Add or update a host, and check it at once."""
        validate_address(address)
        validate_labels(labels)
        if max_containers < 0:
            raise InvalidArgument("capacity.max_containers must not be negative")
        self._pool.check_address(address)  # an insecure controller reaches loopback agents only
        host, _ = self._store.register_host(self._new_id(), address, labels, max_containers, self._clock())
        self._monitor.check_one(host)
        return self._store.get_host(host.id)

    def get(self, ref: str) -> HostRecord:
        """A host by id or address."""
        return self._store.get_host(validate_ref(ref, "host"))

    def list_hosts(self, size: int, token: str, state: HostRecordState | None = None) -> Page[HostRecord]:
        """A page of hosts, oldest first."""
        limit = page_size(size)
        filters: Filter = {"state": state}
        after = decode_page_token(token, "ListHosts", filters)
        items = self._store.list_hosts(limit + 1, after, state)
        return _page(items, limit, lambda h: (h.created, h.id), "ListHosts", filters)

    def cordon(self, ref: str) -> HostRecord:
        """No new containers on the host."""
        return self._store.set_admin_state(validate_ref(ref, "host"), AdminState.CORDONED, self._clock())

    def uncordon(self, ref: str) -> HostRecord:
        """The host takes new containers again."""
        return self._store.set_admin_state(validate_ref(ref, "host"), AdminState.ACTIVE, self._clock())

    def drain(
        self, ref: str, grace_seconds: float | None, deadline_seconds: float | None = None
    ) -> tuple[HostRecord, int]:
        """Start a drain and return at once: in one transaction the host becomes DRAINING and every
        PENDING/CREATED/RUNNING/STOPPING container on it STOPPING, with a stop deadline of now plus
        the grace period or the drain's deadline, whichever comes first (default deadline: the
        grace period). The operations driver stops them all at once (SIGTERM, SIGKILL at that
        deadline), so the drain is complete by its deadline. Returns the host (with its drain's
        progress) and how many containers the drain stops; GetHost shows how many remain."""
        grace = _grace(grace_seconds)
        deadline = grace if deadline_seconds is None else _grace(deadline_seconds)
        now = self._clock()
        host, containers = self._store.start_drain(
            validate_ref(ref, "host"),
            now + timedelta(seconds=deadline),
            now + timedelta(seconds=min(grace, deadline)),
            now,
        )
        for container in containers:
            self._containers.resume_stop(container.uid)
        return host, host.drain.containers if host.drain is not None else len(containers)

    def remove(self, ref: str, force: bool) -> None:
        """Forget a host."""
        host = self.get(ref)
        self._store.remove_host(host.id, force, self._clock())
        self._monitor.forget(host.id)
        self._pool.forget(host.address)
