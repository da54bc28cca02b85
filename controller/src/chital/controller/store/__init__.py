"""The controller's state store: every read and write of the database goes through :class:`Store`.

Rules (after Nomad's state store):

- Callers pass ids and timestamps in; the store invents neither, so replays are deterministic.
- Callers get frozen dataclasses (:mod:`chital.controller.records`), never live ORM objects.
- Every change of a container or process appends an event row in the same transaction; listeners
  registered with :meth:`Store.add_listener` run after the commit (they wake waiters and watchers).
- No transaction is ever held open across a call to an agent.
"""

from __future__ import annotations

from chital.controller.records import AgentEventRecord, Candidate
from chital.controller.store.containers import ContainerStore
from chital.controller.store.creates import CreateStore, FinishCreate, PlaceIntent
from chital.controller.store.events import EventStore
from chital.controller.store.hosts import HostStore
from chital.controller.store.paging import Cursor
from chital.controller.store.processes import ProcessStore
from chital.controller.store.retention import RetentionStore
from chital.controller.store.sync import SyncStore

__all__ = ["AgentEventRecord", "Candidate", "Cursor", "FinishCreate", "PlaceIntent", "Store"]


class Store(HostStore, ContainerStore, CreateStore, ProcessStore, SyncStore, EventStore, RetentionStore):
    """SQL-backed store of hosts, containers, processes and events.

    One object, one engine: the aggregates (:mod:`.hosts`, :mod:`.containers`, :mod:`.processes`,
    :mod:`.events`, with :mod:`.creates` (the create path's batches), :mod:`.sync` and
    :mod:`.retention`) are parts of this class and share
    :class:`~chital.controller.store._base.StoreBase`'s sessions, so every write, whatever its
    aggregate, is one transaction that locks rows in the store's lock order (see
    :mod:`chital.controller.store._base`). Page tokens: :mod:`.paging`.
    """
