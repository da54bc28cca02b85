"""Value types of the ``chital`` options: sizes, CPUs, durations, signals, ``KEY=VALUE``, users.

Each parser raises :class:`ValueError` with a readable message; :class:`Parsed` turns that into a
click usage error (exit status 2).
"""

from __future__ import annotations

import os
import re
import signal as _signal
from collections.abc import Callable
from typing import Any

import click

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def key_value(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> ``(KEY, VALUE)``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def env_item(text: str) -> tuple[str, str]:
    """``KEY=VALUE``, or like docker ``KEY`` alone: the caller's own value of ``KEY``."""
    if "=" not in text:
        if text not in os.environ:
            raise ValueError(f"{text!r} is not KEY=VALUE and is not set here")
        return text, os.environ[text]
    return key_value(text)


def size(text: str) -> int:
    """``256M``, ``1g``, ``1.5Gi``, ``64KiB``, ``4096`` -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:ib?|b)?\s*", text.lower())
    if not match:
        raise ValueError(f"expected a size like 256M or 1G, got {text!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def cpus(text: str) -> int:
    """``0.5`` CPUs -> 500 millicores."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number of CPUs like 0.5, got {text!r}") from None
    if value < 0:
        raise ValueError("must not be negative")
    return round(value * 1000)


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise ValueError("must not be negative")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected seconds, got {text!r}") from None
    if value < 0:
        raise ValueError("must not be negative")
    return value


def positive_seconds(text: str) -> float:
    value = seconds(text)
    if value == 0:
        raise ValueError("must be positive")
    return value


def user(text: str) -> tuple[int, int]:
    """``UID[:GID]`` (numeric) -> ``(uid, gid)``; the gid defaults to the uid."""
    uid, _, gid = text.partition(":")
    if not uid.isdigit() or not (gid or uid).isdigit():
        raise ValueError(f"expected numeric UID[:GID], got {text!r}")
    return int(uid), int(gid or uid)


def signal_number(text: str) -> int:
    """``TERM``, ``SIGKILL``, ``hup`` or ``9`` -> the signal's number."""
    if text.isdigit():
        number = int(text)
        if 1 <= number <= 64:
            return number
    else:
        name = text.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        try:
            return int(_signal.Signals[name])
        except KeyError:
            pass
    raise ValueError(f"unknown signal {text!r}")


def ttl(text: str) -> float:
    """``3600``, ``90s``, ``30m``, ``12h``, ``7d`` or ``2w`` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if not match:
        raise ValueError(f"expected a duration like 3600, 12h or 30d, got {text!r}")
    value = float(match.group(1)) * _TTL_UNITS[match.group(2)]
    if value < 1:
        raise ValueError("must be at least one second")
    return value


def enum_member(enum_cls: Any) -> Callable[[str], Any]:
    """A parser of an SDK state enum's values, case-insensitive (``running`` -> ``RUNNING``)."""

    def parse(text: str) -> Any:
        try:
            return enum_cls[text.upper().replace("-", "_")]
        except KeyError:
            names = ", ".join(m.value.lower() for m in enum_cls if m.name != "UNSPECIFIED")
            raise ValueError(f"unknown state {text!r} (one of: {names})") from None

    return parse


def names(groups: tuple[str, ...]) -> tuple[str, ...]:
    """Comma-separated names from a repeatable option: ``("a,b", "c")`` -> ``("a", "b", "c")``."""
    return tuple(name.strip() for group in groups for name in group.split(",") if name.strip())


# click.ParamType is generic from click 8.3 on, and not before.
class Parsed(click.ParamType):  # type: ignore[type-arg,unused-ignore]
    """A click type from one of the parsers above; its ``ValueError`` becomes a usage error."""

    def __init__(self, parse: Callable[[str], Any], metavar: str) -> None:
        self.parse = parse
        self.name = metavar

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return self.name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


KEY_VALUE = Parsed(key_value, "K=V")
ENV_ITEM = Parsed(env_item, "K=V")
SIZE = Parsed(size, "SIZE")
CPUS = Parsed(cpus, "CPUS")
COUNT = Parsed(non_negative_int, "N")
SECONDS = Parsed(seconds, "SECONDS")
POSITIVE_SECONDS = Parsed(positive_seconds, "SECONDS")
USER = Parsed(user, "UID[:GID]")
SIGNAL = Parsed(signal_number, "SIG")
TTL = Parsed(ttl, "DURATION")
