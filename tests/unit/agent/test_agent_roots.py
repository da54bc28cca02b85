"""The agent's second check of client-chosen container roots (chital.agent.roots)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chital.agent.config import SETTINGS
from chital.agent.roots import RootPolicy
from chital.agent.runtime import RuntimeConfig
from chital.agent.server import ServerConfig
from chital.daemon.roots import DEFAULT_ALLOWED_ROOT
from chital.errdefs import InvalidArgument, PermissionDenied

SYSTEM = ["/", "/etc", "/etc/ssl", "/usr", "/lib", "/proc", "/sys/fs", "/dev", "/boot", "/root", "/var"]


def test_the_default_prefix_is_the_fleets() -> None:
    assert RootPolicy().allowed_roots == (DEFAULT_ALLOWED_ROOT,)
    assert RuntimeConfig(Path("/s")).allowed_roots == ServerConfig().allowed_roots == (DEFAULT_ALLOWED_ROOT,)
    assert SETTINGS.by_key["allowed_roots"].default == [DEFAULT_ALLOWED_ROOT]


@pytest.mark.parametrize("root", SYSTEM)
def test_system_directories_and_what_holds_them_are_refused(root: str) -> None:
    with pytest.raises(PermissionDenied):
        RootPolicy().check(root)


def test_a_root_outside_the_prefixes_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(
        PermissionDenied, match=f"is not under an allowed root of this host \\({DEFAULT_ALLOWED_ROOT};"
    ):
        RootPolicy().check(str(tmp_path / "a"))
    with pytest.raises(
        PermissionDenied, match="is not under an allowed root of this host \\(none are configured;"
    ):
        RootPolicy([]).check(str(tmp_path / "a"))
    assert RootPolicy([str(tmp_path)]).check(str(tmp_path / "a")) == str(tmp_path / "a")


def test_links_are_resolved_and_the_resolved_path_is_used(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "slash").symlink_to("/")
    (tmp_path / "etc").symlink_to("/etc")
    (tmp_path / "out").symlink_to(tmp_path.parent)
    policy = RootPolicy([str(tmp_path)])
    assert policy.check(str(tmp_path / "link")) == str(tmp_path / "real")
    with pytest.raises(PermissionDenied, match="resolved to '/'"):
        policy.check(str(tmp_path / "slash"))
    # A link under a prefix that leads out of it is refused: the resolved path is checked.
    for link in ("etc", "out"):
        with pytest.raises(PermissionDenied, match="not under an allowed root"):
            policy.check(str(tmp_path / link))


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


@pytest.mark.parametrize(
    ("prefix", "why"),
    [
        ("relative/dir", "absolute"),
        ("/", "host's root"),
        ("/var", "system directory"),
        ("/etc/roots", "system directory"),
        ("/var/lib/chital/roots", "system directory"),
        ("/run/roots", "system directory"),
    ],
)
def test_bad_prefixes_are_refused(prefix: str, why: str) -> None:
    with pytest.raises(ValueError, match=f"--allowed-root.*{why}"):
        RootPolicy([prefix])
