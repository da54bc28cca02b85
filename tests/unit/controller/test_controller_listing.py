"""Store.list_containers: filters, label selectors and positions, on SQLite and PostgreSQL.

The listing runs as one query per page (the label selector is matched by the database); these
cases pin down what a page holds, so that a faster plan cannot change an answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from chital.controller.db import make_engine
from chital.controller.placement import choose_host
from chital.controller.records import (
    AgentInfoRecord,
    ContainerRecord,
    ContainerRecordState,
    ContainerSpec,
    HostHealth,
)
from chital.controller.store import Store

T0 = datetime(2026, 1, 1, 12, 0, 0)
HOSTS = ("h1", "h2")


@pytest.fixture
def store(fresh_database_url: str) -> Iterator[Store]:
    engine = make_engine(fresh_database_url)
    s = Store(engine)
    s.create_schema()
    for i, host_id in enumerate(HOSTS):
        s.register_host(host_id, f"127.0.0.1:{i + 1}", {}, 0, T0)
        s.record_health(
            host_id, HostHealth.READY, T0, info=AgentInfoRecord(device="fake", boot_id="b"), last_seen=T0
        )
    yield s
    engine.dispose()


def create(store: Store, uid: str, host: str, labels: dict[str, str], seconds: float) -> None:
    spec = ContainerSpec(name=uid, labels=labels, host=host)
    store.create_container(uid, f"r-{uid}", spec, T0 + timedelta(seconds=seconds), choose_host)


def walk(store: Store, page: int, **filters: object) -> list[str]:
    """Every uid of a listing, page by page from the last item's (created, uid)."""
    out: list[str] = []
    after = None
    while True:
        items: list[ContainerRecord] = store.list_containers(page, after, **filters)  # type: ignore[arg-type]
        out += [c.uid for c in items]
        if len(items) < page:
            return out
        after = (items[-1].created, items[-1].uid)


@pytest.fixture
def fleet(store: Store) -> dict[str, dict[str, object]]:
    """24 containers over two hosts; three share each creation time (ties in ``created``)."""
    made: dict[str, dict[str, object]] = {}
    for i in range(24):
        uid = f"c{i:02d}"
        host = HOSTS[i % 2]
        labels = {"app.example.com/tier": ["web", "db", "cache"][i % 3], "team": "a" if i < 12 else "b"}
        create(store, uid, host, labels, seconds=i // 3)
        made[uid] = {"host": host, "labels": labels, "order": (i // 3, uid)}
    return made


def expected(fleet: dict[str, dict[str, object]], keep: object) -> list[str]:
    chosen = [uid for uid, c in fleet.items() if keep(c)]  # type: ignore[operator]
    return sorted(chosen, key=lambda uid: fleet[uid]["order"])  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize("page", [1, 2, 5, 100])
def test_pages_of_every_filter_cover_the_listing_once_in_order(
    store: Store, fleet: dict[str, dict[str, object]], page: int
) -> None:
    assert walk(store, page) == expected(fleet, lambda c: True)
    assert walk(store, page, host_ref="h2") == expected(fleet, lambda c: c["host"] == "h2")
    web = {"app.example.com/tier": "web"}
    assert walk(store, page, labels=web) == expected(
        fleet, lambda c: c["labels"]["app.example.com/tier"] == "web"
    )
    both = {"app.example.com/tier": "db", "team": "b"}
    assert walk(store, page, labels=both, host_ref="h1") == expected(
        fleet,
        lambda c: (
            c["host"] == "h1" and c["labels"]["app.example.com/tier"] == "db" and c["labels"]["team"] == "b"
        ),
    )


def test_a_selector_matches_whole_values_of_existing_keys_only(
    store: Store, fleet: dict[str, dict[str, object]]
) -> None:
    assert store.list_containers(100, labels={"team": "a"})
    for labels in (
        {"team": ""},
        {"team": "a%"},
        {"team": "A"},
        {"tea": "a"},
        {"app": "web"},  # a prefix of a dotted key is another key
        {'te"am': "a"},  # no stored key can hold a quote: nothing matches, no SQL error
        {"team": "a", "app.example.com/tier": "nope"},
    ):
        assert store.list_containers(100, labels=labels) == [], labels


def test_a_state_filter_lists_that_state_only(store: Store, fleet: dict[str, dict[str, object]]) -> None:
    for uid in ("c05", "c17"):
        store.finish_create(uid, True, "", T0 + timedelta(seconds=30))
    assert walk(store, 1, state=ContainerRecordState.CREATED) == ["c05", "c17"]
    assert walk(store, 1, state=ContainerRecordState.CREATED, host_ref="h2") == ["c05", "c17"]
    assert walk(store, 1, state=ContainerRecordState.CREATED, host_ref="h1") == []
    pending = walk(store, 3, state=ContainerRecordState.PENDING)
    assert pending == [uid for uid in expected(fleet, lambda c: True) if uid not in ("c05", "c17")]
