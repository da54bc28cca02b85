"""The SDK's transport security: the bearer token on every call, TLS against a server with
certificates from chital.security.pki, what a failed handshake says, and the constructor's checks."""

from __future__ import annotations

import datetime as dt
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from conftest import serve
from fake_chital_controller import FakeController

import chital.client
from chital.client import NO_RETRY, Client, RetryPolicy, TLSFiles
from chital.client._errors import tls_failure
from chital.client.config import Config, ConfigError, Context
from chital.security.pki import PKI
from chital.security.tls import server_credentials

FAST = RetryPolicy(max_attempts=4, initial_backoff=0.001, max_backoff=0.002)
TOKEN = "chital_0123456789ab_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I"


def ca_only(pki: PKI) -> TLSFiles:
    return TLSFiles(ca=pki.directory / "ca" / "ca.crt")


# -- the token --------------------------------------------------------------------------------------


def test_the_token_reaches_the_server_on_every_kind_of_call(target: str, fake: FakeController) -> None:
    with Client(target, insecure=True, token=TOKEN, retries=FAST) as client:
        c = client.create_container("box")
        p = client.exec(c.uid, ["echo", "hi"])
        assert [chunk.data for chunk in client.stream_logs(p.uid)] == [b"hi\n"]
        client.whoami()
        fake.fail("ListHosts", 1, grpc.StatusCode.UNAVAILABLE)
        list(client.list_hosts())  # a retried call carries it again
    for method in ("CreateContainer", "Exec", "StreamLogs", "WhoAmI"):
        assert fake.authorization[method] == [f"Bearer {TOKEN}"], method
    assert fake.authorization["ListHosts"] == [f"Bearer {TOKEN}"] * 2


def test_without_a_token_no_authorization_is_sent(target: str, fake: FakeController) -> None:
    with Client(target, insecure=True) as client:
        client.whoami()
    assert fake.authorization["WhoAmI"] == [None]


@pytest.mark.parametrize("bad", ["", "   ", "chital_a b", "chital_\u00e9", "chital_a\x00"])
def test_a_token_that_cannot_travel_is_refused(target: str, bad: str) -> None:
    with pytest.raises(ValueError, match="token"):
        Client(target, insecure=True, token=bad)


def test_a_pasted_line_break_is_trimmed(target: str, fake: FakeController) -> None:
    with Client(target, insecure=True, token=f"  {TOKEN}\n") as client:
        client.whoami()
    assert fake.authorization["WhoAmI"] == [f"Bearer {TOKEN}"]


def test_the_token_is_not_in_reprs(target: str) -> None:
    client = Client(target, insecure=True, token=TOKEN)
    try:
        assert TOKEN not in repr(client) and TOKEN not in repr(vars(client))
        assert "insecure" in repr(client)
    finally:
        client.close()


# -- the constructor's checks -----------------------------------------------------------------------


def test_tls_or_insecure_is_required(pki: PKI) -> None:
    with pytest.raises(ValueError, match=r"no TLS material for controller 127.0.0.1:7443: pass tls="):
        Client("127.0.0.1:7443")
    with pytest.raises(ValueError, match="not both"):
        Client("127.0.0.1:7443", tls=ca_only(pki), credentials=grpc.ssl_channel_credentials())
    with pytest.raises(ValueError, match="takes no tls"):
        Client("127.0.0.1:7443", tls=ca_only(pki), insecure=True)


@pytest.mark.parametrize("address", ["10.0.0.1:7443", "controller:7443", "0.0.0.0:7443", ":7443"])
def test_plaintext_only_to_loopback(address: str) -> None:
    with pytest.raises(ValueError, match="only for a controller on loopback"):
        Client(address, insecure=True)


def test_the_target_defaults_to_chital_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHITAL_CONTROLLER", "127.0.0.1:9")
    with Client(insecure=True) as client:
        assert client.target == "127.0.0.1:9"
    monkeypatch.delenv("CHITAL_CONTROLLER")
    with Client(insecure=True) as client:
        assert client.target == "127.0.0.1:7443"


# -- TLS ----------------------------------------------------------------------------------------


def test_tls_with_a_token(tls_target: str, fake: FakeController, pki: PKI) -> None:
    with Client(tls_target, tls=ca_only(pki), token=TOKEN) as client:
        assert client.whoami().name == "alice"
        assert [c.name for c in client.list_containers()] == []
    assert fake.authorization["WhoAmI"] == [f"Bearer {TOKEN}"]


def test_tls_by_name(fake: FakeController, pki: PKI) -> None:
    server, address = serve(
        fake, server_credentials(TLSFiles.from_dir(pki.directory / "controller"), require_client_cert=False)
    )
    try:
        with Client(address.replace("127.0.0.1", "localhost"), tls=ca_only(pki)) as client:
            client.whoami()
    finally:
        server.stop(grace=None)


def test_mtls_with_a_user_bundle(mtls_target: str, pki: PKI) -> None:
    with Client(mtls_target, tls=TLSFiles.from_dir(pki.directory / "users" / "alice")) as client:
        assert client.whoami().role == "admin"


