"""The SDK against the real controller of a hollow fleet: every case runs with the synchronous
``Client`` and with ``chital.client.aio.AsyncClient`` (driven on its own event loop through
:class:`AsyncDriver`, which only turns awaits into blocking calls: the requests, retries, deadlines
and conversions are the async client's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

import chital.controller
from chital.client import (
    Client,
    ContainerState,
    DeadlineExceeded,
    EventType,
    HostState,
    NotFound,
    ProcessState,
    RetryPolicy,
    ServerInfo,
    WatchEvent,
)
from chital.client.aio import AsyncClient
from chital.devcluster.hollow import HollowFleet

pytestmark = pytest.mark.timeout(180)

FAST = RetryPolicy(max_attempts=5, initial_backoff=0.05, max_backoff=0.5)


class AsyncDriver:
    """An AsyncClient used from synchronous test code: its coroutines run on a private event loop
    in a thread; async iterators become iterators (leaving one early closes it on the loop)."""

    def __init__(self, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def make() -> AsyncClient:
            return AsyncClient(**kwargs)

        self.client = self._run(make())

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _iterate(self, iterator: AsyncIterator[Any]) -> Iterator[Any]:
        try:
            while True:
                try:
                    yield self._run(anext(iterator))  # type: ignore[arg-type]
                except StopAsyncIteration:
                    return
        finally:
            self._run(iterator.aclose())  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            if inspect.isawaitable(result):
                return self._run(result)
            assert hasattr(result, "__anext__"), f"{name} returned {result!r}"
            return self._iterate(result)

        return call

    def close(self) -> None:
        self._run(self.client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def open_client(kind: str, **kwargs: Any) -> Any:
    return Client(**kwargs) if kind == "sync" else AsyncDriver(**kwargs)


@pytest.fixture(scope="module")
def fleet() -> Iterator[HollowFleet]:
    with HollowFleet(agents=2) as f:
        yield f


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client(fleet: HollowFleet, kind: str) -> Iterator[Any]:
    c = open_client(kind, **fleet.client_config.client_kwargs(), timeout=20.0, retries=FAST)
    try:
        yield c
    finally:
        c.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_both_clients_have_the_same_surface() -> None:
    public = {n for n in dir(Client) if not n.startswith("_")}
    assert public == {n for n in dir(AsyncClient) if not n.startswith("_")}
    for name in sorted(public):
        sync, aio = getattr(Client, name), getattr(AsyncClient, name)
        if isinstance(sync, property) or not callable(sync):
            continue
        assert inspect.signature(sync).parameters.keys() == inspect.signature(aio).parameters.keys(), name
        if name == "close":
            continue
        returns = str(inspect.signature(sync).return_annotation)
        if returns.startswith("Iterator["):
            assert str(inspect.signature(aio).return_annotation) == "Async" + returns, name
        elif name != "from_config":
            assert inspect.iscoroutinefunction(aio), name
            assert inspect.signature(aio).return_annotation == returns, name


def test_server_info(fleet: HollowFleet, client: Any, kind: str) -> None:
    info = client.server_info()
    assert isinstance(info, ServerInfo)
    # The fleet's controller is a subprocess of this checkout: its version is chital.controller's.
    assert info == ServerInfo(
        version=chital.controller.__version__,
        api_versions=(
            "chital.api.admin.v1",
            "chital.api.container.v1",
            "chital.api.host.v1",
            "chital.api.rollout.v1",
        ),
        database="postgresql" if (fleet.database_url or "").startswith("postgresql") else "sqlite",
        leader=True,  # the fleet's only controller leads (on PostgreSQL once it holds the lease)
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.version = "x"  # type: ignore[misc]
    # Any role may ask, a viewer included.
    viewer = client.create_token(unique("viewer"), "viewer")
    kwargs = {**fleet.client_config.client_kwargs(), "token": viewer.bearer_token}
    other = open_client(kind, **kwargs, timeout=20.0, retries=FAST)
    try:
        assert other.whoami().role == "viewer"
        assert other.server_info() == info
    finally:
        other.close()
        client.revoke_token(viewer.token.id)


def test_exec_wait_and_logs(client: Any) -> None:
    container = client.create_container(unique("exec"))
    assert container.state is ContainerState.CREATED
    proc = client.exec(container.uid, ["sh", "-c", "echo out; echo err >&2; exit 7"])
    done = client.wait_process(proc.uid, timeout=30)
    assert (done.state, done.exit_code) == (ProcessState.EXITED, 7)
    chunks = list(client.stream_logs(proc.uid))
    assert b"".join(c.data for c in chunks if c.stream.name == "STDOUT") == b"out\n"
    assert b"".join(c.data for c in chunks if c.stream.name == "STDERR") == b"err\n"
    assert [p.uid for p in client.iter_processes(container.uid)] == [proc.uid]
    client.delete_container(container.uid, force=True)


def test_iterators_cross_pages(client: Any) -> None:
    team = unique("team")
    created = [client.create_container(unique("page"), labels={"team": team}) for _ in range(5)]
    first = client.list_containers_page(page_size=2, label_selector={"team": team})
    assert len(first.items) == 2 and first.next_page_token
    listed = list(client.iter_containers(label_selector={"team": team}, page_size=2))
    assert [c.uid for c in listed] == [c.uid for c in created]
    assert [c.uid for c in client.list_containers(label_selector=f"team={team}", page_size=3)] == [
        c.uid for c in created
    ]
    hosts = list(client.iter_hosts(page_size=1))
    assert len(hosts) == 2 and all(h.state is HostState.READY for h in hosts)
    for c in created:
        client.delete_container(c.uid, force=True)


def test_a_per_call_timeout_is_the_deadline(client: Any) -> None:
    # Calls the server cannot finish in time: following the logs of a process that runs for a
    # minute, and watching a container nothing changes. (A tiny timeout on a quick call is a race
    # between gRPC's deadline timer and the answer, which the answer sometimes wins on a busy machine.)
    container = client.create_container(unique("deadline"))
    process = client.exec(container.uid, ["sleep", "60"])
    with pytest.raises(DeadlineExceeded):
        list(client.stream_logs(process.uid, follow=True, timeout=0.5))
    with pytest.raises(DeadlineExceeded):  # live only (revision 0): nothing comes
        list(client.watch(since_revision=0, container=container.uid, timeout=0.5))
    assert client.get_container(container.uid, timeout=5).uid == container.uid
    client.delete_container(container.uid, force=True, timeout=20)


def test_errors_are_the_same_classes(client: Any) -> None:
    with pytest.raises(NotFound):
        client.get_container(unique("missing"))
    with pytest.raises(NotFound):
        list(client.stream_logs("0" * 32))
    with pytest.raises(ValueError, match="ttl"):
        client.create_token("x", "viewer", ttl=0.5)


def test_watch_sees_a_container_change(client: Any) -> None:
    container = client.create_container(unique("watch"))
    events: list[WatchEvent] = []
    for event in client.watch(since_revision=1, container=container.uid, timeout=30):
        events.append(event)
        if event.type is EventType.CONTAINER_CHANGED and event.container is not None:
            break
    assert events and events[-1].container is not None
    assert events[-1].container.uid == container.uid
    client.delete_container(container.uid, force=True)


def test_drain_a_host(fleet: HollowFleet, client: Any, kind: str) -> None:
    agent = fleet.add_agent(name=unique("drained"))
    deadline = time.monotonic() + 30
    while (host := client.get_host(agent.address)).state is not HostState.READY:
        assert time.monotonic() < deadline, f"the new host stays {host.state}"
        time.sleep(0.1)
    container = client.create_container(unique("on-drained"), host=host.id)
    proc = client.exec(container.uid, ["sleep", "60"])
    result = client.drain_host(host.id, grace=1.0)
    assert result.stopped_containers == 1
    assert client.wait_process(proc.uid, timeout=30).state is ProcessState.EXITED
    assert client.get_container(container.uid).state is ContainerState.STOPPED
    client.delete_container(container.uid)
    client.remove_host(host.id)
    with pytest.raises(NotFound):
        client.get_host(host.id)
    agent.stop()


def test_no_address_reads_the_environment_and_the_config_file(
    fleet: HollowFleet, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("CHITAL_CONTROLLER", "CHITAL_TOKEN", "CHITAL_CACERT", "CHITAL_CONTEXT", "CHITAL_INSECURE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CHITAL_CONFIG", str(fleet.config_path))  # context "hollow" is current
    c = open_client(kind)
    try:
        assert c.target == fleet.target
        assert c.whoami().role == "admin"
    finally:
        c.close()
    monkeypatch.setenv("CHITAL_CONFIG", str(fleet.config_path.with_name("none.toml")))
    for key, value in fleet.client_config.env().items():
        monkeypatch.setenv(key, value)
    c = open_client(kind)
    try:
        assert c.target == fleet.target
        assert c.whoami().role == "admin"
    finally:
        c.close()


# -- watch across broken connections -----------------------------------------------------------------


class BreakingProxy:
    """A TCP proxy on 127.0.0.1 to ``target`` whose connections :meth:`break_all` closes at once
    (what a controller restart or a lost network path looks like to the client)."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.accepted = 0
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            with self._lock:
                self.accepted += 1
                self._sockets += [downstream, upstream]
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def break_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._listener.close()
        self.break_all()


