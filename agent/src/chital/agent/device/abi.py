"""ctypes mirror of ``kmod/include/uapi/linux/chital.h`` (the single definition of the ABI).

Every struct, constant and ioctl number of the header appears here with the same name (without the
``chital_``/``CHITAL_`` prefix). ``tests/unit/test_abi_layout.py`` compiles a C probe against the header
and checks sizes, offsets and ioctl numbers against this module.
"""

from __future__ import annotations

import ctypes

__all__ = [
    "ABI_MAJOR",
    "ABI_MINOR",
    "ADD_PROC_FLAGS",
    "COMPAT_SYSCALL",
    "DESTROY_FLAGS",
    "DESTROY_KILL",
    "EVENT_DENIED",
    "EVENT_EMPTY",
    "EVENT_EXIT",
    "EVENT_FORK",
    "IOCTLS",
    "IOC_ADD_PROC",
    "IOC_CREATE",
    "IOC_DESTROY",
    "IOC_INFO",
    "IOC_LIST",
    "IOC_MAGIC",
    "IOC_REMOVE_PROC",
    "IOC_SET_POLICY",
    "IOC_STATS",
    "IOC_VERSION",
    "NAME_MAX",
    "NR_SYSCALLS",
    "POLICY_DENY_RAW_SOCKETS",
    "POLICY_FLAGS",
    "POLICY_WORDS",
    "PROC_DESCENDANTS",
    "ROOT_MAX",
    "STRUCTS",
    "AbiLimits",
    "Create",
    "Destroy",
    "Event",
    "Info",
    "List",
    "Policy",
    "Proc",
    "SetPolicy",
    "Stats",
    "SyscallStat",
    "Version",
]

ABI_MAJOR = 2
ABI_MINOR = 0
NAME_MAX = 63
ROOT_MAX = 4095
NR_SYSCALLS = 512
POLICY_WORDS = NR_SYSCALLS // 64
POLICY_DENY_RAW_SOCKETS = 1 << 0
POLICY_FLAGS = POLICY_DENY_RAW_SOCKETS

DESTROY_KILL = 1 << 0
DESTROY_FLAGS = DESTROY_KILL
PROC_DESCENDANTS = 1 << 0
ADD_PROC_FLAGS = PROC_DESCENDANTS

EVENT_EXIT = 1
EVENT_FORK = 2
EVENT_DENIED = 3
EVENT_EMPTY = 4
COMPAT_SYSCALL = 0x80000000

u32 = ctypes.c_uint32
u64 = ctypes.c_uint64


class Policy(ctypes.Structure):
    _fields_ = [("deny", u64 * POLICY_WORDS), ("flags", u64), ("reserved", u64)]


class AbiLimits(ctypes.Structure):
    _fields_ = [("max_members", u32), ("reserved", u32 * 3)]


class Version(ctypes.Structure):
    _fields_ = [
        ("abi_major", u32),
        ("abi_minor", u32),
        ("sizeof_create", u32),
        ("sizeof_info", u32),
        ("sizeof_event", u32),
        ("sizeof_stats_entry", u32),
        ("nr_syscalls", u32),
        ("event_queue_len", u32),
        ("events_dropped", u64),
        ("module_version", ctypes.c_uint8 * 32),
        ("kernel_release", ctypes.c_uint8 * 64),
    ]


class Create(ctypes.Structure):
    _fields_ = [
        ("flags", u32),
        ("id", u32),
        ("name", ctypes.c_uint8 * (NAME_MAX + 1)),
        ("root_ptr", u64),
        ("root_len", u32),
        ("reserved", u32),
        ("policy", Policy),
        ("limits", AbiLimits),
    ]


class Destroy(ctypes.Structure):
    _fields_ = [("id", u32), ("flags", u32)]


class Proc(ctypes.Structure):
    _fields_ = [("id", u32), ("pid", u32), ("flags", u32), ("reserved", u32)]


class List(ctypes.Structure):
    _fields_ = [("ids_ptr", u64), ("capacity", u32), ("count", u32)]


