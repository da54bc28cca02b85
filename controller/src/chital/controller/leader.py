"""Leader election: one controller of several on one PostgreSQL database runs the background work.

Every controller serves the API. Exactly one of them, the *leader*, runs what must not run twice at
once: the health monitor and the agents' event streams, the per-host reconcilers, the operations
driver (stops, deletes, drains), the reconciler, the restart policies, retention and rollouts
(docs/ha.md is the operator's view).

The lease is a PostgreSQL session advisory lock, ``pg_try_advisory_lock(LOCK_KEY)``, taken on a
connection of its own, never one of the engine's pool: a session lock taken on a pooled connection
would stay held after the connection went back to the pool, by whichever thread used it next. The
lock lives as long as that session:

- a leader that dies (kill -9, a crash, its machine gone) closes its connection, or the kernel does:
  the server ends the session and the lock is free at once;
- a leader that is frozen (SIGSTOP, a stalled VM) or cut off from the database sends nothing: the
  session has ``idle_session_timeout`` = ``lease_timeout``, so the server ends it after that long
  (TCP keepalives and ``tcp_user_timeout`` end a connection whose peer is gone).

A follower tries the lock every ``retry_interval`` (0.5 s). The leader confirms its session every
``check_interval`` (0.5 s) with a query on the same connection.

Fencing. The leader stops acting as soon as it cannot show that it still holds the lock: when a
confirmation fails (the connection broke or was ended), and also, by a watchdog thread, when no
confirmation has succeeded for ``fence_after`` (by default 2/3 of ``lease_timeout``). A confirmation
is timed from when it was sent, and the server's idle timer starts when the query ends, which is
later: so a live leader whose confirmations stall gives up at least ``lease_timeout - fence_after``
(1 s by default) before the server can free the lock for another controller. A leader process that is
frozen itself cannot fence: when it runs again its watchdog fires at once, but a background thread
that was in the middle of an agent call or a transaction may finish that one step first. Every such
step is idempotent by uid or conditional in SQL (see docs/ha.md), which is what makes that window
harmless.

Losing the lease is final for the elector's owner: :class:`LeaderElector` calls ``on_lost`` once,
closes the connection (so the lock is released even when only the watchdog fired) and goes back to
trying the lock; the controller (see server.py) stops its leader work at once and exits, and its
supervisor starts it again as a follower, with none of the old term's memory.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from chital.controller.records import ContainerRecordState

if TYPE_CHECKING:
    from chital.controller.feed import EventFeed, Subscription

__all__ = ["LOCK_KEY", "LeaderElector", "StopFollower", "leader_query"]

log = logging.getLogger("chital.controller.leader")

#: The advisory lock's key (``b"chital"`` as a big-endian integer). Advisory locks are per database,
#: so controllers of other databases on the same server do not compete.
LOCK_KEY = int.from_bytes(b"chital", "big")

#: Who holds the lease, for operators (psql) and tests: the leader's ``application_name``.
LEADER_QUERY = (
    "SELECT a.application_name, a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
    "(SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND ((l.classid::bigint << 32) | l.objid::bigint) = {key}"
)


def leader_query(key: int = LOCK_KEY) -> str:
    """SQL that lists the session holding the lease (its application_name, pid): none, or one row."""
    return LEADER_QUERY.format(key=int(key))


class LeaderElector:
    """Campaigns for the lease on its own connection and tells its owner when it wins or loses.

    ``on_elected()`` runs on the elector's thread once the lock is held; ``on_lost(reason)`` runs
    once per term, on the elector's or the watchdog's thread, when the lease may be gone. Both must
    return promptly (start or stop threads; no waiting on the database).
    """

    def __init__(
        self,
        database_url: str,
        *,
        name: str,
        on_elected: Callable[[], None],
        on_lost: Callable[[str], None],
        key: int = LOCK_KEY,
        lease_timeout: float = 3.0,
        retry_interval: float = 0.5,
        check_interval: float = 0.5,
        fence_after: float | None = None,
    ) -> None:
        if lease_timeout < 1.0:
            raise ValueError("lease_timeout must be at least 1 s")
        if not 0 < check_interval < lease_timeout / 2:
            raise ValueError("check_interval must be positive and below half of lease_timeout")
        url = sa.make_url(database_url)
        if url.get_backend_name() != "postgresql":
            raise ValueError(f"leader election needs PostgreSQL, not {url.get_backend_name()}")
        self.name = name
        self.key = key
        self.lease_timeout = lease_timeout
        self.retry_interval = retry_interval
        self.check_interval = check_interval
        self.fence_after = fence_after if fence_after is not None else lease_timeout * 2 / 3
        if not check_interval < self.fence_after < lease_timeout:
            raise ValueError("fence_after must lie between check_interval and lease_timeout")
        self._on_elected = on_elected
        self._on_lost = on_lost
        # NullPool: every connect() is a new session, and close() really closes it.
        self._engine = sa.create_engine(
            url,
            poolclass=NullPool,
            connect_args=self._connect_args(url),
        )
        self._cond = threading.Condition()
        self._stopping = False
        self._leader = False
        self._term = 0
        self._confirmed = 0.0  # monotonic time the last successful confirmation was sent
        self._conn: Any = None
        self._backend_pid = 0
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._last_error = ""
        self._attempted = threading.Event()

    def _connect_args(self, url: sa.URL) -> dict[str, Any]:
        timeout_ms = int(self.lease_timeout * 1000)
        args: dict[str, Any] = {
            # The frozen-leader bound: the server ends the session when it stays idle this long.
            "options": f"-c idle_session_timeout={timeout_ms} -c statement_timeout={timeout_ms}",
            "application_name": f"chital-controller {self.name}"[:63],
            "connect_timeout": max(1, int(self.lease_timeout)),
        }
        if url.host and not url.host.startswith("/"):
            # TCP only (libpq ignores them on a Unix socket): a peer that vanished is noticed
            # within about lease_timeout on either side.
            args.update(
                keepalives=1,
                keepalives_idle=1,
                keepalives_interval=1,
                keepalives_count=max(1, int(self.lease_timeout) - 1),
                tcp_user_timeout=timeout_ms,
            )
        return args

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> LeaderElector:
        """Start campaigning in the background."""
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name="leader-watchdog", daemon=True)
        self._thread.start()
        self._watchdog.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop campaigning and release the lease (closing the session frees the lock at once).

        ``on_lost`` is not called: the owner stops its leader work itself."""
        with self._cond:
            self._stopping = True
            self._leader = False
            self._cond.notify_all()
        for thread in (self._thread, self._watchdog):
            if thread is not None:
                thread.join(timeout)
        self._close()
        self._engine.dispose()

    @property
    def is_leader(self) -> bool:
        """Whether this elector holds the lease as far as it knows (fenced: see the module docs)."""
        with self._cond:
            return self._leader

    @property
    def backend_pid(self) -> int:
        """The server process of the elector's session (0 without one): for tests and logs."""
        with self._cond:
            return self._backend_pid

    @property
    def term(self) -> int:
        """How many times this elector has won the lease."""
        with self._cond:
            return self._term

    def wait_first_attempt(self, timeout: float) -> bool:
        """Wait until the first try for the lock is over: won (``on_elected`` has returned), lost to
        another controller, or failed (the database is away). A controller calls this before it
        reports itself serving, so that one that starts alone leads from its first call on."""
        return self._attempted.wait(timeout)

    def wait_leader(self, timeout: float) -> bool:
        """Wait until this elector leads (tests)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._leader:
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping:
                    return False
                self._cond.wait(left)
            return True

    # -- the campaign -----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                leader, term = self._leader, self._term
            try:
                if self._conn is None:
                    self._connect()
                sent = time.monotonic()
                if leader:
                    self._confirm()
                    with self._cond:
                        if self._leader and self._term == term:
                            self._confirmed = sent
                    delay = self.check_interval
                elif self._try_lock():
                    self._elected(sent)
                    delay = self.check_interval
                else:
                    delay = self.retry_interval
                self._last_error = ""
                self._attempted.set()
            except Exception as exc:  # noqa: BLE001 - any failure of the session ends the lease
                message = str(getattr(exc, "orig", None) or exc).strip().splitlines()
                reason = message[0] if message else type(exc).__name__
                self._close()
                if leader:
                    self._lose(term, f"the lease's database session failed: {reason}")
                elif reason != self._last_error:
                    log.warning("leader election: cannot reach the database: %s", reason)
                self._last_error = reason
                self._attempted.set()
                delay = self.retry_interval
            with self._cond:
                # The watchdog fenced this term meanwhile: end the session, so the lock is free.
                if leader and self._term == term and not self._leader:
                    self._close_locked_session()
                if self._stopping:
                    return
                self._cond.wait(delay)

    def _connect(self) -> None:
        conn = self._engine.raw_connection()
        try:
            driver = conn.driver_connection
            assert driver is not None
            driver.autocommit = True  # idle between queries, never "idle in transaction"
            with contextlib.closing(conn.cursor()) as cur:
                cur.execute("SELECT pg_backend_pid()")
                row = cur.fetchone()
                assert row is not None
                pid = int(row[0])
        except BaseException:
            conn.close()
            raise
        with self._cond:
            self._conn = conn
            self._backend_pid = pid

    def _try_lock(self) -> bool:
        with contextlib.closing(self._conn.cursor()) as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
            return bool(cur.fetchone()[0])

    def _confirm(self) -> None:
        """A round trip on the lease's session; the lock lives exactly as long as the session."""
        with contextlib.closing(self._conn.cursor()) as cur:
            cur.execute("SELECT 1")
            cur.fetchone()

    def _elected(self, sent: float) -> None:
        with self._cond:
            if self._stopping:
                return
            self._leader = True
            self._term += 1
            self._confirmed = sent
            self._cond.notify_all()
        log.warning(
            "leader election: %s is the leader (lease: advisory lock %d, session %d, timeout %.1f s)",
            self.name,
            self.key,
            self._backend_pid,
            self.lease_timeout,
        )
        self._on_elected()

    def _watch(self) -> None:
        """Fence a leader whose confirmations stopped succeeding (a stalled query, a slow server)."""
        with self._cond:
            while not self._stopping:
                if not self._leader:
                    self._cond.wait()
                    continue
                left = self._confirmed + self.fence_after - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                term = self._term
                silent = time.monotonic() - self._confirmed
                self._cond.release()
                try:
                    self._lose(term, f"the lease was not confirmed for {silent:.1f} s")
                finally:
                    self._cond.acquire()

    def _lose(self, term: int, reason: str) -> None:
        with self._cond:
            if not self._leader or self._term != term:
                return
            self._leader = False
            self._cond.notify_all()
        log.error("leader election: %s lost the lease: %s", self.name, reason)
        self._on_lost(reason)

    def _close_locked_session(self) -> None:
        conn, self._conn, self._backend_pid = self._conn, None, 0
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _close(self) -> None:
        with self._cond:
            self._close_locked_session()


