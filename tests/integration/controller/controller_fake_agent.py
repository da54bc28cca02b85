"""An in-process fake AgentService for controller tests (no dependency on the real agent).

Behaviour the tests rely on:
- CreateContainer / StartProcess are idempotent by uid and counted in ``calls``.
- A process whose argv is ``["exit", "N"]`` exits with code N shortly after it starts; any other
  process runs until it is signalled (exit by that signal) or its container is destroyed.
- Every start and exit is an event on StreamEvents (seq 1, 2, ...).
- ``fail_create`` makes CreateContainer fail with that status code.
- Sync answers with every container and the processes of the containers that exist.
"""

from __future__ import annotations

import collections
import threading
import uuid
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from chital.api.agent.v1 import agent_pb2, agent_pb2_grpc
from chital.security.tls import TLSFiles, server_credentials


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


class FakeAgent(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.cond = threading.Condition()
        self.calls: collections.Counter[str] = collections.Counter()
        # The last StartProcessRequest, as the controller sent it.
        self.last_start: Any = None
        self.containers: dict[str, Any] = {}
        self.processes: dict[str, Any] = {}
        self.events: list[Any] = []
        self.boot_id = uuid.uuid4().hex
        self.next_pid = 1000
        self.fail_create: grpc.StatusCode | None = None

    # -- helpers -----------------------------------------------------------------------------

    def _emit(self, **fields: Any) -> None:
        # with self.cond held
        ev = agent_pb2.StreamEventsResponse(seq=len(self.events) + 1, time=_now(), **fields)
        self.events.append(ev)
        self.cond.notify_all()

    def exit_process(self, uid: str, exit_code: int = 0, signal: int = 0) -> None:
        with self.cond:
            p = self.processes.get(uid)
            if p is None or p.state == agent_pb2.PROCESS_STATE_EXITED:
                return
            p.state = agent_pb2.PROCESS_STATE_EXITED
            p.exit_code = -1 if signal else exit_code
            p.signal = signal
            p.exit_time.CopyFrom(_now())
            self._emit(
                kind=agent_pb2.EVENT_KIND_PROCESS_EXITED,
                container_uid=p.container_uid,
                process_uid=uid,
                pid=p.pid,
                exit_code=p.exit_code,
                signal=signal,
            )

    # -- AgentService --------------------------------------------------------------------------

    def GetInfo(self, request: Any, context: Any) -> Any:
        self.calls["GetInfo"] += 1
        with self.cond:
            return agent_pb2.GetInfoResponse(
                agent_version="fake-1",
                kernel_release="6.1.0-fake",
                device="fake",
                sandboxed=False,
                container_count=len(self.containers),
                boot_id=self.boot_id,
                last_event_seq=len(self.events),
            )

    def Heartbeat(self, request: Any, context: Any) -> Any:
        # As the real agent: a beat at once, then one every interval; the info when it changed.
        self.calls["Heartbeat"] += 1
        interval = max(request.interval_ms, 100) / 1000
        gone = threading.Event()
        context.add_callback(gone.set)
        sequence, sent = 0, None
        while context.is_active():
            sequence += 1
            with self.cond:
                info = agent_pb2.GetInfoResponse(
                    agent_version="fake-1",
                    kernel_release="6.1.0-fake",
                    device="fake",
                    sandboxed=False,
                    container_count=len(self.containers),
                    boot_id=self.boot_id,
                    last_event_seq=len(self.events),
                )
            if info == sent:
                yield agent_pb2.HeartbeatResponse(sequence=sequence)
            else:
                sent = info
                yield agent_pb2.HeartbeatResponse(sequence=sequence, info=info)
            if gone.wait(interval):
                return

    def Sync(self, request: Any, context: Any) -> Any:
        # What the controller's host reconciler compares with its database: every container, and the
        # processes of the containers that still exist (running or exited), as the real agent does.
        self.calls["Sync"] += 1
        with self.cond:
            return agent_pb2.SyncResponse(
                containers=list(self.containers.values()),
                processes=[p for p in self.processes.values() if p.container_uid in self.containers],
                last_event_seq=len(self.events),
            )

    def CreateContainer(self, request: Any, context: Any) -> Any:
        self.calls["CreateContainer"] += 1
        if self.fail_create is not None:
            context.abort(self.fail_create, f"{self.name}: create refused")
        with self.cond:
            c = self.containers.get(request.uid)
            if c is None:
                # A stand-in for the host's default policy: "syslog" unless relaxed.
                deny = sorted(({"syslog"} | set(request.deny_syscalls)) - set(request.sandbox.allow_syscalls))
                c = agent_pb2.Container(
                    uid=request.uid,
                    name=request.name,
                    root=request.root or f"/fake/{request.uid}",
                    sandbox=request.sandbox,
                    effective_deny_syscalls=deny,
                )
                self.containers[request.uid] = c
            return agent_pb2.CreateContainerResponse(container=c)

    def DestroyContainer(self, request: Any, context: Any) -> Any:
        self.calls["DestroyContainer"] += 1
        with self.cond:
            members = [u for u, p in self.processes.items() if p.container_uid == request.uid]
        for uid in members:
            self.exit_process(uid, signal=15)
        with self.cond:
            self.containers.pop(request.uid, None)
        return agent_pb2.DestroyContainerResponse()

    def StartProcess(self, request: Any, context: Any) -> Any:
        self.calls["StartProcess"] += 1
        with self.cond:
            self.last_start = request
            if request.container_uid not in self.containers:
                context.abort(grpc.StatusCode.NOT_FOUND, f"container {request.container_uid} not found")
            p = self.processes.get(request.process_uid)
            if p is not None:
                return agent_pb2.StartProcessResponse(process=p)
            self.next_pid += 1
            p = agent_pb2.Process(
                uid=request.process_uid,
                container_uid=request.container_uid,
                pid=self.next_pid,
                state=agent_pb2.PROCESS_STATE_RUNNING,
                start_time=_now(),
                argv=list(request.argv),
            )
            self.processes[request.process_uid] = p
            self._emit(
                kind=agent_pb2.EVENT_KIND_PROCESS_STARTED,
                container_uid=request.container_uid,
                process_uid=request.process_uid,
                pid=p.pid,
            )
            result = agent_pb2.Process()
            result.CopyFrom(p)
        argv = list(request.argv)
        if len(argv) == 2 and argv[0] == "exit":
            timer = threading.Timer(0.05, self.exit_process, args=(request.process_uid, int(argv[1])))
            timer.daemon = True
            timer.start()
        return agent_pb2.StartProcessResponse(process=result)

    def SignalProcess(self, request: Any, context: Any) -> Any:
        self.calls["SignalProcess"] += 1
        if request.process_uid not in self.processes:
            context.abort(grpc.StatusCode.NOT_FOUND, f"process {request.process_uid} not found")
        self.exit_process(request.process_uid, signal=request.signal)
        return agent_pb2.SignalProcessResponse()

    def StreamEvents(self, request: Any, context: Any) -> Any:
        self.calls["StreamEvents"] += 1
        sent = request.after_seq
        while context.is_active():
            with self.cond:
                pending = self.events[sent:]
                if not pending:
                    self.cond.wait(0.2)
                    continue
            for ev in pending:
                yield ev
                sent = ev.seq

    def StreamLogs(self, request: Any, context: Any) -> Any:
        self.calls["StreamLogs"] += 1
        if request.process_uid not in self.processes:
            context.abort(grpc.StatusCode.NOT_FOUND, f"process {request.process_uid} not found")
        yield agent_pb2.StreamLogsResponse(stream=agent_pb2.LOG_STREAM_STDOUT, data=b"hello\n")
        yield agent_pb2.StreamLogsResponse(stream=agent_pb2.LOG_STREAM_STDERR, data=b"oops\n")


class RunningFakeAgent:
    """A FakeAgent served on 127.0.0.1 at a free port: with ``tls_dir`` (an agent bundle) over
    mutual TLS that requires a client certificate of the fleet CA, like the real agent; without it
    in plaintext."""

    def __init__(self, name: str = "fake", tls_dir: Path | None = None) -> None:
        self.agent = FakeAgent(name)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        agent_pb2_grpc.add_AgentServiceServicer_to_server(self.agent, self.server)
        if tls_dir is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            creds = server_credentials(TLSFiles.from_dir(tls_dir), require_client_cert=True)
            self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.address = f"127.0.0.1:{self.port}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0).wait(5)
