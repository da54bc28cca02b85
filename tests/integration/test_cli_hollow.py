"""The ``chital`` CLI against a real hollow fleet (a controller and agents as processes on
127.0.0.1, TLS and a token from the fleet's config file): contexts, uid prefixes, an ambiguous
prefix, ``logs <container>``, ``events``, ``top``, completion and ``--version``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chital.cli import main
from chital.client import Client, ContainerState, NotFound, ProcessState, __version__
from chital.controller import __version__ as controller_version
from chital.devcluster.hollow import HollowFleet

pytestmark = pytest.mark.timeout(180)

CHITAL = str(Path(sys.executable).with_name("chital"))


@pytest.fixture(scope="module")
def fleet() -> Iterator[HollowFleet]:
    with HollowFleet(agents=2) as f:
        yield f


@pytest.fixture
def client(fleet: HollowFleet) -> Iterator[Client]:
    with fleet.client(timeout=20.0) as c:
        yield c


@pytest.fixture
def config(fleet: HollowFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the fleet's config file (the context commands rewrite it), used through CHITAL_CONFIG."""
    for name in list(os.environ):
        if name.startswith("CHITAL_"):
            monkeypatch.delenv(name)
    path = tmp_path / "config.toml"
    shutil.copy(fleet.config_path, path)
    path.chmod(0o600)
    monkeypatch.setenv("CHITAL_CONFIG", str(path))
    return path


