"""Unique uid prefixes, like docker: ``chital logs 3f2a`` for the one process whose uid starts so.

The controller takes full uids and names. A shorter run of hex digits is looked up here: an exact
name wins, then the one uid that starts with it; several candidates are an error that lists them;
none, and the text goes to the controller as it is (which reports "not found" in its own words).
Anything that is not hex (a name) costs no extra call.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from chital.client import Client, NotFound

UID_LENGTH = 32
TOKEN_ID_LENGTH = 12
_HEX = re.compile(r"[0-9a-f]+")
_LISTED = 8  # candidates named in an "ambiguous" error


class AmbiguousError(Exception):
    """A prefix matches several objects; the message lists them."""


@dataclass(frozen=True)
class Match:
    kind: str  # "container", "process", "host", "rollout" or "token"
    uid: str
    label: str = ""  # a name, a command or an address, to tell candidates apart

    def describe(self) -> str:
        return f"{self.kind} {self.uid}" + (f" ({self.label})" if self.label else "")


def could_be_prefix(text: str) -> bool:
    """Hex, shorter than a uid: worth looking up."""
    return 0 < len(text) < UID_LENGTH and _HEX.fullmatch(text) is not None


def pick(text: str, candidates: Sequence[Match], what: str) -> Match | None:
    """The one candidate, ``None`` for none; several raise :class:`AmbiguousError`."""
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    listed = "; ".join(c.describe() for c in candidates[:_LISTED])
    more = f"; and {len(candidates) - _LISTED} more" if len(candidates) > _LISTED else ""
    raise AmbiguousError(
        f"{what} prefix {text!r} is ambiguous: it matches {len(candidates)}: {listed}{more} "
        "(type more of the uid)"
    )


def _container_candidates(client: Client, text: str) -> tuple[bool, list[Match]]:
    """(whether a container is named ``text``, the containers whose uid starts with it)."""
    named = False
    found = []
    for container in client.list_containers():
        if container.name == text:
            named = True
        if container.uid.startswith(text):
            found.append(Match("container", container.uid, container.name))
    return named, found


def _process_candidates(client: Client, text: str) -> list[Match]:
    return [
        Match("process", p.uid, " ".join(p.argv)[:40])
        for p in client.list_processes()
        if p.uid.startswith(text)
    ]


def container(client: Client, text: str) -> str:
    """A container's uid or name for the controller, from a uid, a unique uid prefix or a name."""
    if not could_be_prefix(text):
        return text
    named, found = _container_candidates(client, text)
    if named:
        return text
    chosen = pick(text, found, "container")
    return chosen.uid if chosen else text


def process(client: Client, text: str) -> str:
    """A process's uid from a uid or a unique uid prefix."""
    if not could_be_prefix(text):
        return text
    chosen = pick(text, _process_candidates(client, text), "process")
    return chosen.uid if chosen else text


def host(client: Client, text: str) -> str:
    """A host's id or address for the controller, from either, or a unique id prefix."""
    if not could_be_prefix(text):
        return text
    found = []
    for h in client.list_hosts():
        if text in (h.id, h.address):
            return text
        if h.id.startswith(text):
            found.append(Match("host", h.id, h.address))
    chosen = pick(text, found, "host")
    return chosen.uid if chosen else text


def rollout(client: Client, text: str) -> str:
    """A rollout's id from an id or a unique id prefix."""
    if not could_be_prefix(text):
        return text
    found = [Match("rollout", r.id, r.playbook) for r in client.iter_rollouts() if r.id.startswith(text)]
    chosen = pick(text, found, "rollout")
    return chosen.uid if chosen else text


def token(client: Client, text: str) -> str:
    """A token's id (12 hex digits) from an id or a unique id prefix."""
    if not (0 < len(text) < TOKEN_ID_LENGTH and _HEX.fullmatch(text)):
        return text
    found = [Match("token", t.id, t.name) for t in client.list_tokens() if t.id.startswith(text)]
    chosen = pick(text, found, "token")
    return chosen.uid if chosen else text


def process_or_container(client: Client, text: str) -> tuple[str, str]:
    """What ``chital logs TARGET`` means: ``("process", uid)`` or ``("container", uid or name)``.

    A full uid or other text that is not a prefix is tried as a process first, then taken as a
    container. A prefix is looked up among both; a container named ``text`` wins over prefixes.
    """
    if not could_be_prefix(text):
        try:
            client.get_process(text)
        except NotFound:
            return "container", text
        return "process", text
    named, containers = _container_candidates(client, text)
    if named:
        return "container", text
    chosen = pick(text, [*_process_candidates(client, text), *containers], "uid")
    if chosen is None:
        return "container", text  # the controller says "not found" for it
    return chosen.kind, chosen.uid


def short(uid: str, uids: Iterable[str] = (), length: int = 12) -> str:
    """``uid`` cut to ``length`` characters, longer when that is needed to tell it from ``uids``."""
    others = [u for u in uids if u != uid]
    size = min(length, len(uid))
    while size < len(uid) and any(u.startswith(uid[:size]) for u in others):
        size += 1
    return uid[:size]
