"""Container and process use cases (no protobuf here: plain values in, records out).

Lifecycle and the choices made:

Every mutating call records the intent in one transaction and returns; the operations driver
(:mod:`operations`) carries it out on the agents, so no RPC holds a thread while a host works.

- **Create** validates, then in ONE transaction places the container (see :mod:`placement`) and
  writes it PENDING, so it is durable before any agent call, and returns that PENDING record; the
  driver then calls the agent's CreateContainer (idempotent by uid) and the container becomes
  CREATED, or FAILED with the agent's error as ``message`` (the FAILED record stays for inspection
  and holds its name). Both writes go through the create committer (:mod:`groupcommit`, with
  :meth:`Store.write_creates`): the intents and outcomes of creates that arrive together share one
  transaction, and each caller goes on only once its transaction has committed. With ``wait``
  the agent's create runs inside the call instead: it returns the CREATED container, or the
  agent's error (its code, for example INVALID_ARGUMENT or PERMISSION_DENIED, and a message naming
  the container), and an unreachable agent is UNAVAILABLE with the container left PENDING: a retry
  with the same request_id (or the reconciler) finishes it.
- **Idempotency**: ``request_id`` is optional. Without one, a call is not idempotent: each creates a
  new container (or process). With one, it names one container for ever (even after delete): a
  retry with the same request_id and the same spec returns that container as it is now and creates
  nothing; if it is still PENDING (an interrupted create) the retry finishes it, and if its create
  FAILED a waiting retry is FAILED_PRECONDITION with the reason. The same request_id with a
  different spec is ALREADY_EXISTS. A new create with a name a non-deleted container holds is
  ALREADY_EXISTS. Exec is idempotent by (container, request_id) with the same rules.
- **Stop** records STOPPING with a deadline (now plus the grace period, default 10 s; a second stop
  can only bring it forward) and returns. The driver sends SIGTERM to the container's processes,
  destroys the container on its agent (SIGKILL to what is left, then the kernel container, cgroup
  and membership are gone) once nothing runs or at the deadline, and records STOPPED. Processes
  whose exit event has not arrived within 5 s of the destroy become LOST; a late exit event still
  records the real exit. A STOPPED container cannot run processes again. Stop of a STOPPED container
  returns it; of a FAILED/LOST/DELETED one is FAILED_PRECONDITION. An unreachable agent is retried;
  if its host is lost, the container becomes LOST. Wait with Watch (or GetContainer).
- **Delete** makes the container DELETED (kept as a record; its name is free again). STOPPED,
  FAILED and LOST containers become DELETED at once. One that is (or may be) on its host
  (PENDING/CREATED/RUNNING/STOPPING) is returned STOPPING with no grace, and the driver destroys
  it and then records DELETED; with live processes that needs ``force`` (else FAILED_PRECONDITION),
  and so does a PENDING one. With ``force`` and a host that is not READY, the record is DELETED at
  once (a leftover on the host is destroyed when the host comes back). Deleting a DELETED
  container returns it. After delete, the uid still finds the record; the name does not.
- **Exec** writes the process STARTING and returns it; the driver calls the agent's StartProcess
  with the process uid, then records pid and RUNNING (unless its exit was seen already). With
  ``wait`` the start runs inside the call: an unreachable agent leaves it STARTING and the call is
  UNAVAILABLE (retry with the same request_id); any other agent error marks it LOST with the error
  as message and returns that error. Without ``wait`` such an error only marks it LOST.
- Exits arrive through the agent's event stream (:mod:`events`) and wake WaitProcess.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from chital.controller.agents import AgentPool, LogChunkRecord
from chital.controller.events import ChangeNotifier
from chital.controller.feed import EventFeed
from chital.controller.groupcommit import GroupCommitter
from chital.controller.metrics import ControllerMetrics
from chital.controller.operations import Operations
from chital.controller.placement import choose_host
from chital.controller.records import (
    Candidate,
    ContainerRecord,
    ContainerRecordState,
    ContainerSpec,
    ContainerStatsRecord,
    EventRecord,
    HostHealth,
    ProcessRecord,
    ProcessRecordState,
    ProcessSpec,
    SyscallCountRecord,
)
from chital.controller.store import FinishCreate, PlaceIntent, Store
from chital.controller.store.creates import CreateOutcome
from chital.controller.store.paging import Cursor, Filter, decode_page_token, encode_page_token
from chital.controller.validation import (
    check_root,
    check_sandbox_role,
    page_size,
    parse_label_selector,
    validate_argv,
    validate_deny_syscalls,
    validate_env,
    validate_ids,
    validate_labels,
    validate_limit,
    validate_name,
    validate_path,
    validate_ref,
    validate_request_id,
    validate_sandbox,
    validate_signal,
)
from chital.daemon.roots import DEFAULT_ALLOWED_ROOT
from chital.errdefs import (
    AlreadyExists,
    ChitalError,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)

__all__ = ["MIN_HEARTBEAT_SECONDS", "Containers", "Page", "WatchHeartbeat"]

T = TypeVar("T")

log = logging.getLogger("chital.controller.containers")

DEFAULT_GRACE_SECONDS = 10.0
MAX_GRACE_SECONDS = 3600.0
WATCH_BATCH = 500


#: How long a waiter or watcher woken by the running event feed sleeps at most between reads
#: (a safety net: the feed wakes it for every change it follows).
FEED_SAFETY_POLL_SECONDS = 5.0

#: The shortest heartbeat interval a watch gets (smaller requests are raised to it).
MIN_HEARTBEAT_SECONDS = 1.0


@dataclass(frozen=True)
class WatchHeartbeat:
    """No event: every event the watch selects up to ``revision`` has been sent."""

    revision: int


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list and the token of the next (empty: the last page)."""

    items: list[T]
    next_page_token: str


