"""Where container roots chosen by a client may lie, by default: shared by controller and agent.

Both daemons accept a client-chosen root (``CreateContainer.root``) only at or below one of their
``allowed_roots`` (``--allowed-root``, repeatable). Unset, that list is
``[DEFAULT_ALLOWED_ROOT]``; an empty list accepts no client-chosen root (the agent still makes a
fresh one when the root is empty). The host's system directories stay refused below any prefix.
"""

from __future__ import annotations

__all__ = ["DEFAULT_ALLOWED_ROOT"]

#: The allowed root prefix when none is configured.
DEFAULT_ALLOWED_ROOT = "/srv/chital/roots"
