"""The agent pool's clients: one per address, shared by callers, made again when its channel or its
metric label changes."""

from __future__ import annotations

import pytest

from chital.controller.agents import AgentPool
from chital.errdefs import Unavailable


def test_one_client_per_address_until_its_channel_or_label_changes() -> None:
    pool = AgentPool(timeout=1.0)
    try:
        first = pool.get("127.0.0.1:1")
        assert pool.get("127.0.0.1:1") is first
        assert pool.get("127.0.0.1:2") is not first
        pool.set_host_ids({"127.0.0.1:1": "h1"})
        labelled = pool.get("127.0.0.1:1")
        assert labelled is not first and labelled._host_label == "h1"
        pool.set_host_ids({"127.0.0.1:1": "h1"})  # unchanged: the clients stay
        assert pool.get("127.0.0.1:1") is labelled
        pool.forget("127.0.0.1:1")
        assert pool.get("127.0.0.1:1") is not labelled
    finally:
        pool.close()
    with pytest.raises(Unavailable):
        pool.get("127.0.0.1:1")
