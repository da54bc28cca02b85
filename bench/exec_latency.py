"""Exec latency on a real kernel: RPC to the process running in its container, beside a plain
fork+exec in the same guest.

Boots one QEMU guest with chital.ko and an agent (``QemuFleet``), then measures, in one run:
- ``fork+exec``: ``subprocess.Popen`` of busybox ``true`` inside the guest (returns once the exec
  succeeded), the floor for starting any process there;
- ``agent StartProcess (in guest)``: the agent's RPC (mutual TLS, with the controller's certificate,
  as the controller calls it) from a client in the same guest, which returns
  once the program was exec'd inside its container: the launcher (a static C program) joined the
  cgroup and the container's namespaces, forked the child, the agent made it a member (ADD_PROC),
  and the child dropped its privileges, installed its seccomp filter and exec'd;
- ``agent StartProcess``: the same RPC from the host (plus QEMU's user-mode network hop);
- ``controller Exec``: the public API end to end (SDK -> controller -> agent -> container).

Everything runs under QEMU's software emulation (TCG): absolute figures are slow; the ratios are
what we track. Nothing is asserted.

    .venv/bin/python bench/exec_latency.py [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid

import grpc

from chital.api.agent.v1 import agent_pb2, agent_pb2_grpc
from chital.devcluster.qemu_fleet import (
    AGENT_PORT,
    BUSYBOX_ROOT,
    QemuFleet,
    install_bundle_script,
    stage_bundle,
)
from chital.security.tls import TLSFiles, channel_credentials

#: The controller's bundle inside the guest, for the in-guest client (root-only, on tmpfs).
GUEST_CONTROLLER_TLS = "/run/chital-bench/controller"

GUEST_FORK_EXEC = f"""
import subprocess, sys, time
runs = int(sys.argv[1])
out = []
for _ in range(runs + 2):
    t0 = time.perf_counter()
    p = subprocess.Popen(["{BUSYBOX_ROOT}/bin/true"])
    out.append(time.perf_counter() - t0)
    p.wait()
print(" ".join(f"{{x:.6f}}" for x in out[2:]))
"""


GUEST_START_PROCESS = f"""
import sys, time, uuid, grpc
from chital.api.agent.v1 import agent_pb2, agent_pb2_grpc
from chital.security.tls import TLSFiles, channel_credentials
runs, cuid = int(sys.argv[1]), sys.argv[2]
credentials = channel_credentials(TLSFiles.from_dir("{GUEST_CONTROLLER_TLS}"))
stub = agent_pb2_grpc.AgentServiceStub(grpc.secure_channel("127.0.0.1:{AGENT_PORT}", credentials))
out = []
for _ in range(runs + 2):
    req = agent_pb2.StartProcessRequest(container_uid=cuid, process_uid=uuid.uuid4().hex, argv=["true"])
    t0 = time.perf_counter()
    stub.StartProcess(req, timeout=60)
    out.append(time.perf_counter() - t0)
print(" ".join(f"{{x:.6f}}" for x in out[2:]))
"""


def summary(name: str, values: list[float]) -> str:
    values = sorted(values)
    p50 = statistics.median(values)
    p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
    return f"{name:<22}{p50 * 1000:>10.1f} ms{p95 * 1000:>10.1f} ms{len(values):>6}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    with QemuFleet(guests=1) as fleet:
        guest = fleet.hosts[0]
        rc, out = guest.vm.run([sys.executable, "-c", GUEST_FORK_EXEC, str(args.runs)], timeout=300)
        if rc != 0:
            print(out, file=sys.stderr)
            return 1
        fork_exec = [float(x) for x in out.split()[-args.runs :]]

        assert fleet.pki is not None
        controller_bundle = fleet.pki.directory / "controller"
        staged = stage_bundle(guest.vm, controller_bundle)
        rc, out = guest.vm.run(["sh", "-c", install_bundle_script(staged, GUEST_CONTROLLER_TLS)], timeout=60)
        if rc != 0:
            print(out, file=sys.stderr)
            return 1
        with fleet.client(timeout=60.0) as client:
            container = client.create_container(f"bench-{uuid.uuid4().hex[:6]}", root=BUSYBOX_ROOT)
            controller_exec = []
            for _ in range(args.runs + 2):
                t0 = time.perf_counter()
                client.exec(container.uid, ["true"])
                controller_exec.append(time.perf_counter() - t0)
            controller_exec = controller_exec[2:]

            # The agent's certificate names 127.0.0.1, the address dialled through the port forward.
            controller = channel_credentials(TLSFiles.from_dir(controller_bundle))
            channel = grpc.secure_channel(guest.address, controller)
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            agent_start = []
            for _ in range(args.runs + 2):
                req = agent_pb2.StartProcessRequest(
                    container_uid=container.uid, process_uid=uuid.uuid4().hex, argv=["true"]
                )
                t0 = time.perf_counter()
                stub.StartProcess(req, timeout=60)
                agent_start.append(time.perf_counter() - t0)
            agent_start = agent_start[2:]
            channel.close()
            rc, out = guest.vm.run(
                [sys.executable, "-c", GUEST_START_PROCESS, str(args.runs), container.uid], timeout=600
            )
            if rc != 0:
                print(out, file=sys.stderr)
                return 1
            agent_local = [float(x) for x in out.split()[-args.runs :]]
            client.delete_container(container.uid, force=True)

    print(f"one guest under TCG (Linux {guest.vm.kernel.release}), busybox `true`, {args.runs} runs each")
    print(f"{'':22}{'p50':>13}{'p95':>13}{'runs':>6}")
    print(summary("fork+exec (in guest)", fork_exec))
    print(summary("agent StartProcess (g)", agent_local))
    print(summary("agent StartProcess", agent_start))
    print(summary("controller Exec", controller_exec))
    base = statistics.median(fork_exec)
    print(
        f"ratios to fork+exec (p50): agent in guest {statistics.median(agent_local) / base:.1f} x, "
        f"agent from host {statistics.median(agent_start) / base:.1f} x, "
        f"controller {statistics.median(controller_exec) / base:.1f} x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
