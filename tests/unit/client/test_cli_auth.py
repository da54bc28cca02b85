"""The CLI's contexts, token, audit and whoami commands, and what its authentication errors say."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path

import grpc
import pytest
from fake_chital_controller import FakeController

from chital.cli import _app, main
from chital.client import RetryPolicy
from chital.client.config import Config
from chital.security.pki import PKI

TOKEN = "chital_0123456789ab_c2VjcmV0"


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_app, "CLI_RETRIES", RetryPolicy(max_attempts=3, initial_backoff=0.001))


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]):
    """Run the CLI as given (no --controller added); returns (exit status, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def chital(run, target: str):
    """Run the CLI against the plaintext fake, with an admin token."""
    return lambda *argv: run("--controller", target, "--insecure", "--token", TOKEN, *argv)


# -- contexts -----------------------------------------------------------------------------------


def test_context_set_ls_use_rm(run, _no_user_settings: Path, tmp_path: Path, monkeypatch) -> None:
    config_path = _no_user_settings
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ca.crt").write_text("x")
    code, out, err = run("context", "set", "dev", "--controller", "10.0.0.1:7443", "--ca", "ca.crt")
    assert (code, out) == (0, "")
    assert err == f'added context "dev" (current) in {config_path}\n'  # the first becomes current
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    config = Config.load(config_path)
    assert config.context("dev").ca == str(tmp_path / "ca.crt")  # stored absolute

    code, _, err = run(
        "context", "set", "local", "--controller", "127.0.0.1:7443", "--insecure", "--token", TOKEN
    )
    assert code == 0 and err == f'added context "local" in {config_path}\n'
    code, out, _ = run("context", "ls")
    assert code == 0 and out.splitlines()[0].split() == ["CURRENT", "NAME", "CONTROLLER", "TLS", "TOKEN"]
    assert out.splitlines()[1].split() == ["*", "dev", "10.0.0.1:7443", str(tmp_path / "ca.crt"), "-"]
    assert out.splitlines()[2].split() == ["local", "127.0.0.1:7443", "insecure", "inline"]
    assert TOKEN not in out
    data = json.loads(run("context", "ls", "-o", "json")[1])
    assert [(c["name"], c["current"], c["token"]) for c in data] == [
        ("dev", True, None),
        ("local", False, "<hidden>"),
    ]

    assert run("context", "use", "local") == (0, "", 'switched to context "local"\n')
    assert Config.load(config_path).current_context == "local"
    code, _, err = run("context", "use", "nope")
    assert code == 1 and err == f"chital: error: no context 'nope' in {config_path} (contexts: dev, local)\n"

    # Update: a token file replaces the inline token; an empty value removes a setting.
    (tmp_path / "tok").write_text(TOKEN)
    assert run("context", "set", "local", "--token-file", "tok")[0] == 0
    local = Config.load(config_path).context("local")
    assert (local.token, local.token_file, local.insecure) == (None, str(tmp_path / "tok"), True)
    assert run("context", "set", "dev", "--ca", "")[0] == 0
    assert Config.load(config_path).context("dev").ca is None
    code, _, err = run("context", "set", "dev", "--insecure", "--tls-dir", str(tmp_path))
    assert code == 1 and err.startswith(
        'chital: error: context "dev": a context takes insecure = true or TLS'
    )

    assert run("context", "rm", "local") == (0, "", 'removed context "local"\n')
    config = Config.load(config_path)
    assert list(config.contexts) == ["dev"] and config.current_context is None


def test_context_set_reads_the_token_from_stdin(run, _no_user_settings: Path, monkeypatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(TOKEN + "\n"))
    assert run("context", "set", "dev", "--insecure", "--token", "-")[0] == 0
    assert Config.load(_no_user_settings).context("dev").token == TOKEN


def test_a_token_others_may_read_is_warned_about(run, target: str, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o644)
    code, _, err = run("--controller", target, "--insecure", "--token-file", str(token_file), "whoami")
    assert (code, err) == (
        0,
        f"chital: warning: {token_file} holds a token and others may read it (chmod 600 {token_file})\n",
    )
    token_file.chmod(0o600)
    assert run("--controller", target, "--insecure", "--token-file", str(token_file), "whoami")[2] == ""
    assert run("--controller", target, "--insecure", "--token", TOKEN, "whoami")[2] == ""


def test_context_set_warns_about_missing_files(run, tmp_path: Path) -> None:
    code, _, err = run("context", "set", "dev", "--ca", str(tmp_path / "nope.crt"))
    assert code == 0 and f"chital: warning: ca {tmp_path / 'nope.crt'} does not exist (yet)" in err


def test_context_commands_take_a_config_flag(run, tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.toml"
    assert run("context", "set", "x", "--insecure", "--config", str(path))[0] == 0
    assert list(Config.load(path).contexts) == ["x"]
    assert run("--config", str(path), "context", "ls")[1].split()[:2] == ["CURRENT", "NAME"]


def test_a_broken_config_file_is_reported(run, _no_user_settings: Path) -> None:
    _no_user_settings.parent.mkdir(parents=True, exist_ok=True)
    _no_user_settings.write_text("[contexts.dev]\ntokne = 'x'\n")
    for argv in (("context", "ls"), ("ps",)):
        code, out, err = run(*argv)
        assert (code, out) == (1, "")
        assert err.startswith(
            f"chital: error: config file {_no_user_settings}, context 'dev': unknown key 'tokne'"
        )


def test_commands_use_the_current_context(run, target: str, fake: FakeController, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    run("context", "set", "local", "--controller", target, "--insecure", "--token-file", str(token_file))
    code, out, _ = run("whoami")
    assert code == 0 and "alice" in out
    assert fake.authorization["WhoAmI"] == [f"Bearer {TOKEN}"]
    # A flag beats the context; the environment too.
    run("--token", "chital_flag", "whoami")
    assert fake.authorization["WhoAmI"][-1] == "Bearer chital_flag"


def test_env_beats_the_context(
    run, target: str, fake: FakeController, monkeypatch: pytest.MonkeyPatch
) -> None:
    run("context", "set", "local", "--controller", target, "--insecure", "--token", "chital_ctx")
    monkeypatch.setenv("CHITAL_TOKEN", "chital_env")
    assert run("whoami")[0] == 0
    assert fake.authorization["WhoAmI"] == ["Bearer chital_env"]


# -- whoami, tokens, audit ----------------------------------------------------------------------


def test_whoami(chital) -> None:
    code, out, _ = chital("whoami")
    assert code == 0
    assert out.splitlines()[:3] == ["Name:         alice", "Role:         admin", "Auth method:  token"]
    assert json.loads(chital("whoami", "-o", "json")[1])["principal"] == "token:alice/0123456789ab"


def test_token_create_prints_the_token_alone(chital, fake: FakeController) -> None:
    code, out, err = chital("token", "create", "--name", "ci", "--role", "operator", "--ttl", "12h")
    assert code == 0 and out == "chital_000000000001_secret\n"
    assert err.startswith("chital: token 000000000001 (ci, role operator, expires 20")
    assert err.endswith("shown only this once, store it now\n")
    assert fake.requests["CreateToken"][0].ttl_seconds == 12 * 3600
    data = json.loads(chital("token", "create", "--name", "x", "--role", "viewer", "-o", "json")[1])
    assert data["bearer_token"] == "chital_000000000002_secret" and data["token"]["expire_time"] is None
    assert chital("token", "create", "--name", "x", "--role", "root")[0] == 2
    assert chital("token", "create", "--name", "x", "--role", "viewer", "--ttl", "soon")[0] == 2


def test_token_ls_and_revoke(chital) -> None:
    chital("token", "create", "--name", "ci", "--role", "operator", "--ttl", "1d")
    chital("token", "create", "--name", "old", "--role", "viewer")
    assert chital("token", "revoke", "000000000002") == (0, "revoked token 000000000002 (old)\n", "")
    code, out, _ = chital("token", "ls")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:4] == ["ID", "NAME", "ROLE", "STATE"]
    assert [line.split()[:4] for line in lines[1:]] == [["000000000001", "ci", "operator", "active"]]
    lines = chital("token", "ls", "-a")[1].splitlines()
    assert [line.split()[3] for line in lines[1:]] == ["active", "revoked"]
    assert lines[2].split()[5] == "never"
    assert "secret" not in chital("token", "ls", "-a", "-o", "json")[1]
    code, _, err = chital("token", "revoke", "ffffffffffff")
    assert code == 1 and err == 'chital: error: not found: token "ffffffffffff"\n'
    # A prefix of an id: these two share eleven digits.
    code, out, err = chital("token", "revoke", "0000000000")
    assert (code, out) == (1, "") and err.startswith("chital: error: token prefix '0000000000' is ambiguous")
    assert "token 000000000001 (ci); token 000000000002 (old)" in err


def test_audit_ls(chital, fake: FakeController) -> None:
    code, out, _ = chital("audit", "ls")
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == [
        "TIME",
        "PRINCIPAL",
        "ROLE",
        "METHOD",
        "TARGET",
        "CODE",
        "REQUEST",
        "ID",
        "DETAIL",
    ]
    assert len(lines) == 6
    row = lines[2].split()
    assert row[2:] == [
        "token:ci/0123456789ab",
        "operator",
        "ContainerService/CreateContainer",
        "box-4",
        "PERMISSION_DENIED",
        "r-4",
        "role",
        "viewer",
        "may",
        "not",
        "call",
        "it",
    ]
    code, out, _ = chital("audit", "ls", "--limit", "2", "--principal", "token:ci")
    assert len(out.splitlines()) == 3
    assert fake.requests["ListAuditLog"][-1].principal == "token:ci"
    assert fake.requests["ListAuditLog"][-1].page_size == 2
    assert [e["id"] for e in json.loads(chital("audit", "ls", "-o", "json")[1])] == [5, 4, 3, 2, 1]


# -- errors -------------------------------------------------------------------------------------


def test_no_ca_says_which_setting_to_give(run) -> None:
    code, out, err = run("ps")
    assert (code, out) == (1, "")
    assert err == (
        "chital: error: no CA certificate to verify controller 127.0.0.1:7443: pass --ca or --tls-dir, "
        "set CHITAL_CACERT or CHITAL_TLS_DIR, or add a context (chital context set NAME --controller "
        "HOST:PORT --ca FILE); --insecure only for a plaintext controller on loopback\n"
    )


def test_unauthenticated_without_a_token_says_how_to_give_one(run, target: str, fake: FakeController) -> None:
    fake.fail(
        "WhoAmI", 1, grpc.StatusCode.UNAUTHENTICATED, "no credentials: pass a token or a client certificate"
    )
    code, _, err = run("--controller", target, "--insecure", "whoami")
    assert code == 1
    assert err == (
        "chital: error: unauthenticated: no credentials: pass a token or a client certificate "
        "(no token was given: pass --token or --token-file, set CHITAL_TOKEN, or set token or token_file "
        "in a context)\n"
    )


def test_unauthenticated_names_the_token_used(run, target: str, fake: FakeController, monkeypatch) -> None:
    monkeypatch.setenv("CHITAL_TOKEN", TOKEN)
    fake.fail("ListContainers", 1, grpc.StatusCode.UNAUTHENTICATED, "token expired")
    code, _, err = run("--controller", target, "--insecure", "ls")
    assert (code, err) == (
        1,
        "chital: error: unauthenticated: token expired (the token from env CHITAL_TOKEN)\n",
    )


def test_permission_denied_as_sent(chital, fake: FakeController) -> None:
    message = "role viewer may not call ContainerService/CreateContainer (needs operator)"
    fake.fail("CreateContainer", 1, grpc.StatusCode.PERMISSION_DENIED, message)
    code, _, err = chital("run", "--", "true")
    assert (code, err) == (1, f"chital: error: permission denied: {message}; the token from flag --token\n")


def test_an_unknown_ca_says_so(run, tls_target: str, pki: PKI) -> None:
    other_ca = pki.directory.parent / "other" / "ca" / "ca.crt"
    code, _, err = run("--controller", tls_target, "--ca", str(other_ca), "whoami")
    assert code == 1
    assert err.startswith(
        "chital: error: unavailable: TLS handshake failed: check the CA (certificate signed by an unknown "
        "authority?)"
    )
    assert err.endswith(f"(controller {tls_target}, CA {other_ca} from flag --ca)\n")


def test_tls_through_a_context_and_env(
    run, tls_target: str, pki: PKI, fake: FakeController, monkeypatch
) -> None:
    run(
        "context",
        "set",
        "prod",
        "--controller",
        tls_target,
        "--tls-dir",
        str(pki.directory / "users" / "bob"),
    )
    monkeypatch.setenv("CHITAL_TOKEN", TOKEN)
    code, out, err = run("whoami")
    assert (code, err) == (0, "") and "alice" in out
    assert fake.authorization["WhoAmI"] == [f"Bearer {TOKEN}"]


def test_a_refused_client_certificate_gets_a_hint(run, mtls_target: str, pki: PKI) -> None:
    ca = pki.directory / "ca" / "ca.crt"
    code, _, err = run("--controller", mtls_target, "--ca", str(ca), "whoami")
    assert code == 1 and "requires client certificates refuses no client certificate" in err


def test_plaintext_to_a_tls_port_gets_a_hint(run, tls_target: str) -> None:
    code, _, err = run("--controller", tls_target, "--insecure", "whoami")
    assert code == 1 and "plaintext from flag --insecure: does the controller expect TLS? (--ca)" in err


def test_insecure_beyond_loopback_is_refused(run) -> None:
    code, _, err = run("--controller", "10.1.2.3:7443", "--insecure", "ps")
    assert (code, err) == (
        1,
        "chital: error: plaintext (flag --insecure) is only for a controller on loopback, not 10.1.2.3:7443: "
        "a token would cross the network unencrypted\n",
    )


def test_token_and_token_file_exclude_each_other(run) -> None:
    assert run("--token", "a", "--token-file", "b", "ps")[0] == 2
