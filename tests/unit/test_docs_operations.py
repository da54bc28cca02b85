"""docs/operations.md explains every Prometheus alert of deploy/prometheus/rules/*.yml."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULE_FILES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
OPERATIONS = ROOT / "docs" / "operations.md"


def alert_names() -> list[str]:
    names = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            names += [rule["alert"] for rule in group["rules"] if "alert" in rule]
    return names


def test_there_are_alerts_to_document() -> None:
    assert RULE_FILES, "no rule files found"
    assert len(alert_names()) >= 10


def test_every_alert_has_a_section_on_the_operations_page() -> None:
    headings = set(re.findall(r"^#+ +(\S+) *$", OPERATIONS.read_text(), flags=re.MULTILINE))
    missing = [name for name in alert_names() if name not in headings]
    assert not missing, f"alerts without a section in docs/operations.md: {missing}"
