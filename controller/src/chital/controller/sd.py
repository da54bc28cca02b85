"""Prometheus file-based service discovery for the agents, written from the controller's host table.

Prometheus reads ``file_sd_configs`` files (``deploy/prometheus/targets/*.json``) and re-reads them
when they change. The controller knows every host, so it keeps ``agents.json`` up to date: one target
group per host, labelled with the host id (the same value as the ``host`` label of the controller's
own per-host metrics, so dashboards can join the two).

An agent's metrics address is the host's ``metrics-address`` label when set (hollow agents on free
ports set it), else the host part of its gRPC address with the default agent metrics port.

    writer = FileSDWriter(Path("/etc/prometheus/targets/agents.json"))
    writer.update(targets_from_hosts(store.list_hosts()))   # e.g. after every host change

Writes are atomic (a temporary file renamed over the old one: Prometheus never reads half a file) and
skipped when nothing changed.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = [
    "DEFAULT_AGENT_METRICS_PORT",
    "METRICS_ADDRESS_LABEL",
    "DiscoveryFileUpdater",
    "FileSDWriter",
    "HostLike",
    "SDTarget",
    "render_targets",
    "targets_from_hosts",
    "write_targets",
]

log = logging.getLogger("chital.controller.sd")

#: The agent's default ``--metrics-listen`` port.
DEFAULT_AGENT_METRICS_PORT = 9472
#: A host label that overrides the derived metrics address (``HOST:PORT``).
METRICS_ADDRESS_LABEL = "metrics-address"


class HostLike(Protocol):
    """The fields of a host record that discovery needs (``chital.controller.records`` has them)."""

    @property
    def id(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def state(self) -> object: ...


@dataclass(frozen=True, slots=True, order=True)
class SDTarget:
    """One agent to scrape."""

    host_id: str
    metrics_address: str


def _metrics_address(grpc_address: str, labels: Mapping[str, str], default_port: int) -> str:
    explicit = labels.get(METRICS_ADDRESS_LABEL, "").strip()
    if explicit:
        return explicit
    host, sep, _port = grpc_address.rpartition(":")
    if not sep:
        host = grpc_address
    return f"{host}:{default_port}"


def targets_from_hosts(
    hosts: Iterable[HostLike], *, default_port: int = DEFAULT_AGENT_METRICS_PORT
) -> list[SDTarget]:
    """Every registered host as a scrape target (NOT_READY and LOST too: ``up == 0`` is the signal)."""
    return sorted(SDTarget(h.id, _metrics_address(h.address, h.labels, default_port)) for h in hosts)


def render_targets(targets: Iterable[SDTarget]) -> str:
    """The file_sd JSON document: deterministic (sorted), so unchanged fleets give identical bytes."""
    groups = [{"targets": [t.metrics_address], "labels": {"host": t.host_id}} for t in sorted(targets)]
    return json.dumps(groups, indent=2, sort_keys=True) + "\n"


def write_targets(path: Path, targets: Iterable[SDTarget]) -> bool:
    """Write ``targets`` to ``path`` atomically; returns False when the file already said the same."""
    text = render_targets(targets)
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # Prometheus often runs as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


class FileSDWriter:
    """Keeps one file_sd file in step with the host table; cheap to call after every change."""

    def __init__(self, path: Path, *, default_port: int = DEFAULT_AGENT_METRICS_PORT) -> None:
        self.path = path
        self.default_port = default_port
        self._lock = threading.Lock()
        self._last: list[SDTarget] | None = None

    def update(self, hosts: Iterable[HostLike]) -> bool:
        """Rewrite the file if the fleet changed; returns True when it wrote."""
        targets = targets_from_hosts(hosts, default_port=self.default_port)
        with self._lock:
            if targets == self._last:
                return False
            wrote = write_targets(self.path, targets)
            self._last = targets
            return wrote


class DiscoveryFileUpdater:
    """Rewrites the file_sd file from ``list_hosts()`` now and every ``interval`` seconds, in a thread.

    Polling keeps it simple and right whatever changed the host table (this controller, another
    replica, an operator's SQL); the writer skips unchanged fleets, so a quiet fleet costs one query.
    """

    def __init__(
        self,
        path: Path,
        list_hosts: Callable[[], Iterable[HostLike]],
        *,
        interval: float = 5.0,
        default_port: int = DEFAULT_AGENT_METRICS_PORT,
    ) -> None:
        self.writer = FileSDWriter(path, default_port=default_port)
        self._list_hosts = list_hosts
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chital-file-sd", daemon=True)

    def update_now(self) -> bool:
        return self.writer.update(self._list_hosts())

    def start(self) -> DiscoveryFileUpdater:
        self.update_now()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self._interval + 5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.update_now()
            except Exception:  # the database may be down for a while: keep the last file, retry
                log.warning("updating %s failed", self.writer.path, exc_info=True)
