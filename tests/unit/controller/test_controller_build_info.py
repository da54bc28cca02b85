"""The controller's metrics carry its version, the one of the repository's VERSION file."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest

from chital.controller.metrics import ControllerMetrics

VERSION = (Path(__file__).resolve().parents[3] / "VERSION").read_text().strip()


def test_build_info() -> None:
    text = generate_latest(ControllerMetrics().registry).decode()
    assert f'chital_controller_build_info{{version="{VERSION}"}} 1.0' in text.splitlines()
