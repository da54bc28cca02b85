"""The agent's second check of client-chosen container roots (chital.agent.roots)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chital.agent.roots import RootPolicy
from chital.errdefs import InvalidArgument, PermissionDenied

SYSTEM = ["/", "/etc", "/etc/ssl", "/usr", "/lib", "/proc", "/sys/fs", "/dev", "/boot", "/root", "/var"]


@pytest.mark.parametrize("root", SYSTEM)
def test_default_rule_refuses_system_directories_and_what_holds_them(root: str) -> None:
    with pytest.raises(PermissionDenied):
        RootPolicy().check(root)


def test_default_rule_accepts_other_directories(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert RootPolicy().check(str(tmp_path / "a")) == str(tmp_path / "a")


def test_links_are_resolved_and_the_resolved_path_is_used(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "slash").symlink_to("/")
    assert RootPolicy().check(str(tmp_path / "link")) == str(tmp_path / "real")
    with pytest.raises(PermissionDenied, match="resolved to '/'"):
        RootPolicy().check(str(tmp_path / "slash"))


def test_allowed_roots_and_the_state_directory(tmp_path: Path) -> None:
    allowed, state = tmp_path / "roots", tmp_path / "roots" / "agent-state"
    (allowed / "web").mkdir(parents=True)
    state.mkdir()
    (tmp_path / "other").mkdir()
    policy = RootPolicy([str(allowed)], state_dir=state)
    assert policy.check(str(allowed / "web")) == str(allowed / "web")
    for root in (str(tmp_path / "other"), str(state), str(allowed), "/"):
        with pytest.raises(PermissionDenied):
            policy.check(root)


def test_allow_host_root_lifts_the_checks_but_not_existence(tmp_path: Path) -> None:
    assert RootPolicy().check("/", allow_host_root=True) == "/"
    assert RootPolicy([str(tmp_path)]).check("/etc", allow_host_root=True) == "/etc"
    with pytest.raises(InvalidArgument, match="not an existing directory"):
        RootPolicy().check(str(tmp_path / "missing"), allow_host_root=True)


@pytest.mark.parametrize("prefix", ["relative/dir", "/"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="--allowed-root"):
        RootPolicy([prefix])
