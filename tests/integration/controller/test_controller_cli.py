"""The chital-controller command: migrations, and serve as a process (port file, SIGTERM)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chital.controller.models import Base

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
    result = run_cli("serve", "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path))
    assert result.returncode == 2
    assert "db upgrade" in result.stderr


def test_serve_writes_port_and_stops_on_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chital.controller",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            str(tmp_path / "new" / "state"),  # created by the controller
            "--migrate",
            "--port-file",
            str(port_file),
            "--metrics-listen",
            "127.0.0.1:0",
            "--metrics-port-file",
            str(tmp_path / "metrics-port"),
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
        assert (tmp_path / "new" / "state" / "controller.db").exists()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            status = (
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
            )
        assert status == health_pb2.HealthCheckResponse.SERVING
        metrics_port = int((tmp_path / "metrics-port").read_text())
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
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
