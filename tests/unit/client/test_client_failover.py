"""Several controller addresses: the SDK (sync and asyncio) and the CLI fail over between them.

Two in-process fake controllers, or one and an address where nothing listens: a call that meets
UNAVAILABLE moves the client to the next address and, when it is safe to repeat, is sent there
(the same request, request_id included); SignalProcess is not repeated. TLS names are checked per
address.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from conftest import serve
from fake_chital_controller import FakeController

from chital.api.container.v1 import container_pb2 as cpb
from chital.api.container.v1 import container_pb2_grpc as cpb_grpc
from chital.cli import main
from chital.client import Client, DeadlineExceeded, RetryPolicy, Unavailable
from chital.client._failover import may_retry_elsewhere, split_targets
from chital.client.aio import AsyncClient
from chital.security.pki import PKI
from chital.security.tls import TLSFiles, server_credentials

ONE_TRY = RetryPolicy(max_attempts=1)


def dead_address() -> str:
    """A loopback address where nothing listens (connection refused: UNAVAILABLE at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def second() -> Iterator[tuple[FakeController, str]]:
    fake = FakeController()
    server, address = serve(fake)
    try:
        yield fake, address
    finally:
        server.stop(grace=None)


def test_split_targets() -> None:
    assert split_targets("a:1, b:2,,a:1") == ("a:1", "b:2")
    with pytest.raises(ValueError, match="no controller address"):
        split_targets(" , ")
    assert may_retry_elsewhere("containers", "CreateContainer")
    assert may_retry_elsewhere("rollouts", "StartRollout")
    assert not may_retry_elsewhere("containers", "SignalProcess")
    assert not may_retry_elsewhere("admin", "CreateToken")


def test_insecure_refuses_any_remote_address() -> None:
    with pytest.raises(ValueError, match=r"not 10\.0\.0\.1:7443"):
        Client("127.0.0.1:7443,10.0.0.1:7443", insecure=True)


def test_a_dead_controller_is_skipped(fake: FakeController, target: str) -> None:
    dead = dead_address()
    with Client(f"{dead},{target}", insecure=True, retries=ONE_TRY, timeout=5) as client:
        assert client.target == f"{dead},{target}"
        created = client.create_container("web", request_id="rq-1")
        # Sent once, to the live one; later calls go there directly.
        assert fake.calls["CreateContainer"] == 1
        assert client.get_container("web").uid == created.uid
        assert fake.calls["GetContainer"] == 1


def test_unavailable_moves_the_same_request_to_the_next(
    fake: FakeController, target: str, second: tuple[FakeController, str]
) -> None:
    """A controller that answers UNAVAILABLE (down, or a follower asked for leader work): the create
    is sent again to the other one with the same request_id."""
    other, other_target = second
    fake.fail("CreateContainer", 1, grpc.StatusCode.UNAVAILABLE, "going away")
    with Client(f"{target},{other_target}", insecure=True, retries=ONE_TRY, timeout=5) as client:
        client.create_container("web", request_id="rq-same")
    assert fake.calls["CreateContainer"] == 1 and other.calls["CreateContainer"] == 1
    first, again = fake.requests["CreateContainer"][0], other.requests["CreateContainer"][0]
    assert first.request_id == again.request_id == "rq-same"


def test_signal_is_not_repeated_but_the_next_call_moves_on(
    fake: FakeController, target: str, second: tuple[FakeController, str]
) -> None:
    other, other_target = second
    with Client(f"{target},{other_target}", insecure=True, retries=ONE_TRY, timeout=5) as client:
        fake.fail("SignalProcess", 1, grpc.StatusCode.UNAVAILABLE, "going away")
        with pytest.raises(Unavailable):
            client.signal_process("0" * 32, 15)
        assert other.calls["SignalProcess"] == 0
        client.list_containers_page()
        assert other.calls["ListContainers"] == 1 and fake.calls["ListContainers"] == 0


def test_every_controller_down_is_unavailable() -> None:
    with (
        Client(f"{dead_address()},{dead_address()}", insecure=True, retries=ONE_TRY, timeout=5) as client,
        pytest.raises(Unavailable),
    ):
        client.list_containers_page()


def test_async_client_fails_over(fake: FakeController, target: str) -> None:
    async def run() -> None:
        async with AsyncClient(f"{dead_address()},{target}", insecure=True, retries=ONE_TRY, timeout=5) as c:
            await c.create_container("web", request_id="rq-a")
            names = [x.name async for x in c.iter_containers()]
            assert names == ["web"]

    asyncio.run(run())
    assert fake.calls["CreateContainer"] == 1


def test_tls_checks_each_address_by_its_own_name(fake: FakeController, pki: PKI) -> None:
    """Each address gets its own channel, and so its own TLS name check: ``localhost:PORT`` is
    verified against the certificate's DNS SAN (an ``ipv4:`` list on one channel could not be)."""
    files = TLSFiles.from_dir(pki.directory / "controller")
    server, address = serve(fake, server_credentials(files, require_client_cert=False))
    try:
        port = address.rsplit(":", 1)[1]
        ca = TLSFiles(ca=pki.directory / "controller" / "ca.crt")
        with Client(f"{dead_address()},localhost:{port}", tls=ca, retries=ONE_TRY, timeout=5) as client:
            client.list_containers_page()
        assert fake.calls["ListContainers"] == 1
    finally:
        server.stop(grace=None)


def test_cli_takes_repeated_controllers(
    fake: FakeController, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--controller", dead_address(), "--controller", target, "--insecure", "-o", "json", "ls"])
    assert code == 0, capsys.readouterr().err
    assert fake.calls["ListContainers"] == 1


class _Stuck(cpb_grpc.ContainerServiceServicer):
    """A controller that stops answering (as a frozen one does): calls wait until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def ListContainers(self, request: object, context: grpc.ServicerContext) -> cpb.ListContainersResponse:
        self.release.wait(30)
        return cpb.ListContainersResponse()


def test_a_call_that_times_out_moves_the_next_one_on(fake: FakeController, target: str) -> None:
    """DEADLINE_EXCEEDED is raised (a write might still run there), and the next call goes to the
    next controller instead of waiting on the stuck one again."""
    stuck = _Stuck()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    cpb_grpc.add_ContainerServiceServicer_to_server(stuck, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Client(f"127.0.0.1:{port},{target}", insecure=True, retries=ONE_TRY, timeout=5) as client:
            with pytest.raises(DeadlineExceeded):
                client.list_containers_page(timeout=0.5)
            client.list_containers_page()
        assert fake.calls["ListContainers"] == 1
    finally:
        stuck.release.set()
        server.stop(grace=None)
