"""The synchronous chital client."""

from __future__ import annotations

import datetime as _dt
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self, TypeVar

import grpc

from chital.api.admin.v1 import admin_pb2 as apb
from chital.api.admin.v1 import admin_pb2_grpc as apb_grpc
from chital.api.container.v1 import container_pb2 as cpb
from chital.api.container.v1 import container_pb2_grpc as cpb_grpc
from chital.api.host.v1 import host_pb2 as hpb
from chital.api.host.v1 import host_pb2_grpc as hpb_grpc
from chital.security.tls import TLSFiles, channel_credentials, is_loopback

from . import _convert as conv
from . import config as _config
from ._auth import BearerToken
from ._errors import error_from_rpc, is_tls_failure, status_code
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
    ProcessState,
    RetryPolicy,
    Sandbox,
    Token,
    WatchEvent,
)
from ._version import __version__

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_T = TypeVar("_T")

# Which failures a retry may cure. Reads may be repeated on anything transient. Writes that carry a
# request_id (or only name their resource) are idempotent on the server, so a retry
# after UNAVAILABLE is safe; a DEADLINE_EXCEEDED write may still be running there and a retry would
# wait on the same slow work, so it goes to the caller (who may retry with the same request_id).
_READ = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_IDEMPOTENT_WRITE = frozenset({grpc.StatusCode.UNAVAILABLE})
_NEVER: frozenset[grpc.StatusCode] = frozenset()

# A wait is split into server-side waits of at most this long, so no single call outlives a
# load balancer's idle timeout and a lost connection costs at most one chunk.
_WAIT_CHUNK_SECONDS = 60.0

_USER_AGENT = f"chital-python/{__version__}"


def _raise_chital_error(exc: grpc.RpcError) -> NoReturn:
    """The one place where a gRPC error becomes a chital exception."""
    raise error_from_rpc(exc) from exc


def _label_selector(selector: str | Mapping[str, str] | None) -> str:
    if selector is None:
        return ""
    if isinstance(selector, str):
        return selector
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


