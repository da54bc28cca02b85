"""Fixtures: the test PKI and agents stopped after each test (see agent_harness.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agent_harness import AgentProc, Bundles, make_bundles, start_agent


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    return make_bundles(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[..., AgentProc]]:
    """``agent_factory(*flags, metrics=False)``: an agent, stopped at the end of the test."""
    started: list[AgentProc] = []

    def make(*flags: str, metrics: bool = False) -> AgentProc:
        agent = start_agent(tmp_path / f"agent-{len(started)}", flags, metrics=metrics)
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.stop()
