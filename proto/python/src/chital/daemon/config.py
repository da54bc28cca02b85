"""Settings of a daemon from a TOML file, the environment and flags, validated with clear errors.

A daemon declares its settings once (:class:`Setting`); each has a TOML key (``tls_dir``), a flag
(``--tls-dir``) and an environment variable (``CHITAL_AGENT_TLS_DIR``). The value in force is the
first found of: the flag, the environment variable, the config file, the default. The config file
is ``--config FILE`` (or ``$CHITAL_AGENT_CONFIG``), else the daemon's default path when that file
exists (``/etc/chital/agent.toml``); ``--config /dev/null`` reads none.

Errors name the file, the key and what is expected::

    /etc/chital/agent.toml: unknown key 'max_container' (did you mean 'max_containers'?)
    /etc/chital/agent.toml: max_workers: expected an integer, got a string ('64')
    CHITAL_AGENT_MAX_WORKERS='many': expected an integer

and end the daemon with exit status 4 (:data:`~chital.daemon.exitcodes.EXIT_CONFIG`).
"""

from __future__ import annotations

import argparse
import difflib
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "Setting", "Settings"]

_KINDS = ("str", "int", "float", "bool", "path", "list")
_EXPECTED = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "path": "a path (a string)",
    "list": "a list of strings",
}
_FLAG_TYPES: dict[str, Callable[[str], Any]] = {"str": str, "path": str, "int": int, "float": float}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class ConfigError(Exception):
    """The settings are invalid: the message says where (file, key or variable) and what is wanted."""


@dataclass(frozen=True)
class Setting:
    """One setting: its TOML key, its kind, its default and its help text."""

    key: str
    kind: str = "str"
    #: The value when nothing sets it; a callable is called then (its docstring shows in --help).
    default: Any = None
    help: str = ""
    choices: tuple[str, ...] = ()
    #: Compared and kept in lower case (log levels and formats).
    lower: bool = False
    required: bool = False
    metavar: str | None = None
    #: The flag when it is not ``--`` + the key with dashes (``allowed_roots``: ``--allowed-root``).
    option: str = ""

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"setting {self.key}: unknown kind {self.kind!r}")

    @property
    def flag(self) -> str:
        return self.option or "--" + self.key.replace("_", "-")


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}
    return names.get(type(value), f"a {type(value).__name__}")