def collect(events: Iterator[WatchEvent], into: list[WatchEvent], until: Callable[[], bool]) -> None:
    for event in events:
        into.append(event)
        if until():
            return


def test_watch_resumes_after_broken_connections_without_gaps_or_duplicates(
    fleet: HollowFleet, client: Any, kind: str
) -> None:
    proxy = BreakingProxy(fleet.target)
    kwargs = {**fleet.client_config.client_kwargs(), "target": proxy.address}
    watcher = open_client(kind, **kwargs, timeout=20.0, retries=FAST)
    try:
        container = client.create_container(unique("resume"))
        seen: list[WatchEvent] = []
        last_uid: list[str] = []
        done = threading.Event()

        def finished() -> bool:
            return bool(last_uid) and any(
                e.process is not None and e.process.uid == last_uid[0] and e.process.exited for e in seen
            )

        def consume() -> None:
            collect(watcher.watch(since_revision=1, container=container.uid, timeout=90), seen, finished)
            done.set()

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        for round_ in range(3):
            proc = client.exec(container.uid, ["true"])
            client.wait_process(proc.uid, timeout=30)
            deadline = time.monotonic() + 30
            while not any(e.process is not None and e.process.uid == proc.uid for e in seen):
                assert time.monotonic() < deadline, "the watch delivers nothing after a break"
                time.sleep(0.05)
            proxy.break_all()  # the watch's stream dies; the next events come on a new one
            if round_ == 2:
                last = client.exec(container.uid, ["true"])
                last_uid.append(last.uid)
                client.wait_process(last.uid, timeout=30)
        assert done.wait(60), "the watch did not see the last process exit"
        thread.join(10)
        assert proxy.accepted >= 2, "no stream was broken"

        # The same events, read in one piece from the controller, without a proxy.
        reference: list[WatchEvent] = []
        collect(
            client.watch(since_revision=1, container=container.uid, timeout=30),
            reference,
            lambda: reference[-1].revision >= seen[-1].revision,
        )
        assert [e.revision for e in seen] == [e.revision for e in reference]
        assert len({e.revision for e in seen}) == len(seen)
        client.delete_container(container.uid, force=True)
    finally:
        watcher.close()
        proxy.close()
