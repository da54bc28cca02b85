"""The chital-controller command: migrations, tokens, and serve as a process (TLS, refusals,
port file, SIGTERM)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chital.api.admin.v1 import admin_pb2, admin_pb2_grpc
from chital.controller.models import Base
from chital.security.pki import PKI
from chital.security.tls import TLSFiles, channel_credentials

ENV = {**os.environ, "GRPC_VERBOSITY": "ERROR"}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chital.controller", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
        check=False,
    )


def test_upgrade_gives_the_models_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    result = run_cli("db", "upgrade", "--database-url", url)
    assert result.returncode == 0, result.stderr
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []
    # Idempotent.
    assert run_cli("db", "upgrade", "--database-url", url).returncode == 0


def test_serve_without_schema_fails_clearly(tmp_path: Path) -> None:
    result = run_cli("serve", "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path), "--insecure")
    assert result.returncode == 1  # a runtime failure (the settings are fine)
    assert "db upgrade" in result.stderr


def test_serve_on_an_older_schema_fails_clearly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    assert run_cli("db", "upgrade", "--database-url", url, "--revision", "0002").returncode == 0
    result = run_cli("serve", "--listen", "127.0.0.1:0", "--database-url", url, "--insecure")
    assert result.returncode == 1
    assert "older than this controller" in result.stderr


def test_serve_refuses_plaintext_unless_asked_and_on_loopback(tmp_path: Path) -> None:
    state = ("--state-dir", str(tmp_path), "--migrate")
    neither = run_cli("serve", "--listen", "127.0.0.1:0", *state)
    assert neither.returncode == 4  # configuration error
    assert "no TLS files: pass --tls-dir" in neither.stderr
    for listen in ("0.0.0.0:0", ":0", "10.0.0.1:0"):
        exposed = run_cli("serve", "--listen", listen, "--insecure", *state)
        assert exposed.returncode == 4, listen
        assert "plaintext is only allowed on loopback" in exposed.stderr
    # The mTLS port needs the TLS files, and "/" is never an allowed root.
    no_tls = run_cli("serve", "--listen", "127.0.0.1:0", "--insecure", "--mtls-listen", "127.0.0.1:0", *state)
    assert no_tls.returncode == 4  # configuration error
    assert "--mtls-listen needs" in no_tls.stderr
    metrics = run_cli("serve", "--listen", "127.0.0.1:0", "--insecure", "--metrics-tls", *state)
    assert metrics.returncode == 4  # configuration error
    assert "--metrics-tls needs" in metrics.stderr
    root = run_cli("serve", "--listen", "127.0.0.1:0", "--insecure", "--allowed-root", "/", *state)
    assert root.returncode == 4  # configuration error
    assert "allowed root '/'" in root.stderr
    # Nothing was served, and nothing was created either.
    assert not (tmp_path / "controller.db").exists()


def test_token_create_ls_revoke(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    assert run_cli("token", "ls", "--database-url", url).returncode == 1  # no schema yet
    assert run_cli("db", "upgrade", "--database-url", url).returncode == 0
    made = run_cli(
        "token", "create", "--name", "ops", "--role", "admin", "--ttl", "2h", "--database-url", url
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("chital_") and len(token.splitlines()) == 1
    token_id = token.split("_")[1]
    assert f"token {token_id} (admin, ops, expires " in made.stderr
    assert "shown only this once" in made.stderr
    # Stored hashed: the secret is nowhere in the database.
    assert token.rsplit("_", 1)[-1].encode() not in (tmp_path / "t.db").read_bytes()
    listed = run_cli("token", "ls", "--database-url", url)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split()[:4] == ["ID", "NAME", "ROLE", "STATE"]
    assert row.split()[:4] == [token_id, "ops", "admin", "active"]
    assert token not in listed.stdout
    revoked = run_cli("token", "revoke", token_id, "--database-url", url)
    assert revoked.returncode == 0, revoked.stderr
    assert run_cli("token", "ls", "--database-url", url).stdout.splitlines()[1].split()[3] == "revoked"
    unknown = run_cli("token", "revoke", "0123456789ab", "--database-url", url)
    assert unknown.returncode == 1
    assert "not found" in unknown.stderr
    bad = run_cli("token", "create", "--name", "x", "--role", "admin", "--ttl", "soon", "--database-url", url)
    assert bad.returncode == 2  # a refused argument value: usage
    assert "--ttl" in bad.stderr
    # Made and revoked without the API, yet audited like the API's calls: by the local user, with
    # the outcome (the refused revoke too; the bad --ttl wrote nothing at all).
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT principal, role, method, target, code FROM audit_log ORDER BY id")
        ).all()
    engine.dispose()
    admin = "/chital.api.admin.v1.AdminService/"
    local = rows[0][0]
    assert local.startswith("local:") and {r[0] for r in rows} == {local}
    assert [tuple(r[1:]) for r in rows] == [
        ("admin", admin + "CreateToken", "ops", "OK"),
        ("admin", admin + "RevokeToken", token_id, "OK"),
        ("admin", admin + "RevokeToken", "0123456789ab", "NOT_FOUND"),
    ]


def test_serve_writes_port_and_stops_on_sigterm(tmp_path: Path) -> None:
    """The secure path as users run it: TLS on the API, a token made with the CLI, an mTLS port."""
    pki = PKI.init(tmp_path / "pki")
    bundle = pki.issue_controller()
    alice = pki.issue_user("alice", "viewer")
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chital.controller",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-dir",
            str(bundle),
            "--mtls-listen",
            "127.0.0.1:0",
            "--mtls-port-file",
            str(tmp_path / "mtls-port"),
            "--state-dir",
            str(tmp_path / "new" / "state"),  # created by the controller
            "--migrate",
            "--port-file",
            str(port_file),
            "--metrics-listen",
            "127.0.0.1:0",
            "--metrics-port-file",
            str(tmp_path / "metrics-port"),
            "--metrics-tls",
            "--prometheus-sd-file",
            str(tmp_path / "sd" / "agents.json"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert port_file.exists(), proc.stderr.read() if proc.stderr else ""
        port = int(port_file.read_text())
        state = tmp_path / "new" / "state"
        assert (state / "controller.db").exists()
        creds = channel_credentials(TLSFiles(ca=pki.directory / "ca" / "ca.crt"))
        with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            # Health is open; everything else needs a token.
            status = (
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
            )
            assert status == health_pb2.HealthCheckResponse.SERVING
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                admin.WhoAmI(admin_pb2.WhoAmIRequest(), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            made = run_cli("token", "create", "--name", "ci", "--role", "operator", "--state-dir", str(state))
            assert made.returncode == 0, made.stderr
            token = made.stdout.strip()
            me = admin.WhoAmI(
                admin_pb2.WhoAmIRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=10
            )
            assert (me.name, me.role, me.auth_method) == ("ci", "operator", "token")
        mtls_port = int((tmp_path / "mtls-port").read_text())
        with grpc.secure_channel(
            f"127.0.0.1:{mtls_port}", channel_credentials(TLSFiles.from_dir(alice))
        ) as ch:
            me = admin_pb2_grpc.AdminServiceStub(ch).WhoAmI(admin_pb2.WhoAmIRequest(), timeout=10)
            assert (me.name, me.role, me.auth_method, me.principal) == (
                "alice",
                "viewer",
                "certificate",
                "cert:alice",
            )
        metrics_port = int((tmp_path / "metrics-port").read_text())
        # /metrics over HTTPS with the controller's certificate (--metrics-tls); plain HTTP fails.
        trust = ssl.create_default_context(cafile=str(pki.directory / "ca" / "ca.crt"))
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
        with urllib.request.urlopen(
            f"https://127.0.0.1:{metrics_port}/metrics", timeout=10, context=trust
        ) as resp:
            body = resp.read()
        assert b"chital_controller_grpc_server_handled_total" in body
        if shutil.which("promtool"):
            check = subprocess.run(
                ["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
            )
            assert check.returncode == 0, check.stdout + check.stderr
        assert json.loads((tmp_path / "sd" / "agents.json").read_text()) == []
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0
        assert f"127.0.0.1:{port}" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
