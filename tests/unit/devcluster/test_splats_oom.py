"""An OOM-killer report (a memory limit doing its job) is not a kernel splat; other call traces are."""

from __future__ import annotations

from chital.devcluster.splats import find_splats

OOM_REPORT = [
    "[   44.445813] tr invoked oom-killer: gfp_mask=0x500cc2(GFP_HIGHUSER|__GFP_ACCOUNT), order=0",
    "[   44.446380] CPU: 1 PID: 371 Comm: tr Tainted: G           OE      6.1.0-56-amd64 #1",
    "[   44.446713] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996)",
    "[   44.447043] Call Trace:",
    "[   44.447609]  <TASK>",
    "[   44.448025]  oom_kill_process.cold+0xb/0x10",
]


def test_oom_report_is_not_a_splat() -> None:
    assert find_splats(OOM_REPORT) == []


def test_other_call_traces_still_are() -> None:
    (splat,) = find_splats(["[ 1.0] chital: something odd", "[ 1.1] Call Trace:", "[ 1.2]  <TASK>"])
    assert splat.kind == "call-trace"
    assert [s.kind for s in find_splats([*OOM_REPORT, "[ 50.0] WARNING: CPU: 0 PID: 1 at x.c:1"])] == [
        "warning"
    ]
