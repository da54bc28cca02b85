"""API tokens and the audit log, in SQL.

A token string is ``chital_<id>_<secret>``: ``id`` is 12 hex digits (the primary key, shown in
listings and the audit log), ``secret`` is 32 random bytes in unpadded URL-safe base64. Only the
SHA-256 of the secret is stored; a salted slow hash buys nothing for a 256-bit random secret. The
string is returned once, at creation.

:meth:`Tokens.verify` tells "token expired" and "token revoked" apart only once the secret matched,
so a caller without the secret learns nothing about a token id.

Verified tokens are cached in memory for a few seconds (:class:`VerifiedCache`), so that a call
does not read the database to check its token: keyed by the SHA-256 of the whole token string
(never the string itself), bounded in size, and dropped at once when this process revokes the
token. Expiry is checked on every call against the cached expiry time. A revocation made by
another controller sharing the database takes effect here within ``cache_ttl`` seconds.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from chital.controller import db
from chital.controller.models import AuditRow, TokenRow
from chital.controller.store.paging import Filter, decode_id_token, encode_id_token
from chital.controller.validation import page_size
from chital.errdefs import FailedPrecondition, InvalidArgument, NotFound, Unavailable

__all__ = [
    "ROLES",
    "AuditLog",
    "AuditPage",
    "AuditRecord",
    "InvalidToken",
    "TokenRecord",
    "Tokens",
    "create_token",
    "local_principal",
    "open_database",
]

#: Client roles, strongest first (the OU of a user certificate, the role of a token).
ROLES: tuple[str, ...] = ("admin", "operator", "viewer")
PREFIX = "chital_"
ID_HEX = 12
NAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._@-]{0,61}[A-Za-z0-9])?")
# Unpadded URL-safe base64 of 32 bytes.
SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}")
ID_ATTEMPTS = 3
ID_RE = re.compile(rf"[0-9a-f]{{{ID_HEX}}}")
log = logging.getLogger("chital.controller.audit")

# last_used_at is written at most this often per token and controller (seconds).
LAST_USED_INTERVAL = 60.0
# How long a verified token is trusted without reading its row again (seconds), and how many are.
VERIFIED_TTL = 5.0
VERIFIED_SIZE = 1024
MAX_DETAIL = 1024


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def local_principal() -> str:
    """The principal of a token made on this machine with ``chital-controller token create``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"local:{user}"


class InvalidToken(Exception):  # noqa: N818 - a reason, shown to the caller as UNAUTHENTICATED
    """The bearer token is malformed, unknown, wrong, expired or revoked (the message says which)."""


@dataclass(frozen=True)
class TokenRecord:
    """A token without its secret."""

    id: str
    name: str
    role: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    created_by: str
    last_used_at: datetime | None

    @property
    def principal(self) -> str:
        """How the audit log names a caller with this token."""
        return f"token:{self.name}/{self.id}"

    def state(self, now: datetime) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def _record(row: TokenRow) -> TokenRecord:
    return TokenRecord(
        id=row.id,
        name=row.name,
        role=row.role,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        created_by=row.created_by,
        last_used_at=row.last_used_at,
    )


def validate_token_request(name: str, role: str, ttl_seconds: float | None) -> None:
    """InvalidArgument naming the bad field of a new token."""
    if not NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"token name {name[:80]!r} must be 1-63 characters of [A-Za-z0-9._@-], "
            "starting and ending with a letter or digit"
        )
    if role not in ROLES:
        raise InvalidArgument(f"token role {role[:20]!r} must be one of {', '.join(ROLES)}")
    if ttl_seconds is not None and not 0 < ttl_seconds <= 100 * 365 * 86400:
        raise InvalidArgument("ttl_seconds must be positive and at most 100 years (0: no expiry)")


