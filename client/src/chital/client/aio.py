"""The asyncio client: [`AsyncClient`][chital.client.aio.AsyncClient], with the methods, arguments,
types and errors of [`chital.client.Client`][chital.client.Client], as coroutines and async
iterators.

```python
import asyncio
from chital.client.aio import AsyncClient

async def main() -> None:
    async with AsyncClient() as client:  # CHITAL_* variables, else the current context
        c = await client.create_container("web")
        p = await client.exec(c.uid, ["echo", "hello"])
        async for chunk in client.stream_logs(p.uid, follow=True):
            print(chunk.data.decode(), end="")
        print((await client.wait_process(p.uid)).exit_code)

asyncio.run(main())
```

Create and use a client inside one event loop (``async with`` in the coroutine that uses it).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
import grpc.aio

from chital.api.admin.v1 import admin_pb2_grpc as apb_grpc
from chital.api.container.v1 import container_pb2_grpc as cpb_grpc
from chital.api.host.v1 import host_pb2_grpc as hpb_grpc
from chital.api.rollout.v1 import rollout_pb2_grpc as rpb_grpc

from . import _base, _failover
from . import _ops as ops
from . import _rollouts as rollouts
from ._errors import DeadlineExceeded
from ._rollouts import Rollout, RolloutEvent, RolloutState
from ._types import (
    AuditEntry,
    Container,
    ContainerState,
    ContainerStats,
    DrainResult,
    Host,
    HostState,
    Identity,
    Limits,
    LogChunk,
    NewToken,
    Page,
    Process,
    Sandbox,
    ServerInfo,
    Token,
    WatchEvent,
)

_T = TypeVar("_T")


class AsyncClient(_base.ClientBase):
    """A connection to a chital controller, for asyncio:
    [`chital.client.Client`][chital.client.Client]'s methods, arguments, types and errors, as
    coroutines; what the sync client returns as an iterator is an async iterator here (``async
    for``). Deadlines, retries (the same service config) and watch resumption work as there.

    Use it as an async context manager, or ``await`` [`close`][chital.client.aio.AsyncClient.close]:

    ```python
    async with AsyncClient() as client:
        async for c in client.iter_containers(label_selector={"team": "a"}):
            print(c.name, c.state)
    ```
    """

    def _connect(self, s: _base.Settings) -> None:
        """Open a channel and its stubs per controller address (see `_failover`)."""

        def connect(target: str) -> tuple[grpc.aio.Channel, dict[str, Any]]:
            if s.credentials is None:
                channel = grpc.aio.insecure_channel(target, options=s.options)
            else:
                channel = grpc.aio.secure_channel(target, s.credentials, options=s.options)
            return channel, {
                ops.CONTAINERS: cpb_grpc.ContainerServiceStub(channel),
                ops.HOSTS: hpb_grpc.HostServiceStub(channel),
                ops.ADMIN: apb_grpc.AdminServiceStub(channel),
                rollouts.ROLLOUTS: rpb_grpc.RolloutServiceStub(channel),
            }

        self._endpoints = _failover.Endpoints(s.targets, connect)
        self._random = random.Random()  # noqa: S311 - jitter, not security.
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the channel. Calls in flight are cancelled; the client cannot be used again."""
        if not self._closed:
            self._closed = True
            for endpoint in self._endpoints.all:
                await endpoint.channel.close()

    async def __aenter__(self) -> Self:
        """Return the client itself."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the client."""
        await self.close()

    def __repr__(self) -> str:
        """Show the target and whether the client is closed."""
        flags = (", insecure" if self.insecure else "") + (", closed" if self._closed else "")
        return f"{type(self).__name__}({self.target!r}, timeout={self.timeout}{flags})"

    # -- call machinery ----------------------------------------------------------------------

    async def _call(self, call: ops.Call[_T], timeout: float | None) -> _T:
        loop = asyncio.get_running_loop()
        seconds = _base.deadline(self._settings, timeout, call.extra_timeout)
        end = loop.time() + seconds
        elsewhere = _failover.may_retry_elsewhere(call.service, call.method)
        attempts = len(self._endpoints)
        for attempt in range(attempts):
            index, endpoint = self._endpoints.current()
            method = getattr(endpoint.stubs[call.service], call.method)
            left = seconds if attempt == 0 else end - loop.time()
            try:
                response = await method(call.request, timeout=left, metadata=self._settings.metadata)
            except grpc.RpcError as exc:
                if attempts > 1 and _failover.timed_out(exc):
                    self._endpoints.failed(index)  # not repeated; the next call goes elsewhere
                if attempts == 1 or not _failover.should_fail_over(exc):
                    _base.raise_chital_error(exc)
                self._endpoints.failed(index)
                if not elsewhere or attempt + 1 == attempts or end - loop.time() <= 0:
                    _base.raise_chital_error(exc)
                continue
            return call.convert(response)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _stream(self, call: ops.StreamCall[_T], timeout: float | None) -> AsyncIterator[_T]:
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        attempts = len(self._endpoints)
        for attempt in range(attempts):
            index, endpoint = self._endpoints.current()
            method = getattr(endpoint.stubs[call.service], call.method)
            left = None if end is None else max(end - loop.time(), 0.0)
            stream: Any = method(call.request, timeout=left, metadata=self._settings.metadata)
            received = False
            try:
                async for message in stream:
                    received = True
                    yield call.convert(message)
                return
            except grpc.RpcError as exc:
                if attempts == 1 or not _failover.should_fail_over(exc):
                    _base.raise_chital_error(exc)
                self._endpoints.failed(index)
                # Before its first message a stream is tried on the next controller.
                if received or attempt + 1 == attempts or (end is not None and end <= loop.time()):
                    _base.raise_chital_error(exc)
            finally:
                # Stops the server side when the caller abandons the iterator early.
                stream.cancel()

    @staticmethod
    async def _pages(fetch: Callable[[str], Awaitable[Page[_T]]]) -> AsyncIterator[_T]:
        token = ""
        while True:
            page = await fetch(token)
            for item in page.items:
                yield item
            if not page.next_page_token:
                return
            token = page.next_page_token

    # -- containers --------------------------------------------------------------------------

    async def create_container(
        self,
        name: str,
        *,
        request_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        limits: Limits | None = None,
        root: str = "",
        deny_syscalls: Sequence[str] = (),
        host: str = "",
        sandbox: Sandbox | None = None,
        timeout: float | None = None,
        wait: bool = True,
        restart_policy: str = "never",
        max_restarts: int = 0,
    ) -> Container:
        """Create a container named ``name`` and return it.

        ``request_id`` is the idempotency key (a fresh uuid4 by default); retries reuse it, so a
        create is never done twice (the server accepts calls without one, but then a retry could
        create twice: the SDK always sends one). With ``wait`` (the default) the call returns once
        the host created the container; without, it returns the PENDING container as soon as it is
        recorded, and the controller creates it. ``host`` pins the container to a host (id or
        address). ``deny_syscalls`` names system calls the kernel module refuses to members in
        addition to the host's default list; ``sandbox`` relaxes the default isolation (see
        [`Sandbox`][chital.client.Sandbox]). ``restart_policy`` ("never", "on-failure" with at most
        ``max_restarts`` restarts, or "always") says whether the container is created again on
        another host when its host is lost (see the lifecycle page of the docs).

        If the host refuses the container, this raises the host's error (for example
        [`InvalidArgument`][chital.client.InvalidArgument] for a root that is not a directory); the
        container is kept as FAILED with that reason as its ``message`` and holds its name until it
        is deleted.
        """
        call = ops.create_container(
            name,
            request_id=request_id,
            labels=labels,
            limits=limits,
            root=root,
            deny_syscalls=deny_syscalls,
            host=host,
            sandbox=sandbox,
            wait=wait,
            restart_policy=restart_policy,
            max_restarts=max_restarts,
        )
        return await self._call(call, timeout)

    async def get_container(self, container: str, *, timeout: float | None = None) -> Container:
        """Return a container by uid or name; raises [`NotFound`][chital.client.NotFound]."""
        return await self._call(ops.get_container(container), timeout)

    async def list_containers_page(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        label_selector: str | Mapping[str, str] | None = None,
        state: ContainerState | None = None,
        host: str = "",
        timeout: float | None = None,
    ) -> Page[Container]:
        """Return one page of containers, oldest first.

        ``label_selector`` is ``"k=v,k2=v2"`` or a mapping (all terms must match). Without ``state``
        every container but DELETED ones is listed. ``page_size`` 0 is the server's default (100).
        """
        call = ops.list_containers(
            page_size=page_size,
            page_token=page_token,
            label_selector=label_selector,
            state=state,
            host=host,
        )
        return await self._call(call, timeout)

    def iter_containers(
        self,
        *,
        label_selector: str | Mapping[str, str] | None = None,
        state: ContainerState | None = None,
        host: str = "",
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[Container]:
        """Iterate over every matching container, fetching pages as needed (filters as in
        [`list_containers_page`][chital.client.aio.AsyncClient.list_containers_page]; ``timeout``
        applies to each page)."""
        return self._pages(
            lambda token: self.list_containers_page(
                page_size=page_size,
                page_token=token,
                label_selector=label_selector,
                state=state,
                host=host,
                timeout=timeout,
            )
        )

    list_containers = iter_containers
    """Same as [`iter_containers`][chital.client.aio.AsyncClient.iter_containers] (the older
    name)."""

    async def stop_container(
        self, container: str, *, grace: float | None = None, timeout: float | None = None, wait: bool = True
    ) -> Container:
        """Stop a container: SIGTERM to each of its processes, SIGKILL after ``grace`` seconds
        (server default 10 s), then STOPPED.

        The controller records the stop and carries it out; the call itself returns at once.
        With ``wait`` (the default) this method then asks again until the container is no longer
        STOPPING and returns it (STOPPED; LOST if its host was lost meanwhile); without, it returns
        the STOPPING container. ``timeout`` applies to each call.
        """
        stopping = await self._call(ops.stop_container(container, grace=grace), timeout)
        return await self._settle(stopping, timeout) if wait else stopping

    async def delete_container(
        self, container: str, *, force: bool = False, timeout: float | None = None, wait: bool = True
    ) -> Container:
        """Delete a stopped container (any container with ``force``, killing its processes).

        A container still on its host is stopped first (no grace) and comes back STOPPING; with
        ``wait`` (the default) this method asks again until it is DELETED and returns that
        record. ``timeout`` applies to each call."""
        deleting = await self._call(ops.delete_container(container, force=force), timeout)
        return await self._settle(deleting, timeout) if wait else deleting

    async def _settle(self, container: Container, timeout: float | None) -> Container:
        """Ask again until a stop (or a delete's stop) is carried out."""
        delay = ops.SETTLE_POLL_FIRST
        while not ops.stop_is_over(container):
            await asyncio.sleep(delay)
            delay = ops.next_poll(delay)
            container = await self.get_container(container.uid, timeout=timeout)
        return container

    # -- processes ---------------------------------------------------------------------------

    async def exec(
        self,
        container: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str = "",
        user_id: int | None = None,
        group_id: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        wait: bool = True,
    ) -> Process:
        """Start ``argv`` in a container and return the process (usually STARTING or RUNNING).

        ``request_id`` is the idempotency key (a fresh uuid4 by default), reused across retries, so
        the program is never started twice. With ``wait`` (the default) the call returns once the
        host started it (RUNNING, with its pid); without, it returns it STARTING. ``cwd`` defaults
        to ``/`` inside the container.
        ``user_id``/``group_id`` default to the unprivileged 65534 (nobody/nogroup); 0 runs as
        root, still without capabilities unless the container's sandbox grants some.
        """
        call = ops.exec_(
            container,
            argv,
            env=env,
            cwd=cwd,
            user_id=user_id,
            group_id=group_id,
            request_id=request_id,
            wait=wait,
        )
        return await self._call(call, timeout)

    async def get_process(self, process_uid: str, *, timeout: float | None = None) -> Process:
        """Return a process by uid; raises [`NotFound`][chital.client.NotFound]."""
        return await self._call(ops.get_process(process_uid), timeout)

    async def list_processes_page(
        self,
        container: str = "",
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[Process]:
        """Return one page of the processes of ``container`` (uid or name), or of all containers."""
        call = ops.list_processes(container, page_size=page_size, page_token=page_token)
        return await self._call(call, timeout)

    def iter_processes(
        self, container: str = "", *, page_size: int = 0, timeout: float | None = None
    ) -> AsyncIterator[Process]:
        """Iterate over the processes of ``container`` (uid or name), or of all containers, fetching
        pages as needed (``timeout`` applies to each page)."""
        return self._pages(
            lambda token: self.list_processes_page(
                container, page_size=page_size, page_token=token, timeout=timeout
            )
        )

    list_processes = iter_processes
    """Same as [`iter_processes`][chital.client.aio.AsyncClient.iter_processes] (the older name)."""

    async def wait_process(self, process_uid: str, timeout: float | None = None) -> Process:
        """Wait until a process has exited (or is LOST) and return it; ``timeout`` as in
        [`chital.client.Client.wait_process`][chital.client.Client.wait_process]."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            remaining = ops.WAIT_CHUNK_SECONDS if deadline is None else deadline - loop.time()
            if remaining <= 0:
                return await self.get_process(process_uid)
            process = await self._call(
                ops.wait_process_chunk(process_uid, min(remaining, ops.WAIT_CHUNK_SECONDS)), None
            )
            if ops.wait_is_over(process) or (deadline is not None and loop.time() >= deadline):
                return process

    async def get_container_stats(self, container: str, *, timeout: float | None = None) -> ContainerStats:
        """Return the kernel's per-syscall counters and the cgroup usage of ``container`` (uid or
        name), read live from its host; raises
        [`FailedPrecondition`][chital.client.FailedPrecondition] when it is not on one."""
        return await self._call(ops.get_container_stats(container), timeout)

    async def signal_process(self, process_uid: str, signal: int, *, timeout: float | None = None) -> Process:
        """Send ``signal`` (a number, 1-64) to a running process. Never retried: a repeated signal is
        not harmless."""
        return await self._call(ops.signal_process(process_uid, signal), timeout)

    def stream_logs(
        self,
        process_uid: str,
        *,
        follow: bool = False,
        tail: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[LogChunk]:
        """Iterate over a process's captured stdout and stderr.

        ``tail`` starts with at most that many last lines per stream (0: all). With ``follow``, keep
        streaming until the process exits. The deadline for the whole stream is ``timeout``; by
        default the client's timeout without ``follow`` and none with it. Breaking out of the loop
        cancels the stream.
        """
        if timeout is None and not follow:
            timeout = self.timeout
        return self._stream(ops.stream_logs(process_uid, follow=follow, tail=tail), timeout)

    async def watch(
        self,
        *,
        since_revision: int = 0,
        container: str = "",
        timeout: float | None = None,
        resume: bool = True,
    ) -> AsyncIterator[WatchEvent]:
        """Iterate over container and process events, resuming after a broken stream from the last
        revision delivered; as [`chital.client.Client.watch`][chital.client.Client.watch]."""
        state = ops.WatchResume(since_revision, self.retries, enabled=resume)
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while True:
            remaining = None if end is None else end - loop.time()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceeded(f"watch: its timeout of {timeout} s has passed")
            call = ops.watch(state.revision, container)
            index, endpoint = self._endpoints.current()
            method = endpoint.stubs[call.service].Watch
            stream: Any = method(call.request, timeout=remaining, metadata=self._settings.metadata)
            try:
                async for message in stream:
                    event = state.receive(message)
                    if event is not None:
                        yield event
                return  # the server ended the stream (it does so only when shutting down)
            except grpc.RpcError as exc:
                if _failover.should_fail_over(exc):
                    self._endpoints.failed(index)  # resumed on the next controller
                pause = state.backoff_after(_base.resumable(exc), self._random.random())
                if pause is None:
                    _base.raise_chital_error(exc)
            finally:
                stream.cancel()
            await asyncio.sleep(pause if remaining is None else min(pause, remaining))

    # -- hosts -------------------------------------------------------------------------------

    async def register_host(
        self,
        address: str,
        *,
        labels: Mapping[str, str] | None = None,
        max_containers: int = 0,
        timeout: float | None = None,
    ) -> Host:
        """Register the agent at ``address`` (``host:port``). Registering an address again updates its
        labels and capacity and returns the same host. ``max_containers`` 0 is unlimited."""
        call = ops.register_host(address, labels=labels, max_containers=max_containers)
        return await self._call(call, timeout)

    async def list_hosts_page(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        state: HostState | None = None,
        timeout: float | None = None,
    ) -> Page[Host]:
        """Return one page of hosts, optionally only those in ``state``."""
        return await self._call(
            ops.list_hosts(page_size=page_size, page_token=page_token, state=state), timeout
        )

    def iter_hosts(
        self, *, state: HostState | None = None, page_size: int = 0, timeout: float | None = None
    ) -> AsyncIterator[Host]:
        """Iterate over every host, optionally only those in ``state``, fetching pages as needed
        (``timeout`` applies to each page)."""
        return self._pages(
            lambda token: self.list_hosts_page(
                page_size=page_size, page_token=token, state=state, timeout=timeout
            )
        )

    list_hosts = iter_hosts
    """Same as [`iter_hosts`][chital.client.aio.AsyncClient.iter_hosts] (the older name)."""

    async def get_host(self, host: str, *, timeout: float | None = None) -> Host:
        """Return a host by id or address; raises [`NotFound`][chital.client.NotFound]."""
        return await self._call(ops.get_host(host), timeout)

    async def cordon_host(self, host: str, *, timeout: float | None = None) -> Host:
        """Stop placing new containers on a host; its running containers stay."""
        return await self._call(ops.cordon_host(host), timeout)

    async def uncordon_host(self, host: str, *, timeout: float | None = None) -> Host:
        """Make a cordoned host eligible for placement again."""
        return await self._call(ops.uncordon_host(host), timeout)

    async def drain_host(
        self,
        host: str,
        *,
        grace: float | None = None,
        deadline: float | None = None,
        timeout: float | None = None,
        wait: bool = True,
        progress: Callable[[Host], object] | None = None,
    ) -> DrainResult:
        """Drain a host: no new containers, and each of its containers stopped (SIGTERM, SIGKILL
        after ``grace`` seconds, server default 10 s, or at the drain's ``deadline`` if that comes
        first; the deadline defaults to the grace period). The drain is complete by its deadline.

        The controller starts the drain and the call returns at once. With ``wait`` (the default)
        this method asks again until the drain is complete, calling ``progress(host)`` after each
        look (``host.drain`` shows how many containers remain), and returns the result with the
        final host; without, it returns as the drain starts. ``timeout`` applies to each call.
        """
        result = await self._call(ops.drain_host(host, grace=grace, deadline=deadline), timeout)
        current = result.host
        delay = ops.SETTLE_POLL_FIRST
        while wait and not ops.drain_is_over(current):
            if progress is not None:
                progress(current)
            await asyncio.sleep(delay)
            delay = ops.next_poll(delay)
            current = await self.get_host(current.id, timeout=timeout)
        return DrainResult(host=current, stopped_containers=result.stopped_containers)

    async def remove_host(self, host: str, *, force: bool = False, timeout: float | None = None) -> None:
        """Forget a host that has no live containers (any host with ``force``)."""
        await self._call(ops.remove_host(host, force=force), timeout)

    # -- identity, tokens and the audit log ---------------------------------------------------

    async def whoami(self, *, timeout: float | None = None) -> Identity:
        """Return the caller as the controller sees it: name, role and how it authenticated."""
        return await self._call(ops.whoami(), timeout)

    # -- rollouts (admin) -----------------------------------------------------------------------

    async def start_rollout(
        self,
        playbook: str,
        *,
        inventory: str | None = None,
        label_selector: str | Mapping[str, str] | None = None,
        hosts: Sequence[str] = (),
        batch_size: int = 0,
        extra_vars: Mapping[str, str] | None = None,
        register_hosts: bool = False,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Rollout:
        """Start one of the controller's playbooks (a file name such as ``site.yml``) on an inline
        ``inventory`` (YAML or INI text), else on the registered hosts that match ``label_selector``
        and ``hosts`` (ids or addresses; neither: every host). ``batch_size`` sets the playbooks'
        serial batch variables; ``register_hosts`` registers the agent hosts that end ok and waits
        until they are READY. Returns the PENDING rollout; follow it with
        [`watch_rollout`][chital.client.aio.AsyncClient.watch_rollout]. ``request_id`` is the
        idempotency key (a fresh uuid4 by default)."""
        call = rollouts.start_rollout(
            request_id or str(uuid.uuid4()),
            playbook,
            inventory=inventory,
            label_selector=ops.selector_string(label_selector),
            hosts=hosts,
            batch_size=batch_size,
            extra_vars=extra_vars,
            register_hosts=register_hosts,
        )
        return await self._call(call, timeout)

    async def get_rollout(self, rollout_id: str, *, timeout: float | None = None) -> Rollout:
        """Return a rollout with its hosts' progress; raises
        [`NotFound`][chital.client.NotFound]."""
        return await self._call(rollouts.get_rollout(rollout_id), timeout)

    async def list_rollouts_page(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        state: RolloutState | None = None,
        timeout: float | None = None,
    ) -> Page[Rollout]:
        """Return one page of rollouts, newest first, optionally only those in ``state``."""
        call = rollouts.list_rollouts(page_size=page_size, page_token=page_token, state=state)
        return await self._call(call, timeout)

    def iter_rollouts(
        self, *, state: RolloutState | None = None, page_size: int = 0, timeout: float | None = None
    ) -> AsyncIterator[Rollout]:
        """Iterate over every rollout, newest first, optionally only those in ``state``, fetching
        pages as needed (``timeout`` applies to each page)."""
        return self._pages(
            lambda token: self.list_rollouts_page(
                page_size=page_size, page_token=token, state=state, timeout=timeout
            )
        )

    def watch_rollout(
        self, rollout_id: str, *, after_sequence: int = 0, timeout: float | None = None
    ) -> AsyncIterator[RolloutEvent]:
        """Iterate over a rollout's events after ``after_sequence`` (0: from the first kept), then
        live ones; the iteration ends when the rollout has ended. To resume after a broken stream,
        pass the last ``sequence`` received. ``timeout`` bounds the whole watch (default: none)."""
        return self._stream(rollouts.watch_rollout(rollout_id, after_sequence), timeout)

    async def cancel_rollout(self, rollout_id: str, *, timeout: float | None = None) -> Rollout:
        """Ask the controller to stop a rollout; it is CANCELLED once ansible-playbook stopped."""
        return await self._call(rollouts.cancel_rollout(rollout_id), timeout)

    async def server_info(self, *, timeout: float | None = None) -> ServerInfo:
        """Return the controller's version, the API packages it serves and its database kind. Any
        role may ask. A controller older than this call raises
        [`Unimplemented`][chital.client.Unimplemented]."""
        return await self._call(ops.server_info(), timeout)

    async def create_token(
        self,
        name: str,
        role: str,
        *,
        ttl: float | _dt.timedelta | None = None,
        timeout: float | None = None,
    ) -> NewToken:
        """Create a bearer token for ``role`` (``admin``, ``operator`` or ``viewer``) that expires
        after ``ttl`` (seconds or a timedelta; None: never). Needs the admin role.

        The token string is in the answer only: the controller keeps a hash. Never retried, so
        that a lost answer does not leave two tokens behind.
        """
        return await self._call(ops.create_token(name, role, ttl=ttl), timeout)

    async def list_tokens(self, *, timeout: float | None = None) -> list[Token]:
        """Return every token, oldest first, revoked and expired ones included. Needs the admin role."""
        return await self._call(ops.list_tokens(), timeout)

    async def revoke_token(self, token_id: str, *, timeout: float | None = None) -> Token:
        """Revoke a token by id (revoking it again changes nothing) and return it. Needs the admin
        role."""
        return await self._call(ops.revoke_token(token_id), timeout)

    async def list_audit_log_page(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        principal: str = "",
        timeout: float | None = None,
    ) -> Page[AuditEntry]:
        """Return one page of the audit log, newest first, optionally of one ``principal``
        (``cert:alice``, ``token:ci/0123456789ab``; ``token:ci`` matches every token named ci).
        ``page_size`` 0 is the server's default (100). Needs the admin role."""
        call = ops.list_audit_log(page_size=page_size, page_token=page_token, principal=principal)
        return await self._call(call, timeout)

    def iter_audit_log(
        self, *, principal: str = "", page_size: int = 0, timeout: float | None = None
    ) -> AsyncIterator[AuditEntry]:
        """Iterate over the audit log, newest first, fetching pages as needed (filter as in
        [`list_audit_log_page`][chital.client.aio.AsyncClient.list_audit_log_page]; ``timeout``
        applies to each page)."""
        return self._pages(
            lambda token: self.list_audit_log_page(
                page_size=page_size, page_token=token, principal=principal, timeout=timeout
            )
        )

    list_audit_log = iter_audit_log
    """Same as [`iter_audit_log`][chital.client.aio.AsyncClient.iter_audit_log] (the older name)."""
