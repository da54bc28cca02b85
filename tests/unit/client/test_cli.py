"""The ``chital`` CLI run in-process against the fake controller: output, exit codes, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from fake_chital_controller import FakeController

from chital.api.container.v1 import container_pb2 as cpb
from chital.cli import _app, main
from chital.client import RetryPolicy


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_app, "CLI_RETRIES", RetryPolicy(max_attempts=3, initial_backoff=0.001))
    monkeypatch.delenv("CHITAL_CONTROLLER", raising=False)


@pytest.fixture
def chital(target: str, capsys: pytest.CaptureFixture[str]):
    """Run the CLI against the fake; returns (exit status, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["--controller", target, "--insecure", *argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for code in ("0 ", "1 ", "2 ", "124", "130", "CHITAL_CONTROLLER"):
        assert code in text


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["run"]) == 2
    assert main(["run", "--memory", "lots", "--", "echo"]) == 2
    assert "expected a size" in capsys.readouterr().err
    assert main(["kill", "p", "-s", "NOPE"]) == 2
    assert main(["hosts", "add", "a:1", "--label", "novalue"]) == 2


def test_run_attached_prints_output_and_exits_with_the_code(chital, fake: FakeController) -> None:
    code, out, err = chital("run", "--name", "web", "-e", "A=1", "-e", "B=2", "--", "env")
    assert (code, out, err) == (0, "A=1\nB=2\n", "")
    assert chital("run", "--", "exit", "7")[0] == 7
    assert chital("run", "--", "crash")[0] == 137
    code, out, err = chital("run", "--", "stderr", "oops")
    assert (code, out, err) == (1, "", "oops\n")


def test_run_passes_limits_and_options(chital, fake: FakeController) -> None:
    code, _, _ = chital(
        "run",
        "--name=box",
        "--label",
        "team=a",
        "--memory",
        "256M",
        "--pids",
        "10",
        "--cpus",
        "0.5",
        "--root",
        "/srv/box",
        "--deny",
        "mount,ptrace",
        "--deny",
        "kexec_load",
        "--host",
        "h-9",
        "--cwd",
        "/tmp",
        "--",
        "echo",
        "-n",
    )
    assert code == 0
    create = fake.requests["CreateContainer"][0]
    assert create.name == "box" and dict(create.labels) == {"team": "a"}
    assert create.limits.memory_max_bytes == 256 << 20
    assert create.limits.pids_max == 10 and create.limits.cpu_max_millicores == 500
    assert list(create.deny_syscalls) == ["mount", "ptrace", "kexec_load"]
    assert create.root == "/srv/box" and create.host == "h-9"
    execute = fake.requests["Exec"][0]
    assert list(execute.argv) == ["echo", "-n"] and execute.cwd == "/tmp"
    assert fake.requests["StreamLogs"][0].follow
    # No sandbox option: the most isolated sandbox; no -u: the user is left to the server's default.
    assert create.sandbox == cpb.Sandbox()
    assert not execute.HasField("user_id") and not execute.HasField("group_id")


def test_run_sandbox_options(chital, fake: FakeController) -> None:
    code, _, _ = chital(
        "run",
        "--allow",
        "syslog,acct",
        "--allow-raw-sockets",
        "--cap-add",
        "net_bind_service",
        "--cap-add",
        "CAP_CHOWN",
        "--network",
        "host",
        "-u",
        "0",
        "--",
        "true",
    )
    assert code == 0
    sandbox = fake.requests["CreateContainer"][0].sandbox
    assert list(sandbox.allow_syscalls) == ["syslog", "acct"] and sandbox.allow_raw_sockets
    assert list(sandbox.capabilities) == ["CAP_NET_BIND_SERVICE", "CAP_CHOWN"] and sandbox.host_network
    execute = fake.requests["Exec"][0]
    assert execute.HasField("user_id") and (execute.user_id, execute.group_id) == (0, 0)


def test_run_detached_prints_uids(chital) -> None:
    code, out, _ = chital("run", "-d", "--name", "web", "--", "sleep")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["CONTAINER", "CONTAINER", "UID", "PROCESS", "UID"]
    assert row.split() == ["web", "c-1", "p-1"]
    code, out, _ = chital("-o", "json", "run", "-d", "--name", "api", "--", "sleep")
    data = json.loads(out)
    assert data["container"]["name"] == "api" and data["process"]["uid"] == "p-2"
    assert data["process"]["state"] == "RUNNING"


def test_run_rm_deletes_the_container(chital, fake: FakeController) -> None:
    assert chital("run", "--rm", "--name", "tmp", "--", "echo", "x")[0] == 0
    assert fake.containers["c-1"].state == 8  # DELETED


def test_exec(chital) -> None:
    chital("run", "-d", "--name", "box", "--", "sleep")
    assert chital("exec", "box", "--", "echo", "hi")[:2] == (0, "hi\n")
    assert chital("exec", "box", "--", "exit", "3")[0] == 3
    code, out, _ = chital("exec", "-d", "box", "--", "sleep")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["UID", "CONTAINER", "PID"]


def test_ps_table_and_all(chital) -> None:
    chital("run", "-d", "--name", "box", "--", "sleep")
    chital("exec", "box", "--", "exit", "2")
    code, out, _ = chital("ps")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    assert lines[0].split() == ["UID", "CONTAINER", "PID", "STATE", "EXIT", "COMMAND"]
    # The container by name; -o wide adds its uid.
    assert lines[1].split() == ["p-1", "box", "1000", "RUNNING", "-", "sleep"]
    # Columns are aligned: every header starts where its values start.
    assert lines[0].index("STATE") == lines[1].index("RUNNING")
    code, out, _ = chital("ps", "-a", "box")
    assert [line.split()[4] for line in out.splitlines()[1:]] == ["-", "2"]


def test_ps_json_has_stable_keys(chital) -> None:
    chital("run", "-d", "--name", "box", "--", "sleep")
    _, out, _ = chital("ps", "-o", "json")
    (proc,) = json.loads(out)
    assert list(proc) == [
        "uid",
        "container_uid",
        "argv",
        "state",
        "env",
        "cwd",
        "user_id",
        "group_id",
        "pid",
        "exit_code",
        "signal",
        "oom_killed",
        "start_time",
        "exit_time",
        "message",
    ]
    assert proc["state"] == "RUNNING" and proc["start_time"].endswith("Z")


def test_containers_ls_inspect_stop_rm(chital, fake: FakeController) -> None:
    chital("run", "-d", "--name", "a", "-l", "team=x", "--", "sleep")
    chital("run", "-d", "--name", "b", "--", "echo")
    code, out, _ = chital("ls")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == ["NAME", "a", "b"]
    code, out, _ = chital("containers", "ls", "-l", "team=x", "-o", "json")
    assert [c["name"] for c in json.loads(out)] == ["a"]
    assert fake.requests["ListContainers"][-1].label_selector == "team=x"
    code, out, _ = chital("ls", "--state", "running")
    assert [line.split()[0] for line in out.splitlines()] == ["NAME", "a"]
    code, out, _ = chital("inspect", "a")
    assert "Labels:" in out and "team=x" in out and "Limits:" in out
    data = json.loads(chital("inspect", "a", "-o", "json")[1])
    assert data["state"] == "RUNNING" and data["labels"] == {"team": "x"}
    code, _, err = chital("rm", "a")
    assert code == 1 and err == 'chital: error: failed precondition: container "a" has running processes\n'
    assert chital("stop", "a", "--grace", "1")[0] == 0
    assert fake.requests["StopContainer"][0].grace_period.seconds == 1
    assert chital("rm", "-f", "a") == (0, "a\n", "")


def test_logs_wait_kill(chital) -> None:
    chital("run", "-d", "--name", "box", "--", "echo", "hello")
    assert chital("logs", "p-1") == (0, "hello\n", "")
    assert chital("logs", "-f", "--tail", "3", "p-1") == (0, "hello\n", "")
    assert chital("wait", "p-1") == (0, "0\n", "")
    chital("exec", "-d", "box", "--", "sleep")
    code, out, err = chital("wait", "p-2", "--wait-timeout", "0.05")
    assert code == 124 and out == "" and "still running" in err
    assert chital("kill", "p-2", "-s", "KILL") == (0, "p-2\n", "")
    assert chital("wait", "p-2") == (0, "137\n", "")
    code, _, err = chital("kill", "p-2")
    assert code == 1 and err.startswith("chital: error: failed precondition:")


def test_hosts_commands(chital) -> None:
    code, out, _ = chital("hosts", "add", "10.0.0.5:7444", "--label", "zone=a", "--max-containers", "4")
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:4] == ["ID", "ADDRESS", "STATE", "CONTAINERS"]
    assert row.split()[:5] == ["h-1", "10.0.0.5:7444", "READY", "0/4", "fake"]
    hosts = json.loads(chital("hosts", "ls", "-o", "json")[1])
    assert hosts[0]["state"] == "READY" and hosts[0]["agent"]["device"] == "fake"
    assert "Address:" in chital("hosts", "get", "h-1")[1]
    assert "CORDONED" in chital("hosts", "cordon", "h-1")[1]
    assert "READY" in chital("hosts", "uncordon", "h-1")[1]
    code, out, _ = chital("hosts", "drain", "h-1", "--grace", "5")
    assert code == 0 and "DRAINING" in out and "stopped 2 container(s)" in out
    assert chital("hosts", "rm", "h-1") == (0, "removed host h-1\n", "")
    assert chital("hosts", "ls")[1].splitlines() == [
        "ID  ADDRESS  STATE  CONTAINERS  DEVICE  LAST SEEN  LABELS"
    ]