class Settings:
    """A daemon's settings: adds their flags to parsers, then resolves flag > env > file > default."""

    def __init__(self, daemon: str, settings: Sequence[Setting], *, default_config: Path) -> None:
        self.daemon = daemon
        self.env_prefix = "CHITAL_" + daemon.upper() + "_"
        self.default_config = default_config
        self.by_key = {s.key: s for s in settings}
        if len(self.by_key) != len(settings):
            raise ValueError("duplicate setting keys")

    def env_name(self, key: str) -> str:
        return self.env_prefix + key.upper()

    # -- argparse ----------------------------------------------------------------------------------

    def add_config_flag(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--config",
            metavar="FILE",
            help=f"TOML settings (default: {self.default_config} when it exists; "
            f"${self.env_name('config')}); flags and {self.env_prefix}* variables override it",
        )

    def add_flags(self, parser: argparse.ArgumentParser, keys: Sequence[str]) -> None:
        """A flag for each of ``keys``; its default is None, so an absent flag is told apart."""
        for key in keys:
            s = self.by_key[key]
            text = s.help
            if callable(s.default):
                text += f" (default: {s.default.__doc__ or s.default()})"
            elif s.default not in (None, "", [], False):
                text += f" (default: {s.default})"
            text += f" [{self.env_name(key)}]"
            text = text.replace("%", "%%")
            if s.kind == "bool":
                parser.add_argument(s.flag, dest=key, action="store_true", default=None, help=text)
                parser.add_argument(
                    "--no-" + s.flag[2:], dest=key, action="store_false", help=argparse.SUPPRESS
                )
            elif s.kind == "list":
                parser.add_argument(
                    s.flag,
                    dest=key,
                    action="append",
                    default=None,
                    metavar=s.metavar,
                    help=text + " (repeatable; the variable: comma-separated)",
                )
            else:
                parser.add_argument(
                    s.flag,
                    dest=key,
                    default=None,
                    metavar=s.metavar,
                    type=_FLAG_TYPES[s.kind] if not s.lower else str.lower,
                    choices=s.choices or None,
                    help=text,
                )

    # -- resolution --------------------------------------------------------------------------------

    def config_path(self, args: argparse.Namespace, environ: Mapping[str, str]) -> Path | None:
        """The file to read: the one named (``--config``, then the variable; it must exist), else the
        default path when that file exists, else None."""
        named = getattr(args, "config", None) or environ.get(self.env_name("config"))
        if named:
            return Path(named)
        return self.default_config if self.default_config.is_file() else None

    def read_file(self, path: Path) -> dict[str, Any]:
        try:
            with path.open("rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        for key, value in data.items():
            setting = self.by_key.get(key)
            if setting is None or key == "config":
                known = sorted(k for k in self.by_key if k != "config")
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
                what = "table" if isinstance(value, dict) else "key"
                raise ConfigError(f"{path}: unknown {what} {key!r} ({hint})")
            data[key] = self._from_toml(setting, value, f"{path}: {key}")
        return data

    def _from_toml(self, s: Setting, value: Any, where: str) -> Any:
        ok = {
            "str": isinstance(value, str),
            "path": isinstance(value, str),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, int | float) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "list": isinstance(value, list) and all(isinstance(v, str) for v in value),
        }[s.kind]
        if not ok:
            got = _type_name(value)
            if s.kind == "list" and isinstance(value, list):
                got = "a list with a non-string item"
            raise ConfigError(f"{where}: expected {_EXPECTED[s.kind]}, got {got} ({value!r})")
        return self._checked(s, float(value) if s.kind == "float" else value, where)

    def _from_text(self, s: Setting, text: str, where: str) -> Any:
        """A flag's or an environment variable's text as the setting's kind."""
        try:
            if s.kind == "int":
                return self._checked(s, int(text), where)
            if s.kind == "float":
                return self._checked(s, float(text), where)
        except ValueError:
            raise ConfigError(f"{where}: expected {_EXPECTED[s.kind]}") from None
        if s.kind == "bool":
            if text.strip().lower() in _TRUE:
                return True
            if text.strip().lower() in _FALSE:
                return False
            raise ConfigError(f"{where}: expected one of {', '.join(_TRUE + _FALSE)}")
        if s.kind == "list":
            return [item.strip() for item in text.split(",") if item.strip()]
        return self._checked(s, text, where)

    def _checked(self, s: Setting, value: Any, where: str) -> Any:
        if s.lower and isinstance(value, str):
            value = value.lower()
        if s.choices and value not in s.choices:
            raise ConfigError(f"{where}: expected one of {', '.join(s.choices)}, got {value!r}")
        if s.kind == "int" and value < 0:
            raise ConfigError(f"{where}: expected an integer >= 0, got {value}")
        if s.kind == "float" and not value > 0:
            raise ConfigError(f"{where}: expected a number > 0, got {value}")
        return value

    def resolve(
        self,
        args: argparse.Namespace,
        keys: Sequence[str],
        environ: Mapping[str, str] | None = None,
    ) -> argparse.Namespace:
        """The value in force of each of ``keys``, on a new namespace (paths as :class:`Path`).

        ``resolved.sources`` maps each key to ``flag``, ``env``, ``file`` or ``default``, and
        ``resolved.config_file`` is the file read (or None).
        """
        environ = os.environ if environ is None else environ
        path = self.config_path(args, environ)
        from_file = self.read_file(path) if path is not None else {}
        out = argparse.Namespace(config_file=path, sources={})
        for key in keys:
            s = self.by_key[key]
            flag_value = getattr(args, key, None)
            env_value = environ.get(self.env_name(key))
            if flag_value is not None:
                # argparse converted it (a bad flag is a usage error, status 2).
                value, source = self._checked(s, flag_value, s.flag), "flag"
            elif env_value is not None and env_value != "":
                value = self._from_text(s, env_value, f"{self.env_name(key)}={env_value!r}")
                source = "env"
            elif key in from_file:
                value, source = from_file[key], "file"
            else:
                value, source = (s.default() if callable(s.default) else s.default), "default"
            if s.required and value in (None, ""):
                raise ConfigError(
                    f"{key} is required: set {s.flag}, {self.env_name(key)} or {key} in the config "
                    f"file ({path or self.default_config})"
                )
            if s.kind == "path" and value not in (None, ""):
                value = Path(value)
            if s.kind == "list":
                value = list(value or [])
            setattr(out, key, value)
            out.sources[key] = source
        return out
