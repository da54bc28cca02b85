"""The controller's settings: ``/etc/chital/controller.toml``, ``CHITAL_CONTROLLER_*`` and flags.

Each setting below is a key of the TOML file, a flag (the key with dashes) and an environment
variable (``CHITAL_CONTROLLER_`` + the key in capitals); a flag wins over the variable, the variable
over the file, the file over the default. ``serve`` takes them all; ``db upgrade`` and ``token``
take ``database_url``, ``state_dir`` and the log settings, and read the same file, so that they
find the database ``serve`` uses. See docs/daemons.md.
"""

from __future__ import annotations

from pathlib import Path

from chital.daemon.config import Setting, Settings
from chital.daemon.logs import LOG_FORMATS, LOG_LEVELS
from chital.daemon.roots import DEFAULT_ALLOWED_ROOT
from chital.daemon.streams import DEFAULT_MAX_STREAMS

from .server import default_state_dir

__all__ = ["DATABASE_KEYS", "DEFAULT_CONFIG", "SERVE_KEYS", "SETTINGS"]

DEFAULT_CONFIG = Path("/etc/chital/controller.toml")


def _state_dir() -> str:
    """$CHITAL_STATE_DIR, else /var/lib/chital/controller"""
    return default_state_dir()


_LOGS = (
    Setting("log_level", default="info", choices=LOG_LEVELS, lower=True, help="least severe level logged"),
    Setting("log_format", default="text", choices=LOG_FORMATS, lower=True, help="log line format"),
)
_DATABASE = (
    Setting(
        "database_url",
        default="",
        metavar="URL",
        help="SQLAlchemy URL, e.g. postgresql+psycopg://chital@db/chital (default: SQLite in the "
        "state dir); it may hold a password: keep the file 0640 root:chital, or use the variable",
    ),
    Setting("state_dir", default=_state_dir, metavar="DIR", help="where the SQLite database lives"),
)
_SERVE = (
    Setting("listen", default="127.0.0.1:7443", help="HOST:PORT of the API (port 0: any free port)"),
    Setting("migrate", kind="bool", default=False, help="apply the database migrations before serving"),
    Setting("port_file", default="", metavar="FILE", help="write the bound port here once serving"),
    Setting(
        "health_interval",
        kind="float",
        default=1.0,
        metavar="SECONDS",
        help="between two heartbeats of an agent",
    ),
    Setting(
        "not_ready_after", kind="float", default=3.0, metavar="SECONDS", help="without a heartbeat: NOT_READY"
    ),
    Setting("lost_after", kind="float", default=60.0, metavar="SECONDS", help="without success: LOST"),
    Setting("agent_timeout", kind="float", default=5.0, metavar="SECONDS", help="deadline of agent calls"),
    Setting("metrics_listen", default="", metavar="HOST:PORT", help="Prometheus /metrics (default: off)"),
    Setting("metrics_port_file", default="", metavar="FILE", help="write the bound /metrics port here"),
    Setting(
        "metrics_tls", kind="bool", default=False, help="serve /metrics over HTTPS with the tls_dir bundle"
    ),
    Setting(
        "prometheus_sd_file", default="", metavar="FILE", help="keep a Prometheus file_sd file of the agents"
    ),
    Setting("max_workers", kind="int", default=64, help="RPC worker threads for the short calls"),
    Setting(
        "max_streams",
        kind="int",
        default=DEFAULT_MAX_STREAMS,
        help="streams and waits served at once, each on its own thread (more: RESOURCE_EXHAUSTED)",
    ),
    Setting(
        "tls_dir",
        default="",
        metavar="DIR",
        help="the controller's bundle (ca.crt, tls.crt, tls.key): TLS for the API, mTLS to the agents",
    ),
    Setting(
        "insecure",
        kind="bool",
        default=False,
        help="plaintext API and agent channels; refused unless every address is loopback",
    ),
    Setting(
        "mtls_listen", default="", metavar="HOST:PORT", help="a second API port requiring client certificates"
    ),
    Setting("mtls_port_file", default="", metavar="FILE", help="write the bound mtls_listen port here"),
    Setting(
        "event_retention",
        kind="float",
        default=3600.0,
        metavar="SECONDS",
        help="events older than this are compacted; a Watch from before is OUT_OF_RANGE (0: no age limit)",
    ),
    Setting(
        "max_events",
        kind="int",
        default=1_000_000,
        help="keep at most this many events, the newest (0: no limit)",
    ),
    Setting(
        "deleted_retention",
        kind="float",
        default=3600.0,
        metavar="SECONDS",
        help="DELETED containers and their processes are pruned this long after the delete (0: never)",
    ),
    Setting(
        "audit_retention",
        kind="float",
        default=90 * 86400.0,
        metavar="SECONDS",
        help="audit log entries are pruned this long after they were written (0: never)",
    ),
    Setting(
        "retention_interval", kind="float", default=60.0, metavar="SECONDS", help="between retention passes"
    ),
    Setting(
        "playbooks_dir",
        default="",
        metavar="DIR",
        help="the playbooks RolloutService may run (default: $CHITAL_PLAYBOOKS_DIR, the source "
        "checkout's playbooks/, else /usr/share/chital/playbooks)",
    ),
    Setting(
        "allowed_roots",
        kind="list",
        default=[DEFAULT_ALLOWED_ROOT],
        option="--allowed-root",
        metavar="DIR",
        help="client-chosen container roots must lie at or below DIR; never / nor a system directory",
    ),
    Setting(
        "lease_timeout",
        kind="float",
        default=3.0,
        metavar="SECONDS",
        help="PostgreSQL: a leader silent this long loses its lease to another controller (docs/ha.md)",
    ),
)

SETTINGS = Settings("controller", (*_LOGS, *_DATABASE, *_SERVE), default_config=DEFAULT_CONFIG)
#: What ``serve`` takes: every setting.
SERVE_KEYS = tuple(s.key for s in (*_DATABASE, *_SERVE, *_LOGS))
#: What ``db upgrade`` and ``token ...`` take.
DATABASE_KEYS = tuple(s.key for s in (*_DATABASE, *_LOGS))
