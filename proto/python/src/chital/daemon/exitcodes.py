"""Exit statuses of ``chital-agent`` and ``chital-controller``: one table for both daemons.

=====  =====================================================================================
0      success (``serve``: stopped by SIGTERM or SIGINT)
1      runtime failure: the command ran and failed (address in use, database unreachable, a
       token or bundle not found, the schema older than the controller, ...)
2      usage error: an unknown flag, a missing or invalid argument (argparse uses 2 for these),
       or an argument value the command refuses (``token create --ttl soon``)
3      the kernel module's ABI is incompatible with this agent (``chital-agent serve``)
4      configuration error: the config file cannot be read or parsed, has an unknown key or a
       value of the wrong type, an environment variable cannot be converted, a required
       setting is missing, or ``serve`` refuses the settings before serving (plaintext on a
       non-loopback address, no TLS files, a forbidden allowed root)
=====  =====================================================================================

systemd units stop restarting on 2, 3 and 4 (``RestartPreventExitStatus=2 3 4``): a restart cannot
fix them, an operator must.
"""

from __future__ import annotations

from typing import Final

__all__ = ["EXIT_CONFIG", "EXIT_FAILURE", "EXIT_INCOMPATIBLE_MODULE", "EXIT_OK", "EXIT_USAGE"]

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_INCOMPATIBLE_MODULE: Final = 3
EXIT_CONFIG: Final = 4
