"""Checks of client input. Every failure is InvalidArgument with a message naming the field."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence

from chital.controller.records import DEFAULT_GROUP_ID, DEFAULT_USER_ID, SandboxRecord
from chital.errdefs import InvalidArgument, PermissionDenied

__all__ = [
    "ADMIN_ONLY_SANDBOX_FIELDS",
    "MAX_PAGE_SIZE",
    "SYSTEM_DIRS",
    "check_root",
    "check_sandbox_role",
    "page_size",
    "parse_label_selector",
    "sandbox_relaxations",
    "validate_allowed_roots",
    "validate_argv",
    "validate_env",
    "validate_ids",
    "validate_labels",
    "validate_limit",
    "validate_name",
    "validate_path",
    "validate_ref",
    "validate_request_id",
    "validate_sandbox",
    "validate_signal",
]

NAME_RE = re.compile(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?")
#: The shape of a uid (32 lower-case hex digits): no name may have it, see :func:`validate_name`.
UID_RE = re.compile(r"[0-9a-f]{32}")
LABEL_KEY_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?")
SYSCALL_RE = re.compile(r"[a-z0-9_]{1,64}")
CAPABILITY_RE = re.compile(r"CAP_[A-Z_]{1,32}")
MAX_NAME = 63
MAX_REQUEST_ID = 128
MAX_LABELS = 64
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 256
MAX_PATH = 4096
MAX_ARGV = 4096
MAX_ARG = 128 * 1024
MAX_ENV = 4096
MAX_REF = 255
MAX_DENY_SYSCALLS = 512
MAX_CAPABILITIES = 64
MAX_ID = 0xFFFFFFFE
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def validate_name(name: str, what: str = "name") -> str:
    """A container name: 1-63 characters, [a-z0-9] at both ends, [a-z0-9._-] inside, and not shaped
    like a uid (32 hex digits).

    Lookups by reference try the uid first, then the name: a uid-shaped name could be shadowed by
    (or shadow) another container's uid, so such names are refused at create. Names created before
    this rule stay readable by that name unless a uid equals it."""
    if not name:
        raise InvalidArgument(f"{what} is required")
    if len(name) > MAX_NAME:
        raise InvalidArgument(f"{what} is longer than {MAX_NAME} characters")
    if not NAME_RE.fullmatch(name):
        raise InvalidArgument(f"{what} {name!r} must match [a-z0-9]([a-z0-9._-]*[a-z0-9])?")
    if UID_RE.fullmatch(name):
        raise InvalidArgument(
            f"{what} {name!r} looks like a uid (32 hex digits); uids and names share lookups"
        )
    return name


def validate_request_id(request_id: str) -> str:
    """An idempotency key: 1-128 printable ASCII characters."""
    if not request_id:
        raise InvalidArgument("request_id is required")
    if len(request_id) > MAX_REQUEST_ID:
        raise InvalidArgument(f"request_id is longer than {MAX_REQUEST_ID} characters")
    if not all(" " < ch <= "~" for ch in request_id):
        raise InvalidArgument("request_id must be printable ASCII without spaces")
    return request_id


def validate_ref(ref: str, what: str) -> str:
    """A reference to a resource (uid, name, id or address): non-empty, bounded, printable."""
    if not ref:
        raise InvalidArgument(f"{what} is required")
    if len(ref) > MAX_REF or not ref.isprintable():
        raise InvalidArgument(f"{what} is too long or not printable")
    return ref


def validate_labels(labels: Mapping[str, str], what: str = "labels") -> dict[str, str]:
    """Labels: at most 64; keys 1-63 of [A-Za-z0-9._/-]; values up to 256 printable characters."""
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"{what}: at most {MAX_LABELS} entries")
    for key, value in labels.items():
        if not key or len(key) > MAX_LABEL_KEY or not LABEL_KEY_RE.fullmatch(key):
            raise InvalidArgument(f"{what}: bad key {key[:80]!r}")
        if len(value) > MAX_LABEL_VALUE or not value.isprintable() or "," in value or "=" in value:
            raise InvalidArgument(f"{what}: bad value for {key!r}")
    return dict(labels)


def validate_limit(value: int, what: str) -> int:
    """A resource limit: zero (unlimited) or positive."""
    if value < 0:
        raise InvalidArgument(f"{what} must not be negative")
    return value


def validate_path(path: str, what: str, *, required: bool = False) -> str:
    """An absolute path without '..' components or NUL bytes (empty allowed unless required)."""
    if not path:
        if required:
            raise InvalidArgument(f"{what} is required")
        return path
    if len(path) > MAX_PATH or "\x00" in path:
        raise InvalidArgument(f"{what} is too long or contains NUL")
    if not path.startswith("/"):
        raise InvalidArgument(f"{what} must be an absolute path")
    if ".." in path.split("/"):
        raise InvalidArgument(f"{what} must not contain '..'")
    return path


#: Never a container root, nor below one, nor above one (a root of /var would hold /var/lib/chital),
#: whatever the allowed roots: a second check under them, and no allowed root may overlap one. One
#: glob per path component: /lib* is /lib, /lib32, /lib64, /libx32; /var/lib/chital* is the state of
#: chital's daemons. "/" is refused always.
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
    "/var/run",
    "/var/lib/chital*",
)


def _components(path: str) -> list[str]:
    """The lexical components of an absolute path ('//' and '.' dropped)."""
    return [part for part in path.split("/") if part and part != "."]


def _overlaps(path: list[str], pattern: str) -> bool:
    """``path`` is the directory ``pattern`` names, lies below it, or holds it."""
    want = _components(pattern)
    return all(fnmatch.fnmatchcase(have, glob) for have, glob in zip(path, want, strict=False))


def _under(path: list[str], prefix: list[str]) -> bool:
    return path[: len(prefix)] == prefix


def validate_allowed_roots(roots: Sequence[str]) -> tuple[str, ...]:
    """Configured root prefixes: absolute, no '..', never "/" (the host's root is a per-container,
    admin-only choice) nor a system directory, below or above one (every root there would be
    refused); returned normalized. ValueError names the bad one."""
    out = []
    for root in roots:
        if not root.startswith("/") or ".." in root.split("/") or "\x00" in root:
            raise ValueError(f"allowed root {root!r} must be an absolute path without '..'")
        parts = _components(root)
        if not parts:
            raise ValueError(
                "allowed root '/' would allow every path: the host's root is allowed per container, "
                "by an admin, with sandbox.allow_host_root"
            )
        for pattern in SYSTEM_DIRS:
            if _overlaps(parts, pattern):
                raise ValueError(
                    f"allowed root {root!r} is, lies below or holds a system directory ({pattern})"
                )
        out.append("/" + "/".join(parts))
    return tuple(out)


def check_root(root: str, allowed_roots: Sequence[str], *, allow_host_root: bool) -> None:
    """The controller's root policy (the agent checks again, on the resolved path).

    An empty root (the agent makes one) always passes, and so does any root when the sandbox sets
    ``allow_host_root`` (the caller checked that an admin asked). Otherwise "/" is refused, the root
    must be one of ``allowed_roots`` or lie below one (none configured: no client-chosen root
    passes), and it must not be, lie below or hold one of :data:`SYSTEM_DIRS`. The check is
    lexical: this host cannot see the agent's file system, so symbolic links are the agent's
    check. Raises PermissionDenied.
    """
    if not root or allow_host_root:
        return
    parts = _components(validate_path(root, "root"))
    hint = "only an admin may allow it, with sandbox.allow_host_root"
    if not parts:
        raise PermissionDenied(f"root {root!r} is the host's root: {hint}")
    if not any(_under(parts, _components(prefix)) for prefix in allowed_roots):
        allowed = ", ".join(allowed_roots) or "none are configured"
        raise PermissionDenied(
            f"root {root!r} is not under an allowed root of the controller ({allowed}; "
            f"--allowed-root): {hint}"
        )
    for pattern in SYSTEM_DIRS:
        if _overlaps(parts, pattern):
            raise PermissionDenied(
                f"root {root!r} is or holds a system directory of the host ({pattern}): {hint}"
            )


def validate_deny_syscalls(names: Sequence[str], what: str = "deny_syscalls") -> tuple[str, ...]:
    """System call names: lower-case identifiers, bounded in number."""
    if len(names) > MAX_DENY_SYSCALLS:
        raise InvalidArgument(f"{what}: at most {MAX_DENY_SYSCALLS} entries")
    for name in names:
        if not SYSCALL_RE.fullmatch(name):
            raise InvalidArgument(f"{what}: bad system call name {name[:80]!r}")
    return tuple(names)


def validate_sandbox(sandbox: SandboxRecord) -> SandboxRecord:
    """Relaxations by system call name, capabilities by their kernel names (CAP_...)."""
    validate_deny_syscalls(sandbox.allow_syscalls, "sandbox.allow_syscalls")
    if len(sandbox.capabilities) > MAX_CAPABILITIES:
        raise InvalidArgument(f"sandbox.capabilities: at most {MAX_CAPABILITIES} entries")
    for cap in sandbox.capabilities:
        if not CAPABILITY_RE.fullmatch(cap):
            raise InvalidArgument(f"sandbox.capabilities: bad capability name {cap[:80]!r} (want CAP_...)")
    return sandbox


#: The :class:`SandboxRecord` fields that relax the sandbox. Each one weakens a wall the agent builds
#: (the seccomp filter, the empty capability sets, the own network namespace, the root policy), so
#: only an admin may set any of them: see :func:`check_sandbox_role`.
ADMIN_ONLY_SANDBOX_FIELDS: tuple[str, ...] = (
    "allow_syscalls",
    "allow_raw_sockets",
    "capabilities",
    "host_network",
    "allow_host_root",
)


def sandbox_relaxations(sandbox: SandboxRecord) -> tuple[str, ...]:
    """The relaxations ``sandbox`` asks for, as ``sandbox.<field>`` (empty: the most isolated)."""
    return tuple(f"sandbox.{name}" for name in ADMIN_ONLY_SANDBOX_FIELDS if getattr(sandbox, name))


def check_sandbox_role(sandbox: SandboxRecord, *, admin: bool) -> None:
    """Only an admin may relax a container's sandbox (:data:`ADMIN_ONLY_SANDBOX_FIELDS`).

    The controller is the only caller an agent accepts, so this check is the one that holds.
    Raises PermissionDenied naming every relaxation asked for and the role it needs."""
    relaxations = sandbox_relaxations(sandbox)
    if relaxations and not admin:
        what = "it weakens" if len(relaxations) == 1 else "they weaken"
        raise PermissionDenied(
            f"only an admin may set {', '.join(relaxations)} (needs the admin role: {what} "
            "the container's sandbox)"
        )


def validate_ids(user_id: int | None, group_id: int | None) -> tuple[int, int]:
    """A process's user and group; unset ones become the unprivileged defaults."""
    uid = DEFAULT_USER_ID if user_id is None else user_id
    gid = DEFAULT_GROUP_ID if group_id is None else group_id
    if not (0 <= uid <= MAX_ID and 0 <= gid <= MAX_ID):
        raise InvalidArgument(f"user_id/group_id must be within 0..{MAX_ID}")
    return uid, gid


