"""The ctypes mirror (chital.agent.device.abi) matches the uapi header, checked by a compiled C probe."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from chital.agent.device import abi

ROOT = Path(__file__).resolve().parents[2]
HEADER_DIR = ROOT / "kmod" / "include"

CONSTANTS = {
    "CHITAL_ABI_MAJOR": abi.ABI_MAJOR,
    "CHITAL_ABI_MINOR": abi.ABI_MINOR,
    "CHITAL_NAME_MAX": abi.NAME_MAX,
    "CHITAL_ROOT_MAX": abi.ROOT_MAX,
    "CHITAL_NR_SYSCALLS": abi.NR_SYSCALLS,
    "CHITAL_POLICY_WORDS": abi.POLICY_WORDS,
    "CHITAL_POLICY_DENY_RAW_SOCKETS": abi.POLICY_DENY_RAW_SOCKETS,
    "CHITAL_POLICY_FLAGS": abi.POLICY_FLAGS,
    "CHITAL_DESTROY_KILL": abi.DESTROY_KILL,
    "CHITAL_DESTROY_FLAGS": abi.DESTROY_FLAGS,
    "CHITAL_PROC_DESCENDANTS": abi.PROC_DESCENDANTS,
    "CHITAL_ADD_PROC_FLAGS": abi.ADD_PROC_FLAGS,
    "CHITAL_EVENT_EXIT": abi.EVENT_EXIT,
    "CHITAL_EVENT_FORK": abi.EVENT_FORK,
    "CHITAL_EVENT_DENIED": abi.EVENT_DENIED,
    "CHITAL_EVENT_EMPTY": abi.EVENT_EMPTY,
    "CHITAL_COMPAT_SYSCALL": abi.COMPAT_SYSCALL,
    "CHITAL_IOC_MAGIC": abi.IOC_MAGIC,
}


def _probe_source() -> str:
    lines = [
        "#include <stddef.h>",
        "#include <stdio.h>",
        "#include <linux/chital.h>",
        "int main(void)",
        "{",
    ]
    for cname, struct in abi.STRUCTS.items():
        lines.append(f'\tprintf("size {cname} %zu\\n", sizeof(struct {cname}));')
        for field, _ in struct._fields_:
            lines.append(
                f'\tprintf("offset {cname}.{field} %zu %zu\\n", offsetof(struct {cname}, {field}), '
                f"sizeof(((struct {cname} *)0)->{field}));"
            )
    for name in list(abi.IOCTLS) + list(CONSTANTS):
        lines.append(f'\tprintf("const {name} %llu\\n", (unsigned long long)({name}));')
    lines += ["\treturn 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, ...]]:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    tmp = tmp_path_factory.mktemp("abi")
    src = tmp / "abi_probe.c"
    src.write_text(_probe_source())
    exe = tmp / "abi_probe"
    subprocess.run(
        [cc, "-Wall", "-Werror", "-I", str(HEADER_DIR / "uapi"), "-o", str(exe), str(src)], check=True
    )
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    result: dict[str, tuple[int, ...]] = {}
    for line in out.splitlines():
        _, key, *values = line.split()
        result[key] = tuple(int(v) for v in values)
    return result


@pytest.mark.parametrize("cname", list(abi.STRUCTS))
def test_struct_layout(probe: dict[str, tuple[int, ...]], cname: str) -> None:
    struct = abi.STRUCTS[cname]
    assert probe[cname] == (ctypes.sizeof(struct),)
    for field, _ in struct._fields_:
        descr = getattr(struct, field)
        assert probe[f"{cname}.{field}"] == (descr.offset, descr.size), field


def test_every_field_is_mirrored() -> None:
    """Every struct member the header declares appears in the mirror (no C field left out)."""
    text = (HEADER_DIR / "uapi" / "linux" / "chital.h").read_text()
    for cname, struct in abi.STRUCTS.items():
        body = re.search(rf"struct {cname} \{{(.*?)\}};", text, re.S)
        assert body, cname
        declared = re.findall(r"(\w+)(?:\[[^\]]*\])?;", body.group(1))
        assert declared == [f for f, _ in struct._fields_], cname
    assert set(re.findall(r"^struct (chital_\w+) \{", text, re.M)) == set(abi.STRUCTS)


@pytest.mark.parametrize("name", list(abi.IOCTLS) + list(CONSTANTS))
def test_constants(probe: dict[str, tuple[int, ...]], name: str) -> None:
    expected = abi.IOCTLS.get(name, CONSTANTS.get(name))
    assert probe[name] == (expected,)
