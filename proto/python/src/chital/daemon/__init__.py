"""What both daemons (``chital-agent``, ``chital-controller``) share: settings from a TOML file,
the environment and flags (:mod:`.config`), structured logs with the request's ids (:mod:`.logs`),
one table of exit statuses (:mod:`.exitcodes`), the collector's start-up freeze (:mod:`.heap`)
and the default allowed root of containers (:mod:`.roots`). See docs/daemons.md.
"""

from .config import ConfigError, Setting, Settings
from .exitcodes import EXIT_CONFIG, EXIT_FAILURE, EXIT_INCOMPATIBLE_MODULE, EXIT_OK, EXIT_USAGE
from .heap import settle_heap
from .logs import LOG_FORMATS, LOG_LEVELS, LogContextInterceptor, configure_logging, log_context

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_INCOMPATIBLE_MODULE",
    "EXIT_OK",
    "EXIT_USAGE",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "ConfigError",
    "LogContextInterceptor",
    "Setting",
    "Settings",
    "configure_logging",
    "log_context",
    "settle_heap",
]