class Client:
    """A connection to a chital controller.

    Every call has a deadline (``timeout`` seconds unless the method says otherwise). Idempotent calls
    are retried on transient failures according to ``retries``: reads on UNAVAILABLE and
    DEADLINE_EXCEEDED; creates and exec (they carry a ``request_id``, reused across retries) and the
    calls that only name their resource (stop, delete, host administration) on UNAVAILABLE.
    :meth:`signal_process` is never retried. Failures raise subclasses of :class:`ChitalError`.

    Use it as a context manager, or call :meth:`close`::

        tls = TLSFiles(ca=Path("/etc/chital/ca.crt"))
        with Client("10.0.0.1:7443", tls=tls, token=os.environ["CHITAL_TOKEN"]) as client:
            for c in client.list_containers(label_selector={"team": "a"}):
                print(c.name, c.state)
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        tls: TLSFiles | None = None,
        token: str | None = None,
        insecure: bool = False,
        timeout: float = 10.0,
        retries: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, so a shared default is safe.
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """Open a channel to ``target`` (``host:port``; default ``$CHITAL_CONTROLLER``, else
        ``127.0.0.1:7443``).

        The channel is TLS, verified with ``tls.ca`` (and presenting ``tls.cert``/``tls.key`` when
        given), or with ready-made ``credentials``. ``insecure=True`` dials in plaintext instead, to
        a loopback address only. One of the three is required. ``token`` is sent as
        ``authorization: Bearer <token>`` with every call. :meth:`from_config` takes all of these
        from flags, the environment and the config file.

        The channel connects lazily: an unreachable controller surfaces as :class:`Unavailable` on
        the first call, after the retries; a failed TLS handshake too, at once, with a message that
        says what failed.
        """
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if target is None:
            target = os.environ.get(_config.ENV_CONTROLLER) or _config.DEFAULT_CONTROLLER
        if tls is not None and credentials is not None:
            raise ValueError("pass tls or credentials, not both")
        secure = tls is not None or credentials is not None
        if insecure and secure:
            raise ValueError("insecure=True dials in plaintext: it takes no tls or credentials")
        if not insecure and not secure:
            raise ValueError(
                f"no TLS material for controller {target}: pass tls=TLSFiles(ca=...) (or credentials=), "
                "insecure=True for a plaintext controller on loopback, or use Client.from_config() to "
                "read CHITAL_* variables and the config file"
            )
        if insecure and not is_loopback(target):
            raise ValueError(
                f"insecure=True is only for a controller on loopback, not {target}: "
                "a token would cross the network in plaintext"
            )
        bearer = None if token is None else BearerToken(token)  # checks the token before any channel
        if tls is not None:
            credentials = channel_credentials(tls)
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.insecure = insecure
        options = [("grpc.primary_user_agent", _USER_AGENT)]
        if credentials is None:
            channel = grpc.insecure_channel(target, options=options)
        else:
            channel = grpc.secure_channel(target, credentials, options=options)
        self._raw_channel = channel
        self._channel = channel if bearer is None else grpc.intercept_channel(channel, bearer)
        self._containers = cpb_grpc.ContainerServiceStub(self._channel)
        self._hosts = hpb_grpc.HostServiceStub(self._channel)
        self._admin = apb_grpc.AdminServiceStub(self._channel)
        self._random = random.Random()  # noqa: S311 - jitter, not security.
        self._closed = False

    @classmethod
    def from_config(
        cls,
        context: str | None = None,
        *,
        target: str | None = None,
        token: str | None = None,
        token_file: str | None = None,
        tls_dir: str | None = None,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        insecure: bool | None = None,
        config_path: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        retries: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, so a shared default is safe.
    ) -> Client:
        """A client set up like the ``chital`` command: each setting from the arguments given here,
        else the environment (``CHITAL_CONTROLLER``, ``CHITAL_TOKEN``, ``CHITAL_TLS_DIR``,
        ``CHITAL_CACERT``, ...), else the context (``context``, else ``$CHITAL_CONTEXT``, else the
        file's ``current_context``) of the config file (``config_path``, else ``$CHITAL_CONFIG``,
        else ``~/.config/chital/config.toml``), else the defaults.

        Raises :class:`chital.client.config.ConfigError` (a ValueError) naming the missing or
        broken setting and where it came from. ``env`` replaces ``os.environ`` (for tests).
        """
        environ = os.environ if env is None else env
        connection = _config.resolve(
            _config.Overrides(
                target=target,
                context=context,
                token=token,
                token_file=token_file,
                tls_dir=tls_dir,
                ca=ca,
                cert=cert,
                key=key,
                insecure=insecure,
            ),
            env=environ,
            config=_config.Config.load(config_path, env=environ),
        )
        return cls(
            connection.target,
            tls=connection.tls,
            token=connection.token,
            insecure=connection.insecure,
            timeout=timeout,
            retries=retries,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the channel. Calls in flight are cancelled; the client cannot be used again."""
        if not self._closed:
            self._closed = True
            self._raw_channel.close()

    def __enter__(self) -> Self:
        """Return the client itself."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the client."""
        self.close()

    def __repr__(self) -> str:
        """Show the target and whether the client is closed."""
        flags = (", insecure" if self.insecure else "") + (", closed" if self._closed else "")
        return f"Client({self.target!r}, timeout={self.timeout}{flags})"

    # -- call machinery ----------------------------------------------------------------------

    def _retryable(self, exc: grpc.RpcError, retry_on: frozenset[grpc.StatusCode], attempt: int) -> bool:
        # A failed TLS handshake fails the same way again: report it at once.
        return (
            status_code(exc) in retry_on and attempt < self.retries.max_attempts and not is_tls_failure(exc)
        )

    def _sleep_before_retry(self, attempt: int) -> None:
        time.sleep(self.retries.backoff(attempt, self._random.random()))

    def _unary(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
        retry_on: frozenset[grpc.StatusCode],
        timeout: float | None = None,
    ) -> _Resp:
        attempt = 0
        while True:
            attempt += 1
            try:
                return method(request, timeout=timeout if timeout is not None else self.timeout)
            except grpc.RpcError as exc:
                if self._retryable(exc, retry_on, attempt):
                    self._sleep_before_retry(attempt)
                    continue
                _raise_chital_error(exc)

    def _stream(
        self,
        method: grpc.UnaryStreamMultiCallable[_Req, _Resp],
        request: _Req,
        retry_on: frozenset[grpc.StatusCode],
        timeout: float | None,
    ) -> Iterator[_Resp]:
        # A stream is retried only until its first message: after that, a restart would repeat
        # output the caller has already seen.
        attempt = 0
        while True:
            attempt += 1
            received = False
            call: Any = method(request, timeout=timeout)
            try:
                for item in call:
                    received = True
                    yield item
                return
            except grpc.RpcError as exc:
                if not received and self._retryable(exc, retry_on, attempt):
                    self._sleep_before_retry(attempt)
                    continue
                _raise_chital_error(exc)
            finally:
                # Stops the server side when the caller abandons the iterator early.
                call.cancel()

    @staticmethod
    def _pages(fetch: Callable[[str], Page[_T]]) -> Iterator[_T]:
        token = ""
        while True:
            page = fetch(token)
            yield from page.items
            if not page.next_page_token:
                return
            token = page.next_page_token

    # -- containers --------------------------------------------------------------------------

    def create_container(
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
    ) -> Container:
        """Create a container named ``name`` and return it.

        ``request_id`` is the idempotency key (a fresh uuid4 by default); retries reuse it, so a
        create is never done twice. ``host`` pins the container to a host (id or address).
        ``deny_syscalls`` names system calls the kernel module refuses to members in addition to
        the host's default list; ``sandbox`` relaxes the default isolation (see :class:`Sandbox`).
        """
        request = cpb.CreateContainerRequest(
            request_id=request_id or str(uuid.uuid4()),
            name=name,
            labels=dict(labels or {}),
            limits=conv.limits_to_pb(limits or Limits()),
            root=root,
            deny_syscalls=list(deny_syscalls),
            host=host,
            sandbox=conv.sandbox_to_pb(sandbox or Sandbox()),
        )
        response = self._unary(self._containers.CreateContainer, request, _IDEMPOTENT_WRITE)
        return conv.container_from_pb(response.container)

    def get_container(self, container: str) -> Container:
        """Return a container by uid or name; raises :class:`NotFound`."""
        request = cpb.GetContainerRequest(container=container)
        response = self._unary(self._containers.GetContainer, request, _READ)
        return conv.container_from_pb(response.container)

    def list_containers_page(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        label_selector: str | Mapping[str, str] | None = None,
        state: ContainerState | None = None,
        host: str = "",
    ) -> Page[Container]:
        """Return one page of containers, oldest first.

        ``label_selector`` is ``"k=v,k2=v2"`` or a mapping (all terms must match). Without ``state``
        every container but DELETED ones is listed. ``page_size`` 0 is the server's default (100).
        """
        request = cpb.ListContainersRequest(
            page_size=page_size,
            page_token=page_token,
            label_selector=_label_selector(label_selector),
            state=conv.container_state_to_pb(state),  # type: ignore[arg-type]
            host=host,
        )
        response = self._unary(self._containers.ListContainers, request, _READ)
        return Page(
            items=tuple(conv.container_from_pb(c) for c in response.containers),
            next_page_token=response.next_page_token,
        )

    def list_containers(
        self,
        *,
        label_selector: str | Mapping[str, str] | None = None,
        state: ContainerState | None = None,
        host: str = "",
        page_size: int = 0,
    ) -> Iterator[Container]:
        """Iterate over every matching container, fetching pages as needed (filters as in
        :meth:`list_containers_page`)."""
        return self._pages(
            lambda token: self.list_containers_page(
                page_size=page_size,
                page_token=token,
                label_selector=label_selector,
                state=state,
                host=host,
            )
        )

    def stop_container(self, container: str, *, grace: float | None = None) -> Container:
        """Stop a container: SIGTERM to every member, SIGKILL after ``grace`` seconds (server
        default 10 s). The call's deadline is extended by the grace period."""
        request = cpb.StopContainerRequest(container=container)
        if grace is not None:
            request.grace_period.CopyFrom(conv.duration_to_pb(grace))
        timeout = self.timeout + (grace if grace is not None else 10.0)
        response = self._unary(self._containers.StopContainer, request, _IDEMPOTENT_WRITE, timeout)
        return conv.container_from_pb(response.container)

    def delete_container(self, container: str, *, force: bool = False) -> Container:
        """Delete a stopped container (any container with ``force``, killing its processes) and
        return its final record."""
        request = cpb.DeleteContainerRequest(container=container, force=force)
        response = self._unary(self._containers.DeleteContainer, request, _IDEMPOTENT_WRITE)
        return conv.container_from_pb(response.container)

    # -- processes ---------------------------------------------------------------------------

    def exec(
        self,
        container: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str = "",
        user_id: int | None = None,
        group_id: int | None = None,
        request_id: str | None = None,
    ) -> Process:
        """Start ``argv`` in a container and return the process (usually STARTING or RUNNING).

        ``request_id`` is the idempotency key (a fresh uuid4 by default), reused across retries, so
        the program is never started twice. ``cwd`` defaults to ``/`` inside the container.
        ``user_id``/``group_id`` default to the unprivileged 65534 (nobody/nogroup); 0 runs as
        root, still without capabilities unless the container's sandbox grants some.
        """
        request = cpb.ExecRequest(
            container=container,
            request_id=request_id or str(uuid.uuid4()),
            argv=list(argv),
            env=dict(env or {}),
            cwd=cwd,
            user_id=user_id,
            group_id=group_id,
        )
        response = self._unary(self._containers.Exec, request, _IDEMPOTENT_WRITE)
        return conv.process_from_pb(response.process)

    def get_process(self, process_uid: str) -> Process:
        """Return a process by uid; raises :class:`NotFound`."""
        request = cpb.GetProcessRequest(process_uid=process_uid)
        response = self._unary(self._containers.GetProcess, request, _READ)
        return conv.process_from_pb(response.process)

    def list_processes_page(
        self, container: str = "", *, page_size: int = 0, page_token: str = ""
    ) -> Page[Process]:
        """Return one page of the processes of ``container`` (uid or name), or of all containers."""
        request = cpb.ListProcessesRequest(container=container, page_size=page_size, page_token=page_token)
        response = self._unary(self._containers.ListProcesses, request, _READ)
        return Page(
            items=tuple(conv.process_from_pb(p) for p in response.processes),
            next_page_token=response.next_page_token,
        )

    def list_processes(self, container: str = "", *, page_size: int = 0) -> Iterator[Process]:
        """Iterate over the processes of ``container`` (uid or name), or of all containers."""
        return self._pages(
            lambda token: self.list_processes_page(container, page_size=page_size, page_token=token)
        )

    def wait_process(self, process_uid: str, timeout: float | None = None) -> Process:
        """Wait until a process has exited (or is LOST) and return it.

        With ``timeout`` (seconds), give up after that long and return the process as it is then:
        check ``process.exited``. Without, wait as long as it takes.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = _WAIT_CHUNK_SECONDS if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return self.get_process(process_uid)
            chunk = min(remaining, _WAIT_CHUNK_SECONDS)
            request = cpb.WaitProcessRequest(process_uid=process_uid, timeout=conv.duration_to_pb(chunk))
            response = self._unary(self._containers.WaitProcess, request, _READ, chunk + self.timeout)
            process = conv.process_from_pb(response.process)
            if process.state in (ProcessState.EXITED, ProcessState.LOST):
                return process
            if deadline is not None and time.monotonic() >= deadline:
                return process

    def get_container_stats(self, container: str) -> ContainerStats:
        """Return the kernel's per-syscall counters and the cgroup usage of ``container`` (uid or
        name), read live from its host; raises :class:`FailedPrecondition` when it is not on one."""
        request = cpb.GetContainerStatsRequest(container=container)
        response = self._unary(self._containers.GetContainerStats, request, _READ)
        return conv.stats_from_pb(response)

    def signal_process(self, process_uid: str, signal: int) -> Process:
        """Send ``signal`` (a number, 1-64) to a running process. Never retried: a repeated signal is
        not harmless."""
        request = cpb.SignalProcessRequest(process_uid=process_uid, signal=int(signal))
        response = self._unary(self._containers.SignalProcess, request, _NEVER)
        return conv.process_from_pb(response.process)

    def stream_logs(
        self,
        process_uid: str,
        *,
        follow: bool = False,
        tail: int = 0,
        timeout: float | None = None,
    ) -> Iterator[LogChunk]:
        """Iterate over a process's captured stdout and stderr.

        ``tail`` starts with at most that many last lines per stream (0: all). With ``follow``, keep
        streaming until the process exits. The deadline for the whole stream is ``timeout``; by
        default the client's timeout without ``follow`` and none with it. Breaking out of the loop
        cancels the stream.
        """
        request = cpb.StreamLogsRequest(process_uid=process_uid, follow=follow, tail_lines=tail)
        if timeout is None and not follow:
            timeout = self.timeout
        for message in self._stream(self._containers.StreamLogs, request, _READ, timeout):
            yield conv.log_chunk_from_pb(message)

    def watch(
        self, *, since_revision: int = 0, container: str = "", timeout: float | None = None
    ) -> Iterator[WatchEvent]:
        """Iterate over container and process events with a revision above ``since_revision``, then
        live ones (0: live only), optionally of one ``container``. No deadline unless ``timeout``.

        To resume after an error, call again with the last event's revision.
        """
        request = cpb.WatchRequest(since_revision=since_revision, container=container)
        for message in self._stream(self._containers.Watch, request, _READ, timeout):
            yield conv.watch_event_from_pb(message)

    # -- hosts -------------------------------------------------------------------------------

    def register_host(
        self,
        address: str,
        *,
        labels: Mapping[str, str] | None = None,
        max_containers: int = 0,
    ) -> Host:
        """Register the agent at ``address`` (``host:port``). Registering an address again updates its
        labels and capacity and returns the same host. ``max_containers`` 0 is unlimited."""
        request = hpb.RegisterHostRequest(
            address=address,
            labels=dict(labels or {}),
            capacity=hpb.Capacity(max_containers=max_containers),
        )
        response = self._unary(self._hosts.RegisterHost, request, _IDEMPOTENT_WRITE)
        return conv.host_from_pb(response.host)

    def list_hosts_page(
        self, *, page_size: int = 0, page_token: str = "", state: HostState | None = None
    ) -> Page[Host]:
        """Return one page of hosts, optionally only those in ``state``."""
        request = hpb.ListHostsRequest(
            page_size=page_size,
            page_token=page_token,
            state=conv.host_state_to_pb(state),  # type: ignore[arg-type]
        )
        response = self._unary(self._hosts.ListHosts, request, _READ)
        return Page(
            items=tuple(conv.host_from_pb(h) for h in response.hosts),
            next_page_token=response.next_page_token,
        )

    def list_hosts(self, *, state: HostState | None = None, page_size: int = 0) -> Iterator[Host]:
        """Iterate over every host, optionally only those in ``state``."""
        return self._pages(
            lambda token: self.list_hosts_page(page_size=page_size, page_token=token, state=state)
        )

    def get_host(self, host: str) -> Host:
        """Return a host by id or address; raises :class:`NotFound`."""
        response = self._unary(self._hosts.GetHost, hpb.GetHostRequest(host=host), _READ)
        return conv.host_from_pb(response.host)

    def cordon_host(self, host: str) -> Host:
        """Stop placing new containers on a host; its running containers stay."""
        response = self._unary(self._hosts.CordonHost, hpb.CordonHostRequest(host=host), _IDEMPOTENT_WRITE)
        return conv.host_from_pb(response.host)

    def uncordon_host(self, host: str) -> Host:
        """Make a cordoned host eligible for placement again."""
        request = hpb.UncordonHostRequest(host=host)
        response = self._unary(self._hosts.UncordonHost, request, _IDEMPOTENT_WRITE)
        return conv.host_from_pb(response.host)

    def drain_host(self, host: str, *, grace: float | None = None) -> DrainResult:
        """Cordon a host and stop its containers (each with ``grace`` seconds, server default 10 s).
        The call's deadline is extended by the grace period."""
        request = hpb.DrainHostRequest(host=host)
        if grace is not None:
            request.grace_period.CopyFrom(conv.duration_to_pb(grace))
        timeout = self.timeout + (grace if grace is not None else 10.0)
        response = self._unary(self._hosts.DrainHost, request, _IDEMPOTENT_WRITE, timeout)
        return DrainResult(
            host=conv.host_from_pb(response.host), stopped_containers=response.stopped_containers
        )

    def remove_host(self, host: str, *, force: bool = False) -> None:
        """Forget a host that has no live containers (any host with ``force``)."""
        request = hpb.RemoveHostRequest(host=host, force=force)
        self._unary(self._hosts.RemoveHost, request, _IDEMPOTENT_WRITE)

    # -- identity, tokens and the audit log ---------------------------------------------------

    def whoami(self) -> Identity:
        """Return the caller as the controller sees it: name, role and how it authenticated."""
        response = self._unary(self._admin.WhoAmI, apb.WhoAmIRequest(), _READ)
        return conv.identity_from_pb(response)

    def create_token(self, name: str, role: str, *, ttl: float | _dt.timedelta | None = None) -> NewToken:
        """Create a bearer token for ``role`` (``admin``, ``operator`` or ``viewer``) that expires
        after ``ttl`` (seconds or a timedelta; None: never). Needs the admin role.

        The token string is in the answer only: the controller keeps a hash. Never retried, so
        that a lost answer does not leave two tokens behind.
        """
        seconds = ttl.total_seconds() if isinstance(ttl, _dt.timedelta) else ttl
        if seconds is not None and seconds < 1:
            raise ValueError("ttl must be at least one second (None: no expiry)")
        request = apb.CreateTokenRequest(name=name, role=role, ttl_seconds=round(seconds or 0))
        response = self._unary(self._admin.CreateToken, request, _NEVER)
        return NewToken(bearer_token=response.bearer_token, token=conv.token_from_pb(response.token))

    def list_tokens(self) -> list[Token]:
        """Return every token, oldest first, revoked and expired ones included. Needs the admin role."""
        response = self._unary(self._admin.ListTokens, apb.ListTokensRequest(), _READ)
        return [conv.token_from_pb(t) for t in response.tokens]

    def revoke_token(self, token_id: str) -> Token:
        """Revoke a token by id (revoking it again changes nothing) and return it. Needs the admin
        role."""
        request = apb.RevokeTokenRequest(id=token_id)
        response = self._unary(self._admin.RevokeToken, request, _IDEMPOTENT_WRITE)
        return conv.token_from_pb(response.token)

    def list_audit_log_page(
        self, *, page_size: int = 0, page_token: str = "", principal: str = ""
    ) -> Page[AuditEntry]:
        """Return one page of the audit log, newest first, optionally of one ``principal``
        (``cert:alice``, ``token:ci/0123456789ab``; ``token:ci`` matches every token named ci).
        ``page_size`` 0 is the server's default (100). Needs the admin role."""
        request = apb.ListAuditLogRequest(page_size=page_size, page_token=page_token, principal=principal)
        response = self._unary(self._admin.ListAuditLog, request, _READ)
        return Page(
            items=tuple(conv.audit_entry_from_pb(e) for e in response.entries),
            next_page_token=response.next_page_token,
        )

    def list_audit_log(self, *, principal: str = "", page_size: int = 0) -> Iterator[AuditEntry]:
        """Iterate over the audit log, newest first, fetching pages as needed (filter as in
        :meth:`list_audit_log_page`)."""
        return self._pages(
            lambda token: self.list_audit_log_page(page_size=page_size, page_token=token, principal=principal)
        )