class VerifiedCache:
    """Tokens verified recently, by the SHA-256 of the token string. Thread-safe.

    At most ``size`` entries (the least recently used goes first); an entry is trusted for ``ttl``
    seconds after the database read that verified it. :meth:`drop` removes a token's entries and
    makes a verification that read the database before the drop unable to add its (stale) result.
    """

    def __init__(self, ttl: float, size: int, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.size = size
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[TokenRecord, float]] = OrderedDict()
        self._generation = 0  # bumped by every drop

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def generation(self) -> int:
        """Pass to :meth:`put`: a drop in between makes the put a no-op."""
        with self._lock:
            return self._generation

    def get(self, key: str) -> TokenRecord | None:
        """The record verified under ``key`` less than ``ttl`` seconds ago, or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            record, at = entry
            if self._monotonic() - at >= self.ttl:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return record

    def put(self, key: str, record: TokenRecord, generation: int, at: float) -> None:
        """Remember ``record``, read from the database at monotonic time ``at``, unless a drop came
        after :meth:`generation` returned ``generation``."""
        if self.ttl <= 0 or self.size <= 0:
            return
        with self._lock:
            if generation != self._generation:
                return
            self._entries[key] = (record, at)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def drop(self, token_id: str) -> None:
        """Forget every entry of the token ``token_id`` (it was revoked)."""
        with self._lock:
            self._generation += 1
            for key in [k for k, (r, _) in self._entries.items() if r.id == token_id]:
                del self._entries[key]


class Tokens:
    """Create, list, revoke and verify tokens. Thread-safe.

    :meth:`verify` trusts a token it verified less than ``cache_ttl`` seconds ago without reading
    the database (``cache_ttl=0`` reads it on every call); see the module docstring.
    """

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], datetime] = _utc_now,
        *,
        last_used_interval: float = LAST_USED_INTERVAL,
        cache_ttl: float = VERIFIED_TTL,
        cache_size: int = VERIFIED_SIZE,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._monotonic = monotonic
        self.verified = VerifiedCache(cache_ttl, cache_size, monotonic)
        self._read = engine.execution_options(**{db.READONLY_OPTION: True})
        self._clock = clock
        self._last_used_interval = last_used_interval
        self._last_used: dict[str, float] = {}
        self._lock = threading.Lock()

    def create(
        self, name: str, role: str, ttl_seconds: float | None, created_by: str
    ) -> tuple[str, TokenRecord]:
        """A new token: the token string (to show once) and its record."""
        validate_token_request(name, role, ttl_seconds)
        now = self._clock()
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        for attempt in range(ID_ATTEMPTS):
            row = TokenRow(
                id=secrets.token_hex(ID_HEX // 2),
                name=name,
                role=role,
                secret_sha256=_sha256(secret),
                created_at=now,
                expires_at=None if ttl_seconds is None else now + timedelta(seconds=ttl_seconds),
                revoked_at=None,
                created_by=created_by[:255],
                last_used_at=None,
            )
            try:
                with Session(self._engine) as session, session.begin():
                    session.add(row)
                    session.flush()
                    record = _record(row)
            except IntegrityError:
                # 48 random bits: a collision is rare, but must not fail a create.
                if attempt == ID_ATTEMPTS - 1:
                    raise
                continue
            return f"{PREFIX}{record.id}_{secret}", record
        raise AssertionError("unreachable")  # pragma: no cover

    def list(self) -> list[TokenRecord]:
        """Every token, oldest first."""
        with Session(self._read) as session:
            rows = session.scalars(sa.select(TokenRow).order_by(TokenRow.created_at, TokenRow.id)).all()
            return [_record(r) for r in rows]

    def get(self, token_id: str) -> TokenRecord:
        """One token by id; NotFound."""
        with Session(self._read) as session:
            row = session.get(TokenRow, token_id)
            if row is None:
                raise NotFound(f"token {token_id[:40]!r} not found")
            return _record(row)

    def revoke(self, token_id: str) -> TokenRecord:
        """Revoke a token (idempotent: the first revocation time stays); NotFound."""
        if not ID_RE.fullmatch(token_id):
            raise InvalidArgument(f"token id {token_id[:40]!r} must be {ID_HEX} hex digits")
        with Session(self._engine) as session, session.begin():
            row = session.get(TokenRow, token_id)
            if row is None:
                raise NotFound(f"token {token_id} not found")
            if row.revoked_at is None:
                row.revoked_at = self._clock()
            record = _record(row)
        # After the commit: a verify that reads the row from now on sees the revocation, and one
        # that read it before cannot cache what it read (the generation changed).
        self.verified.drop(token_id)
        return record

    def verify(self, token: str) -> TokenRecord:
        """The record of a usable token; InvalidToken says why not."""
        token_id, secret = _parse(token)
        key = _sha256(token)
        cached = self.verified.get(key)
        if cached is not None:
            # The secret matched when it was cached (the key covers it); expiry is checked now.
            state = cached.state(self._clock())
            if state != "active":
                raise InvalidToken(f"token {state}")
            self._touch(cached.id)
            return cached
        generation = self.verified.generation()
        read_at = self._monotonic()
        with Session(self._read) as session:
            row = session.get(TokenRow, token_id)
            record = None if row is None else _record(row)
            digest = "" if row is None else row.secret_sha256
        # Compare even for an unknown id, so that the timing does not tell ids apart.
        if not hmac.compare_digest(_sha256(secret), digest or "0" * 64) or record is None:
            raise InvalidToken("invalid token")
        state = record.state(self._clock())
        if state != "active":
            raise InvalidToken(f"token {state}")
        self.verified.put(key, record, generation, read_at)
        self._touch(record.id)
        return record

    def _touch(self, token_id: str) -> None:
        """Record the use, at most once per interval (a write per call would serialize every call
        on SQLite's write lock)."""
        now = self._monotonic()
        with self._lock:
            last = self._last_used.get(token_id)
            if last is not None and now - last < self._last_used_interval:
                return
            self._last_used[token_id] = now
        with self._engine.begin() as conn:
            conn.execute(
                sa.update(TokenRow).where(TokenRow.id == token_id).values(last_used_at=self._clock())
            )


def _parse(token: str) -> tuple[str, str]:
    """``chital_<id>_<secret>`` -> (id, secret); InvalidToken if it has another shape."""
    body = token.removeprefix(PREFIX)
    token_id, sep, secret = body[:ID_HEX], body[ID_HEX : ID_HEX + 1], body[ID_HEX + 1 :]
    if (
        not token.startswith(PREFIX)
        or sep != "_"
        or not ID_RE.fullmatch(token_id)
        or not SECRET_RE.fullmatch(secret)
    ):
        raise InvalidToken("invalid token: not a chital token (chital_<id>_<secret>)")
    return token_id, secret


def create_token(
    database_url: str,
    *,
    name: str,
    role: str = "admin",
    ttl_seconds: float | None = None,
    created_by: str = "",
) -> tuple[str, TokenRecord]:
    """Make a token directly in the database at ``database_url`` (bootstrap: the CLI's
    ``token create``, and harnesses that need an admin token before any client can call).
    The schema must be migrated."""
    engine = open_database(database_url)
    try:
        return Tokens(engine).create(name, role, ttl_seconds, created_by or local_principal())
    finally:
        engine.dispose()


def open_database(database_url: str) -> Engine:
    """The controller's engine for ``database_url``; FailedPrecondition if it has no tokens table
    (not migrated to 0003 yet). The caller disposes of it."""
    engine = db.make_engine(database_url)
    try:
        migrated = sa.inspect(engine).has_table("tokens")
    except Exception:
        engine.dispose()
        raise
    if not migrated:
        engine.dispose()
        raise FailedPrecondition("the database has no tokens table: run `chital-controller db upgrade` first")
    return engine


@dataclass(frozen=True)
class AuditRecord:
    """One audited call."""

    id: int
    at: datetime
    principal: str
    role: str
    method: str
    request_id: str
    target: str
    code: str
    detail: str


@dataclass(frozen=True)
class AuditPage:
    """A page of the audit log, newest first."""

    items: list[AuditRecord]
    next_page_token: str


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class AuditLog:
    """Appends to and pages through the audit_log table.

    Entries are written by one background thread in batches (every ``batch_interval`` seconds, or
    sooner when ``max_batch`` are waiting), so that auditing adds no durable commit of its own to
    each call: on SQLite every commit takes the one write lock, and a commit per audited call cut
    the create rate by a fifth. The price is a window of ``batch_interval``: entries of calls made
    just before the controller is killed (not stopped) can be lost. A stopped controller writes
    everything (:meth:`close`). When the database cannot be written, entries wait and are retried;
    once ``max_pending`` wait, :meth:`append` blocks up to ``append_timeout`` s and then raises
    Unavailable, so mutations are not made faster than they can be audited. :meth:`list` writes the
    waiting entries first: a reader sees every call that returned before it asked.
    """

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], datetime] = _utc_now,
        *,
        batch_interval: float = 0.05,
        max_batch: int = 512,
        max_pending: int = 10_000,
        append_timeout: float = 5.0,
    ) -> None:
        self._engine = engine
        self._read = engine.execution_options(**{db.READONLY_OPTION: True})
        self._clock = clock
        self._batch_interval = batch_interval
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._append_timeout = append_timeout
        self._cond = threading.Condition()
        self._pending: list[dict[str, object]] = []
        self._queued = 0  # entries appended, ever
        self._written = 0  # entries committed, ever (the first _written of those _queued)
        self._closed = False
        self._flushing = 0  # callers of flush() waiting: write at once
        self._thread: threading.Thread | None = None

    def append(
        self,
        *,
        principal: str,
        role: str,
        method: str,
        request_id: str,
        target: str,
        code: str,
        detail: str = "",
    ) -> None:
        """Queue one entry (values are cut to the column sizes); it is committed within
        ``batch_interval`` seconds."""
        row: dict[str, object] = {
            "at": self._clock(),
            "principal": principal[:255],
            "role": role[:16],
            "method": method[:255],
            "request_id": request_id[:128],
            "target": target[:255],
            "code": code[:32],
            "detail": detail[:MAX_DETAIL],
        }
        with self._cond:
            if self._closed:
                raise Unavailable("the audit log is closed")
            if not self._cond.wait_for(
                lambda: len(self._pending) < self._max_pending or self._closed, self._append_timeout
            ):
                raise Unavailable(f"the audit log is {len(self._pending)} entries behind the database")
            self._pending.append(row)
            self._queued += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every entry appended so far is committed; False on timeout."""
        with self._cond:
            target = self._queued
            self._flushing += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: self._written >= target, timeout)
            finally:
                self._flushing -= 1

    def close(self, timeout: float = 10.0) -> None:
        """Commit what waits, then stop the writer."""
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        failures = 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending) or self._closed)
                if not self._pending:
                    return  # closed, nothing left
                if failures == 0:
                    # Let the calls of the next few milliseconds join this commit.
                    self._cond.wait_for(
                        lambda: len(self._pending) >= self._max_batch or self._closed or self._flushing > 0,
                        self._batch_interval,
                    )
                batch = self._pending[: self._max_batch]
            try:
                with self._engine.begin() as conn:
                    conn.execute(sa.insert(AuditRow), batch)
            except Exception:
                failures += 1
                log.exception(
                    "audit log: cannot write %d entries (attempt %d); retrying", len(batch), failures
                )
                with self._cond:
                    if self._closed and failures >= 3:
                        log.error("audit log: %d entries lost at shutdown", len(self._pending))
                        self._written = self._queued
                        self._pending.clear()
                        self._cond.notify_all()
                        return
                    self._cond.wait(min(5.0, 0.1 * 2**failures))
                continue
            failures = 0
            with self._cond:
                del self._pending[: len(batch)]
                self._written += len(batch)
                self._cond.notify_all()

    def list(self, size: int = 0, page_token: str = "", principal: str = "") -> AuditPage:
        """Newest first. ``principal`` matches exactly, or as a prefix up to a '/'
        ("token:ci" matches "token:ci/0123456789ab"). Entries still queued are committed first."""
        self.flush()
        limit = page_size(size)
        filters: Filter = {"principal": principal}
        before = decode_id_token(page_token, "ListAuditLog", filters)
        query = sa.select(AuditRow).order_by(AuditRow.id.desc()).limit(limit + 1)
        if before is not None:
            query = query.where(AuditRow.id < before)
        if principal:
            query = query.where(
                sa.or_(
                    AuditRow.principal == principal,
                    AuditRow.principal.like(_escape_like(principal) + "/%", escape="\\"),
                )
            )
        with Session(self._read) as session:
            rows = session.scalars(query).all()
            items = [
                AuditRecord(
                    id=r.id,
                    at=r.at,
                    principal=r.principal,
                    role=r.role,
                    method=r.method,
                    request_id=r.request_id,
                    target=r.target,
                    code=r.code,
                    detail=r.detail,
                )
                for r in rows[:limit]
            ]
        token = encode_id_token("ListAuditLog", filters, items[-1].id) if len(rows) > limit else ""
        return AuditPage(items, token)