class Containers:
    """The container use cases."""

    def __init__(
        self,
        store: Store,
        pool: AgentPool,
        notifier: ChangeNotifier,
        clock: Callable[[], datetime],
        new_id: Callable[[], str],
        *,
        poll_interval: float = 0.5,
        metrics: ControllerMetrics | None = None,
        allowed_roots: tuple[str, ...] = (DEFAULT_ALLOWED_ROOT,),
        feed: EventFeed | None = None,
        operations: Operations | None = None,
    ) -> None:
        # Carries out stops, deletes, and creates and execs that do not wait (None: creates and
        # execs run inline and stops are only recorded; for tests of the rest).
        self._operations = operations
        self._allowed_roots = allowed_roots
        self._store = store
        self._pool = pool
        self._notifier = notifier
        self._clock = clock
        self._new_id = new_id
        self._poll_interval = poll_interval
        self._metrics = metrics or ControllerMetrics()
        # Watch and WaitProcess read and wait through it (one database reader for all of them).
        self._feed = feed or EventFeed(store, notifier, poll_interval=poll_interval)
        # Create intents and create outcomes that arrive together share one transaction.
        self._creates: GroupCommitter[PlaceIntent | FinishCreate, CreateOutcome] = GroupCommitter(
            store.write_creates, name="create-commit"
        )

    def close(self) -> None:
        """Write the creates still queued, then stop the create committer."""
        self._creates.close()

    def _place(self, intent: PlaceIntent) -> tuple[ContainerRecord, bool]:
        outcome = self._creates.submit(intent)
        assert isinstance(outcome, tuple)
        return outcome

    def _finish_create(
        self, record: ContainerRecord, ok: bool, message: str, enforced: tuple[str, ...] = ()
    ) -> ContainerRecord:
        """Record the agent's answer for a PENDING ``record`` (see FinishCreate)."""
        outcome = self._creates.submit(
            FinishCreate(
                record.uid, ok, message, self._clock(), tuple(enforced), record.host_id, record.host_address
            )
        )
        assert isinstance(outcome, ContainerRecord)
        return outcome

    # -- containers -----------------------------------------------------------------------------

    @staticmethod
    def validate_spec(spec: ContainerSpec) -> ContainerSpec:
        """Check a container spec; raise InvalidArgument naming the bad field."""
        validate_name(spec.name)
        validate_labels(spec.labels)
        validate_limit(spec.limits.memory_max_bytes, "limits.memory_max_bytes")
        validate_limit(spec.limits.pids_max, "limits.pids_max")
        validate_limit(spec.limits.cpu_max_millicores, "limits.cpu_max_millicores")
        validate_path(spec.root, "root")
        validate_deny_syscalls(spec.deny_syscalls)
        validate_sandbox(spec.sandbox)
        if spec.host:
            validate_ref(spec.host, "host")
        return spec

    def create(
        self, request_id: str, spec: ContainerSpec, *, admin: bool = False, wait: bool = False
    ) -> ContainerRecord:
        """Create a container. With a ``request_id`` the call is idempotent (a retry returns the
        first result and creates nothing); without one every call creates a container.

        The container is placed and recorded PENDING in one transaction. Without ``wait`` that
        record is returned at once and the operations driver creates it on its host (CREATED, or
        FAILED with the host's error as message). With ``wait`` the host's create runs in this call:
        the container comes back CREATED, or the host's error is raised (see the module docstring).
        ``admin``: the caller has the admin role, the only one that may relax the sandbox
        (validation.check_sandbox_role), ``sandbox.allow_host_root`` lifting the root policy
        included (validation.check_root). Any other caller asking for a relaxation is refused
        before anything is placed, recorded or sent to a host."""
        if request_id:
            validate_request_id(request_id)
        self.validate_spec(spec)
        check_sandbox_role(spec.sandbox, admin=admin)
        check_root(spec.root, self._allowed_roots, allow_host_root=spec.sandbox.allow_host_root)
        pinned = bool(spec.host)

        def choose(candidates: list[Candidate]) -> str:
            try:
                return choose_host(candidates, pinned=pinned)
            except ChitalError as exc:
                self._metrics.placement_failures.labels(type(exc).__name__).inc()
                raise

        record, created = self._place(PlaceIntent(self._new_id(), request_id, spec, self._clock(), choose))
        if not created:
            if not record.matches(spec):
                raise AlreadyExists(
                    f"request_id {request_id!r} was used for a different container ({record.name})"
                )
            if record.state is ContainerRecordState.FAILED and wait:
                raise FailedPrecondition(
                    f"container {record.name} ({record.uid}) is FAILED: {record.message}; "
                    "delete it and create again with a new request_id"
                )
            if record.state is not ContainerRecordState.PENDING:
                return record
        else:
            self._metrics.placements.inc()
        if wait or self._operations is None:
            return self._create_on_host(record)
        self._operations.submit(lambda: self.resume_create(record))
        return record

    def resume_create(self, record: ContainerRecord) -> ContainerRecord:
        """Finish the create of a PENDING container (the operations driver, the reconciler). Stays
        PENDING if its host is unreachable; FAILED on any other agent error."""
        try:
            enforced = self._pool.get(record.host_address).create_container(record)
        except Unavailable:
            return self._store.get_container(record.uid)
        except ChitalError as exc:
            self._metrics.container_creates.labels("failed").inc()
            return self._finish_create(record, False, str(exc))
        self._metrics.container_creates.labels("created").inc()
        return self._created(record, enforced)

    def _created(self, record: ContainerRecord, enforced: tuple[str, ...]) -> ContainerRecord:
        """Record a create the agent did. If a stop or delete came first (the record is no longer
        PENDING), the copy the agent just made is destroyed again, so none is left behind."""
        done = self._finish_create(record, True, "", enforced)
        if done.state not in (ContainerRecordState.CREATED, ContainerRecordState.RUNNING):
            try:
                self._pool.get(record.host_address).destroy_container(record.uid, 0.0)
            except ChitalError as exc:  # the stop's own destroy, or the reconciler, retries
                log.warning("destroying %s after a late create failed: %s", record.uid, exc)
            if self._operations is not None and done.state is ContainerRecordState.STOPPING:
                self._operations.kick(record.uid)
        return done

    def _create_on_host(self, record: ContainerRecord) -> ContainerRecord:
        """Create ``record`` (PENDING) on its host; raise the agent's error if it refuses (the
        record is FAILED with it) or Unavailable if it cannot be reached (the record stays PENDING)."""
        try:
            enforced = self._pool.get(record.host_address).create_container(record)
        except Unavailable as exc:
            raise Unavailable(
                f"container {record.name} ({record.uid}) is not created yet: {exc.message}; "
                "retry with the same request_id"
            ) from exc
        except ChitalError as exc:
            self._metrics.container_creates.labels("failed").inc()
            failed = self._finish_create(record, False, str(exc))
            if failed.state is not ContainerRecordState.FAILED:  # a concurrent retry created it
                return failed
            raise type(exc)(f"container {record.name} ({record.uid}) is FAILED: {exc.message}") from exc
        self._metrics.container_creates.labels("created").inc()
        return self._created(record, enforced)

    def get(self, ref: str) -> ContainerRecord:
        """A container by uid or name."""
        return self._store.get_container(validate_ref(ref, "container"))

    def list_containers(
        self,
        size: int,
        token: str,
        label_selector: str = "",
        state: ContainerRecordState | None = None,
        host: str = "",
    ) -> Page[ContainerRecord]:
        """A page of containers, oldest first."""
        limit = page_size(size)
        labels = parse_label_selector(label_selector)
        if host:
            validate_ref(host, "host")
        filters: Filter = {"label_selector": labels, "state": state, "host": host}
        after = decode_page_token(token, "ListContainers", filters)
        items = self._store.list_containers(limit + 1, after, labels, state, host)
        return _page(items, limit, lambda c: (c.created, c.uid), "ListContainers", filters)

    def stop(self, ref: str, grace_seconds: float | None = None) -> ContainerRecord:
        """Record a stop and return at once: the container is STOPPING with a deadline of now plus
        the grace period (an earlier deadline of a stop asked for before stays). The operations
        driver sends SIGTERM, destroys the container when nothing runs any more or at the deadline
        (SIGKILL), then records STOPPED. A STOPPED container is returned as it is."""
        grace = _grace(grace_seconds)
        record = self.get(ref)
        if record.state is ContainerRecordState.STOPPED:
            return record
        now = self._clock()
        record = self._store.request_stop(record.uid, now + timedelta(seconds=grace), now)
        self._kick(record)
        return record

    def resume_stop(self, uid: str) -> None:
        """Look at an unfinished stop again (the reconciler); its persisted deadline is kept."""
        if self._operations is not None:
            self._operations.kick(uid)

    def _kick(self, record: ContainerRecord) -> None:
        if self._operations is not None and record.state is ContainerRecordState.STOPPING:
            self._operations.kick(record.uid)

    def delete(self, ref: str, force: bool = False) -> ContainerRecord:
        """Delete a container (see the module docstring for what needs ``force``)."""
        record = self.get(ref)
        if record.state is ContainerRecordState.DELETED:
            return record
        on_host = (ContainerRecordState.CREATED, ContainerRecordState.RUNNING, ContainerRecordState.STOPPING)
        if record.state is ContainerRecordState.PENDING and not force:
            raise FailedPrecondition(f"container {record.name} is still being created; retry or use force")
        live = self._store.live_processes(record.uid)
        if live and not force and record.state in on_host:
            raise FailedPrecondition(
                f"container {record.name} has {len(live)} live processes; stop it or use force"
            )
        now = self._clock()
        if force and record.state in (*on_host, ContainerRecordState.PENDING) and record.host_id:
            host = self._store.get_host(record.host_id)
            if host.health is not HostHealth.READY:
                # force: the record goes now. What may remain on the host is destroyed when the host
                # comes back (the reconciler compares its agent's containers with the records).
                log.warning("deleting %s without reaching %s", record.uid, record.host_address)
                self._store.request_stop(record.uid, now, now, delete=True)
                return self._store.finish_stop(record.uid, now)
        # No grace: what still runs is killed at once.
        record = self._store.request_stop(record.uid, now, now, delete=True)
        self._kick(record)
        return record

    # -- processes ------------------------------------------------------------------------------

    def exec(self, ref: str, request_id: str, spec: ProcessSpec, *, wait: bool = False) -> ProcessRecord:
        """Start a process in a container (idempotent by container and request_id when one is
        given). The process is recorded STARTING; without ``wait`` it is returned so and the
        operations driver starts it, with ``wait`` the host starts it in this call (RUNNING)."""
        validate_ref(ref, "container")
        if request_id:
            validate_request_id(request_id)
        user_id, group_id = validate_ids(spec.user_id, spec.group_id)
        spec = ProcessSpec(
            argv=validate_argv(spec.argv),
            env=validate_env(spec.env),
            cwd=validate_path(spec.cwd or "/", "cwd"),
            user_id=user_id,
            group_id=group_id,
        )
        target = self._store.get_container(ref)
        if target.host_id and target.state in (ContainerRecordState.CREATED, ContainerRecordState.RUNNING):
            host = self._store.get_host(target.host_id)
            if host.health is not HostHealth.READY:
                raise Unavailable(f"host {host.address} of container {target.name} is {host.health.value}")
        process, container, created = self._store.create_process(
            self._new_id(), target.uid, request_id, spec, self._clock()
        )
        if not created:
            same = (process.argv, process.env, process.cwd, process.user_id, process.group_id) == (
                spec.argv,
                spec.env,
                spec.cwd,
                spec.user_id,
                spec.group_id,
            )
            if not same:
                raise AlreadyExists(
                    f"request_id {request_id!r} was used for a different process ({process.uid})"
                )
            if process.state is not ProcessRecordState.STARTING:
                return process
        if not wait and self._operations is not None:
            address = container.host_address
            self._operations.submit(lambda: self._start_on_host(process, address))
            return process
        return self._start_on_host(process, container.host_address, raise_errors=True)

    def _start_on_host(
        self, process: ProcessRecord, address: str, *, raise_errors: bool = False
    ) -> ProcessRecord:
        """StartProcess on the agent, then RUNNING; LOST with the error if the agent refuses.
        An unreachable agent leaves it STARTING (the reconciler marks it LOST when that lasts)."""
        try:
            started = self._pool.get(address).start_process(process)
        except Unavailable:
            if raise_errors:
                raise
            return self._store.get_process(process.uid)
        except ChitalError as exc:
            lost = self._store.mark_process_lost(process.uid, f"start failed: {exc}", self._clock())
            if raise_errors:
                raise
            return lost
        return self._store.mark_process_running(process.uid, started.pid, started.start_time, self._clock())

    def get_process(self, uid: str) -> ProcessRecord:
        """A process by uid."""
        return self._store.get_process(validate_ref(uid, "process_uid"))

    def list_processes(self, ref: str, size: int, token: str) -> Page[ProcessRecord]:
        """A page of processes of one container (uid or name) or of all."""
        limit = page_size(size)
        container_uid = self.get(ref).uid if ref else ""
        filters: Filter = {"container": container_uid}
        after = decode_page_token(token, "ListProcesses", filters)
        items = self._store.list_processes(limit + 1, after, container_uid)
        return _page(items, limit, lambda p: (p.created, p.uid), "ListProcesses", filters)

    def wait_process(
        self,
        uid: str,
        timeout: float | None,
        is_active: Callable[[], bool],
        on_end: Callable[[Callable[[], None]], object] | None = None,
    ) -> ProcessRecord:
        """The process once it finished, or as it is when ``timeout`` expires or the caller leaves.

        ``on_end`` (the RPC's ``add_callback``) registers a function to call when the caller
        leaves: the wait then ends at once instead of at its next poll.
        """
        validate_ref(uid, "process_uid")
        if timeout is not None and timeout < 0:
            raise InvalidArgument("timeout must not be negative")
        deadline = None if timeout is None else time.monotonic() + timeout
        sub = self._feed.subscribe(process_uid=uid)
        if on_end is not None:
            on_end(sub.wake)
        try:
            while True:
                sub.event.clear()
                process = self._store.get_process(uid)
                if process.finished or not is_active():
                    return process
                wait = self._wait_poll(on_end is not None)
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return process
                    wait = min(wait, remaining)
                sub.event.wait(wait)
        finally:
            self._feed.unsubscribe(sub)

    def _wait_poll(self, woken_on_end: bool) -> float:
        """How long a waiter sleeps between reads when nothing wakes it. The running feed wakes it
        for every change it follows (this replica's and the others'): the poll is then only a
        safety net, unless nothing tells it that its caller left."""
        if self._feed.running and woken_on_end:
            return max(self._poll_interval, FEED_SAFETY_POLL_SECONDS)
        return self._poll_interval

    def signal_process(self, uid: str, signal: int) -> ProcessRecord:
        """Send a signal to a running process."""
        validate_ref(uid, "process_uid")
        validate_signal(signal)
        process = self._store.get_process(uid)
        if process.state is not ProcessRecordState.RUNNING:
            raise FailedPrecondition(f"process {uid} is {process.state.value}, not RUNNING")
        container = self._store.get_container(process.container_uid)
        self._pool.get(container.host_address).signal_process(uid, signal)
        return self._store.get_process(uid)

    def stats(self, ref: str) -> ContainerStatsRecord:
        """The container's syscall counters and cgroup usage, read live from its host."""
        container = self.get(ref)
        if container.state not in (
            ContainerRecordState.CREATED,
            ContainerRecordState.RUNNING,
            ContainerRecordState.STOPPING,
        ):
            raise FailedPrecondition(
                f"container {container.name} is {container.state.value}: it has no counters on a host"
            )
        host = self._store.get_host(container.host_id)
        resp = self._pool.get(container.host_address).get_container_stats(container.uid)
        syscalls = sorted(
            (SyscallCountRecord(s.name, s.number, s.calls, s.denied) for s in resp.syscalls),
            key=lambda s: (-s.calls, s.number),
        )
        return ContainerStatsRecord(
            container_uid=container.uid,
            syscalls=tuple(syscalls),
            syscalls_total=resp.syscalls_total,
            denied_total=resp.denied_total,
            members=resp.members,
            memory_current_bytes=resp.memory_current_bytes,
            oom_kills=resp.oom_kills,
            pids_current=resp.pids_current,
            cpu_usage_usec=resp.cpu_usage_usec,
            sandboxed=host.agent.sandboxed,
        )

    def stream_logs(
        self, uid: str, follow: bool, tail_lines: int
    ) -> tuple[Callable[[], None], Iterator[LogChunkRecord]]:
        """The process's output from its agent: a cancel function and the chunks."""
        validate_ref(uid, "process_uid")
        if tail_lines < 0:
            raise InvalidArgument("tail_lines must not be negative")
        process = self._store.get_process(uid)
        container = self._store.get_container(process.container_uid)
        if not container.host_address:
            raise FailedPrecondition(f"container {container.name} has no host")
        call, chunks = self._pool.get(container.host_address).stream_logs(uid, follow, tail_lines, None)
        return call.cancel, chunks

    def watch(
        self,
        since_revision: int,
        ref: str,
        is_active: Callable[[], bool],
        heartbeat: float = 0.0,
        on_end: Callable[[Callable[[], None]], object] | None = None,
    ) -> Iterator[EventRecord | WatchHeartbeat]:
        """Events after ``since_revision`` (0: from now on), then live ones, until the caller leaves.

        With ``heartbeat`` (seconds, raised to at least :data:`MIN_HEARTBEAT_SECONDS`), a
        :class:`WatchHeartbeat` comes first, with the revision the watch starts after, and then
        after every ``heartbeat`` seconds without an event, with the revision the watch has
        reached (every selected event up to it was sent): a client resumes from it without gaps.
        ``on_end`` (the RPC's ``add_callback``) registers a function to call when the caller leaves.

        Events come through the event feed: the watch is woken only for the events it selects, and
        reads the database only while it catches up from further back than the feed keeps.
        """
        if since_revision < 0:
            raise InvalidArgument("since_revision must not be negative")
        if heartbeat < 0:
            raise InvalidArgument("heartbeat_interval must not be negative")
        if heartbeat:
            heartbeat = max(heartbeat, MIN_HEARTBEAT_SECONDS)
        container_uid = self.get(ref).uid if ref else ""
        after = since_revision if since_revision > 0 else self._store.last_revision()
        if heartbeat:
            yield WatchHeartbeat(after)
        last_sent = time.monotonic()
        sub = self._feed.subscribe(container_uid)
        if on_end is not None:
            on_end(sub.wake)
        try:
            while is_active():
                sub.event.clear()
                batch, covered = self._feed.read(after, container_uid, WATCH_BATCH)
                for event in batch:
                    yield event
                    after = event.revision
                    last_sent = time.monotonic()
                if len(batch) < WATCH_BATCH:
                    # Every selected event up to ``covered`` was sent: move past the others.
                    after = max(after, covered)
                    wait = self._wait_poll(on_end is not None)
                    if heartbeat:
                        quiet = time.monotonic() - last_sent
                        if quiet >= heartbeat:
                            yield WatchHeartbeat(after)
                            last_sent = time.monotonic()
                            quiet = 0.0
                        wait = min(wait, heartbeat - quiet)
                    sub.event.wait(max(0.0, wait))
        finally:
            self._feed.unsubscribe(sub)


def _grace(seconds: float | None) -> float:
    if seconds is None:
        return DEFAULT_GRACE_SECONDS
    if seconds < 0 or seconds > MAX_GRACE_SECONDS:
        raise InvalidArgument(f"grace_period must be 0-{MAX_GRACE_SECONDS:.0f} s")
    return seconds


def _page(items: list[T], limit: int, key: Callable[[T], Cursor], listing: str, filters: Filter) -> Page[T]:
    """The first ``limit`` of ``items`` (fetched as ``limit + 1``), with a token for the rest if any,
    bound to ``listing`` and ``filters``."""
    if len(items) > limit:
        items = items[:limit]
        return Page(items, encode_page_token(listing, filters, key(items[-1])))
    return Page(items, "")
