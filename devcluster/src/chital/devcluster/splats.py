"""Recognise kernel splats (WARN, BUG, oops, lockdep, stalls, ...) in a console log or dmesg."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["SPLAT_PATTERNS", "KernelSplatError", "Splat", "find_splats"]

#: One regular expression per kind of trouble. Kept narrow enough that a clean Debian 6.1/6.12 boot
#: under TCG matches none of them (checked by the harness self-test), wide enough to catch what the
#: kernel prints for each class.
SPLAT_PATTERNS: dict[str, re.Pattern[str]] = {
    name: re.compile(rx)
    for name, rx in {
        "warning": r"WARNING: (CPU|at|possible|suspicious|inconsistent|bad)",
        "bug": r"\bBUG: |kernel BUG at",
        "oops": r"\bOops\b|Oops:",
        "gpf": r"general protection fault",
        "kasan": r"\bKASAN\b",
        "ubsan": r"\bUBSAN\b",
        "lockdep": r"possible circular locking|possible recursive locking|\blockdep\b",
        "rcu-stall": r"rcu.{0,40}(self-)?detected stall|RCU stall",
        "soft-lockup": r"soft lockup",
        "hung-task": r"blocked for more than \d+ seconds",
        "call-trace": r"Call Trace:",
        "panic": r"Kernel panic",
        "list-corruption": r"list_(add|del) corruption",
        "refcount": r"refcount_t: ",
        "bad-page": r"BUG: Bad page|Bad page state",
    }.items()
}


@dataclass(frozen=True, slots=True)
class Splat:
    kind: str
    line_no: int  # 1-based
    line: str
    context: str  # a few lines around it


class KernelSplatError(AssertionError):
    """The guest kernel printed a WARN/BUG/oops/...; the run fails whatever the tests said."""

    def __init__(self, splats: list[Splat], source: str) -> None:
        self.splats = splats
        self.source = source
        first = splats[0]
        super().__init__(
            f"{len(splats)} kernel splat line(s) in {source}; first ({first.kind}) at line "
            f"{first.line_no}:\n{first.context}"
        )


def find_splats(lines: Iterable[str], context: int = 20) -> list[Splat]:
    """Every line that matches a splat pattern, with up to ``context`` following lines."""
    text = [line.rstrip("\n") for line in lines]
    found = []
    for i, line in enumerate(text):
        for kind, rx in SPLAT_PATTERNS.items():
            if rx.search(line):
                if kind == "call-trace" and _is_oom_report(text, i):
                    break  # the OOM killer enforcing a memory limit prints a stack: not a bug
                ctx = "\n".join(text[max(0, i - 2) : i + context])
                found.append(Splat(kind=kind, line_no=i + 1, line=line, context=ctx))
                break
    return found


def _is_oom_report(text: list[str], i: int) -> bool:
    """The call trace at ``i`` belongs to an OOM-killer report ("<comm> invoked oom-killer: ...")."""
    return any(_OOM_REPORT.search(line) for line in text[max(0, i - 4) : i])


_OOM_REPORT = re.compile(r"invoked oom-killer: ")
