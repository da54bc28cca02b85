"""Page tokens: opaque positions in a keyset-paged list, bound to the list and filter that made them.

A token carries the position after the last item of a page and a digest of the list's name and its
filter (label selector, state, host, container, principal, ...). A token given back with another
filter, or to another list, is refused with InvalidArgument instead of silently paging a different
result set from a position that does not belong to it (AIP-158: every request field but
``page_size`` and ``page_token`` must match the call that returned the token).

The digest is a hash, not a signature: tokens are not secrets, and a forged position only skips
ahead in a list the caller may read anyway. What a token must never do is mix two filters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from typing import Any

from chital.errdefs import InvalidArgument

__all__ = [
    "Cursor",
    "Filter",
    "decode_id_token",
    "decode_page_token",
    "encode_id_token",
    "encode_page_token",
]

# The keyset position after an item: its creation time and its id (the tie-break).
Cursor = tuple[datetime, str]

# A list's filter: field name -> value (str, int, bool, None, an Enum, or a mapping of those).
Filter = Mapping[str, Any]

_VERSION = 1
_MAX_TOKEN = 1024
_NOT_OURS = "page_token is not a token this server issued"


def _canonical(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    return value


def _digest(listing: str, filters: Filter) -> str:
    """A short, stable digest of the list's name and filter."""
    text = json.dumps([listing, _canonical(dict(filters))], sort_keys=True, separators=(",", ":"))
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()[:12]).decode()


def _describe(filters: Filter) -> str:
    shown = [f"{k}={_canonical(v)!r}" for k, v in sorted(filters.items()) if v not in (None, "", {})]
    return ", ".join(shown) or "no filter"


def _encode(listing: str, filters: Filter, position: list[Any]) -> str:
    raw = json.dumps([_VERSION, _digest(listing, filters), position], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(token: str, listing: str, filters: Filter) -> list[Any] | None:
    if not token:
        return None
    try:
        if len(token) > _MAX_TOKEN:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        version, digest, position = json.loads(raw)
        if version != _VERSION or not isinstance(digest, str) or not isinstance(position, list):
            raise ValueError("not a page token")
    except (ValueError, TypeError, binascii.Error) as exc:
        raise InvalidArgument(_NOT_OURS) from exc
    if digest != _digest(listing, filters):
        raise InvalidArgument(
            f"page_token was issued for a different {listing} request: pass the same filter as the call "
            f"that returned it (this call has {_describe(filters)}), or leave page_token empty to start "
            "from the first page"
        )
    return position


def encode_page_token(listing: str, filters: Filter, cursor: Cursor) -> str:
    """A token for the position after ``cursor`` in ``listing`` filtered by ``filters``."""
    return _encode(listing, filters, [cursor[0].isoformat(), cursor[1]])


def decode_page_token(token: str, listing: str, filters: Filter) -> Cursor | None:
    """The cursor in a token from :func:`encode_page_token` (None for an empty token).

    InvalidArgument if the token is not one of ours, or was made for another list or filter."""
    position = _decode(token, listing, filters)
    if position is None:
        return None
    try:
        created, key = position
        if not isinstance(created, str) or not isinstance(key, str):
            raise ValueError("bad types")
        return datetime.fromisoformat(created), key
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(_NOT_OURS) from exc


def encode_id_token(listing: str, filters: Filter, entry_id: int) -> str:
    """A token for the position after the entry with integer id ``entry_id``."""
    return _encode(listing, filters, [entry_id])


def decode_id_token(token: str, listing: str, filters: Filter) -> int | None:
    """The id in a token from :func:`encode_id_token` (None for an empty token)."""
    position = _decode(token, listing, filters)
    if position is None:
        return None
    if len(position) != 1 or not isinstance(position[0], int) or isinstance(position[0], bool):
        raise InvalidArgument(_NOT_OURS)
    return int(position[0])
