"""Page tokens: opaque, round-trip their position, and bound to the list and filter that made them.

The audit log and the rollouts page through the same module; they are tested here on SQLite and
PostgreSQL. ListContainers, ListProcesses and ListHosts are tested through the gRPC API
(tests/integration/controller/test_controller_api.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from chital.controller import db
from chital.controller.models import RolloutRow
from chital.controller.records import ContainerRecordState
from chital.controller.rollouts import RolloutRecordState, _RolloutStore
from chital.controller.store.paging import (
    decode_id_token,
    decode_page_token,
    encode_id_token,
    encode_page_token,
)
from chital.controller.tokens import AuditLog
from chital.errdefs import InvalidArgument

T0 = datetime(2026, 1, 2, 3, 4, 5, 6)


def test_a_token_round_trips_its_position_for_the_same_filter() -> None:
    filters = {"label_selector": {"b": "2", "a": "1"}, "state": ContainerRecordState.RUNNING, "host": ""}
    token = encode_page_token("ListContainers", filters, (T0, "abc"))
    # The same filter, its keys in another order: the same filter.
    same = {"host": "", "state": ContainerRecordState.RUNNING, "label_selector": {"a": "1", "b": "2"}}
    assert decode_page_token(token, "ListContainers", same) == (T0, "abc")
    assert decode_page_token("", "ListContainers", filters) is None
    assert (
        decode_id_token(
            encode_id_token("ListAuditLog", {"principal": ""}, 42), "ListAuditLog", {"principal": ""}
        )
        == 42
    )
    assert "abc" not in token and "ListContainers" not in token  # opaque, not a readable cursor


@pytest.mark.parametrize(
    ("listing", "filters"),
    [
        ("ListContainers", {"label_selector": {"a": "1"}, "state": ContainerRecordState.RUNNING, "host": ""}),
        ("ListContainers", {"label_selector": {"a": "2"}, "state": None, "host": ""}),
        ("ListContainers", {"label_selector": {}, "state": ContainerRecordState.STOPPED, "host": ""}),
        ("ListContainers", {"label_selector": {}, "state": None, "host": "h2"}),
        ("ListProcesses", {"container": "c1"}),  # another list, whatever its filter
    ],
)
def test_a_token_reused_with_another_filter_or_list_is_invalid(
    listing: str, filters: dict[str, object]
) -> None:
    made = {"label_selector": {}, "state": None, "host": ""}
    token = encode_page_token("ListContainers", made, (T0, "abc"))
    with pytest.raises(InvalidArgument, match=f"page_token was issued for a different {listing} request"):
        decode_page_token(token, listing, filters)


def test_the_message_names_the_filter_of_the_call() -> None:
    token = encode_page_token("ListHosts", {"state": None}, (T0, "h1"))
    with pytest.raises(InvalidArgument, match="this call has state='READY'") as err:
        decode_page_token(token, "ListHosts", {"state": "READY"})
    assert "leave page_token empty" in str(err.value)


def test_garbage_is_not_a_token_of_ours() -> None:
    good = encode_id_token("ListAuditLog", {"principal": ""}, 1)
    for bad in ("!!!", "aGVsbG8", "W10", "WzEsIDJd", "x" * 2000):
        with pytest.raises(InvalidArgument, match="not a token this server issued"):
            decode_page_token(bad, "ListContainers", {})
    # A cursor token where an id is expected, and the other way round (same list, same filter).
    cursor = encode_page_token("ListAuditLog", {"principal": ""}, (T0, "x"))
    with pytest.raises(InvalidArgument, match="not a token this server issued"):
        decode_id_token(cursor, "ListAuditLog", {"principal": ""})
    with pytest.raises(InvalidArgument, match="not a token this server issued"):
        decode_page_token(good, "ListAuditLog", {"principal": ""})


@pytest.fixture
def engine(fresh_database_url: str) -> Iterator[sa.Engine]:
    db.upgrade(fresh_database_url)
    engine = db.make_engine(fresh_database_url)
    yield engine
    engine.dispose()


def test_audit_log_pages_are_bound_to_the_principal(engine: sa.Engine) -> None:
    audit = AuditLog(engine)
    for i in range(6):
        who = "token:ci/0123456789ab" if i % 2 else "cert:ops"
        audit.append(principal=who, role="admin", method=f"/m/{i}", request_id="", target="", code="OK")
    first = audit.list(2, principal="token:ci")
    assert [r.method for r in first.items] == ["/m/5", "/m/3"] and first.next_page_token
    rest = audit.list(2, first.next_page_token, principal="token:ci")
    assert [r.method for r in rest.items] == ["/m/1"] and not rest.next_page_token
    for other in ("", "cert:ops"):
        with pytest.raises(InvalidArgument, match="different ListAuditLog request"):
            audit.list(2, first.next_page_token, principal=other)


def _rollout(session: Session, n: int, state: RolloutRecordState) -> None:
    at = T0 + timedelta(seconds=n)
    session.add(
        RolloutRow(
            id=f"r{n}",
            request_id=f"req-{n}",
            playbook="site.yml",
            state=state.value,
            batch_size=1,
            extra_vars={},
            register_hosts=False,
            hosts=[],
            targets=[],
            message="",
            return_code=0,
            last_sequence=0,
            dropped_events=0,
            cancel_requested=False,
            created_by="test",
            created=at,
            started=None,
            ended=None,
            updated=at,
        )
    )


def test_rollout_pages_are_bound_to_the_state(engine: sa.Engine) -> None:
    with Session(engine) as session, session.begin():
        for n in range(5):
            _rollout(session, n, RolloutRecordState.FAILED if n % 2 else RolloutRecordState.SUCCEEDED)
    rollouts = _RolloutStore(engine)
    first = rollouts.page(2, "", RolloutRecordState.SUCCEEDED)
    assert [r.id for r in first.items] == ["r4", "r2"] and first.next_page_token
    rest = rollouts.page(2, first.next_page_token, RolloutRecordState.SUCCEEDED)
    assert [r.id for r in rest.items] == ["r0"] and not rest.next_page_token
    for other in (None, RolloutRecordState.FAILED):
        with pytest.raises(InvalidArgument, match="different ListRollouts request"):
            rollouts.page(2, first.next_page_token, other)
