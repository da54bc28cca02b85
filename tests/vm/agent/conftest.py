"""Shared by the guest tests of the agent: one real agent (``chital-agent serve --device linux``) for
the whole package (a guest boot and an agent start cost seconds under emulation), a busybox
container root, and the ``sbx`` probes (``c/sbx.c``, built static by the runner).

The agent owns ``/dev/chital`` (one owner) while this package runs; the module's own device tests
run in other packages, after it stopped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from chital.api.agent.v1 import agent_pb2 as pb

from .guest_agent import APPLETS, BASE, AgentProcess


@pytest.fixture(scope="package")
def root() -> Iterator[Path]:
    shutil.rmtree(BASE, ignore_errors=True)
    root = BASE / "root"
    for d in ("bin", "dev", "tmp", "etc"):
        (root / d).mkdir(parents=True)
    (root / "tmp").chmod(0o1777)  # the default user (65534) writes there
    os.mknod(root / "dev" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))  # sh's background jobs
    shutil.copy2(shutil.which("busybox") or "/bin/busybox", root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "inside").write_text("inside the root\n")
    sbx = Path(os.environ.get("CHITAL_VM_BIN", "/nonexistent")) / "sbx"
    if not sbx.exists():
        pytest.fail(f"probe {sbx} was not built: run the suite with chital.devcluster.vmtest")
    shutil.copy2(sbx, root / "bin" / "sbx")
    yield root


@pytest.fixture(scope="package")
def agent(root: Path) -> Iterator[AgentProcess]:
    a = AgentProcess(BASE)
    a.start()
    try:
        yield a
    finally:
        with contextlib.suppress(grpc.RpcError, AssertionError):
            if a.proc is not None and a.proc.poll() is None:
                for c in a.stub.Sync(pb.SyncRequest(), timeout=60).containers:
                    a.stub.DestroyContainer(pb.DestroyContainerRequest(uid=c.uid), timeout=120)
        a.stop()
        print(a.log())
