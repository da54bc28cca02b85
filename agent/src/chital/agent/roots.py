"""Which directories a client may ask for as a container root: the agent's second check.

The controller decides first (only an admin may set ``allow_host_root``); the agent checks again,
so that a host's own configuration bounds what any caller can do on it:

- the root is resolved (symlinks followed) and the resolved path is what the container gets, so a
  link planted under an allowed prefix cannot point the container at ``/``;
- ``/`` is refused;
- the root must be one of the ``--allowed-root`` prefixes or lie below one (by default
  :data:`~chital.daemon.roots.DEFAULT_ALLOWED_ROOT`; none configured: no client-chosen root passes);
- the host's system directories are refused as well, whatever the prefixes: themselves, everything
  below them and every directory that holds one (``/var`` holds ``/var/lib/chital-agent``), see
  :data:`SYSTEM_DIRS`; a prefix that is, lies below or holds one is refused at start;
- this agent's own state directory is refused in the same way;
- a request whose sandbox sets ``allow_host_root`` (admin-only at the controller) skips these
  checks: it may use ``/`` or any other existing directory.

A container without a root gets a fresh directory in the agent's state; that is not checked here.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path

from chital.daemon.roots import DEFAULT_ALLOWED_ROOT
from chital.errdefs import InvalidArgument, PermissionDenied

__all__ = ["SYSTEM_DIRS", "RootPolicy"]

#: Refused as roots (and everything below and above them), whatever the ``--allowed-root`` prefixes.
#: Patterns match one path component (``/lib*``: /lib, /lib32, /lib64, /libx32).
SYSTEM_DIRS: tuple[str, ...] = (
    "/etc",
    "/usr",
    "/bin",
    "/sbin",
    "/lib*",
    "/boot",
    "/proc",
    "/sys",
    "/dev",
    "/root",
    "/run",
    "/var/lib/chital*",
)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _overlaps(path: str, pattern: str) -> bool:
    """``path`` is the directory ``pattern`` names (one glob per component), lies below it, or holds
    it (is one of its ancestors)."""
    want = pattern.strip("/").split("/")
    have = path.strip("/").split("/")
    return all(fnmatch.fnmatchcase(h, w) for h, w in zip(have, want, strict=False))


class RootPolicy:
    """The agent's root check (``--allowed-root``, repeatable); see the module docstring."""

    def __init__(
        self, allowed_roots: Sequence[str] = (DEFAULT_ALLOWED_ROOT,), state_dir: Path | None = None
    ) -> None:
        for prefix in allowed_roots:
            if not prefix.startswith("/"):
                raise ValueError(f"--allowed-root {prefix!r}: must be an absolute path")
            resolved = os.path.realpath(prefix)
            if resolved == "/":
                raise ValueError(
                    "--allowed-root /: the host's root cannot be a prefix (allow_host_root is per container)"
                )
            for pattern in SYSTEM_DIRS:
                if _overlaps(resolved, pattern):
                    raise ValueError(
                        f"--allowed-root {prefix!r}: is, lies below or holds a system directory ({pattern})"
                    )
        self.allowed_roots = tuple(os.path.realpath(p) for p in allowed_roots)
        self._state_dir = os.path.realpath(state_dir) if state_dir is not None else None

    def check(self, root: str, *, allow_host_root: bool = False) -> str:
        """The resolved root to use; PermissionDenied (or InvalidArgument) when it is refused."""
        try:
            resolved = os.path.realpath(root)
        except OSError as exc:  # a link the agent may not follow (/proc/<pid>/root of another user)
            raise PermissionDenied(f"root {root!r} cannot be resolved: {exc.strerror}") from exc
        if not os.path.isdir(resolved):
            raise InvalidArgument(f"root {root!r} is not an existing directory")
        shown = repr(root) if resolved == root else f"{root!r} (resolved to {resolved!r})"
        if allow_host_root:
            return resolved
        if resolved == "/":
            raise PermissionDenied(
                f"root {shown} is the host's root: refused unless the container's sandbox "
                "sets allow_host_root"
            )
        if self._state_dir is not None and (
            _under(resolved, self._state_dir) or _under(self._state_dir, resolved)
        ):
            raise PermissionDenied(f"root {shown} is or holds the agent's state directory")
        if not any(_under(resolved, prefix) for prefix in self.allowed_roots):
            allowed = ", ".join(self.allowed_roots) or "none are configured"
            raise PermissionDenied(
                f"root {shown} is not under an allowed root of this host ({allowed}; --allowed-root)"
            )
        for pattern in SYSTEM_DIRS:
            if _overlaps(resolved, pattern):
                raise PermissionDenied(f"root {shown} is or holds a system directory of the host ({pattern})")
        return resolved
