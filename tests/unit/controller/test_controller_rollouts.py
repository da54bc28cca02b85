"""Rollouts' pure parts: playbook names, selector inventories, the runner's event reduction, and how
events fold into host progress (no Ansible run; tests/integration/controller/test_rollouts.py runs
real playbooks)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from chital.controller.rollout_runner import reduce_event
from chital.controller.rollouts import (
    RolloutHostRecord,
    RolloutHostRecordStatus,
    _Run,
    resolve_playbook,
    selector_inventory,
)
from chital.errdefs import FailedPrecondition, InvalidArgument


def test_playbook_names_are_plain_files_of_the_directory(tmp_path: Path) -> None:
    (tmp_path / "site.yml").write_text("- hosts: all\n")
    (tmp_path / "roles").mkdir()
    (tmp_path / "roles" / "x.yml").write_text("")
    (tmp_path.parent / "outside.yml").write_text("")
    (tmp_path / "link.yml").symlink_to(tmp_path.parent / "outside.yml")
    (tmp_path / "dir.yml").mkdir()
    assert resolve_playbook(str(tmp_path), "site.yml") == (tmp_path / "site.yml").resolve()
    for bad in ("", "site", "site.sh", "../outside.yml", "roles/x.yml", "/etc/passwd.yml", ".hidden.yml"):
        with pytest.raises(InvalidArgument):
            resolve_playbook(str(tmp_path), bad)
    for not_ours in ("missing.yml", "link.yml", "dir.yml"):
        with pytest.raises(InvalidArgument, match="not one of the controller's playbooks"):
            resolve_playbook(str(tmp_path), not_ours)
    with pytest.raises(FailedPrecondition):
        resolve_playbook(str(tmp_path / "nope"), "site.yml")


def test_selector_inventory_names_hosts_after_their_address() -> None:
    text = selector_inventory([("h1", "10.0.0.1:7444"), ("h2", "10.0.0.2:7444"), ("h3", "10.0.0.2:7445")])
    hosts = json.loads(text)["all"]["children"]["chital_agents"]["hosts"]
    assert hosts == {
        "10.0.0.1": {
            "ansible_host": "10.0.0.1",
            "chital_agent_address": "10.0.0.1",
            "chital_agent_port": 7444,
        },
        "10.0.0.2_7444": {
            "ansible_host": "10.0.0.2",
            "chital_agent_address": "10.0.0.2",
            "chital_agent_port": 7444,
        },
        "10.0.0.2_7445": {
            "ansible_host": "10.0.0.2",
            "chital_agent_address": "10.0.0.2",
            "chital_agent_port": 7445,
        },
    }


def test_reduce_event_keeps_what_the_controller_reads() -> None:
    event = {
        "event": "runner_on_failed",
        "uuid": "u1",
        "counter": 7,
        "stdout": "x" * 10_000,
        "event_data": {
            "host": "web1",
            "task": "Build",
            "ignore_errors": None,
            "res": {"changed": False, "msg": "m" * 10_000, "stdout": "big", "rc": 2},
            "play": "p",
        },
    }
    reduced = reduce_event(event)
    assert reduced["event"] == "runner_on_failed" and reduced["counter"] == 7
    assert reduced["event_data"]["host"] == "web1" and "play" not in reduced["event_data"]
    assert reduced["event_data"]["res"] == {"changed": False, "msg": "m" * 4096, "rc": 2}
    json.dumps(reduced)


class _Sink:
    """Stands in for Rollouts: collects what a run would record."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def _record_events(self, rollout_id: str, events: list[dict[str, Any]], hosts: Any) -> None:
        self.events.extend(events)


def _run(*names: str) -> tuple[_Run, _Sink]:
    sink = _Sink()
    record = SimpleNamespace(id="r1", hosts=[RolloutHostRecord(name=n) for n in names])
    run = _Run(sink, record)  # type: ignore[arg-type]
    return run, sink


def _ev(name: str, **data: Any) -> dict[str, Any]:
    return {"event": name, "uuid": "u", "counter": 1, "event_data": data}


def test_events_fold_into_host_progress() -> None:
    run, sink = _run("a", "b")
    run.on_event(_ev("playbook_on_task_start", task="Install"))
    run.on_event(_ev("runner_on_start", host="a", task="Install"))
    assert (
        run.hosts["a"].status is RolloutHostRecordStatus.RUNNING and run.hosts["a"].current_task == "Install"
    )
    run.on_event(_ev("runner_on_ok", host="a", task="Install", res={"changed": True}))
    run.on_event(_ev("runner_on_failed", host="b", task="Install", res={"msg": "no space"}))
    run.on_event(_ev("runner_on_failed", host="a", task="Probe", res={"msg": "x"}, ignore_errors=True))
    run.on_event(_ev("runner_on_skipped", host="a", task="Other"))
    a, b = run.hosts["a"], run.hosts["b"]
    assert (a.ok, a.changed, a.failed, a.skipped, a.status) == (2, 1, 0, 1, RolloutHostRecordStatus.RUNNING)
    assert (b.failed, b.status, b.message) == (1, RolloutHostRecordStatus.FAILED, "Install: no space")
    assert [e["type"] for e in sink.events] == [
        "TASK_START",
        "HOST_OK",
        "HOST_FAILED",
        "HOST_FAILED",
        "HOST_SKIPPED",
    ]
    assert sink.events[3]["message"] == "(ignored) x"


def test_the_recap_is_authoritative_and_settles_unseen_failures() -> None:
    run, sink = _run("a", "b", "c")
    run.on_event(_ev("runner_on_ok", host="a", task="t", res={"changed": True}))
    run.on_event(
        _ev(
            "playbook_on_stats",
            ok={"a": 3, "b": 1},
            changed={"a": 1},
            failures={"b": 1},
            dark={"c": 1},
            skipped={},
        )
    )
    a, b, c = run.hosts["a"], run.hosts["b"], run.hosts["c"]
    assert (a.ok, a.changed) == (3, 1)
    assert (b.status, b.failed, b.message) == (RolloutHostRecordStatus.FAILED, 1, "failed (from the recap)")
    assert (c.status, c.unreachable) == (RolloutHostRecordStatus.UNREACHABLE, 1)
    assert sink.events[-1]["type"] == "STATS" and len(sink.events[-1]["host_summary"]) == 3


def test_an_event_without_its_data_is_not_folded() -> None:
    run, sink = _run("a")
    run.on_event({"uuid": "u", "counter": 3, "stdout": "ok: [a]"})
    assert sink.events == [] and run.hosts["a"].ok == 0