def test_an_unknown_ca_fails_and_says_so(tls_target: str, fake: FakeController, pki: PKI) -> None:
    # gRPC cannot tell a failed handshake from any other UNAVAILABLE: the service config retries it
    # (within the policy's backoff), and the message after the last attempt still says what failed.
    other = TLSFiles(ca=pki.directory.parent / "other" / "ca" / "ca.crt")
    with (
        Client(tls_target, tls=other) as client,
        pytest.raises(chital.client.Unavailable) as info,
    ):
        client.get_container("x")
    assert str(info.value).startswith(
        "TLS handshake failed: check the CA (certificate signed by an unknown authority?)"
    )
    assert fake.calls["GetContainer"] == 0


def test_a_certificate_for_another_address(fake: FakeController, pki: PKI, tmp_path: Path) -> None:
    # The controller's certificate names 127.0.0.1 and localhost; dial it as 127.0.0.2.
    files = TLSFiles.from_dir(pki.directory / "controller")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_secure_port("127.0.0.2:0", server_credentials(files, require_client_cert=False))
    server.start()
    try:
        with (
            Client(f"127.0.0.2:{port}", tls=ca_only(pki), retries=NO_RETRY) as client,
            pytest.raises(chital.client.Unavailable, match="does not name the address dialled"),
        ):
            client.whoami()
    finally:
        server.stop(grace=None)


def test_an_expired_controller_certificate(fake: FakeController, tmp_path: Path) -> None:
    pki = PKI.init(tmp_path / "pki")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    files = TLSFiles.from_dir(pki.issue_controller(days=1, not_before=past))
    server, address = serve(fake, server_credentials(files, require_client_cert=False))
    try:
        with (
            Client(address, tls=ca_only(pki), retries=NO_RETRY) as client,
            pytest.raises(
                chital.client.Unavailable, match=r"certificate is not valid now \(certificate has expired"
            ),
        ):
            client.whoami()
    finally:
        server.stop(grace=None)


def test_tls_to_a_plaintext_server(target: str, pki: PKI) -> None:
    with (
        Client(target, tls=ca_only(pki), retries=NO_RETRY) as client,
        pytest.raises(chital.client.Unavailable, match="does not speak TLS"),
    ):
        client.whoami()


def test_mtls_without_a_certificate_is_refused(mtls_target: str, fake: FakeController, pki: PKI) -> None:
    with (
        Client(mtls_target, tls=ca_only(pki), retries=NO_RETRY) as client,
        pytest.raises(chital.client.Unavailable),
    ):
        client.whoami()
    assert fake.calls["WhoAmI"] == 0


def test_mtls_with_another_cas_certificate_is_refused(
    mtls_target: str, fake: FakeController, pki: PKI
) -> None:
    mallory = pki.directory.parent / "other" / "users" / "mallory"
    files = TLSFiles(ca=pki.directory / "ca" / "ca.crt", cert=mallory / "tls.crt", key=mallory / "tls.key")
    with Client(mtls_target, tls=files, retries=NO_RETRY) as client, pytest.raises(chital.client.Unavailable):
        client.whoami()
    assert fake.calls["WhoAmI"] == 0


@pytest.mark.parametrize(
    ("details", "meaning"),
    [
        (
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Tls handshake failed "
            "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:"
            "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate: OK",
            "TLS handshake failed: check the CA (certificate signed by an unknown authority?): "
            "unable to get local issuer certificate",
        ),
        (
            "... CERTIFICATE_VERIFY_FAILED: certificate has expired: OK",
            "TLS handshake failed: the controller's certificate is not valid now (certificate has expired)",
        ),
        (
            "... SSL_ERROR_SSL: error:10000418:SSL routines:OPENSSL_internal:TLSV1_ALERT_UNKNOWN_CA",
            "TLS handshake failed: the controller refused the client certificate "
            "(missing, expired, or issued by another CA)",
        ),
        (
            "... Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000f7:SSL routines:"
            "OPENSSL_internal:WRONG_VERSION_NUMBER: Invalid certificate verification context: OK",
            "TLS handshake failed: the controller does not speak TLS (is it serving plaintext?)",
        ),
        (
            "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed",
            None,
        ),
        ("Connection refused", None),
        # The peer went away during the handshake (a frozen controller, one restarting): no
        # certificate was judged, so the client may try the next controller.
        (
            "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: "
            "Handshake read failed (Endpoint closing)",
            None,
        ),
        (
            "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: "
            "Handshake read failed (recvmsg:Connection reset by peer (104))",
            None,
        ),
    ],
)
def test_tls_failure_texts(details: str, meaning: str | None) -> None:
    if meaning is None and "ALERT" in details:
        assert tls_failure(details) is not None and "refused the client certificate" in str(
            tls_failure(details)
        )
    else:
        assert tls_failure(details) == meaning


# -- from_config ----------------------------------------------------------------------------------


