"""The daemons as processes: settings from a TOML file, overridden by CHITAL_* variables and flags;
config errors exit 4, usage errors 2; ``--log-format json`` lines carry the request id of an RPC.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from chital.agent import __version__ as agent_version
from chital.api.agent.v1 import agent_pb2, agent_pb2_grpc

pytestmark = pytest.mark.timeout(120)

ENV = {k: v for k, v in os.environ.items() if not k.startswith("CHITAL_")} | {"GRPC_VERBOSITY": "ERROR"}


def run(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**ENV, **(env or {})},
        check=False,
    )


def test_the_agent_runs_from_its_config_file(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        'device = "fake"\n'
        "insecure = true\n"
        'listen = "10.0.0.1:1"\n'  # overridden by the flag below
        f'port_file = "{tmp_path / "port"}"\n'
        'log_format = "json"\n'
        "max_workers = 4\n"
    )
    stderr = (tmp_path / "agent.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "chital.agent", "serve", "--config", str(config), "--listen", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env={**ENV, "CHITAL_AGENT_LOG_LEVEL": "debug"},
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "port").exists():
            assert proc.poll() is None, (tmp_path / "agent.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        port = int((tmp_path / "port").read_text())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            info = stub.GetInfo(agent_pb2.GetInfoRequest(), metadata=[("x-request-id", "req-42")], timeout=10)
            uid = "c" * 32
            stub.CreateContainer(
                agent_pb2.CreateContainerRequest(uid=uid, name="cfg"),
                metadata=[("x-request-id", "req-43")],
                timeout=10,
            )
            stub.DestroyContainer(agent_pb2.DestroyContainerRequest(uid=uid), timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        stderr.close()
    assert info.agent_version == agent_version
    records = [json.loads(line) for line in (tmp_path / "agent.log").read_text().splitlines()]
    assert any(r["msg"] == f"chital-agent {agent_version}, config file {config}" for r in records)
    # The variable set the level: debug records are there, and they name where each setting came from.
    (sources,) = [r["msg"] for r in records if r["msg"].startswith("settings from: ")]
    assert "listen=flag" in sources and "log_level=env" in sources and "device=file" in sources
    assert "cgroups=default" in sources
    # Records logged while serving an RPC carry its request id (and the container it names).
    (created,) = [r for r in records if r["msg"].startswith(f"created container {uid}")]
    assert (created["request_id"], created["container"]) == ("req-43", uid)
    (destroyed,) = [r for r in records if r["msg"].startswith(f"destroyed container {uid}")]
    assert "request_id" not in destroyed and destroyed["container"] == uid


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("state_dir = '/tmp/x'\nmax_worker = 4\n", "unknown key 'max_worker' (did you mean 'max_workers'?)"),
        ("state_dir = 7\n", "state_dir: expected a path (a string), got an integer (7)"),
        ("device = 'gpu'\n", "device: expected one of fake, linux, auto, got 'gpu'"),
    ],
)
def test_agent_config_errors_exit_4(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(text)
    result = run("chital.agent", "serve", "--config", str(config))
    assert result.returncode == 4, result.stderr
    assert result.stderr.strip() == f"chital-agent: {config}: {message}"


def test_agent_refused_settings_and_usage(tmp_path: Path) -> None:
    missing = run("chital.agent", "serve", env={"CHITAL_AGENT_CONFIG": str(tmp_path / "none.toml")})
    assert missing.returncode == 4
    assert "none.toml: no such config file" in missing.stderr
    plaintext = run(
        "chital.agent",
        "serve",
        "--config",
        "/dev/null",
        "--state-dir",
        str(tmp_path),
        "--insecure",
        env={"CHITAL_AGENT_LISTEN": "0.0.0.0:0"},
    )
    assert plaintext.returncode == 4
    assert "plaintext is only allowed on loopback" in plaintext.stderr
    required = run("chital.agent", "serve", "--config", "/dev/null")
    assert required.returncode == 4
    assert "state_dir is required" in required.stderr
    # Options go after the command: before it they are a usage error.
    before = run("chital.agent", "--log-level", "debug", "serve", "--state-dir", str(tmp_path))
    assert before.returncode == 2
    bad_flag = run("chital.agent", "serve", "--max-workers", "many", "--state-dir", str(tmp_path))
    assert bad_flag.returncode == 2
    assert "invalid int value: 'many'" in bad_flag.stderr


def test_controller_commands_read_the_database_from_the_config_file(tmp_path: Path) -> None:
    database = tmp_path / "db" / "controller.db"
    config = tmp_path / "controller.toml"
    config.write_text(
        f'database_url = "sqlite:///{database}"\nlisten = "0.0.0.0:7443"\nlog_format = "logfmt"\n'
    )
    upgraded = run("chital.controller", "db", "upgrade", "--config", str(config))
    assert upgraded.returncode == 0, upgraded.stderr
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
    # token ls finds the same database through the variable naming the file.
    listed = run("chital.controller", "token", "ls", env={"CHITAL_CONTROLLER_CONFIG": str(config)})
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split()[:3] == ["ID", "NAME", "ROLE"]
    # serve: the file's non-loopback listen with --insecure is refused as a configuration error.
    refused = run("chital.controller", "serve", "--config", str(config), "--insecure")
    assert refused.returncode == 4
    assert "plaintext is only allowed on loopback" in refused.stderr


def test_controller_config_errors_and_usage(tmp_path: Path) -> None:
    config = tmp_path / "controller.toml"
    config.write_text("health_interval = 'fast'\n")
    bad = run("chital.controller", "db", "upgrade", "--config", str(config))
    assert bad.returncode == 4
    assert bad.stderr.strip() == (
        f"chital-controller: {config}: health_interval: expected a number, got a string ('fast')"
    )
    env = run(
        "chital.controller", "serve", "--config", "/dev/null", env={"CHITAL_CONTROLLER_MAX_WORKERS": "x"}
    )
    assert env.returncode == 4
    assert "CHITAL_CONTROLLER_MAX_WORKERS='x': expected an integer" in env.stderr
    # A heartbeat interval that the NOT_READY budget cannot wait for is refused, not run.
    slow = run("chital.controller", "serve", "--config", "/dev/null", "--insecure", "--health-interval", "5")
    assert slow.returncode == 4
    assert "not_ready_after (3.0 s) must be longer than the heartbeat interval (5.0 s)" in slow.stderr
    before = run("chital.controller", "--log-level", "debug", "db", "upgrade")
    assert before.returncode == 2
    version = run("chital.controller", "--version")
    assert version.returncode == 0 and version.stdout.split()[0] == "chital-controller"


def test_controller_warns_of_a_readable_password_and_fails_cleanly_without_its_database(
    tmp_path: Path,
) -> None:
    config = tmp_path / "controller.toml"
    # Port 1 on loopback: nothing listens there, the connection is refused at once.
    config.write_text(
        'database_url = "postgresql+psycopg://chital:s3cret@127.0.0.1:1/chital"\n'
        'listen = "127.0.0.1:0"\ninsecure = true\n'
    )
    config.chmod(0o644)
    readable = run("chital.controller", "serve", "--config", str(config))
    assert readable.returncode == 1  # a runtime failure, not a configuration error
    assert "holds the database password and every local user can read it" in readable.stderr
    assert "chital-controller: cannot reach the database: " in readable.stderr
    assert "Traceback" not in readable.stderr
    config.chmod(0o640)
    private = run("chital.controller", "serve", "--config", str(config))
    assert private.returncode == 1
    assert "every local user can read it" not in private.stderr
