"""The CLI's unique-prefix lookup of rollout ids (the rollout commands against a controller are in
tests/integration/controller/test_rollouts.py; containers, processes and hosts against a hollow
fleet in tests/integration/test_cli_hollow.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from chital.cli import _resolve as resolve
from chital.cli._resolve import AmbiguousError


@dataclass(frozen=True)
class _Rollout:
    id: str
    playbook: str


class _Client:
    """What resolve.rollout reads of a client: iter_rollouts, counted."""

    def __init__(self, *ids: str) -> None:
        self.rollouts = [_Rollout(i, "site.yml") for i in ids]
        self.listed = 0

    def iter_rollouts(self, **_: Any) -> Iterator[_Rollout]:
        self.listed += 1
        return iter(self.rollouts)


A = "3f09" + "a" * 28
B = "3f7c" + "b" * 28
C = "91" + "c" * 30


def test_a_unique_prefix_is_the_rollout() -> None:
    client = _Client(A, B, C)
    assert resolve.rollout(client, "3f0") == A  # type: ignore[arg-type]
    assert resolve.rollout(client, "9") == C  # type: ignore[arg-type]


def test_an_ambiguous_prefix_lists_the_candidates() -> None:
    with pytest.raises(AmbiguousError) as caught:
        resolve.rollout(_Client(A, B, C), "3f")  # type: ignore[arg-type]
    assert str(caught.value) == (
        f"rollout prefix '3f' is ambiguous: it matches 2: rollout {A} (site.yml); "
        f"rollout {B} (site.yml) (type more of the uid)"
    )


def test_full_ids_unknown_prefixes_and_other_text_go_to_the_controller_as_typed() -> None:
    client = _Client(A, B)
    assert resolve.rollout(client, A) == A  # type: ignore[arg-type]
    assert resolve.rollout(client, "not-hex") == "not-hex"  # type: ignore[arg-type]
    assert client.listed == 0  # neither is looked up
    assert resolve.rollout(client, "ee") == "ee"  # type: ignore[arg-type]
    assert client.listed == 1


@dataclass(frozen=True)
class _Token:
    id: str
    name: str


class _TokenClient:
    def __init__(self, *tokens: _Token) -> None:
        self.tokens = list(tokens)
        self.listed = 0

    def list_tokens(self, **_: Any) -> list[_Token]:
        self.listed += 1
        return self.tokens


def test_a_token_by_a_unique_prefix_of_its_id() -> None:
    client = _TokenClient(
        _Token("0a1b2c3d4e5f", "ci"), _Token("0a9999999999", "old"), _Token("7f0000000000", "x")
    )
    assert resolve.token(client, "0a1") == "0a1b2c3d4e5f"  # type: ignore[arg-type]
    assert resolve.token(client, "7") == "7f0000000000"  # type: ignore[arg-type]
    with pytest.raises(
        AmbiguousError, match=r"^token prefix '0a' is ambiguous: it matches 2: token 0a1b2c3d4e5f \(ci\)"
    ):
        resolve.token(client, "0a")  # type: ignore[arg-type]
    listed = client.listed
    assert resolve.token(client, "0a1b2c3d4e5f") == "0a1b2c3d4e5f"  # type: ignore[arg-type]
    assert resolve.token(client, "ee") == "ee"  # type: ignore[arg-type]
    assert client.listed == listed + 1
