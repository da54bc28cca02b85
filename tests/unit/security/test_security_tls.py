"""TLS credentials from bundles, against a real gRPC server on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from chital import errdefs
from chital.security.pki import PKI
from chital.security.tls import (
    Peer,
    TLSFiles,
    channel_credentials,
    check_listen,
    is_loopback,
    peer_from_context,
    server_credentials,
)

METHOD = "/chital.test.Echo/WhoAmI"


def _whoami(_request: bytes, context: grpc.ServicerContext) -> bytes:
    peer = peer_from_context(context)
    return b"-" if peer is None else f"{peer.name}/{peer.role}".encode()


class Server:
    """A one-method gRPC server on 127.0.0.1 with the given credentials (None: plaintext)."""

    def __init__(self, credentials: grpc.ServerCredentials | None) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(_whoami)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("chital.test.Echo", {"WhoAmI": handler}),)
        )
        if credentials is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.server.start()

    def call(self, files: TLSFiles | None, host: str = "127.0.0.1") -> bytes:
        target = f"{host}:{self.port}"
        if files is None:
            channel = grpc.insecure_channel(target)
        else:
            channel = grpc.secure_channel(target, channel_credentials(files))
        with channel:
            call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)
            return call(b"", timeout=10)


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    pki = PKI.init(tmp_path / "pki")
    pki.issue_controller()
    pki.issue_agent("127.0.0.1")
    pki.issue_user("alice", "admin")
    return pki


@pytest.fixture
def agent_server(pki: PKI) -> Iterator[Server]:
    """An agent-like port: client certificates required."""
    files = TLSFiles.from_dir(pki.directory / "agents" / "127.0.0.1")
    server = Server(server_credentials(files, require_client_cert=True))
    yield server
    server.server.stop(None)


@pytest.fixture
def api_server(pki: PKI) -> Iterator[Server]:
    """A controller-API-like port: TLS, client certificates not requested."""
    server = Server(
        server_credentials(TLSFiles.from_dir(pki.directory / "controller"), require_client_cert=False)
    )
    yield server
    server.server.stop(None)


def _refused(server: Server, files: TLSFiles | None, host: str = "127.0.0.1") -> None:
    with pytest.raises(grpc.RpcError) as info:
        server.call(files, host)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_from_dir(pki: PKI, tmp_path: Path) -> None:
    bundle = pki.directory / "users" / "alice"
    assert TLSFiles.from_dir(bundle) == TLSFiles(bundle / "ca.crt", bundle / "tls.crt", bundle / "tls.key")
    (tmp_path / "ca-only").mkdir()
    assert TLSFiles.from_dir(tmp_path / "ca-only") == TLSFiles(tmp_path / "ca-only" / "ca.crt")


def test_mutual_tls_gives_the_peer_name_and_role(pki: PKI, agent_server: Server) -> None:
    controller = TLSFiles.from_dir(pki.directory / "controller")
    assert agent_server.call(controller) == b"controller/controller"
    assert agent_server.call(TLSFiles.from_dir(pki.directory / "users" / "alice")) == b"alice/admin"


def test_no_client_certificate_is_refused(pki: PKI, agent_server: Server) -> None:
    _refused(agent_server, TLSFiles(ca=pki.directory / "ca" / "ca.crt"))


def test_plaintext_client_is_refused(agent_server: Server) -> None:
    _refused(agent_server, None)


def test_a_certificate_of_another_ca_is_refused(tmp_path: Path, pki: PKI, agent_server: Server) -> None:
    other = PKI.init(tmp_path / "other")
    bundle = other.issue_controller()
    # Its own CA does not know the server either: trust the fleet CA, present the foreign cert.
    foreign = TLSFiles(ca=pki.directory / "ca" / "ca.crt", cert=bundle / "tls.crt", key=bundle / "tls.key")
    _refused(agent_server, foreign)


def test_a_server_of_another_ca_is_refused(tmp_path: Path, pki: PKI) -> None:
    other = PKI.init(tmp_path / "other")
    files = TLSFiles.from_dir(other.issue_agent("127.0.0.1"))
    server = Server(server_credentials(files, require_client_cert=True))
    try:
        _refused(server, TLSFiles.from_dir(pki.directory / "controller"))
    finally:
        server.server.stop(None)


def test_an_expired_client_certificate_is_refused(pki: PKI, agent_server: Server) -> None:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    bundle = pki.issue_controller(days=1, not_before=start)
    _refused(agent_server, TLSFiles.from_dir(bundle))


def test_an_expired_server_certificate_is_refused(pki: PKI) -> None:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    files = TLSFiles.from_dir(pki.issue_agent("127.0.0.1", days=1, not_before=start))
    server = Server(server_credentials(files, require_client_cert=True))
    try:
        _refused(server, TLSFiles.from_dir(pki.directory / "controller"))
    finally:
        server.server.stop(None)


def test_the_server_certificate_must_name_the_dialled_host(pki: PKI) -> None:
    files = TLSFiles.from_dir(pki.issue_agent("10.9.9.9"))
    server = Server(server_credentials(files, require_client_cert=True))
    try:
        _refused(server, TLSFiles.from_dir(pki.directory / "controller"))
    finally:
        server.server.stop(None)


def test_a_port_without_client_certificates_sees_no_peer(pki: PKI, api_server: Server) -> None:
    # Whether the client has a certificate or not, it is neither requested nor seen.
    assert api_server.call(TLSFiles(ca=pki.directory / "ca" / "ca.crt")) == b"-"
    assert api_server.call(TLSFiles.from_dir(pki.directory / "users" / "alice")) == b"-"
    # localhost is one of the controller's default SANs.
    assert api_server.call(TLSFiles(ca=pki.directory / "ca" / "ca.crt"), host="localhost") == b"-"


def test_plaintext_sees_no_peer() -> None:
    server = Server(None)
    try:
        assert server.call(None) == b"-"
    finally:
        server.server.stop(None)


def test_rotation_old_and_new_ca_interoperate_through_the_trust_bundle(pki: PKI) -> None:
    # The agent keeps its old-CA certificate; the controller has been re-issued by the new CA.
    pki.rotate_ca(common_name="chital fleet CA 2")
    agent = TLSFiles.from_dir(pki.directory / "agents" / "127.0.0.1")
    controller = TLSFiles.from_dir(pki.issue_controller())
    server = Server(server_credentials(agent, require_client_cert=True))
    try:
        assert server.call(controller) == b"controller/controller"
        pki.issue_agent("127.0.0.1")
        pki.drop_old_cas(force=True)  # the old-CA server is still running with its old trust
        fresh = Server(server_credentials(TLSFiles.from_dir(agent.ca.parent), require_client_cert=True))
        try:
            assert fresh.call(controller) == b"controller/controller"
        finally:
            fresh.server.stop(None)
    finally:
        server.server.stop(None)


def test_credentials_need_readable_files(tmp_path: Path, pki: PKI) -> None:
    with pytest.raises(errdefs.FailedPrecondition, match="needs a certificate and a key"):
        server_credentials(TLSFiles(ca=pki.directory / "ca" / "ca.crt"), require_client_cert=True)
    with pytest.raises(errdefs.FailedPrecondition, match="both a certificate and its key"):
        channel_credentials(TLSFiles(ca=pki.directory / "ca" / "ca.crt", cert=tmp_path / "x"))
    with pytest.raises(errdefs.FailedPrecondition, match=r"cannot read .*nope"):
        channel_credentials(TLSFiles(ca=tmp_path / "nope"))


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:0", True),
        ("127.1.2.3:7443", True),
        ("[::1]:7443", True),
        ("localhost:1", True),
        ("[::ffff:127.0.0.1]:1", True),
        ("0.0.0.0:1", False),
        (":7443", False),
        ("[::]:7443", False),
        ("10.0.0.1:1", False),
        ("example.org:7443", False),
        ("127.0.0.1", False),
        ("", False),
    ],
)
def test_is_loopback(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


def test_check_listen(pki: PKI, tmp_path: Path) -> None:
    files = TLSFiles.from_dir(pki.directory / "controller")
    check_listen("0.0.0.0:7443", insecure=False, tls=files)
    check_listen("127.0.0.1:7443", insecure=True, tls=None)
    check_listen("[::1]:7443", insecure=True, tls=None)


@pytest.mark.parametrize(
    ("listen", "insecure", "bundle", "message"),
    [
        ("0.0.0.0:7443", True, None, "plaintext is only allowed on loopback"),
        (":7443", True, None, "plaintext is only allowed on loopback"),
        ("10.0.0.1:7443", True, None, "plaintext is only allowed on loopback"),
        ("127.0.0.1:7443", False, None, "no TLS files: pass --tls-dir"),
        ("127.0.0.1:7443", True, "controller", "exclude each other"),
        ("0.0.0.0:7443", False, "users/alice/missing", "TLS CA certificate missing"),
        ("0.0.0.0:7443", False, "ca", "TLS certificate missing: .*tls.crt"),
    ],
)
def test_check_listen_refuses(
    pki: PKI, listen: str, insecure: bool, bundle: str | None, message: str
) -> None:
    files = None if bundle is None else TLSFiles.from_dir(pki.directory / bundle)
    with pytest.raises(errdefs.FailedPrecondition, match=message):
        check_listen(listen, insecure=insecure, tls=files)


def test_peer_from_context_parses_the_subject() -> None:
    class Context:
        def __init__(self, auth: dict[str, list[bytes]]) -> None:
            self.auth = auth

        def auth_context(self) -> dict[str, list[bytes]]:
            return self.auth

    def peer(auth: dict[str, list[bytes]]) -> Peer | None:
        return peer_from_context(Context(auth))  # type: ignore[arg-type]

    assert peer({"x509_subject": [b"CN=alice,OU=admin,O=chital"]}) == Peer("alice", "admin")
    assert peer({"x509_subject": [b"CN=a\\,b,OU=viewer,O=chital"]}) == Peer("a,b", "viewer")
    assert peer({}) is None
    assert peer({"x509_subject": [b"CN=alice,O=chital"]}) is None
    assert peer({"x509_subject": [b"CN=alice,OU=admin,OU=viewer,O=chital"]}) is None
    assert peer({"x509_subject": [b"not a name"]}) is None