class StopFollower:
    """The leader's view of stops recorded by any controller: tails the event feed (which reads the
    events table, the commits of every controller) and hands each container that became STOPPING to
    the operations driver. A follower records a stop, a delete or a drain in the database and returns;
    this is how the leader learns of it within the feed's poll interval, without a reconciler round.
    """

    def __init__(
        self,
        feed: EventFeed,
        kick: Callable[[str], None],
        rescan: Callable[[], None],
        *,
        batch: int = 1000,
    ) -> None:
        self._feed = feed
        self._kick = kick
        self._rescan = rescan
        self._batch = batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sub: Subscription | None = None
        self._after = 0

    def start(self) -> None:
        """Follow from the feed's head on (what came before is the driver's start-up scan)."""
        self._after = self._feed.head()
        self._sub = self._feed.subscribe()
        self._thread = threading.Thread(target=self._run, name="stop-follower", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop following."""
        self._stop.set()
        if self._sub is not None:
            self._sub.wake()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._sub is not None:
            self._feed.unsubscribe(self._sub)
            self._sub = None

    def _run(self) -> None:
        sub = self._sub
        assert sub is not None
        while not self._stop.is_set():
            sub.event.wait(1.0)
            sub.event.clear()
            if self._stop.is_set():
                return
            try:
                self._follow()
            except Exception:  # fell behind the compacted history, or the database is away
                log.warning("following stops failed; scanning the database for them", exc_info=True)
                self._after = self._feed.head()
                with contextlib.suppress(Exception):
                    self._rescan()

    def _follow(self) -> None:
        while True:
            events, covered = self._feed.read(self._after, "", self._batch)
            for event in events:
                container = event.container
                if container is not None and container.state is ContainerRecordState.STOPPING:
                    self._kick(container.uid)
            self._after = max(self._after, covered)
            if len(events) < self._batch:
                return