def test_from_config_end_to_end(mtls_target: str, fake: FakeController, pki: PKI, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    path = tmp_path / "config.toml"
    config = Config(path=path, current_context="prod")
    config.set_context(
        "prod",
        Context(
            controllers=(mtls_target,),
            tls_dir=str(pki.directory / "users" / "alice"),
            token_file=str(token_file),
        ),
    )
    config.set_context("other", Context(controllers=("127.0.0.1:1",), insecure=True))
    config.save()
    with Client.from_config(config_path=path, env={}) as client:
        assert client.target == mtls_target
        client.whoami()
    assert fake.authorization["WhoAmI"] == [f"Bearer {TOKEN}"]
    # An argument overrides the context's setting; the environment names the context.
    with Client.from_config(config_path=path, env={"CHITAL_CONTEXT": "other"}, token="chital_x") as client:
        assert client.target == "127.0.0.1:1" and client.insecure
    with pytest.raises(ConfigError, match=r"context 'nope' \(from flag --context\) is not in"):
        Client.from_config("nope", config_path=path, env={})


def test_from_config_reads_the_environment(
    target: str, fake: FakeController, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHITAL_CONTROLLER", target)
    monkeypatch.setenv("CHITAL_INSECURE", "1")
    monkeypatch.setenv("CHITAL_TOKEN", TOKEN)
    with Client.from_config(timeout=3) as client:
        assert client.timeout == 3
        client.whoami()
    assert fake.authorization["WhoAmI"] == [f"Bearer {TOKEN}"]


def test_without_an_address_the_environment_and_the_context_decide(
    target: str, fake: FakeController, monkeypatch: pytest.MonkeyPatch, _no_user_settings: Path
) -> None:
    with pytest.raises(ConfigError, match=r"no CA certificate to verify controller 127\.0\.0\.1:7443"):
        Client()
    config = Config(path=_no_user_settings)
    config.set_context("dev", Context(controllers=(target,), insecure=True, token=TOKEN))
    config.use_context("dev")
    config.save()
    with Client() as client:  # everything from the current context
        assert client.target == target and client.insecure
        client.whoami()
    assert fake.authorization["WhoAmI"] == [f"Bearer {TOKEN}"]
    with Client(insecure=True) as client:  # only the address from it
        assert client.target == target
        client.whoami()
    assert fake.authorization["WhoAmI"][-1] is None
    monkeypatch.setenv("CHITAL_CONTROLLER", "127.0.0.1:9")
    with Client(insecure=True) as client:  # the environment before the context
        assert client.target == "127.0.0.1:9"


# -- AdminService ---------------------------------------------------------------------------------


def test_tokens(target: str, fake: FakeController) -> None:
    with Client(target, insecure=True) as client:
        created = client.create_token("ci", "operator", ttl=dt.timedelta(hours=1))
        assert created.bearer_token.startswith("chital_") and created.bearer_token not in repr(created)
        assert (created.token.name, created.token.role) == ("ci", "operator")
        assert created.token.expire_time is not None and not created.token.expired()
        assert fake.requests["CreateToken"][0].ttl_seconds == 3600
        forever = client.create_token("admin2", "admin")
        assert forever.token.expire_time is None and fake.requests["CreateToken"][1].ttl_seconds == 0
        with pytest.raises(ValueError, match="ttl"):
            client.create_token("x", "viewer", ttl=0.5)
        assert [t.name for t in client.list_tokens()] == ["ci", "admin2"]
        revoked = client.revoke_token(created.token.id)
        assert revoked.revoked and revoked.revoke_time is not None
        with pytest.raises(chital.client.NotFound):
            client.revoke_token("ffffffffffff")


def test_create_token_is_never_retried(target: str, fake: FakeController) -> None:
    fake.fail("CreateToken", 1, grpc.StatusCode.UNAVAILABLE)
    with Client(target, insecure=True, retries=FAST) as client, pytest.raises(chital.client.Unavailable):
        client.create_token("ci", "viewer")
    assert fake.calls["CreateToken"] == 1


def test_audit_log_pages(target: str, fake: FakeController) -> None:
    with Client(target, insecure=True) as client:
        entries = list(client.list_audit_log(page_size=2))
        assert [e.id for e in entries] == [5, 4, 3, 2, 1]
        assert len(fake.requests["ListAuditLog"]) == 3
        first = entries[0]
        assert first.method.endswith("/CreateContainer") and first.code == "OK" and first.time is not None
        page = client.list_audit_log_page(principal="token:ci", page_size=10)
        assert len(page.items) == 5 and page.next_page_token == ""
        assert fake.requests["ListAuditLog"][-1].principal == "token:ci"


def test_whoami(target: str) -> None:
    with Client(target, insecure=True) as client:
        me = client.whoami()
    assert (me.name, me.role, me.auth_method, me.principal) == (
        "alice",
        "admin",
        "token",
        "token:alice/0123456789ab",
    )


def test_unauthenticated_is_a_permission_denied(target: str, fake: FakeController) -> None:
    fake.fail("WhoAmI", 1, grpc.StatusCode.UNAUTHENTICATED, "token expired")
    with Client(target, insecure=True) as client, pytest.raises(chital.client.Unauthenticated) as info:
        client.whoami()
    assert isinstance(info.value, chital.client.PermissionDenied) and str(info.value) == "token expired"
