"""An in-process fake controller (ContainerService, HostService, AdminService) for the SDK and CLI
tests.

It keeps state in dicts, answers like the real API's contract (idempotent request_ids, NOT_FOUND
for unknown names) and can be told to fail the next N calls of a method with a given code.
Every call's ``authorization`` metadata is recorded (``fake.authorization``); AdminService keeps
tokens in a dict and answers WhoAmI with ``fake.identity``, GetServerInfo with ``fake.server_info``.
Processes are scripted by their argv: ``echo ARGS`` prints and exits 0, ``exit N`` exits N,
``crash`` dies of SIGKILL, ``stderr TEXT`` writes to stderr, ``sleep`` keeps running.
Containers and processes follow the controller's rules where the SDK's contract tests
(tests/sdk_contract.py, also run against the real controller) look: request_id reuse, valid and
free names, stop ending the processes, every change an event.
Watch behaves like the controller's: ``since_revision`` 0 is live only, the stream stays open
until the client leaves, and with a ``heartbeat_interval`` heartbeats carry the revision reached
(the first at once). ``fake.watch_ends`` ends every stream once it has sent what is recorded, as
a controller that shuts down does.
GetContainerStats serves ``fake.stats[uid]``, scripted answers in turn (the last one repeats); a
container without any is not on a host (FAILED_PRECONDITION).
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter, defaultdict

import grpc
from google.protobuf import timestamp_pb2

from chital.api.admin.v1 import admin_pb2 as apb
from chital.api.admin.v1 import admin_pb2_grpc as apb_grpc
from chital.api.container.v1 import container_pb2 as cpb
from chital.api.container.v1 import container_pb2_grpc as cpb_grpc
from chital.api.host.v1 import host_pb2 as hpb
from chital.api.host.v1 import host_pb2_grpc as hpb_grpc

#: The controller's container name rule (and names may not look like a uid: 32 hex digits).
NAME = re.compile(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?")
UID = re.compile(r"[0-9a-f]{32}")


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


class FakeController(
    cpb_grpc.ContainerServiceServicer, hpb_grpc.HostServiceServicer, apb_grpc.AdminServiceServicer
):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.containers: dict[str, cpb.Container] = {}
        self.processes: dict[str, cpb.Process] = {}
        self.logs: dict[str, list[cpb.StreamLogsResponse]] = {}
        self.hosts: dict[str, hpb.Host] = {}
        self.by_request: dict[str, str] = {}
        self.calls: Counter[str] = Counter()
        self.requests: dict[str, list[object]] = defaultdict(list)
        self.failures: dict[str, list[tuple[grpc.StatusCode, str]]] = defaultdict(list)
        self.events: list[cpb.WatchResponse] = []
        self.watch_ends = False
        #: The shortest heartbeat interval (the controller's is 1 s); tests may lower it.
        self.min_heartbeat = 1.0
        self.authorization: dict[str, list[str | None]] = defaultdict(list)
        self.stats: dict[str, list[cpb.GetContainerStatsResponse]] = {}
        self.tokens: dict[str, apb.Token] = {}
        self.audit = [
            apb.AuditEntry(
                id=n,
                time=_now(),
                principal="token:ci/0123456789ab",
                role="operator",
                method="/chital.api.container.v1.ContainerService/CreateContainer",
                request_id=f"r-{n}",
                target=f"box-{n}",
                code="OK" if n % 2 else "PERMISSION_DENIED",
                detail="" if n % 2 else "role viewer may not\ncall it",
            )
            for n in range(5, 0, -1)
        ]
        self.identity = apb.WhoAmIResponse(
            name="alice", role="admin", auth_method="token", principal="token:alice/0123456789ab"
        )
        # Not the client's version, so that a test can tell the server's answer from the client's.
        self.server_info = apb.GetServerInfoResponse(
            version="9.8.7",
            api_versions=["chital.api.admin.v1", "chital.api.container.v1", "chital.api.host.v1"],
            database="sqlite",
            leader=True,
        )

    # -- test controls -------------------------------------------------------------------------

    def fail(self, method: str, times: int, code: grpc.StatusCode, message: str = "injected") -> None:
        self.failures[method].extend([(code, message)] * times)

    def _enter(self, method: str, request: object, context: grpc.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata())
        with self.lock:
            self.calls[method] += 1
            self.requests[method].append(request)
            self.authorization[method].append(metadata.get("authorization"))
            pending = self.failures[method]
            failure = pending.pop(0) if pending else None
        if failure:
            context.abort(failure[0], failure[1])

    def _container(self, name: str, context: grpc.ServicerContext) -> cpb.Container:
        # Like the controller: a uid finds any container, a name only one that is not DELETED.
        for c in self.containers.values():
            if name == c.uid or (name == c.name and c.state != cpb.CONTAINER_STATE_DELETED):
                return c
        context.abort(grpc.StatusCode.NOT_FOUND, f'container "{name}"')
        raise AssertionError  # abort raises

    def _event(self, container: cpb.Container | None = None, process: cpb.Process | None = None) -> None:
        """Record a change for Watch (a copy: later changes of the record do not alter it)."""
        if container is not None:
            event_type, fields = cpb.EVENT_TYPE_CONTAINER_CHANGED, {"container": container}
        else:
            event_type, fields = cpb.EVENT_TYPE_PROCESS_CHANGED, {"process": process}
        self.events.append(cpb.WatchResponse(revision=len(self.events) + 1, type=event_type, **fields))

    def _process(self, uid: str, context: grpc.ServicerContext) -> cpb.Process:
        if uid not in self.processes:
            context.abort(grpc.StatusCode.NOT_FOUND, f'process "{uid}"')
        return self.processes[uid]

    def _host(self, name: str, context: grpc.ServicerContext) -> hpb.Host:
        for h in self.hosts.values():
            if name in (h.id, h.address):
                return h
        context.abort(grpc.StatusCode.NOT_FOUND, f'host "{name}"')
        raise AssertionError

    # -- ContainerService ----------------------------------------------------------------------

    def CreateContainer(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("CreateContainer", request, context)
        if request.request_id in self.by_request:
            first = self.containers[self.by_request[request.request_id]]
            if (first.name, dict(first.labels), first.root, list(first.deny_syscalls)) != (
                request.name,
                dict(request.labels),
                request.root,
                list(request.deny_syscalls),
            ):
                context.abort(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"request_id {request.request_id!r} was used for a different container ({first.name})",
                )
            return cpb.CreateContainerResponse(container=first)
        if len(request.name) > 63 or not NAME.fullmatch(request.name) or UID.fullmatch(request.name):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"name {request.name!r} is not a valid name")
        if any(
            c.name == request.name and c.state != cpb.CONTAINER_STATE_DELETED
            for c in self.containers.values()
        ):
            context.abort(grpc.StatusCode.ALREADY_EXISTS, f'container "{request.name}"')
        uid = f"c-{len(self.containers) + 1}"
        c = cpb.Container(
            uid=uid,
            name=request.name,
            state=cpb.CONTAINER_STATE_CREATED,
            labels=dict(request.labels),
            limits=request.limits,
            root=request.root,
            deny_syscalls=list(request.deny_syscalls),
            host_id="h-1",
            host_address=request.host or "10.0.0.1:7444",
            create_time=_now(),
        )
        self.containers[uid] = c
        self.by_request[request.request_id] = uid
        self._event(container=c)
        return cpb.CreateContainerResponse(container=c)

    def GetContainer(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("GetContainer", request, context)
        return cpb.GetContainerResponse(container=self._container(request.container, context))

    def GetContainerStats(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("GetContainerStats", request, context)
        c = self._container(request.container, context)
        with self.lock:
            script = self.stats.get(c.uid)
            answer = (script.pop(0) if len(script) > 1 else script[0]) if script else None
        if answer is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f'container "{c.name}" is not on a host')
        return answer

    def ListContainers(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("ListContainers", request, context)
        items = list(self.containers.values())
        if request.label_selector:
            terms = dict(t.split("=", 1) for t in request.label_selector.split(","))
            items = [c for c in items if all(c.labels.get(k) == v for k, v in terms.items())]
        if request.state:
            items = [c for c in items if c.state == request.state]
        else:
            items = [c for c in items if c.state != cpb.CONTAINER_STATE_DELETED]
        if request.host:
            items = [c for c in items if request.host in (c.host_id, c.host_address)]
        start = int(request.page_token or 0)
        size = request.page_size or 100
        page = items[start : start + size]
        token = str(start + size) if start + size < len(items) else ""
        return cpb.ListContainersResponse(containers=page, next_page_token=token)

    def StopContainer(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("StopContainer", request, context)
        c = self._container(request.container, context)
        # Like the controller: every member gets SIGTERM (then SIGKILL) and the container is gone.
        for p in self.processes.values():
            if p.container_uid == c.uid and p.state == cpb.PROCESS_STATE_RUNNING:
                p.state, p.exit_code, p.signal = cpb.PROCESS_STATE_EXITED, -1, 15
                p.exit_time.CopyFrom(_now())
                self._event(process=p)
        c.running_processes = 0
        c.state = cpb.CONTAINER_STATE_STOPPED
        self._event(container=c)
        return cpb.StopContainerResponse(container=c)

    def DeleteContainer(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("DeleteContainer", request, context)
        c = self._container(request.container, context)
        if c.running_processes and not request.force:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f'container "{c.name}" has running processes')
        c.state = cpb.CONTAINER_STATE_DELETED
        self._event(container=c)
        return cpb.DeleteContainerResponse(container=c)

    def Exec(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("Exec", request, context)
        c = self._container(request.container, context)
        key = "exec/" + request.request_id
        if key in self.by_request:
            return cpb.ExecResponse(process=self.processes[self.by_request[key]])
        if c.state not in (cpb.CONTAINER_STATE_CREATED, cpb.CONTAINER_STATE_RUNNING):
            state = cpb.ContainerState.Name(c.state).removeprefix("CONTAINER_STATE_")
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f'container "{c.name}" is {state}')
        uid = f"p-{len(self.processes) + 1}"
        argv = list(request.argv)
        p = cpb.Process(
            uid=uid,
            container_uid=c.uid,
            argv=argv,
            env=dict(request.env),
            cwd=request.cwd or "/",
            state=cpb.PROCESS_STATE_EXITED,
            pid=1000 + len(self.processes),
            start_time=_now(),
        )
        out = cpb.LOG_STREAM_STDOUT
        logs: list[cpb.StreamLogsResponse] = []
        running = True
        if argv[0] == "echo":
            logs.append(cpb.StreamLogsResponse(stream=out, data=(" ".join(argv[1:]) + "\n").encode()))
        elif argv[0] == "env":
            text = "".join(f"{k}={v}\n" for k, v in sorted(request.env.items()))
            logs.append(cpb.StreamLogsResponse(stream=out, data=text.encode()))
        elif argv[0] == "stderr":
            logs.append(cpb.StreamLogsResponse(stream=cpb.LOG_STREAM_STDERR, data=(argv[1] + "\n").encode()))
            p.exit_code = 1
        elif argv[0] == "exit":
            p.exit_code = int(argv[1])
        elif argv[0] == "crash":
            p.exit_code, p.signal = -1, 9
        elif argv[0] in ("sleep", "hang"):
            p.state = cpb.PROCESS_STATE_RUNNING
            c.running_processes += 1
            running = c.state == cpb.CONTAINER_STATE_RUNNING
            c.state = cpb.CONTAINER_STATE_RUNNING
        if p.state == cpb.PROCESS_STATE_EXITED:
            p.exit_time.CopyFrom(_now())
        self.processes[uid] = p
        self.logs[uid] = logs
        self.by_request[key] = uid
        self._event(process=p)
        if c.state == cpb.CONTAINER_STATE_RUNNING and not running:
            self._event(container=c)  # CREATED -> RUNNING with its first running process
        return cpb.ExecResponse(process=p)

    def GetProcess(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("GetProcess", request, context)
        return cpb.GetProcessResponse(process=self._process(request.process_uid, context))

    def ListProcesses(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("ListProcesses", request, context)
        items = list(self.processes.values())
        if request.container:
            c = self._container(request.container, context)
            items = [p for p in items if p.container_uid == c.uid]
        start = int(request.page_token or 0)
        size = request.page_size or 100
        token = str(start + size) if start + size < len(items) else ""
        return cpb.ListProcessesResponse(processes=items[start : start + size], next_page_token=token)

    def WaitProcess(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("WaitProcess", request, context)
        # Running processes never exit here: the wait returns at once, as if its timeout expired.
        return cpb.WaitProcessResponse(process=self._process(request.process_uid, context))

    def SignalProcess(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("SignalProcess", request, context)
        p = self._process(request.process_uid, context)
        if p.state != cpb.PROCESS_STATE_RUNNING:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f'process "{p.uid}" is not running')
        p.state, p.exit_code, p.signal = cpb.PROCESS_STATE_EXITED, -1, request.signal
        self._event(process=p)
        return cpb.SignalProcessResponse(process=p)

    def StreamLogs(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("StreamLogs", request, context)
        p = self._process(request.process_uid, context)
        yield from self.logs[request.process_uid]
        if request.follow and p.argv[0] == "hang":
            # Output that never comes: the stream stays open until the client goes away.
            while context.is_active():
                time.sleep(0.02)

    def Watch(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("Watch", request, context)
        ref = request.container
        if ref:
            ref = self._container(ref, context).uid
        after = request.since_revision or len(self.events)
        interval = request.heartbeat_interval.ToTimedelta().total_seconds()
        if interval:
            interval = max(interval, self.min_heartbeat)
            yield cpb.WatchResponse(revision=after, heartbeat=True)
        last_sent = time.monotonic()
        while context.is_active():
            head = len(self.events)
            for event in self.events[after:head]:
                uid = event.container.uid if event.HasField("container") else event.process.container_uid
                if not ref or uid == ref:
                    yield event
                    last_sent = time.monotonic()
            after = head
            if self.watch_ends:
                return
            if interval and time.monotonic() - last_sent >= interval:
                yield cpb.WatchResponse(revision=after, heartbeat=True)
                last_sent = time.monotonic()
            time.sleep(0.02)

    # -- HostService ---------------------------------------------------------------------------

    def RegisterHost(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("RegisterHost", request, context)
        for h in self.hosts.values():
            if h.address == request.address:
                break
        else:
            h = hpb.Host(id=f"h-{len(self.hosts) + 1}", address=request.address, create_time=_now())
            self.hosts[h.id] = h
        h.state = hpb.HOST_STATE_READY
        h.labels.clear()
        h.labels.update(request.labels)
        h.capacity.CopyFrom(request.capacity)
        h.agent.CopyFrom(hpb.AgentInfo(agent_version="0.1.0", device="fake", kernel_release="6.1.0"))
        h.last_seen_time.CopyFrom(_now())
        return hpb.RegisterHostResponse(host=h)

    def ListHosts(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("ListHosts", request, context)
        items = [h for h in self.hosts.values() if not request.state or h.state == request.state]
        return hpb.ListHostsResponse(hosts=items)

    def GetHost(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("GetHost", request, context)
        return hpb.GetHostResponse(host=self._host(request.host, context))

    def CordonHost(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("CordonHost", request, context)
        h = self._host(request.host, context)
        h.state = hpb.HOST_STATE_CORDONED
        return hpb.CordonHostResponse(host=h)

    def UncordonHost(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("UncordonHost", request, context)
        h = self._host(request.host, context)
        h.state = hpb.HOST_STATE_READY
        return hpb.UncordonHostResponse(host=h)

    def DrainHost(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("DrainHost", request, context)
        h = self._host(request.host, context)
        h.state = hpb.HOST_STATE_DRAINING
        return hpb.DrainHostResponse(host=h, stopped_containers=2)

    def RemoveHost(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("RemoveHost", request, context)
        h = self._host(request.host, context)
        del self.hosts[h.id]
        return hpb.RemoveHostResponse()

    # -- AdminService ----------------------------------------------------------------------------

    def CreateToken(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("CreateToken", request, context)
        token_id = f"{len(self.tokens) + 1:012x}"
        token = apb.Token(id=token_id, name=request.name, role=request.role, created_by="token:alice/0")
        token.create_time.CopyFrom(_now())
        if request.ttl_seconds:
            token.expire_time.FromSeconds(token.create_time.seconds + request.ttl_seconds)
        self.tokens[token_id] = token
        return apb.CreateTokenResponse(bearer_token=f"chital_{token_id}_secret", token=token)

    def ListTokens(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("ListTokens", request, context)
        return apb.ListTokensResponse(tokens=list(self.tokens.values()))

    def RevokeToken(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("RevokeToken", request, context)
        if request.id not in self.tokens:
            context.abort(grpc.StatusCode.NOT_FOUND, f'token "{request.id}"')
        token = self.tokens[request.id]
        if not token.HasField("revoke_time"):
            token.revoke_time.CopyFrom(_now())
        return apb.RevokeTokenResponse(token=token)

    def ListAuditLog(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("ListAuditLog", request, context)
        entries = [
            e for e in self.audit if not request.principal or e.principal.startswith(request.principal)
        ]
        start = int(request.page_token or 0)
        size = request.page_size or 100
        page = entries[start : start + size]
        more = start + size < len(entries)
        return apb.ListAuditLogResponse(entries=page, next_page_token=str(start + size) if more else "")

    def WhoAmI(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("WhoAmI", request, context)
        return self.identity

    def GetServerInfo(self, request, context):  # type: ignore[no-untyped-def]
        self._enter("GetServerInfo", request, context)
        return self.server_info