class Info(ctypes.Structure):
    _fields_ = [
        ("id", u32),
        ("flags", u32),
        ("name", ctypes.c_uint8 * (NAME_MAX + 1)),
        ("root_ptr", u64),
        ("root_cap", u32),
        ("root_len", u32),
        ("members_ptr", u64),
        ("members_cap", u32),
        ("member_count", u32),
        ("syscalls_total", u64),
        ("denied_total", u64),
        ("policy", Policy),
        ("limits", AbiLimits),
    ]


class SyscallStat(ctypes.Structure):
    _fields_ = [("calls", u64), ("denied", u64)]


class Stats(ctypes.Structure):
    _fields_ = [("id", u32), ("flags", u32), ("stats_ptr", u64), ("capacity", u32), ("count", u32)]


class SetPolicy(ctypes.Structure):
    _fields_ = [("id", u32), ("flags", u32), ("policy", Policy)]


class Event(ctypes.Structure):
    _fields_ = [
        ("seq", u64),
        ("kind", u32),
        ("container_id", u32),
        ("pid", u32),
        ("ppid", u32),
        ("status", u32),
        ("syscall_nr", u32),
        ("count", u64),
        ("dropped", u64),
    ]


#: Every struct of the header, by its C name.
STRUCTS: dict[str, type[ctypes.Structure]] = {
    "chital_policy": Policy,
    "chital_limits": AbiLimits,
    "chital_version": Version,
    "chital_create": Create,
    "chital_destroy": Destroy,
    "chital_proc": Proc,
    "chital_list": List,
    "chital_info": Info,
    "chital_syscall_stat": SyscallStat,
    "chital_stats": Stats,
    "chital_set_policy": SetPolicy,
    "chital_event": Event,
}

# asm-generic/ioctl.h, as on x86_64.
_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(direction: int, type_: int, nr: int, size: int) -> int:
    return (
        (direction << _IOC_DIRSHIFT)
        | (type_ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _ior(type_: int, nr: int, struct: type[ctypes.Structure]) -> int:
    return _ioc(_IOC_READ, type_, nr, ctypes.sizeof(struct))


def _iow(type_: int, nr: int, struct: type[ctypes.Structure]) -> int:
    return _ioc(_IOC_WRITE, type_, nr, ctypes.sizeof(struct))


def _iowr(type_: int, nr: int, struct: type[ctypes.Structure]) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, type_, nr, ctypes.sizeof(struct))


IOC_MAGIC = 0xC7
IOC_VERSION = _ior(IOC_MAGIC, 0x00, Version)
IOC_CREATE = _iowr(IOC_MAGIC, 0x01, Create)
IOC_DESTROY = _iow(IOC_MAGIC, 0x02, Destroy)
IOC_ADD_PROC = _iow(IOC_MAGIC, 0x03, Proc)
IOC_REMOVE_PROC = _iow(IOC_MAGIC, 0x04, Proc)
IOC_LIST = _iowr(IOC_MAGIC, 0x05, List)
IOC_INFO = _iowr(IOC_MAGIC, 0x06, Info)
IOC_STATS = _iowr(IOC_MAGIC, 0x07, Stats)
IOC_SET_POLICY = _iow(IOC_MAGIC, 0x08, SetPolicy)

#: Every ioctl number of the header, by its C name.
IOCTLS: dict[str, int] = {
    "CHITAL_IOC_VERSION": IOC_VERSION,
    "CHITAL_IOC_CREATE": IOC_CREATE,
    "CHITAL_IOC_DESTROY": IOC_DESTROY,
    "CHITAL_IOC_ADD_PROC": IOC_ADD_PROC,
    "CHITAL_IOC_REMOVE_PROC": IOC_REMOVE_PROC,
    "CHITAL_IOC_LIST": IOC_LIST,
    "CHITAL_IOC_INFO": IOC_INFO,
    "CHITAL_IOC_STATS": IOC_STATS,
    "CHITAL_IOC_SET_POLICY": IOC_SET_POLICY,
}
