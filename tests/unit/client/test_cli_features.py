"""The CLI's newer features against the fake controller: output formats, events, logs of a
container, run --rm on Ctrl-C, completion scripts, --version, plain output off a terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import yaml
from fake_chital_controller import FakeController

from chital.cli import _app, main
from chital.client import RetryPolicy, __version__

CHITAL = str(Path(sys.executable).with_name("chital"))


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_app, "CLI_RETRIES", RetryPolicy(max_attempts=2, initial_backoff=0.001))


@pytest.fixture
def chital(target: str, capsys: pytest.CaptureFixture[str]):
    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["--controller", target, "--insecure", *argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_yaml_and_wide_output(chital) -> None:
    chital("run", "-d", "--name", "box", "-l", "team=x", "--", "sleep")
    code, out, _ = chital("ls", "-o", "yaml")
    (container,) = yaml.safe_load(out)
    assert code == 0 and container["name"] == "box" and container["labels"] == {"team": "x"}
    code, out, _ = chital("ls", "-o", "wide")
    header, row = out.splitlines()
    assert header.split()[-3:] == ["ID", "LABELS", "MESSAGE"] and "team=x" in row.split()
    code, out, _ = chital("ps", "-o", "wide")
    header, row = out.splitlines()
    assert header.split()[:4] == ["UID", "CONTAINER", "CONTAINER", "UID"]
    assert row.split()[:3] == ["p-1", "box", "c-1"]
    assert yaml.safe_load(chital("ps", "-o", "yaml")[1])[0]["uid"] == "p-1"
    # Global options after the subcommand of a group, and before the group's subcommand.
    assert yaml.safe_load(chital("hosts", "-o", "yaml", "ls")[1]) == []
    # One object, not a list, where one thing is shown.
    assert json.loads(chital("exec", "-d", "-o", "json", "box", "--", "sleep")[1])["uid"] == "p-2"
    assert json.loads(chital("stop", "box", "-o", "json")[1])["state"] == "STOPPED"
    assert chital("bogus")[0] == 2
    assert chital("ls", "-o", "xml")[0] == 2


def test_plain_output_when_not_a_terminal(chital) -> None:
    chital("run", "-d", "--name", "box", "--", "sleep")
    _, out, err = chital("ps")
    assert "\x1b[" not in out + err  # no colour, no spinner


def test_logs_of_a_container(chital) -> None:
    chital("run", "-d", "--name", "one", "--", "echo", "hello")
    # One process: its output as it is.
    assert chital("logs", "one") == (0, "hello\n", "")
    chital("exec", "-d", "one", "--", "echo", "again")
    code, out, _ = chital("logs", "one")
    # Several: each line prefixed with its process (uid and command).
    assert code == 0 and sorted(out.splitlines()) == ["p-1 echo | hello", "p-2 echo | again"]
    # A process still wins over a container.
    assert chital("logs", "p-2") == (0, "again\n", "")
    code, _, err = chital("logs", "nothing")
    assert code == 1 and err == 'chital: error: not found: container "nothing"\n'


def test_logs_of_a_container_shows_running_processes_unless_all(chital) -> None:
    chital("run", "-d", "--name", "box", "--", "echo", "old")
    chital("exec", "-d", "box", "--", "sleep")
    assert chital("logs", "box") == (0, "", "")  # the running sleep has no output
    assert chital("logs", "-a", "box")[1].splitlines() == ["p-1 echo  | old"]


def test_events(chital, fake: FakeController) -> None:
    chital("run", "-d", "--name", "z", "--", "sleep")
    chital("run", "-d", "--name", "a", "--", "sleep")
    chital("run", "-d", "--name", "b", "--", "sleep")
    # Each run: the container (CREATED), its process, the container again (RUNNING).
    code, out, _ = chital("events", "--since", "3", "-n", "2")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:4] == ["TIME", "REVISION", "KIND", "CONTAINER"]
    assert [line.split()[1:4] for line in lines[1:]] == [["4", "container", "a"], ["5", "process", "a"]]
    # JSON Lines, one event each.
    code, out, _ = chital("events", "-o", "json", "--since", "6", "-n", "1")
    assert [json.loads(line)["container"]["name"] for line in out.splitlines()] == ["b"]
    # The container filter is the controller's; the kind filter is ours.
    code, out, _ = chital("events", "--container", "a", "--since", "1", "-n", "1", "-o", "json")
    assert code == 0 and [json.loads(line)["container"]["name"] for line in out.splitlines()] == ["a"]
    assert fake.requests["Watch"][-1].container == "a"
    fake.watch_ends = True  # as a controller shutting down: the stream ends after the replay
    code, out, _ = chital("events", "--kind", "process", "-o", "json", "--since", "1")
    assert code == 0 and [json.loads(line)["revision"] for line in out.splitlines()] == [2, 5, 8]
    code, out, _ = chital("events", "--host", "10.0.0.9:7444")
    assert code == 1 and "not found" in _  # hosts are checked before watching
    assert chital("events", "--kind", "volume")[0] == 2


def test_run_rm_interrupted_stops_then_deletes(target: str, fake: FakeController) -> None:
    env = {**os.environ, "CHITAL_CONTROLLER": target, "CHITAL_INSECURE": "1", "GRPC_VERBOSITY": "ERROR"}
    proc = subprocess.Popen(
        [CHITAL, "run", "--rm", "--grace", "2", "--name", "tmp", "--", "hang"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
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
    assert proc.returncode == 130 and "Traceback" not in err
    assert "keeps running" not in err
    assert err.splitlines() == [
        "chital: interrupted: stopping process p-1 (SIGTERM, then SIGKILL after 2 s)",
        "chital: process p-1 ended (SIGTERM); deleted container tmp",
        "chital: interrupted",
    ]
    (stop,) = fake.requests["StopContainer"]
    assert stop.container == "c-1" and stop.grace_period.seconds == 2
    assert fake.containers["c-1"].state == 8  # DELETED, after the stop
    assert fake.requests["DeleteContainer"][-1].container == "c-1"


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", "complete -o nosort -F"),
        ("zsh", "#compdef chital"),
        ("fish", "complete --no-files --command chital"),
    ],
)
def test_completion_scripts(shell: str, marker: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    assert marker in script and "_CHITAL_COMPLETE" in script
    assert main(["completion", "tcsh"]) == 2


def test_completion_asks_the_controller(target: str, chital) -> None:
    chital("run", "-d", "--name", "webserver", "--", "sleep")
    env = {
        **os.environ,
        "CHITAL_CONTROLLER": target,
        "CHITAL_INSECURE": "1",
        "_CHITAL_COMPLETE": "bash_complete",
        "COMP_WORDS": "chital inspect web",
        "COMP_CWORD": "2",
    }
    result = subprocess.run([CHITAL], env=env, capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout.splitlines()) == (0, ["plain,webserver"])
    # Commands complete offline; an unreachable controller completes nothing, quietly.
    env.update(COMP_WORDS="chital ev", COMP_CWORD="1", CHITAL_CONTROLLER="127.0.0.1:1")
    result = subprocess.run([CHITAL], env=env, capture_output=True, text=True, check=False)
    assert result.stdout.splitlines() == ["plain,events"]
    env.update(COMP_WORDS="chital inspect w", COMP_CWORD="2")
    result = subprocess.run([CHITAL], env=env, capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "", "")


def test_version(
    chital, fake: FakeController, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = chital("--version")
    lines = out.splitlines()
    # The fake controller says 9.8.7: the server's line is its answer, not the client's version.
    assert code == 0 and lines[0] == f"client:     chital {__version__}"
    assert lines[1].startswith("server:     chital 9.8.7 at ") and "reachable as alice (admin)" in lines[1]
    assert lines[1].endswith("; database sqlite; the leader")
    assert lines[2] == "apis:       chital.api.admin.v1, chital.api.container.v1, chital.api.host.v1"
    data = json.loads(chital("--version", "-o", "json")[1])
    assert data["client"] == __version__ and data["controller"]["reachable"] is True
    assert data["controller"]["version"] == "9.8.7" and data["controller"]["database"] == "sqlite"
    assert data["controller"]["api_versions"] == list(fake.server_info.api_versions)
    # A controller older than GetServerInfo: reachable, its version unknown, and why.
    fake.fail("GetServerInfo", 1, grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
    code, out, _ = chital("--version")
    assert code == 0 and out.splitlines()[1].endswith(
        "; version unknown (the controller is older than GetServerInfo)"
    )
    # A controller that answers and refuses: said so, not "unreachable".
    fake.fail("WhoAmI", 1, grpc.StatusCode.UNAUTHENTICATED, "invalid token")
    code, out, _ = chital("--version")
    assert code == 0 and "answered but refused (unauthenticated: invalid token)" in out.splitlines()[1]
    assert out.splitlines()[1].startswith("server:     ")
    # No controller: the client's version all the same, exit status 0.
    monkeypatch.setenv("CHITAL_CONTROLLER", "127.0.0.1:1")
    monkeypatch.setenv("CHITAL_INSECURE", "1")
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"client:     chital {__version__}\nserver:     127.0.0.1:1 not reachable (")
    assert out.rstrip().endswith("its version is unknown")


def _on_a_terminal(argv: list[str], env: dict[str, str]) -> str:
    """Run the console script with stdout and stderr on a pseudo-terminal; return what it drew."""
    parent, child = pty.openpty()
    proc = subprocess.Popen([CHITAL, *argv], env=env, stdout=child, stderr=child, stdin=subprocess.DEVNULL)
    os.close(child)
    data = b""
    try:
        while True:
            ready, _, _ = select.select([parent], [], [], 10)
            if not ready:
                break
            try:
                chunk = os.read(parent, 65536)
            except OSError:  # the terminal's other side closed
                break
            if not chunk:
                break
            data += chunk
    finally:
        os.close(parent)
        proc.wait(timeout=10)
    assert proc.returncode == 0, data
    return data.decode("utf-8", "replace")


def test_terminal_output_has_colour_and_progress(target: str, chital) -> None:
    chital("run", "-d", "--name", "box", "--", "sleep")
    env = {**os.environ, "CHITAL_CONTROLLER": target, "CHITAL_INSECURE": "1", "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    drawn = _on_a_terminal(["ps"], env)
    assert "\x1b[32mRUNNING" in drawn  # a coloured state
    drawn = _on_a_terminal(["exec", "-d", "box", "--", "sleep", "5"], env)
    assert "starting sleep 5 in box" in drawn  # exec waits for the host to start the process
    drawn = _on_a_terminal(["stop", "box", "--grace", "1"], env)
    assert "stopping box (SIGTERM, SIGKILL after 1 s)" in drawn  # the spinner's text, on stderr
    # NO_COLOR: no colour (and no bold), still a table.
    drawn = _on_a_terminal(["ls"], {**env, "NO_COLOR": "1"})
    assert "\x1b[" not in drawn and "STOPPED" in drawn
    # TERM=dumb counts as no terminal: plain, as in a pipe.
    drawn = _on_a_terminal(["ls"], {**env, "TERM": "dumb"})
    assert "\x1b[" not in drawn and drawn.splitlines()[0].split()[:2] == ["NAME", "UID"]
