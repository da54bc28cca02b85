"""The role table, tokens, the root policy and the docs that describe them."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from chital.api.admin.v1 import admin_pb2
from chital.api.container.v1 import container_pb2
from chital.api.host.v1 import host_pb2
from chital.api.rollout.v1 import rollout_pb2
from chital.controller import db
from chital.controller.__main__ import parse_ttl
from chital.controller.auth import METHOD_ROLES, Principal, role_allows, roles_table_markdown
from chital.controller.config import SETTINGS
from chital.controller.records import SandboxRecord
from chital.controller.server import ControllerConfig
from chital.controller.tokens import AuditLog, InvalidToken, Tokens, create_token
from chital.controller.validation import (
    ADMIN_ONLY_SANDBOX_FIELDS,
    check_root,
    check_sandbox_role,
    sandbox_relaxations,
    validate_allowed_roots,
)
from chital.daemon.roots import DEFAULT_ALLOWED_ROOT
from chital.errdefs import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied

DOC = Path(__file__).resolve().parents[3] / "docs" / "auth.md"


def _served_methods() -> set[str]:
    out = set()
    for module, name in (
        (container_pb2, "ContainerService"),
        (host_pb2, "HostService"),
        (admin_pb2, "AdminService"),
        (rollout_pb2, "RolloutService"),
    ):
        service = module.DESCRIPTOR.services_by_name[name]
        out |= {f"/{service.full_name}/{m.name}" for m in service.methods}
    return out


def test_every_served_method_is_in_the_role_table_and_nothing_else() -> None:
    assert set(METHOD_ROLES) == _served_methods()


def test_roles_of_the_table() -> None:
    for method, rule in METHOD_ROLES.items():
        assert rule.role in ("admin", "operator", "viewer")
        if "/chital.api.host.v1.HostService/" in method and rule.mutating:
            assert rule.role == "admin", method
        # Everyone may ask who they are and what they talk to; the rest of AdminService is admin's.
        if method.startswith("/chital.api.admin.v1.AdminService/") and not method.endswith(
            ("/WhoAmI", "/GetServerInfo")
        ):
            assert rule.role == "admin", method
        # Reads are open to viewers and not audited; every mutation is audited.
        read = re.search(r"/(Get|List|Watch|Wait|Stream|WhoAmI)\w*$", method) is not None
        assert rule.mutating is not read, method
        # Rollouts are admin's, reads included: their events carry task output from the fleet.
        if "/chital.api.rollout.v1.RolloutService/" in method:
            assert rule.role == "admin", method
        elif read and "AdminService" not in method:
            assert rule.role == "viewer", method


def test_role_order() -> None:
    assert role_allows("admin", "viewer") and role_allows("admin", "admin")
    assert role_allows("operator", "operator") and role_allows("operator", "viewer")
    assert not role_allows("operator", "admin")
    assert not role_allows("viewer", "operator")
    assert not role_allows("agent", "viewer") and not role_allows("controller", "viewer")


def test_docs_table_matches_the_code() -> None:
    text = DOC.read_text()
    begin, end = "<!-- BEGIN METHOD_ROLES -->\n", "<!-- END METHOD_ROLES -->"
    table = text[text.index(begin) + len(begin) : text.index(end)]
    assert table == roles_table_markdown(), (
        "docs/auth.md is out of date: paste chital.controller.auth.roles_table_markdown() between the markers"
    )


def test_principal_ids() -> None:
    assert Principal("ci", "operator", "token", "0123456789ab").id == "token:ci/0123456789ab"
    assert Principal("alice", "admin", "certificate").id == "cert:alice"


# -- tokens ---------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    yield engine
    engine.dispose()


def test_token_shape_and_storage(engine: sa.Engine) -> None:
    tokens = Tokens(engine)
    bearer, record = tokens.create("ci", "operator", None, "local:root")
    assert re.fullmatch(r"chital_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", bearer)
    assert bearer.split("_")[1] == record.id
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT secret_sha256 FROM tokens")).one()
    secret = bearer[len("chital_") + 13 :]
    assert row[0] == hashlib.sha256(secret.encode()).hexdigest()
    assert tokens.verify(bearer).id == record.id


def test_token_expiry_revocation_and_bad_strings(engine: sa.Engine) -> None:
    clock = Clock()
    tokens = Tokens(engine, clock)
    bearer, record = tokens.create("short", "viewer", 60, "t")
    assert record.expires_at == clock.now + timedelta(seconds=60)
    assert tokens.verify(bearer).name == "short"
    clock.now += timedelta(seconds=60)
    with pytest.raises(InvalidToken, match=r"^token expired$"):
        tokens.verify(bearer)
    other, other_record = tokens.create("long", "admin", None, "t")
    tokens.revoke(other_record.id)
    with pytest.raises(InvalidToken, match=r"^token revoked$"):
        tokens.verify(other)
    # Expired or revoked is only told to a caller with the secret.
    wrong = other[:-1] + ("A" if other[-1] != "A" else "B")
    with pytest.raises(InvalidToken, match=r"^invalid token$"):
        tokens.verify(wrong)
    for junk in (
        "",
        "chital_",
        "chital_0123456789ab",
        "x" * 63,
        other.replace("chital_", "chitaL_"),
        other + "A",
    ):
        with pytest.raises(InvalidToken):
            tokens.verify(junk)
    with pytest.raises(NotFound):
        tokens.revoke("0123456789ab")
    with pytest.raises(InvalidArgument):
        tokens.revoke("nope")


@pytest.mark.parametrize(
    ("name", "role", "ttl"),
    [
        ("", "admin", None),
        ("a b", "admin", None),
        ("x" * 64, "admin", None),
        ("ok", "root", None),
        ("ok", "admin", 0),
    ],
)
def test_token_request_validation(engine: sa.Engine, name: str, role: str, ttl: float | None) -> None:
    with pytest.raises(InvalidArgument):
        Tokens(engine).create(name, role, ttl, "t")


def test_last_used_is_written_at_most_once_an_interval(engine: sa.Engine) -> None:
    clock = Clock()
    tokens = Tokens(engine, clock, last_used_interval=3600)
    bearer, record = tokens.create("ci", "viewer", None, "t")
    assert record.last_used_at is None
    tokens.verify(bearer)
    first = tokens.get(record.id).last_used_at
    assert first == clock.now
    clock.now += timedelta(seconds=5)
    tokens.verify(bearer)
    assert tokens.get(record.id).last_used_at == first


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _reads(engine: sa.Engine) -> list[str]:
    """Collects the SELECTs on the tokens table made through ``engine`` from now on."""
    seen: list[str] = []

    def on_execute(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "tokens" in statement:
            seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", on_execute)
    return seen


def test_a_verified_token_is_cached_and_a_revocation_in_process_is_seen_at_once(engine: sa.Engine) -> None:
    tokens = Tokens(engine, Clock(), monotonic=Monotonic())
    bearer, record = tokens.create("ci", "operator", None, "t")
    reads = _reads(engine)
    assert tokens.verify(bearer).id == record.id
    assert tokens.verify(bearer).id == record.id
    assert len(reads) == 1  # the second call was served from the cache
    # The cache never holds the token string, only its hash.
    assert bearer not in repr(tokens.verified._entries)
    tokens.revoke(record.id)
    with pytest.raises(InvalidToken, match=r"^token revoked$"):
        tokens.verify(bearer)
    assert len(tokens.verified) == 0


def test_a_cached_token_still_expires_exactly(engine: sa.Engine) -> None:
    clock = Clock()
    tokens = Tokens(engine, clock, monotonic=Monotonic())
    bearer, _ = tokens.create("short", "viewer", 60, "t")
    tokens.verify(bearer)
    clock.now += timedelta(seconds=59, microseconds=999_999)
    tokens.verify(bearer)
    clock.now += timedelta(microseconds=1)
    with pytest.raises(InvalidToken, match=r"^token expired$"):
        tokens.verify(bearer)


def test_a_revocation_elsewhere_is_seen_within_the_ttl(engine: sa.Engine) -> None:
    """Another controller (another Tokens on the same database) revokes: this one trusts its cache
    for at most ``cache_ttl`` seconds."""
    mono = Monotonic()
    here = Tokens(engine, Clock(), monotonic=mono, cache_ttl=5.0)
    elsewhere = Tokens(engine, Clock())
    bearer, record = here.create("ci", "operator", None, "t")
    here.verify(bearer)
    elsewhere.revoke(record.id)
    mono.now += 4.9
    assert here.verify(bearer).id == record.id
    mono.now += 0.1
    with pytest.raises(InvalidToken, match=r"^token revoked$"):
        here.verify(bearer)


def test_a_wrong_secret_is_not_served_from_the_cache(engine: sa.Engine) -> None:
    tokens = Tokens(engine, Clock(), monotonic=Monotonic())
    bearer, _ = tokens.create("ci", "operator", None, "t")
    tokens.verify(bearer)
    wrong = bearer[:-1] + ("A" if bearer[-1] != "A" else "B")
    with pytest.raises(InvalidToken, match=r"^invalid token$"):
        tokens.verify(wrong)


def test_the_cache_is_bounded(engine: sa.Engine) -> None:
    tokens = Tokens(engine, Clock(), monotonic=Monotonic(), cache_size=3)
    bearers = [tokens.create(f"t{i}", "viewer", None, "t")[0] for i in range(5)]
    for bearer in bearers:
        tokens.verify(bearer)
    assert len(tokens.verified) == 3
    reads = _reads(engine)
    tokens.verify(bearers[-1])  # recent: cached
    assert not reads
    tokens.verify(bearers[0])  # evicted: read again
    assert len(reads) == 1


def test_a_verify_that_raced_a_revocation_does_not_cache_its_stale_read(engine: sa.Engine) -> None:
    tokens = Tokens(engine, Clock(), monotonic=Monotonic())
    bearer, record = tokens.create("ci", "operator", None, "t")
    generation = tokens.verified.generation()
    stale = tokens.get(record.id)
    tokens.revoke(record.id)
    tokens.verified.put(hashlib.sha256(bearer.encode()).hexdigest(), stale, generation, 1000.0)
    with pytest.raises(InvalidToken, match=r"^token revoked$"):
        tokens.verify(bearer)


def test_create_token_needs_the_schema(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="db upgrade"):
        create_token(f"sqlite:///{tmp_path / 'empty.db'}", name="admin")
    url = f"sqlite:///{tmp_path / 'ok.db'}"
    db.upgrade(url)
    bearer, record = create_token(url, name="admin")
    assert record.role == "admin" and record.created_by.startswith("local:")
    assert bearer.startswith(f"chital_{record.id}_")


def test_audit_paging_and_principal_filter(engine: sa.Engine) -> None:
    audit = AuditLog(engine)
    for i, who in enumerate(
        ["token:ci/0123456789ab", "token:ci2/ba9876543210", "cert:ci", "token:c%/aaaaaaaaaaaa"] * 3
    ):
        audit.append(principal=who, role="admin", method=f"/m/{i}", request_id="", target="", code="OK")
    page = audit.list(5)
    assert [r.method for r in page.items] == [f"/m/{i}" for i in range(11, 6, -1)]
    rest = audit.list(100, page.next_page_token)
    assert [r.method for r in rest.items] == [
        f"/m/{i}" for i in range(6, -1, -1)
    ] and not rest.next_page_token
    assert {r.principal for r in audit.list(principal="token:ci").items} == {"token:ci/0123456789ab"}
    assert len(audit.list(principal="cert:ci").items) == 3
    assert audit.list(principal="token:c").items == []  # '%' and '_' are literal, names are whole
    assert {r.principal for r in audit.list(principal="token:c%").items} == {"token:c%/aaaaaaaaaaaa"}
    with pytest.raises(InvalidArgument):
        audit.list(page_token="junk")


# -- roots ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "root",
    ["/", "//", "/.", "/etc", "/etc/", "/usr/local/x", "/lib", "/lib64", "/libx32/a", "/boot", "/proc/1/root",
     "/sys", "/dev/shm", "/root", "/run", "/var/run/docker.sock", "/var", "/var/lib", "/var/lib/chital",
     "/var/lib/chital-agent/roots/x", "/bin", "/sbin"],
)  # fmt: skip
def test_system_roots_are_refused(root: str) -> None:
    for allowed in ((), (DEFAULT_ALLOWED_ROOT,)):
        with pytest.raises(PermissionDenied, match="allow_host_root"):
            check_root(root, allowed, allow_host_root=False)
    check_root(root, (), allow_host_root=True)


def test_system_dirs_are_a_second_check_under_any_prefix() -> None:
    # validate_allowed_roots never lets such a prefix through; check_root holds without it too.
    for root in ("/var/lib/chital/x", "/var/run/x", "/var"):
        with pytest.raises(PermissionDenied, match="system directory"):
            check_root(root, ("/var",), allow_host_root=False)
    check_root("/var/tmp/x", ("/var",), allow_host_root=False)


@pytest.mark.parametrize(
    "root", ["/srv/x", "/home/alice/sbx", "/var/tmp/x", "/opt/roots/a", "/usr2", "/srv/chital"]
)
def test_a_root_needs_an_allowed_prefix(root: str) -> None:
    with pytest.raises(
        PermissionDenied, match="not under an allowed root of the controller \\(none are configured"
    ):
        check_root(root, (), allow_host_root=False)
    with pytest.raises(
        PermissionDenied, match=f"not under an allowed root of the controller \\({DEFAULT_ALLOWED_ROOT};"
    ):
        check_root(root, (DEFAULT_ALLOWED_ROOT,), allow_host_root=False)
    check_root(root, (), allow_host_root=True)  # an admin's choice
    check_root("", (), allow_host_root=False)  # the agent makes the root


def test_the_default_allowed_root() -> None:
    assert DEFAULT_ALLOWED_ROOT == "/srv/chital/roots"
    assert validate_allowed_roots([DEFAULT_ALLOWED_ROOT]) == (DEFAULT_ALLOWED_ROOT,)
    assert ControllerConfig().allowed_roots == (DEFAULT_ALLOWED_ROOT,)
    assert SETTINGS.by_key["allowed_roots"].default == [DEFAULT_ALLOWED_ROOT]
    check_root(DEFAULT_ALLOWED_ROOT + "/web", (DEFAULT_ALLOWED_ROOT,), allow_host_root=False)


def test_allowed_roots() -> None:
    allowed = validate_allowed_roots(["/srv/sbx/", "//data//roots"])
    assert allowed == ("/srv/sbx", "/data/roots")
    check_root("/srv/sbx", allowed, allow_host_root=False)
    check_root("/data/roots/a/b", allowed, allow_host_root=False)
    for root in ("/srv/sbx2", "/srv", "/", "/home/x"):
        with pytest.raises(PermissionDenied):
            check_root(root, allowed, allow_host_root=False)
    check_root("/", allowed, allow_host_root=True)
    for bad in ("/", "//", "relative", "/a/../b"):
        with pytest.raises(ValueError, match="allowed root"):
            validate_allowed_roots([bad])
    for bad in ("/var", "/etc/roots", "/var/lib/chital/roots", "/lib64/x", "/run/roots"):
        with pytest.raises(ValueError, match="system directory"):
            validate_allowed_roots([bad])


# -- sandbox relaxations --------------------------------------------------------------------------


def test_every_sandbox_field_is_an_admin_only_relaxation() -> None:
    # A new field of SandboxRecord must be classified: a relaxation nobody gated would be open.
    assert set(ADMIN_ONLY_SANDBOX_FIELDS) == {f.name for f in dataclasses.fields(SandboxRecord)}


@pytest.mark.parametrize(
    ("sandbox", "field"),
    [
        (SandboxRecord(allow_syscalls=("syslog",)), "sandbox.allow_syscalls"),
        (SandboxRecord(allow_raw_sockets=True), "sandbox.allow_raw_sockets"),
        (SandboxRecord(capabilities=("CAP_SYS_ADMIN",)), "sandbox.capabilities"),
        (SandboxRecord(host_network=True), "sandbox.host_network"),
        (SandboxRecord(allow_host_root=True), "sandbox.allow_host_root"),
    ],
)
def test_each_relaxation_needs_an_admin(sandbox: SandboxRecord, field: str) -> None:
    assert sandbox_relaxations(sandbox) == (field,)
    with pytest.raises(
        PermissionDenied, match=re.escape(f"only an admin may set {field} (needs the admin role")
    ):
        check_sandbox_role(sandbox, admin=False)
    check_sandbox_role(sandbox, admin=True)


def test_the_most_isolated_sandbox_is_anyones() -> None:
    assert sandbox_relaxations(SandboxRecord()) == ()
    check_sandbox_role(SandboxRecord(), admin=False)


def test_a_refusal_names_every_relaxation() -> None:
    every = SandboxRecord(("acct",), True, ("CAP_NET_RAW",), True, True)
    with pytest.raises(PermissionDenied) as err:
        check_sandbox_role(every, admin=False)
    assert str(err.value).startswith(
        "only an admin may set sandbox.allow_syscalls, sandbox.allow_raw_sockets, sandbox.capabilities, "
        "sandbox.host_network, sandbox.allow_host_root (needs the admin role: they weaken"
    )


def test_parse_ttl() -> None:
    assert parse_ttl("") is None
    assert parse_ttl("90") == 90
    assert parse_ttl("90m") == 5400
    assert parse_ttl("12h") == 43200
    assert parse_ttl("30d") == 30 * 86400
    for bad in ("soon", "0", "-5", "1w"):
        with pytest.raises(InvalidArgument):
            parse_ttl(bad)


def test_a_colliding_token_id_is_drawn_again(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    from chital.controller import tokens as tokens_module  # noqa: PLC0415

    ids = iter(["0123456789ab", "0123456789ab", "ba9876543210"])
    monkeypatch.setattr(tokens_module.secrets, "token_hex", lambda _n: next(ids))
    tokens = Tokens(engine)
    assert tokens.create("a", "viewer", None, "t")[1].id == "0123456789ab"
    assert tokens.create("b", "viewer", None, "t")[1].id == "ba9876543210"
