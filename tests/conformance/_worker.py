"""A small program the conformance cases run as a container member, driven line by line on stdin.

Everything it needs is imported before it announces ``ready``, so that once it is a member (and
perhaps confined to a root without Python in it) it only makes the system calls it is asked to.
Replies are one line each on stdout.

Commands:
  syscall NR [ARG...]   -> "<ret> <errno>"
  open PATH             -> "<errno>" (0: opened and closed)
  int80 NR              -> "<eax>"   compat system call NR without arguments
  mkdir PATH            -> "<errno>"
  link OLD NEW          -> "<errno>"
  selfadd DEV IOC CID   -> "<errno>"  ADD_PROC of itself through DEV
  thread                -> "<tid>"  starts a thread that blocks until "endthread TID"
  endthread TID         -> "ok"     that thread returns (and is joined)
  fork                  -> "<pid>"  the child blocks until "release PID CODE"
  release PID CODE      -> "ok"     the child exits with CODE
  wait PID              -> "<wait status>"
  exit CODE             -> (exits)
"""

import ctypes
import fcntl
import mmap
import os
import struct
import sys
import threading

libc = ctypes.CDLL(None, use_errno=True)
# int $0x80 with eax = nr, returning eax: a compat (i386) system call from a 64-bit process.
_code = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
_code.write(bytes([0x89, 0xF8, 0xCD, 0x80, 0xC3]))  # mov eax, edi; int 0x80; ret
int80 = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(_code)))
libc.syscall.restype = ctypes.c_long
children: dict[int, int] = {}
threads: dict[int, tuple[threading.Thread, int]] = {}
_buf = b""


def reply(text: str) -> None:
    os.write(1, (text + "\n").encode())


def readline() -> str:
    global _buf
    while b"\n" not in _buf:
        chunk = os.read(0, 4096)
        if not chunk:
            os._exit(0)
        _buf += chunk
    line, _buf = _buf.split(b"\n", 1)
    return line.decode()


def start_thread() -> int:
    r, w = os.pipe()
    started = threading.Event()
    tid = [0]

    def run() -> None:
        tid[0] = threading.get_native_id()
        started.set()
        os.read(r, 1)
        os.close(r)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    started.wait()
    threads[tid[0]] = (t, w)
    return tid[0]


def main() -> None:
    reply("ready")
    while True:
        cmd, *args = readline().split()
        if cmd == "syscall":
            nums = [ctypes.c_long(int(a)) for a in args[1:]]
            ctypes.set_errno(0)
            ret = libc.syscall(ctypes.c_long(int(args[0])), *nums)
            reply(f"{ret} {ctypes.get_errno() if ret == -1 else 0}")
        elif cmd == "open":
            try:
                os.close(os.open(args[0], os.O_RDONLY))
                reply("0")
            except OSError as exc:
                reply(str(exc.errno))
        elif cmd == "int80":
            reply(str(int80(int(args[0]))))
        elif cmd == "mkdir":
            try:
                os.mkdir(args[0])
                reply("0")
            except OSError as exc:
                reply(str(exc.errno))
        elif cmd == "link":
            try:
                os.link(args[0], args[1])
                reply("0")
            except OSError as exc:
                reply(str(exc.errno))
        elif cmd == "selfadd":  # DEVICE IOC_ADD_PROC CONTAINER_ID: join a container by itself
            try:
                fd = os.open(args[0], os.O_RDWR)
            except OSError as exc:
                reply(str(exc.errno))
                continue
            try:
                fcntl.ioctl(fd, int(args[1]), struct.pack("<4I", int(args[2]), os.getpid(), 0, 0))
                reply("0")
            except OSError as exc:
                reply(str(exc.errno))
            finally:
                os.close(fd)
        elif cmd == "thread":
            reply(str(start_thread()))
        elif cmd == "endthread":
            t, w = threads.pop(int(args[0]))
            os.write(w, b"x")
            os.close(w)
            t.join()
            reply("ok")
        elif cmd == "fork":
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(w)
                code = os.read(r, 1)
                os._exit(code[0] if code else 0)
            os.close(r)
            children[pid] = w
            reply(str(pid))
        elif cmd == "release":
            os.write(children.pop(int(args[0])), bytes([int(args[1])]))
            reply("ok")
        elif cmd == "wait":
            _, status = os.waitpid(int(args[0]), 0)
            reply(str(status))
        elif cmd == "exit":
            os._exit(int(args[0]))
        else:
            reply("unknown")


if __name__ == "__main__":
    sys.exit(main())
