#!/usr/bin/env python3
"""Print, as JSON, what the loaded chital module says about itself (CHITAL_IOC_VERSION).

Run by the chital_kmod role on the host (Python's standard library only). The ioctl and the layout
of struct chital_version come from kmod/include/uapi/linux/chital.h. The device has one owner at a
time: when the agent holds it, the answer is {"busy": true} and the module version comes from
/sys/module/chital/version instead.
"""

import errno
import fcntl
import json
import os
import struct
import sys

DEVICE = sys.argv[1] if len(sys.argv) > 1 else "/dev/chital"
# struct chital_version: 8 x __u32, __u64 events_dropped, __u8 module_version[32], kernel_release[64]
LAYOUT = struct.Struct("=8IQ32s64s")
IOC_MAGIC = 0xC7
IOC_READ = 2


def _ior(magic: int, nr: int, size: int) -> int:
    return (IOC_READ << 30) | (size << 16) | (magic << 8) | nr


def _sysfs_version() -> str:
    try:
        with open("/sys/module/chital/version", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def main() -> int:
    result: dict[str, object] = {"device": DEVICE, "module_version_sysfs": _sysfs_version()}
    try:
        fd = os.open(DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            result["busy"] = True
            print(json.dumps(result))
            return 0
        result["error"] = f"cannot open {DEVICE}: {exc.strerror}"
        print(json.dumps(result))
        return 1
    try:
        buf = bytearray(LAYOUT.size)
        fcntl.ioctl(fd, _ior(IOC_MAGIC, 0x00, LAYOUT.size), buf, True)
    except OSError as exc:
        result["error"] = f"CHITAL_IOC_VERSION on {DEVICE}: {exc.strerror} (not a chital module?)"
        print(json.dumps(result))
        return 1
    finally:
        os.close(fd)
    fields = LAYOUT.unpack(bytes(buf))
    result.update(
        busy=False,
        abi_major=fields[0],
        abi_minor=fields[1],
        module_version=fields[9].split(b"\0", 1)[0].decode("ascii", "replace"),
        kernel_release=fields[10].split(b"\0", 1)[0].decode("ascii", "replace"),
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