@pytest.fixture
def chital(config: Path, capsys: pytest.CaptureFixture[str]):
    """Run the CLI in-process; returns (exit status, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _run_detached(chital, name: str, *command: str) -> tuple[str, str]:
    """``chital run -d``: (container uid, process uid)."""
    code, out, err = chital("-o", "json", "run", "-d", "--name", name, "--", *command)
    assert code == 0, err
    data = json.loads(out)
    return data["container"]["uid"], data["process"]["uid"]


def test_contexts_switch(chital, config: Path) -> None:
    code, out, _ = chital("context", "ls")
    assert code == 0 and out.splitlines()[1].split()[:2] == ["*", "hollow"]
    assert chital("whoami")[0] == 0
    # A second context pointing nowhere, made current: commands now go there...
    assert (
        chital("context", "set", "nowhere", "--controller", "127.0.0.1:1", "--insecure", "--token", "x")[0]
        == 0
    )
    code, _, err = chital("context", "use", "nowhere")
    assert (code, err) == (0, 'switched to context "nowhere"\n')
    assert chital("context", "current")[1] == "nowhere\n"
    code, _, err = chital("whoami")
    assert code == 1 and err.startswith("chital: error: unavailable:") and "127.0.0.1:1" in err
    # ...unless --context (before or after the command) picks the other one.
    assert chital("--context", "hollow", "whoami")[0] == 0
    assert chital("whoami", "--context", "hollow")[0] == 0
    rows = [line.split() for line in chital("context", "ls")[1].splitlines()[1:]]
    assert [row[0] for row in rows if row[0] == "*"] == ["*"] and ["*", "nowhere"] in [r[:2] for r in rows]
    assert chital("context", "use", "hollow")[0] == 0
    assert json.loads(chital("whoami", "-o", "json")[1])["role"] == "admin"


def test_uid_prefixes_resolve(chital, client: Client) -> None:
    name = unique("prefix")
    container_uid, process_uid = _run_detached(chital, name, "sh", "-c", "echo from-prefix")
    # A container by a prefix of its uid: inspect, ps, logs; a process by a prefix: wait, logs.
    code, out, _ = chital("inspect", container_uid[:10], "-o", "json")
    assert code == 0 and json.loads(out)["name"] == name
    assert chital("wait", process_uid[:10]) == (0, "0\n", "")
    assert chital("logs", process_uid[:10]) == (0, "from-prefix\n", "")
    code, out, _ = chital("ps", "-a", container_uid[:10])
    _, row = out.splitlines()
    assert row.split()[:2] == [process_uid, name]  # ps shows the container's name
    # A host by a prefix of its id.
    host = next(iter(client.list_hosts()))
    code, out, _ = chital("hosts", "get", host.id[:8], "-o", "json")
    assert code == 0 and json.loads(out)["address"] == host.address
    # A prefix that matches nothing reaches the controller as it is.
    code, _, err = chital("inspect", "0" * 31 if not container_uid.startswith("0" * 31) else "f" * 31)
    assert code == 1 and err.startswith("chital: error: not found:")
    assert chital("rm", container_uid[:12])[1] == f"{name}\n"


def test_an_ambiguous_prefix_is_a_clear_error(chital, client: Client) -> None:
    # Sixteen hex digits can start a uid: with seventeen containers, two share a first digit.
    made = [client.create_container(unique("amb")) for _ in range(17)]
    try:
        by_digit: dict[str, list[str]] = {}
        for c in client.list_containers():
            by_digit.setdefault(c.uid[0], []).append(c.uid)
        digit, uids = next((d, u) for d, u in sorted(by_digit.items()) if len(u) >= 2)
        code, out, err = chital("inspect", digit)
        assert (code, out) == (1, "")
        assert err.startswith(
            f"chital: error: container prefix '{digit}' is ambiguous: it matches {len(uids)}:"
        )
        for uid in uids[:8]:
            assert uid in err
        assert err.count("\n") == 1 and "type more of the uid" in err
        # One more digit (the whole uid here) picks one.
        assert chital("inspect", uids[0][:31], "-o", "json")[0] == 0
    finally:
        for c in made:
            client.delete_container(c.uid, force=True)


def test_logs_of_a_container(chital, client: Client) -> None:
    name = unique("logs")
    _, first = _run_detached(chital, name, "sh", "-c", "echo one")
    client.wait_process(first, timeout=30)
    assert chital("logs", name) == (0, "one\n", "")
    code, out, _ = chital("-o", "json", "exec", "-d", name, "--", "sh", "-c", "echo two; echo three")
    second = json.loads(out)["uid"]
    assert client.wait_process(second, timeout=30).state is ProcessState.EXITED
    code, out, _ = chital("logs", name)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3
    by_process: dict[str, list[str]] = {}
    for line in lines:
        prefix, _, text = line.partition(" | ")
        by_process.setdefault(prefix.split()[0], []).append(text)
    assert sorted(by_process.values()) == [["one"], ["two", "three"]]
    assert all(first.startswith(p) or second.startswith(p) for p in by_process)
    chital("rm", "-f", name)


def test_events(chital, client: Client) -> None:
    name = unique("events")
    before = client.create_container(unique("other"))
    client.delete_container(before.uid, force=True)
    container_uid, process_uid = _run_detached(chital, name, "true")
    client.wait_process(process_uid, timeout=30)
    # Replayed from the start, this container's only; then the process events only.
    code, out, _ = chital("events", "--since", "1", "--container", name, "-n", "3", "-o", "json")
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(events) == 3
    assert events[0]["type"] == "CONTAINER_CHANGED" and events[0]["container"]["name"] == name
    assert all((e["container"] or e["process"])["uid"] in (container_uid, process_uid) for e in events)
    code, out, _ = chital("events", "--since", "1", "--container", name, "--kind", "process", "-n", "2")
    header, *rows = out.splitlines()
    assert header.split()[:5] == ["TIME", "REVISION", "KIND", "CONTAINER", "PROCESS"]
    assert [r.split()[2:5] for r in rows] == [["process", name, process_uid]] * 2
    # --host: the container's host only (its events), another host's: none of this container's.
    host = client.get_container(container_uid).host_id
    code, out, _ = chital("events", "--since", "1", "--host", host[:10], "--container", name, "-n", "1")
    assert code == 0 and name in out.splitlines()[1]
    chital("rm", "-f", name)


def test_top_one_shot(chital) -> None:
    name = unique("top")
    _run_detached(chital, name, "sleep", "30")
    code, out, _ = chital("top", name)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[0] == name and "RUNNING" in lines[0]
    assert lines[1].startswith("memory ") and "pids" in lines[1]
    assert lines[2].startswith("system calls ")
    assert lines[4].split() == ["SYSCALL", "NR", "CALLS", "DENIED"]
    data = json.loads(chital("top", name, "-o", "json")[1])
    assert data["container"]["name"] == name and "syscalls_total" in data["stats"]
    chital("rm", "-f", name)


def test_completion(config: Path, fleet: HollowFleet, client: Client) -> None:
    for shell, marker in (
        ("bash", "complete -o nosort"),
        ("zsh", "compdef"),
        ("fish", "complete --no-files"),
    ):
        result = subprocess.run([CHITAL, "completion", shell], capture_output=True, text=True, check=False)
        assert result.returncode == 0 and marker in result.stdout
        if shutil.which(shell) and shell == "bash":
            # The script is valid bash.
            check = subprocess.run(
                [shell, "-n"], input=result.stdout, capture_output=True, text=True, check=False
            )
            assert check.returncode == 0, check.stderr
    name = unique("complete")
    made = client.create_container(name)
    env = {
        **os.environ,
        "CHITAL_CONFIG": str(config),
        "_CHITAL_COMPLETE": "bash_complete",
        "COMP_WORDS": f"chital inspect {name[:12]}",
        "COMP_CWORD": "2",
    }
    result = subprocess.run([CHITAL], env=env, capture_output=True, text=True, check=False)
    assert result.stdout.splitlines() == [f"plain,{name}"]
    env["COMP_WORDS"] = f"chital rm {made.uid[:20]}"
    result = subprocess.run([CHITAL], env=env, capture_output=True, text=True, check=False)
    assert result.stdout.splitlines() == [f"plain,{made.uid}"]
    client.delete_container(made.uid, force=True)


def test_version(chital) -> None:
    code, out, _ = chital("--version")
    lines = out.splitlines()
    assert code == 0 and lines[0] == f"client:     chital {__version__}"
    assert lines[1].startswith(f"server:     chital {controller_version} at 127.0.0.1:")
    assert lines[1].endswith(", reachable as hollow-admin (admin); database sqlite; the leader")
    assert lines[2] == (
        "apis:       chital.api.admin.v1, chital.api.container.v1, chital.api.host.v1, chital.api.rollout.v1"
    )
    assert lines[3] == f"agents:     {__version__} (2 hosts)"


def test_run_rm_interrupted_stops_the_process_and_deletes_the_container(config: Path, client: Client) -> None:
    name = unique("rm")
    env = {**os.environ, "CHITAL_CONFIG": str(config), "GRPC_VERBOSITY": "ERROR"}
    proc = subprocess.Popen(
        [CHITAL, "run", "--rm", "--grace", "5", "--name", name, "--", "sleep", "300"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        running = []
        while not running and time.monotonic() < deadline:
            time.sleep(0.1)
            running = [
                p
                for p in client.list_processes()
                if p.argv == ("sleep", "300") and p.state is ProcessState.RUNNING
            ]
            running = [p for p in running if client.get_container(p.container_uid).name == name]
        assert running, "the process never ran"
        time.sleep(0.3)  # attached to its output by now
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    uid = running[0].uid
    assert proc.returncode == 130 and "Traceback" not in err and "keeps running" not in err
    lines = err.splitlines()
    assert lines[0] == f"chital: interrupted: stopping process {uid} (SIGTERM, then SIGKILL after 5 s)"
    assert lines[1].startswith(f"chital: process {uid} ended (SIGTERM); deleted container {name}")
    assert lines[-1] == "chital: interrupted"
    final = client.get_process(uid)
    assert final.state is ProcessState.EXITED and final.signal == signal.SIGTERM
    with contextlib.suppress(NotFound):  # deleted, or gone altogether
        assert client.get_container(running[0].container_uid).state is ContainerState.DELETED