def test_errors_are_one_line(chital) -> None:
    code, out, err = chital("inspect", "x")
    assert (code, out, err) == (1, "", 'chital: error: not found: container "x"\n')
    code, _, err = chital("hosts", "get", "nope")
    assert err == 'chital: error: not found: host "nope"\n'


def test_server_errors_of_every_kind_are_one_line(chital, fake: FakeController) -> None:
    fake.fail("ListHosts", 1, grpc.StatusCode.RESOURCE_EXHAUSTED, "too\nmany")
    assert chital("hosts", "ls") == (1, "", "chital: error: resource exhausted: too many\n")
    fake.fail("ListHosts", 1, grpc.StatusCode.UNKNOWN, "bug")
    assert chital("hosts", "ls")[2] == "chital: error: internal: bug\n"


def test_unreachable_controller(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHITAL_CONTROLLER", "127.0.0.1:1")
    monkeypatch.setenv("CHITAL_INSECURE", "1")
    assert main(["ps"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("chital: error: unavailable:") and err.count("\n") == 1
    assert "127.0.0.1:1" in err


def test_global_options_after_the_command(chital, target: str, capsys) -> None:
    argv = ["hosts", "ls", "--controller", target, "--insecure", "--output", "json", "--timeout", "3"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_interrupt_exits_130(chital, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_app.Client, "list_processes", interrupted)
    assert chital("ps") == (130, "", "chital: interrupted\n")


CHITAL = str(Path(sys.executable).with_name("chital"))


def test_console_script_entry_point(target: str) -> None:
    result = subprocess.run(
        [CHITAL, "--controller", target, "--insecure", "hosts", "ls", "-o", "json"],
        check=False,
        capture_output=True,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, b"[]\n", b"")
    result = subprocess.run(
        [sys.executable, "-m", "chital.cli", "--controller", target, "--insecure", "inspect", "nope"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert (result.returncode, result.stderr) == (1, 'chital: error: not found: container "nope"\n')


def test_ctrl_c_while_attached_is_clean(target: str, chital, fake: FakeController) -> None:
    chital("run", "-d", "--name", "box", "--", "sleep")
    env = {**os.environ, "CHITAL_CONTROLLER": target, "CHITAL_INSECURE": "1", "GRPC_VERBOSITY": "ERROR"}
    proc = subprocess.Popen([CHITAL, "exec", "box", "--", "hang"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        # Interrupt once the CLI is attached to the (never ending) log stream.
        deadline = time.monotonic() + 20
        while fake.calls["StreamLogs"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fake.calls["StreamLogs"] == 1
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert err.splitlines() == [
        "chital: detached; process p-2 keeps running (chital kill p-2)",
        "chital: interrupted",
    ]


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("4096", 4096), ("256M", 256 << 20), ("1g", 1 << 30), ("1.5Gi", 3 << 29), ("64KiB", 64 << 10)],
)
def test_sizes(text: str, size: int) -> None:
    assert _app._size(text) == size


@pytest.mark.parametrize(("text", "number"), [("TERM", 15), ("sigkill", 9), ("9", 9), ("HUP", 1)])
def test_signals(text: str, number: int) -> None:
    assert _app._signal_number(text) == number


def test_exec_user_and_env_from_caller(chital, fake: FakeController, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHITAL_TEST_VALUE", "from-here")
    chital("run", "-d", "--name", "box", "--", "sleep")
    code, out, _ = chital("exec", "-u", "1000:100", "-e", "CHITAL_TEST_VALUE", "box", "--", "env")
    assert (code, out) == (0, "CHITAL_TEST_VALUE=from-here\n")
    request = fake.requests["Exec"][-1]
    assert (request.user_id, request.group_id) == (1000, 100)
    assert chital("exec", "-u", "root", "box", "--", "env")[0] == 2
