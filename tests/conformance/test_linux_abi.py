"""The raw ABI of /dev/chital (linux only): reserved fields, unknown flags and commands, bad pointers,
module references, and a small ioctl fuzz. These have no FakeDevice counterpart (compat system calls,
once here, are a device case in test_device.py now)."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import random
import subprocess
import sys

import pytest

from chital.agent.device import abi

from .conftest import Driver, linux_only

pytestmark = linux_only
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


@pytest.fixture
def fd(driver: Driver) -> int:
    return driver.device.fileno()


def _ioctl_errno(fd: int, cmd: int, arg: ctypes.Structure | int) -> int:
    try:
        fcntl.ioctl(fd, cmd, arg, True) if not isinstance(arg, int) else fcntl.ioctl(fd, cmd, arg)
    except OSError as exc:
        return exc.errno or 0
    return 0


def _create(name: bytes, root: bytes) -> tuple[abi.Create, ctypes.Array[ctypes.c_char]]:
    buf = ctypes.create_string_buffer(root, len(root))
    cr = abi.Create(root_ptr=ctypes.addressof(buf), root_len=len(root))
    ctypes.memmove(cr.name, name, len(name))
    return cr, buf


def test_unknown_commands(fd: int) -> None:
    assert _ioctl_errno(fd, abi._iowr(abi.IOC_MAGIC, 0x40, abi.Create), abi.Create()) == errno.ENOTTY
    assert _ioctl_errno(fd, abi._ior(0xB5, 0x00, abi.Version), abi.Version()) == errno.ENOTTY
    wrong_size = abi._ioc(abi._IOC_READ, abi.IOC_MAGIC, 0x00, 8)
    assert _ioctl_errno(fd, wrong_size, 0) == errno.ENOTTY


@pytest.mark.parametrize(
    "field", ["flags", "id", "reserved", "limits", "name_padding", "policy_flags", "policy_reserved"]
)
def test_create_rejects_nonzero_reserved(driver: Driver, fd: int, field: str) -> None:
    cr, _buf = _create(driver.name().encode(), b"/")
    if field == "limits":
        cr.limits.reserved[1] = 1
    elif field == "policy_flags":
        cr.policy.flags = abi.POLICY_FLAGS << 1  # the first unknown flag
    elif field == "policy_reserved":
        cr.policy.reserved = 1
    elif field == "name_padding":
        cr.name[60] = ord("x")
    else:
        setattr(cr, field, 1)
    assert _ioctl_errno(fd, abi.IOC_CREATE, cr) == errno.EINVAL


def test_unknown_flags(driver: Driver, fd: int) -> None:
    cid = driver.create()
    w = driver.worker()
    assert _ioctl_errno(fd, abi.IOC_DESTROY, abi.Destroy(id=cid, flags=2)) == errno.EINVAL
    assert _ioctl_errno(fd, abi.IOC_ADD_PROC, abi.Proc(id=cid, pid=w.pid, flags=2)) == errno.EINVAL
    assert _ioctl_errno(fd, abi.IOC_ADD_PROC, abi.Proc(id=cid, pid=w.pid, reserved=1)) == errno.EINVAL
    assert _ioctl_errno(fd, abi.IOC_REMOVE_PROC, abi.Proc(id=cid, pid=w.pid, flags=1)) == errno.EINVAL
    assert _ioctl_errno(fd, abi.IOC_SET_POLICY, abi.SetPolicy(id=cid, flags=1)) == errno.EINVAL
    for flags, reserved in ((abi.POLICY_FLAGS << 1, 0), (1 << 63, 0), (0, 1)):
        sp = abi.SetPolicy(id=cid)
        sp.policy.flags, sp.policy.reserved = flags, reserved
        assert _ioctl_errno(fd, abi.IOC_SET_POLICY, sp) == errno.EINVAL
    sp = abi.SetPolicy(id=cid)
    sp.policy.flags = abi.POLICY_DENY_RAW_SOCKETS
    assert _ioctl_errno(fd, abi.IOC_SET_POLICY, sp) == 0
    assert driver.device.info(cid).deny_raw_sockets
    assert _ioctl_errno(fd, abi.IOC_STATS, abi.Stats(id=cid, flags=1)) == errno.EINVAL
    assert _ioctl_errno(fd, abi.IOC_INFO, abi.Info(id=cid, flags=1)) == errno.EINVAL


def test_bad_pointers(driver: Driver, fd: int) -> None:
    cid = driver.create()
    cr, _buf = _create(driver.name().encode(), b"/")
    cr.root_ptr = 8
    assert _ioctl_errno(fd, abi.IOC_CREATE, cr) == errno.EFAULT
    cr.root_ptr = 0xFFFF_8000_0000_0000  # kernel address
    assert _ioctl_errno(fd, abi.IOC_CREATE, cr) == errno.EFAULT
    assert _ioctl_errno(fd, abi.IOC_LIST, abi.List(ids_ptr=8, capacity=4)) == errno.EFAULT
    info = abi.Info(id=cid, members_ptr=8, members_cap=4, root_ptr=8, root_cap=100)
    assert _ioctl_errno(fd, abi.IOC_INFO, info) == errno.EFAULT
    assert _ioctl_errno(fd, abi.IOC_STATS, abi.Stats(id=cid, stats_ptr=8, capacity=512)) == errno.EFAULT
    for cmd in abi.IOCTLS.values():
        assert _ioctl_errno(fd, cmd, 0) == errno.EFAULT  # NULL argument
    with pytest.raises(OSError) as exc:
        os.read(fd, ctypes.sizeof(abi.Event) - 1)
    assert exc.value.errno == errno.EINVAL


def test_second_opener_cannot_use_the_device(driver: Driver) -> None:
    """While the owner has the device open, nobody else gets in (not even root with every capability)."""
    cid = driver.create()
    w = driver.worker()
    assert w.ask(f"selfadd /dev/chital {abi.IOC_ADD_PROC} {cid}") == str(errno.EBUSY)
    assert driver.device.info(cid).members == ()
    driver.device.add_proc(cid, w.pid)
    assert w.ask("open /dev/chital") == str(errno.EPERM)  # a member: refused before anything else


def test_open_needs_cap_sys_admin(driver: Driver) -> None:
    """Root without CAP_SYS_ADMIN may not open the device, even when it is free."""
    driver.device.close()
    cmd = "import os\ntry:\n os.open('/dev/chital', os.O_RDWR)\nexcept OSError as e:\n print(e.errno)"
    drop = ["setpriv", "--bounding-set=-sys_admin", "--"]
    out = subprocess.check_output([*drop, sys.executable, "-I", "-c", cmd], text=True)
    assert out.strip() == str(errno.EPERM)
    out = subprocess.check_output([sys.executable, "-I", "-c", cmd], text=True)
    assert out.strip() == ""  # the control: with the capability it opens


def test_module_busy_while_containers_exist(driver: Driver) -> None:
    driver.create()
    ret = libc.syscall(176, b"chital", os.O_NONBLOCK)  # delete_module
    # The kernel answers EWOULDBLOCK for a module with references; rmmod(8) says "in use".
    assert (ret, ctypes.get_errno()) in ((-1, errno.EWOULDBLOCK), (-1, errno.EBUSY))
    assert os.path.exists("/sys/module/chital")


def test_fork_exit_storm(driver: Driver) -> None:
    """Many members forking and exiting at once: every exit is reported, then EMPTY."""
    cid = driver.create()
    proc = subprocess.Popen(
        ["/bin/sh", "-c", "read go; for i in $(seq 100); do ( exit 3 ) & done; wait"], stdin=subprocess.PIPE
    )
    driver.device.add_proc(cid, proc.pid)
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.close()
    assert proc.wait(120) == 0
    driver.wait_event(lambda e: e.container_id == cid and e.kind.name == "EMPTY", timeout=60)
    assert driver.device.info(cid).members == ()


def test_ioctl_fuzz(driver: Driver, fd: int) -> None:
    rng = random.Random(1234)
    before = set(driver.device.list())
    for _ in range(3000):
        nr = rng.randrange(0, 12)
        size = rng.choice([0, 8, 16, 24, 64, 72, 136, 168, 200, rng.randrange(0, 1 << 14)])
        cmd = abi._ioc(rng.randrange(0, 4), abi.IOC_MAGIC, nr, size)
        raw = bytearray(rng.randbytes(max(size, 8)))
        if rng.random() < 0.5:  # plausible small fields
            for off in range(0, len(raw) - 8, 8):
                raw[off : off + 8] = rng.choice([0, 1, 8, 0xFFFFFFFF, 1 << 63]).to_bytes(8, "little")
        buf = ctypes.create_string_buffer(bytes(raw), len(raw))
        libc.ioctl(fd, ctypes.c_ulong(cmd), ctypes.c_void_p(ctypes.addressof(buf)))
    for cid in set(driver.device.list()) - before:
        driver.created.append(cid)
