"""100,000 random ioctls on /dev/chital with garbage pointers and sizes, while processes fork,
join containers and exit (``c/fuzz.c``). The kernel must not WARN, BUG or oops (checked by the
autouse fixture for this test and by the runner for the whole boot), the device must still answer
VERSION, and the fuzzer's cleanup must leave no container behind.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import helper

ITERATIONS = int(os.environ.get("CHITAL_FUZZ_ITERATIONS", "100000"))


@pytest.mark.fuzz
@pytest.mark.parametrize("seed", [int(os.environ.get("CHITAL_FUZZ_SEED", "20261126"))])
def test_random_ioctls_do_not_hurt_the_kernel(seed: int) -> None:
    argv = [helper("fuzz"), str(ITERATIONS), str(seed)]
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=400)
    if proc.returncode != 0:
        dmesg = subprocess.run(["dmesg"], check=False, capture_output=True, text=True).stdout
        tail = "\n".join(dmesg.splitlines()[-15:])
        pytest.fail(f"fuzz rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}\ndmesg tail:\n{tail}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(result)
    assert result["calls"] >= ITERATIONS - 1
    assert result["version_ok"] == 1, "the device stopped answering VERSION"
    assert result["containers_left"] == 0, "DESTROY(KILL) of every listed container left some behind"
    assert result["ok"] > 0, "no call ever succeeded: the fuzz did not reach the handlers"
