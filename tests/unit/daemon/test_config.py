"""chital.daemon.config: flag > environment > file > default, and errors that say where and what."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from chital.daemon.config import ConfigError, Setting, Settings

SETTINGS = Settings(
    "agent",
    (
        Setting("listen", default="127.0.0.1:0"),
        Setting("state_dir", kind="path", required=True),
        Setting("insecure", kind="bool", default=False),
        Setting("max_workers", kind="int", default=64),
        Setting("agent_timeout", kind="float", default=5.0),
        Setting("allowed_roots", kind="list", option="--allowed-root"),
        Setting("log_level", default="info", choices=("debug", "info"), lower=True),
    ),
    default_config=Path("/nonexistent/chital/agent.toml"),
)
KEYS = tuple(SETTINGS.by_key)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    SETTINGS.add_config_flag(p)
    SETTINGS.add_flags(p, KEYS)
    return p


def resolve(argv: list[str], env: dict[str, str] | None = None) -> argparse.Namespace:
    return SETTINGS.resolve(parser().parse_args(argv), KEYS, env or {})


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file(tmp_path: Path) -> None:
    args = resolve(["--state-dir", str(tmp_path)])
    assert args.config_file is None
    assert (args.listen, args.insecure, args.max_workers, args.allowed_roots) == (
        "127.0.0.1:0",
        False,
        64,
        [],
    )
    assert args.state_dir == tmp_path
    assert args.sources["listen"] == "default"
    assert args.sources["state_dir"] == "flag"


def test_flag_beats_environment_beats_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'listen = "10.0.0.1:7000"\nstate_dir = "/srv/a"\nmax_workers = 8\ninsecure = true\n'
        'allowed_roots = ["/srv/roots"]\nagent_timeout = 2\nlog_level = "DEBUG"\n',
    )
    env = {"CHITAL_AGENT_LISTEN": "10.0.0.2:7000", "CHITAL_AGENT_MAX_WORKERS": "16"}
    args = resolve(["--config", str(path), "--listen", "10.0.0.3:7000", "--no-insecure"], env)
    assert args.config_file == path
    assert args.listen == "10.0.0.3:7000" and args.sources["listen"] == "flag"
    assert args.max_workers == 16 and args.sources["max_workers"] == "env"
    assert args.state_dir == Path("/srv/a") and args.sources["state_dir"] == "file"
    assert args.insecure is False  # --no-insecure overrides the file's true
    assert args.allowed_roots == ["/srv/roots"]
    assert args.agent_timeout == 2.0 and isinstance(args.agent_timeout, float)
    assert args.log_level == "debug"


def test_the_config_file_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, 'state_dir = "/srv/b"\n')
    args = resolve([], {"CHITAL_AGENT_CONFIG": str(path)})
    assert args.state_dir == Path("/srv/b")


def test_the_default_file_is_read_when_present(tmp_path: Path) -> None:
    path = write(tmp_path, 'state_dir = "/srv/c"\n')
    settings = Settings("agent", list(SETTINGS.by_key.values()), default_config=path)
    args = settings.resolve(parser().parse_args([]), KEYS, {})
    assert args.config_file == path and args.state_dir == Path("/srv/c")


def test_lists_and_booleans_from_the_environment(tmp_path: Path) -> None:
    env = {"CHITAL_AGENT_ALLOWED_ROOTS": "/a, /b,", "CHITAL_AGENT_INSECURE": "yes"}
    args = resolve(["--state-dir", "/s"], env)
    assert args.allowed_roots == ["/a", "/b"]
    assert args.insecure is True
    # A flag list replaces the variable's.
    assert resolve(["--state-dir", "/s", "--allowed-root", "/c"], env).allowed_roots == ["/c"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_worker = 3\n", "agent.toml: unknown key 'max_worker' (did you mean 'max_workers'?)"),
        ("bogus = 1\n", "unknown key 'bogus' (known keys: agent_timeout, allowed_roots, insecure"),
        ("[server]\nlisten = 'x'\n", "unknown table 'server'"),
        ('max_workers = "64"\n', "agent.toml: max_workers: expected an integer, got a string ('64')"),
        ("max_workers = true\n", "max_workers: expected an integer, got a boolean (True)"),
        ("max_workers = -1\n", "max_workers: expected an integer >= 0, got -1"),
        ("insecure = 1\n", "insecure: expected true or false, got an integer (1)"),
        ("agent_timeout = 0\n", "agent_timeout: expected a number > 0, got 0.0"),
        ('allowed_roots = "/srv"\n', "allowed_roots: expected a list of strings, got a string ('/srv')"),
        ("allowed_roots = ['/a', 1]\n", "allowed_roots: expected a list of strings, got a list with a non-"),
        ('log_level = "loud"\n', "log_level: expected one of debug, info, got 'loud'"),
        ('listen = "x"\nlisten = "y"\n', "not valid TOML"),
        ("config = 'other.toml'\n", "unknown key 'config'"),
    ],
)
def test_file_errors_name_the_file_the_key_and_what_is_expected(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text + 'state_dir = "/s"\n' if "state_dir" not in text else text)
    with pytest.raises(ConfigError) as err:
        resolve(["--config", str(path)])
    assert message in str(err.value)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CHITAL_AGENT_MAX_WORKERS": "many"}, "CHITAL_AGENT_MAX_WORKERS='many': expected an integer"),
        ({"CHITAL_AGENT_INSECURE": "maybe"}, "CHITAL_AGENT_INSECURE='maybe': expected one of 1, true"),
        ({"CHITAL_AGENT_LOG_LEVEL": "trace"}, "CHITAL_AGENT_LOG_LEVEL='trace': expected one of debug, info"),
    ],
)
def test_environment_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        resolve(["--state-dir", "/s"], env)


def test_a_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        resolve(["--config", str(tmp_path / "missing.toml"), "--state-dir", "/s"])


def test_an_unreadable_file_says_why(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        resolve(["--config", str(tmp_path), "--state-dir", "/s"])  # a directory


def test_a_required_setting_says_every_way_to_set_it() -> None:
    with pytest.raises(ConfigError) as err:
        resolve([])
    assert str(err.value) == (
        "state_dir is required: set --state-dir, CHITAL_AGENT_STATE_DIR or state_dir in the config "
        "file (/nonexistent/chital/agent.toml)"
    )


def test_a_bad_flag_is_a_usage_error() -> None:
    with pytest.raises(argparse.ArgumentError):
        parser().parse_args(["--max-workers", "many"])
    with pytest.raises(argparse.ArgumentError):
        parser().parse_args(["--log-level", "loud"])
    assert parser().parse_args(["--log-level", "DEBUG"]).log_level == "debug"


def test_an_empty_variable_counts_as_unset(tmp_path: Path) -> None:
    assert resolve(["--state-dir", "/s"], {"CHITAL_AGENT_LISTEN": ""}).listen == "127.0.0.1:0"


def test_dev_null_reads_no_settings() -> None:
    args = resolve(["--config", "/dev/null", "--state-dir", "/s"])
    assert args.listen == "127.0.0.1:0"
