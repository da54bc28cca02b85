"""A real Prometheus scrapes a live controller and hollow agents; every dashboard and alert query runs.

Debian's ``prometheus`` server runs on 127.0.0.1 (free port, temporary storage, 1 s scrape interval)
with the repository's alert rules, scraping the controller (static target) and the agents through the
file_sd file that the controller itself keeps up to date (``--prometheus-sd-file``); every /metrics
is HTTPS with its server's certificate, verified with the fleet's CA. The test drives
a workload through the SDK (containers, processes that exit in every way, errors), kills one agent,
and then:

- every PromQL expression of every Grafana dashboard (panels and template variables, extracted from
  the JSON, so new panels are covered automatically) returns data: no empty panel;
- every alert and recording rule runs, every metric and label it names exists, and the alerts the
  dead agent should trigger return data;
- ``promtool check metrics`` is clean on live scrapes of the controller and an agent.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from chital.client import Client, Limits, NotFound
from chital.devcluster.hollow import HollowFleet

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None or PROMTOOL is None, reason="Debian package prometheus"),
]

#: Grafana's built-in variables, as Grafana would expand them for a 1 s scrape interval.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m", "__range_s": "300"}
#: Alerts that the killed agent must make return data (their expressions, without ``for``).
FIRING_AFTER_KILL = ("ChitalHostNotReady", "ChitalAgentUnreachable", "ChitalAgentCallsFailing")


# -- helpers ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 10.0, ca: Path | None = None) -> bytes:
    context = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
    with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
        body: bytes = resp.read()
        return body


def _wait(what: str, predicate: Any, timeout: float = 60.0, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


@dataclass
class PrometheusServer:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Run an instant query; raise with Prometheus' error on a bad expression."""
        params = urllib.parse.urlencode({"query": expr})
        try:
            body = json.loads(_get(f"{self.url}/api/v1/query?{params}"))
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"query failed: {expr}\n{exc.read().decode(errors='replace')}") from exc
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result if body["data"]["resultType"] in ("vector", "matrix") else [{"value": result}]

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = json.loads(_get(f"{self.url}/api/v1/targets"))["data"]["activeTargets"]
        return active

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _substitute(expr: str, variables: dict[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name in BUILTINS:
            return BUILTINS[name]
        assert name in variables, f"undefined variable ${name} in {expr}"
        return variables[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable of every dashboard."""
    out: list[tuple[str, str]] = []
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        variables: dict[str, str] = {}
        for var in dash["templating"]["list"]:
            if var["type"] == "query":
                variables[var["name"]] = var.get("allValue") or ".*"
            elif var["type"] == "datasource":
                variables[var["name"]] = "prometheus"
        for var in dash["templating"]["list"]:
            if var["type"] != "query":
                continue
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\)\s*", q)
            assert m, f"{path.name}: variable {var['name']}: only label_values(metric, label) is supported"
            selector, label = m.groups()
            out.append(
                (
                    f"{path.stem} / variable {var['name']}",
                    f"count by ({label}) ({_substitute(selector, variables)})",
                )
            )
        panels = []
        for panel in dash["panels"]:
            panels.append(panel)
            panels += panel.get("panels", [])
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("hide"):
                    continue
                where = f"{path.stem} / {panel['title']} / {target['refId']}"
                out.append((where, _substitute(target["expr"], variables)))
    return out


def rule_expressions() -> list[tuple[str, str]]:
    """(name, PromQL) of every alerting and recording rule."""
    out = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out.append((rule.get("alert") or rule["record"], rule["expr"]))
    return out


_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
    "unless", "sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev", "stdvar",
    "group", "count_values", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (identifiers not followed by '(' that are not keywords)."""
    stripped = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # drop string literals
    stripped = re.sub(r"\{[^}]*\}", "{}", stripped)  # and label matchers
    stripped = re.sub(r"\[[^\]]*\]", "[]", stripped)  # and range durations
    stripped = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", stripped)
    names = set()
    for m in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", stripped):
        word = m.group(1)
        if word.lower() not in _PROMQL_WORDS and not re.fullmatch(r"\d+[smhdwy]?", word):
            names.add(word)
    return names


def label_names(expr: str) -> set[str]:
    """Labels an expression matches on or groups by."""
    labels: set[str] = set()
    for m in re.finditer(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(1)))
    for m in re.finditer(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    return labels - {"le", "__name__"}


# -- the system under test ---------------------------------------------------------------------------


@dataclass
class Live:
    fleet: HollowFleet
    prometheus: PrometheusServer
    killed_host: str
    sd_file: Path


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _workload(client: Client, hosts: list[str]) -> None:
    """Containers and processes on ``hosts``, exits of every kind, denied syscalls, client errors.

    The containers are pinned to ``hosts``: the agent that the fixture kills later must hold none of
    them, or the series only it exported (the denials, say) go stale and a panel has no data.
    """
    keep = []
    for i in range(6):
        deny = ["execve"] if i == 0 else ["ptrace"]
        keep.append(client.create_container(_unique("prom"), limits=Limits(memory_max_bytes=64 << 20),
                                            deny_syscalls=deny, host=hosts[i % len(hosts)]))  # fmt: skip
    for c in keep:
        client.exec(c.uid, ["sleep", "120"])  # long-lived members: memory/cpu/pids series
    done = [
        client.exec(keep[1].uid, ["sh", "-c", "exit 0"]),
        client.exec(keep[2].uid, ["sh", "-c", "exit 3"]),
        client.exec(keep[3].uid, ["sleep", "60"]),
    ]
    client.signal_process(done[2].uid, signal.SIGKILL)
    for p in done:
        client.wait_process(p.uid, timeout=30)
    gone = client.create_container(_unique("gone"))
    client.delete_container(gone.uid, force=True)
    with pytest.raises(NotFound):  # client errors show in the RPC error panels
        client.get_container("no-such-container")
    with pytest.raises(NotFound):
        client.create_container(_unique("pin"), host="no-such-host")


def _start_prometheus(workdir: Path, controller_metrics: str, sd_file: Path, ca: Path) -> PrometheusServer:
    """Prometheus scraping the controller and the agents over HTTPS (verified with the fleet CA)."""
    assert PROMETHEUS is not None
    port = _free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in RULE_FILES],
        "scrape_configs": [
            {
                "job_name": "chital-controller",
                "scheme": "https",
                "tls_config": {"ca_file": str(ca)},
                "static_configs": [{"targets": [controller_metrics]}],
            },
            {
                "job_name": "chital-agent",
                "scheme": "https",
                "tls_config": {"ca_file": str(ca)},
                "file_sd_configs": [{"files": [str(sd_file)], "refresh_interval": "1s"}],
            },
        ],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    check = subprocess.run(
        [str(PROMTOOL), "check", "config", str(config_path)], check=False, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    server = PrometheusServer(f"http://127.0.0.1:{port}", proc, log_path)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {log_path.read_text()[-2000:]}")
        try:
            return _get(f"{server.url}/-/ready", timeout=2).startswith(b"Prometheus")
        except OSError:
            return False

    try:
        _wait("prometheus to be ready", ready, timeout=60)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    workdir = tmp_path_factory.mktemp("prom")
    sd_file = workdir / "targets" / "agents.json"
    fleet = HollowFleet(
        agents=3,
        workdir=workdir / "fleet",
        metrics=True,
        controller_args=["--prometheus-sd-file", str(sd_file), "--health-interval", "0.5"],
    )
    with fleet:
        client = fleet.client(timeout=20.0)
        try:
            victim = fleet.agent_procs[-1]
            killed = next(h for h in client.list_hosts() if h.address == victim.address)
            _workload(client, [h.id for h in client.list_hosts() if h.id != killed.id])
            # The controller writes the discovery file from its host table.
            _wait(
                "3 agents in the discovery file",
                lambda: sd_file.exists() and len(json.loads(sd_file.read_text())) == 3,
            )
            assert fleet.controller is not None and fleet.controller.metrics_address
            assert fleet.pki is not None
            prom = _start_prometheus(workdir, fleet.controller.metrics_address, sd_file, fleet.pki.ca)
            try:
                _wait(
                    "4 healthy targets",
                    lambda: len([t for t in prom.targets() if t["health"] == "up"]) == 4,
                    timeout=60,
                )
                time.sleep(5)  # several scrapes: rate() needs two samples in its window
                victim.kill()
                _wait(
                    "the killed agent's host to be NOT_READY",
                    lambda: client.get_host(killed.id).state.name == "NOT_READY",
                    timeout=30,
                )
                _wait(
                    "Prometheus to see the killed agent down",
                    lambda: prom.query('up{job="chital-agent"} == 0'),
                    timeout=30,
                )
                # Health checks of the dead agent fail twice a second; the alert's rate over 5 minutes
                # crosses its threshold after some 20 s.
                _wait(
                    "the failing health checks to reach ChitalAgentCallsFailing's threshold",
                    lambda: prom.query(dict(rule_expressions())["ChitalAgentCallsFailing"]),
                    timeout=90,
                    interval=1.0,
                )
                yield Live(fleet, prom, killed.id, sd_file)
            finally:
                prom.stop()
        finally:
            client.close()


# -- the tests ----------------------------------------------------------------------------------------

DASHBOARD_QUERIES = dashboard_queries()
RULES = rule_expressions()


def test_queries_were_found() -> None:
    assert len(DASHBOARDS) >= 4
    assert len(DASHBOARD_QUERIES) >= 50
    assert len(RULES) >= 5


@pytest.mark.parametrize(("where", "expr"), DASHBOARD_QUERIES, ids=[w for w, _ in DASHBOARD_QUERIES])
def test_dashboard_query_returns_data(live: Live, where: str, expr: str) -> None:
    result = live.prometheus.query(expr)
    assert result, f"{where}: no data for\n  {expr}"


@pytest.mark.parametrize(("name", "expr"), RULES, ids=[n for n, _ in RULES])
def test_rule_expression_runs_on_existing_series(live: Live, name: str, expr: str) -> None:
    live.prometheus.query(expr)  # raises on a PromQL error
    names = metric_names(expr)
    assert names, f"{name}: no metric found in {expr}"
    have_labels: set[str] = set()
    for metric in names:
        series = json.loads(
            _get(f"{live.prometheus.url}/api/v1/series?{urllib.parse.urlencode({'match[]': metric})}")
        )["data"]
        assert series, f"{name}: metric {metric} does not exist"
        for s in series:
            have_labels |= set(s)
    missing = label_names(expr) - have_labels
    assert not missing, f"{name}: labels {missing} appear on none of {names}"


@pytest.mark.parametrize("alert", FIRING_AFTER_KILL)
def test_dead_agent_alerts_fire(live: Live, alert: str) -> None:
    expr = dict(RULES)[alert]
    result = live.prometheus.query(expr)
    assert result, f"{alert} should return data with an agent killed:\n  {expr}"
    hosts = {r["metric"].get("host") for r in result}
    assert live.killed_host in hosts


def test_healthy_hosts_do_not_alert(live: Live) -> None:
    result = live.prometheus.query(dict(RULES)["ChitalHostNotReady"])
    assert {r["metric"]["host"] for r in result} == {live.killed_host}


def test_discovery_file_labels_agents_with_host_ids(live: Live) -> None:
    groups = json.loads(live.sd_file.read_text())
    with live.fleet.client() as client:
        hosts = {h.id: h for h in client.list_hosts()}
    assert {g["labels"]["host"] for g in groups} == set(hosts)
    by_metrics = {a.metrics_address: a for a in live.fleet.agent_procs}
    for g in groups:
        assert g["targets"][0] in by_metrics


@pytest.mark.parametrize("service", ["controller", "agent"])
def test_promtool_check_metrics_on_live_scrape(live: Live, service: str) -> None:
    assert PROMTOOL is not None
    proc = live.fleet.controller if service == "controller" else live.fleet.agent_procs[0]
    assert proc is not None and proc.metrics_address
    assert live.fleet.pki is not None and proc.metrics_url is not None
    assert proc.metrics_url.startswith("https://")  # with the server's certificate
    body = _get(proc.metrics_url, ca=live.fleet.pki.ca)
    assert b"_created" not in body
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, check=False)
    assert check.returncode == 0, (check.stdout + check.stderr).decode()
    # Only chital_, process_ and python_ series: nothing from a global registry slipped in.
    names = {
        line.split("{")[0].split(" ")[0] for line in body.decode().splitlines() if line and line[0] != "#"
    }
    assert names
    assert all(n.startswith(("chital_", "process_", "python_")) for n in names), names


def test_metric_selectors_extraction() -> None:
    expr = 'sum by (host) (rate(chital_a_total{grpc_code=~"X|Y"}[5m])) / on (host) up{job="a"} > 0.5'
    assert metric_names(expr) == {"chital_a_total", "up"}
    assert label_names(expr) == {"host", "grpc_code", "job"}