def validate_argv(argv: Sequence[str]) -> tuple[str, ...]:
    """A command line: at least one non-empty argument, bounded, no NUL bytes."""
    if not argv or not argv[0]:
        raise InvalidArgument("argv must name a program")
    if len(argv) > MAX_ARGV:
        raise InvalidArgument(f"argv: at most {MAX_ARGV} arguments")
    for arg in argv:
        if len(arg) > MAX_ARG or "\x00" in arg:
            raise InvalidArgument("argv: argument too long or contains NUL")
    return tuple(argv)


def validate_env(env: Mapping[str, str]) -> dict[str, str]:
    """Environment variables: names without '=' or NUL, values without NUL, bounded."""
    if len(env) > MAX_ENV:
        raise InvalidArgument(f"env: at most {MAX_ENV} variables")
    for key, value in env.items():
        if not key or "=" in key or "\x00" in key or len(key) > 1024:
            raise InvalidArgument(f"env: bad variable name {key[:80]!r}")
        if "\x00" in value or len(value) > MAX_ARG:
            raise InvalidArgument(f"env: bad value for {key!r}")
    return dict(env)


def validate_signal(signal: int) -> int:
    """A signal number, 1-64."""
    if not 1 <= signal <= 64:
        raise InvalidArgument(f"signal must be 1-64, not {signal}")
    return signal


def page_size(size: int) -> int:
    """0 means the default (100); 1-1000 as given; anything else is invalid."""
    if size < 0 or size > MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be 0-{MAX_PAGE_SIZE}")
    return size or DEFAULT_PAGE_SIZE


def parse_label_selector(selector: str) -> dict[str, str]:
    """``key=value,key2=value2`` -> a dict; every term must be key=value."""
    out: dict[str, str] = {}
    if not selector.strip():
        return out
    if len(selector) > 4096:
        raise InvalidArgument("label_selector is too long")
    for term in selector.split(","):
        key, sep, value = term.strip().partition("=")
        if not sep or not key.strip():
            raise InvalidArgument(f"label_selector term {term!r} is not key=value")
        out[key.strip()] = value.strip()
    return out
