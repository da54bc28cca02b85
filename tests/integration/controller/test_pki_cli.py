"""`chital-controller pki`: the operator's commands, run as a user runs them."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from chital.controller.__main__ import main

ENV = {**os.environ, "GRPC_VERBOSITY": "ERROR"}


def pki_cli(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``chital-controller pki ARGS --dir DIRECTORY``, in this process (a fresh interpreter per
    command would cost a second each); the entry point itself is run by the environment test."""
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = ["pki", *args, "--dir", str(directory)]
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
    return subprocess.CompletedProcess(argv, code, stdout.getvalue(), stderr.getvalue())


def ok(directory: Path, *args: str) -> str:
    result = pki_cli(directory, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def show(directory: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(ok(directory, "show", "-o", "json"))
    return rows


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    ok(directory, "init")
    return directory


def test_issue_every_kind_of_bundle_and_show_them(pki: Path) -> None:
    out = ok(pki, "issue-controller", "--san", "10.0.0.1", "--san", "ctl.example.org")
    assert "controller (role controller, SANs 10.0.0.1, ctl.example.org)" in out
    ok(pki, "issue-agent", "10.0.0.2", "--san", "node2.example.org")
    ok(pki, "issue-user", "alice", "--role", "admin", "--days", "30")
    rows = {(r["kind"], r["name"]): r for r in show(pki)}
    assert set(rows) == {
        ("ca", "chital fleet CA"),
        ("controller", "controller"),
        ("agent", "10.0.0.2"),
        ("user", "alice"),
    }
    assert rows[("agent", "10.0.0.2")]["sans"] == ["10.0.0.2", "node2.example.org"]
    assert rows[("agent", "10.0.0.2")]["path"] == str(pki / "agents" / "10.0.0.2")
    assert rows[("user", "alice")]["role"] == "admin"
    assert rows[("user", "alice")]["status"] == "expires in 29d"
    assert rows[("controller", "controller")]["status"] == "ok"
    for bundle in ("controller", "agents/10.0.0.2", "users/alice"):
        assert {p.name for p in (pki / bundle).iterdir()} == {"ca.crt", "tls.crt", "tls.key"}
        assert stat.S_IMODE((pki / bundle / "tls.key").stat().st_mode) == 0o600
        assert stat.S_IMODE((pki / bundle).stat().st_mode) == 0o700
    assert stat.S_IMODE((pki / "ca" / "ca.key").stat().st_mode) == 0o600

    table = ok(pki, "show").splitlines()
    assert table[0].split() == ["KIND", "NAME", "ROLE", "SANS", "EXPIRES", "STATUS", "PATH"]
    assert len(table) == 1 + 4


def test_controller_sans_default_to_loopback(pki: Path) -> None:
    ok(pki, "issue-controller")
    (row,) = [r for r in show(pki) if r["kind"] == "controller"]
    assert row["sans"] == ["127.0.0.1", "localhost"]


def test_the_directory_comes_from_the_environment_or_the_state_dir(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "chital.controller", "pki", "init"]
    env = {**ENV, "CHITAL_PKI_DIR": str(tmp_path / "env-pki")}
    subprocess.run(base, env=env, check=True, capture_output=True, timeout=60)
    assert (tmp_path / "env-pki" / "ca" / "ca.key").is_file()
    env = {k: v for k, v in ENV.items() if k != "CHITAL_PKI_DIR"}
    env["CHITAL_STATE_DIR"] = str(tmp_path / "state")
    subprocess.run(base, env=env, check=True, capture_output=True, timeout=60)
    assert (tmp_path / "state" / "pki" / "ca" / "ca.key").is_file()


@pytest.mark.parametrize(
    ("args", "message", "status"),
    [
        (("init",), "a CA exists already", 1),
        # An argument value the command refuses is a usage error (2); anything else a failure (1).
        (("issue-user", "../x", "--role", "admin"), "invalid user name", 2),
        (("issue-agent", "bad host"), "invalid host", 2),
        (("renew",), "name the bundles to renew, or pass --all", 2),
        (("renew", "users/nobody"), "no bundle at", 1),
    ],
)
def test_refusals_say_why(pki: Path, args: tuple[str, ...], message: str, status: int) -> None:
    result = pki_cli(pki, *args)
    assert result.returncode == status
    assert message in result.stderr


def test_an_unknown_role_is_a_usage_error(pki: Path) -> None:
    result = pki_cli(pki, "issue-user", "eve", "--role", "root")
    assert result.returncode == 2
    assert "invalid choice: 'root'" in result.stderr
    assert not (pki / "users").exists()


def test_commands_on_a_missing_pki_say_how_to_make_one(tmp_path: Path) -> None:
    result = pki_cli(tmp_path / "none", "show")
    assert result.returncode == 1
    assert "run `chital-controller pki init`" in result.stderr


def test_rotating_the_ca(pki: Path) -> None:
    ok(pki, "issue-controller")
    ok(pki, "issue-agent", "node1")
    ok(pki, "rotate-ca", "--name", "chital fleet CA 2")
    statuses = {(r["kind"], r["name"]): r["status"] for r in show(pki)}
    assert statuses == {
        ("ca", "chital fleet CA 2"): "signer",
        ("ca", "chital fleet CA"): "trusted (old)",
        ("controller", "controller"): "old CA: re-issue",
        ("agent", "node1"): "old CA: re-issue",
    }
    assert len(x509.load_pem_x509_certificates((pki / "agents" / "node1" / "ca.crt").read_bytes())) == 2

    refused = pki_cli(pki, "drop-old-ca")
    assert refused.returncode == 1
    assert "still signed by an old CA" in refused.stderr

    ok(pki, "renew", "--all")
    ok(pki, "drop-old-ca")
    statuses = {(r["kind"], r["name"]): r["status"] for r in show(pki)}
    assert set(statuses.values()) == {"signer", "ok"}
    assert len(statuses) == 3
    assert len(x509.load_pem_x509_certificates((pki / "agents" / "node1" / "ca.crt").read_bytes())) == 1
