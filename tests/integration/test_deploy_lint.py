"""Static checks of deploy/ and docker-compose.yml with the real tools (Debian's prometheus and
docker-compose packages): promtool check config / check rules / test rules, docker-compose config -q,
and the shape of every Grafana dashboard. The live checks (every query returns data, promtool check
metrics on real scrapes) are in test_prometheus.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))

pytestmark = pytest.mark.timeout(120)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        package = "docker-compose" if "compose" in name else "prometheus"
        pytest.skip(f"{name} is not installed (Debian package: {package})")
    return path


def _run(argv: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def test_promtool_check_config() -> None:
    res = _run([_tool("promtool"), "check", "config", str(PROM / "prometheus.yml")])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr


def test_promtool_check_rules() -> None:
    rules = sorted((PROM / "rules").glob("*.yml"))
    assert rules
    res = _run([_tool("promtool"), "check", "rules", *map(str, rules)])
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_test_rules() -> None:
    tests = sorted((PROM / "tests").glob("*.yml"))
    assert tests
    res = _run([_tool("promtool"), "test", "rules", *map(str, tests)])
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_alert_is_unit_tested_or_listed() -> None:
    """The alerts the issue asks for have promtool unit tests."""
    tested: set[str] = set()
    for path in (PROM / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            tested |= {t["alertname"] for t in case.get("alert_rule_test", [])}
    for required in (
        "ChitalHostNotReady",
        "ChitalAgentUnreachable",
        "ChitalDeviceEventsDropped",
        "ChitalDeniedSyscallSpike",
        "ChitalControllerErrors",
    ):
        assert required in tested


def test_alerts_have_severity_and_summary() -> None:
    for path in (PROM / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
                    assert rule["annotations"]["summary"], rule["alert"]


def test_discovery_files_are_valid() -> None:
    for path in (PROM / "targets").glob("*.json"):
        groups = json.loads(path.read_text())
        assert isinstance(groups, list)
        for g in groups:
            assert isinstance(g["targets"], list)


def test_docker_compose_config() -> None:
    res = _run([_tool("docker-compose"), "-f", str(ROOT / "docker-compose.yml"), "config", "-q"])
    assert res.returncode == 0, res.stdout + res.stderr


def test_docker_compose_wiring() -> None:
    """The compose file mounts what exists and runs the controller against PostgreSQL with --migrate."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "name" not in compose and "include" not in compose  # Compose v2 only: 1.29 rejects them
    services = compose["services"]
    assert {"controller", "postgres", "prometheus", "grafana"} <= set(services)
    command = services["controller"]["command"]
    assert "--migrate" in command
    url = command[command.index("--database-url") + 1]
    assert url.startswith("postgresql+psycopg://")
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    assert (ROOT / services["controller"]["build"]["dockerfile"]).is_file()
    dockerfile = (ROOT / "Dockerfile").read_text()
    for path in ("proto/python/", "controller/"):
        assert f"COPY {path}" in dockerfile


def _provisioned_datasource_uids() -> set[str]:
    uids: set[str] = set()
    for path in (GRAFANA / "provisioning" / "datasources").glob("*.yml"):
        for ds in yaml.safe_load(path.read_text())["datasources"]:
            uids.add(ds["uid"])
    return uids


def test_grafana_provisioning_files() -> None:
    assert "prometheus" in _provisioned_datasource_uids()
    providers = []
    for path in (GRAFANA / "provisioning" / "dashboards").glob("*.yml"):
        providers += yaml.safe_load(path.read_text())["providers"]
    assert providers
    for p in providers:
        assert p["type"] == "file"
        assert p["options"]["path"]


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out += panel.get("panels", [])  # collapsed rows hold their panels
    return out


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_dashboard_schema(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"]), "Grafana uids are at most 40 characters"
    assert dashboard["title"].startswith("chital / ")
    assert "chital" in dashboard["tags"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = set()
    panels = [p for p in _panels(dashboard) if p["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["id"] not in ids, f"duplicate panel id {panel['id']}"
        ids.add(panel["id"])
        assert panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["refId"]
            assert target["datasource"]["uid"] == "${datasource}"
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval", "__interval", "__range"}
            assert used <= set(variables), f"{panel['title']}: undefined variables {used - set(variables)}"


def test_the_four_dashboards_exist() -> None:
    uids = {json.loads(p.read_text())["uid"] for p in DASHBOARDS}
    assert {"chital-fleet", "chital-host", "chital-container", "chital-control-plane"} <= uids
    assert len(uids) == len(DASHBOARDS), "dashboard uids must be unique"


def test_docker_compose_runs_two_controllers() -> None:
    """High availability in compose: two controllers on the one PostgreSQL database, each with its
    own published port, state volume and discovery file, both migrating safely, both scraped."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    first, second = services["controller"], services["controller-2"]
    assert first["image"] == second["image"]

    def flag(service: dict[str, Any], name: str) -> str:
        command = service["command"]
        return str(command[command.index(name) + 1])

    assert flag(first, "--database-url") == flag(second, "--database-url")
    assert "--migrate" in first["command"] and "--migrate" in second["command"]
    assert flag(first, "--prometheus-sd-file") != flag(second, "--prometheus-sd-file")
    assert set(first["ports"]).isdisjoint(second["ports"])
    state = {
        s: next(v for v in services[s]["volumes"] if v.endswith(":/var/lib/chital"))
        for s in services
        if s.startswith("controller")
    }
    assert len(set(state.values())) == 2, state
    assert second["restart"] == "unless-stopped"  # a controller that lost its lease exits
    prometheus = yaml.safe_load((PROM / "prometheus.yml").read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "chital-controller")
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {"controller:9471", "controller-2:9471"}
