"""The agent's settings: ``/etc/chital/agent.toml``, ``CHITAL_AGENT_*`` variables and flags.

Each setting below is a key of the TOML file, a flag of ``chital-agent serve`` (the key with
dashes) and an environment variable (``CHITAL_AGENT_`` + the key in capitals); a flag wins over the
variable, the variable over the file, the file over the default. See docs/daemons.md.
"""

from __future__ import annotations

from pathlib import Path

from chital.daemon.config import Setting, Settings
from chital.daemon.logs import LOG_FORMATS, LOG_LEVELS
from chital.daemon.roots import DEFAULT_ALLOWED_ROOT
from chital.daemon.streams import DEFAULT_MAX_STREAMS

from .server import DEVICE_PATH

__all__ = ["DEFAULT_CONFIG", "SERVE_KEYS", "SETTINGS"]

DEFAULT_CONFIG = Path("/etc/chital/agent.toml")

_SETTINGS = (
    Setting("listen", default="127.0.0.1:0", help="HOST:PORT to serve on (port 0: any free port)"),
    Setting(
        "tls_dir",
        kind="path",
        metavar="DIR",
        help="mutual TLS: the agent's bundle from the fleet PKI (ca.crt, tls.crt, tls.key; "
        "<pki>/agents/<host>); callers must present the controller's certificate",
    ),
    Setting(
        "insecure",
        kind="bool",
        default=False,
        help="plaintext without authentication, on a loopback listen address only (development)",
    ),
    Setting(
        "allowed_roots",
        kind="list",
        default=[DEFAULT_ALLOWED_ROOT],
        option="--allowed-root",
        metavar="DIR",
        help="accept client-chosen container roots only at or below DIR; never / nor a system directory",
    ),
    Setting(
        "state_dir", kind="path", required=True, metavar="DIR", help="logs, roots and metadata live here"
    ),
    Setting("device", default="auto", choices=("fake", "linux", "auto"), help="the /dev/chital adapter"),
    Setting("device_path", default=DEVICE_PATH, help="the device node"),
    Setting(
        "module_path", kind="path", help="chital.ko to insmod when the device is missing (default: modprobe)"
    ),
    Setting(
        "cgroups",
        default="auto",
        choices=("auto", "required", "off"),
        help="cgroup v2 limits; auto: required with the real device, best effort with the fake",
    ),
    Setting("cgroup_root", kind="path", help="cgroup2 mount point (default: from mountinfo)"),
    Setting("cgroup_parent", default="chital", help="group under the root that holds containers"),
    Setting(
        "launcher",
        help="the chital-launch binary (default: $CHITAL_LAUNCHER, the checkout's agent/launcher/, "
        "PATH, /usr/libexec/chital/chital-launch)",
    ),
    Setting("port_file", kind="path", help="write the bound port here (atomically) once serving"),
    Setting("max_containers", kind="int", default=0, help="most containers on this host; 0: unlimited"),
    Setting(
        "log_max_bytes",
        kind="int",
        default=10 << 20,
        metavar="BYTES",
        help="rotate a process's stdout or stderr file past this many bytes (0: no cap)",
    ),
    Setting(
        "log_max_files",
        kind="int",
        default=5,
        help="files kept per stream, the live one included (1: the oldest bytes are dropped)",
    ),
    Setting(
        "exited_process_limit",
        kind="int",
        default=10_000,
        help="exited processes remembered for GetProcess and StreamLogs; a destroyed container's "
        "directory goes with the last of them",
    ),
    Setting(
        "metrics_listen",
        help="HOST:PORT for Prometheus /metrics (default: none); HTTPS with the agent's certificate "
        "under tls_dir, plaintext (loopback only) when insecure",
    ),
    Setting("metrics_port_file", kind="path", help="write the bound /metrics port here"),
    Setting("max_workers", kind="int", default=64, help="gRPC worker threads for the short calls"),
    Setting(
        "max_streams",
        kind="int",
        default=DEFAULT_MAX_STREAMS,
        help="streams served at once, each on its own thread (more: RESOURCE_EXHAUSTED)",
    ),
    Setting("log_level", default="info", choices=LOG_LEVELS, lower=True, help="least severe level logged"),
    Setting("log_format", default="text", choices=LOG_FORMATS, lower=True, help="log line format"),
)

SETTINGS = Settings("agent", _SETTINGS, default_config=DEFAULT_CONFIG)
#: What ``serve`` takes: every setting.
SERVE_KEYS = tuple(s.key for s in _SETTINGS)
