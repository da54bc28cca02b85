"""The kernel module's lifecycle, as the agent sees it: load if missing, check the ABI, never unload.

- **Load**: with ``--device linux`` and no ``/dev/chital``, the agent runs ``insmod <--module-path>``
  or ``modprobe chital`` and waits for the device node. With ``--device auto`` it only tries when the
  module is known to be there (``--module-path`` given, or ``modprobe --dry-run chital`` succeeds: a
  DKMS-installed module); otherwise it falls back to the fake device, so a development machine never
  gets anything loaded into its kernel by accident.
- **ABI**: the agent's ctypes mirror (:mod:`chital.agent.device.abi`) was built for one ABI version. A
  module of another major version (or other struct sizes) is refused with :class:`IncompatibleModule`
  and ``chital-agent serve`` exits with :data:`EXIT_INCOMPATIBLE_MODULE` (3), before serving anything.
  An older minor version is served with a warning (newer features may be missing); a newer minor is
  compatible by definition.
- **Unload**: never. The kernel holds the containers and their members; the module refuses ``rmmod``
  (EBUSY) while a container exists, and the agent does not even try, on shutdown or at any other time:
  a stopped or restarted agent leaves every container running, and the next agent picks them up from
  the module. Unloading is an operator's decision: drain the host, stop the agent, ``rmmod chital``
  (Ansible playbooks for this are planned; docs/operations.md).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence

from chital.daemon.exitcodes import EXIT_INCOMPATIBLE_MODULE
from chital.errdefs import Unavailable

from .device import abi
from .device.base import DeviceVersion
from .device.linux import IncompatibleModule, LinuxDevice

__all__ = [
    "EXIT_INCOMPATIBLE_MODULE",
    "IncompatibleModule",
    "check_abi",
    "ensure_loaded",
    "open_linux_device",
]

log = logging.getLogger("chital.agent.module")

MODULE_NAME = "chital"
_DEVICE_WAIT_S = 5.0

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(cmd), check=False, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return subprocess.CompletedProcess(list(cmd), 127, "", str(exc))


def _tool(name: str) -> str:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin") or name


def ensure_loaded(
    device_path: str,
    *,
    module_path: str | None = None,
    required: bool,
    run: Runner = _run,
    wait_s: float = _DEVICE_WAIT_S,
) -> bool:
    """Make ``device_path`` exist by loading the module if needed. Returns whether it exists.

    ``required`` (``--device linux``): a failed load raises Unavailable. Otherwise (``--device auto``)
    nothing is loaded unless the module is known to be installed, and a failure returns False.
    """
    if os.path.exists(device_path):
        return True
    if module_path is not None:
        if not os.path.isfile(module_path):
            raise Unavailable(f"--module-path {module_path}: no such file")
        cmd = [_tool("insmod"), module_path]
    else:
        if not required and run([_tool("modprobe"), "--dry-run", "--quiet", MODULE_NAME]).returncode != 0:
            log.info("%s is missing and no %s module is installed for this kernel", device_path, MODULE_NAME)
            return False
        cmd = [_tool("modprobe"), MODULE_NAME]
    log.info("%s is missing: loading the module (%s)", device_path, " ".join(cmd))
    proc = run(cmd)
    if proc.returncode != 0:
        msg = f"cannot load the module ({' '.join(cmd)}: rc {proc.returncode}: {proc.stderr.strip()[:300]})"
        if required:
            raise Unavailable(msg)
        log.warning("%s", msg)
        return False
    deadline = time.monotonic() + wait_s
    while not os.path.exists(device_path):  # devtmpfs makes it at once; udev may take a moment
        if time.monotonic() > deadline:
            if required:
                raise Unavailable(f"module loaded but {device_path} did not appear within {wait_s:g} s")
            return False
        time.sleep(0.05)
    return True


def check_abi(version: DeviceVersion) -> None:
    """Refuse a module of another ABI major version; warn about an older minor."""
    if version.abi_major != abi.ABI_MAJOR:
        raise IncompatibleModule(
            f"the loaded chital module speaks ABI {version.abi_major}.{version.abi_minor} "
            f"(module {version.module_version or '?'}), this agent speaks {abi.ABI_MAJOR}.{abi.ABI_MINOR}: "
            "install matching agent and module versions (the agent never unloads a module)"
        )
    if version.abi_minor < abi.ABI_MINOR:
        log.warning(
            "the chital module speaks ABI %d.%d, older than this agent's %d.%d: newer features are missing",
            version.abi_major,
            version.abi_minor,
            abi.ABI_MAJOR,
            abi.ABI_MINOR,
        )


def open_linux_device(path: str) -> LinuxDevice:
    """Open the real device, checking the ABI (major version and struct sizes) first."""
    device = LinuxDevice(path, check_version=False)
    try:
        check_abi(device.version())
        device.close()
        # The constructor's own check also compares every struct size with the mirror's.
        return LinuxDevice(path, check_version=True)
    except BaseException:
        device.close()
        raise
