"""Draw the benchmark figures as PNG plots and write their markdown summary (``make bench``).

Inputs, in ``--data`` (``docs/benchmarks/data`` by default), as the benchmarks wrote them:
- ``create-threads-<N>.txt``: the output of ``bench/create_throughput.py --threads N``, one file
  per client thread count (read from its printed table: calls/s, p50, p99 of the echo and of
  each create row);
- ``scale.json``: ``bench/scale.py --json`` (figures per container count, loss detection).

Outputs, in ``--out`` (``docs/benchmarks`` by default): ``create-throughput.png`` (calls/s
against client threads, with the 0.4 x TLS echo target), ``latency.png`` (latency percentiles:
create and echo against threads; the read calls at the largest fleet), ``scale.png`` (page
latency, resident memory and restart-to-serving against the number of containers, with the
targets), and ``summary.md``, which shows them with the figures as tables. A missing input leaves
its plot out (the summary says so).

    .venv/bin/python bench/plots.py [--data docs/benchmarks/data] [--out docs/benchmarks]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt

# A row of create_throughput.py's table: name, calls/s, p50, p99, errors.
ROW = re.compile(
    r"^(?P<name>(?:echo|relay|create) \(.+?\))\s+(?P<tput>\d+)"
    r"\s+(?P<p50>[\d.]+) ms\s+(?P<p99>[\d.]+) ms\s+(?P<err>\d+)\s*$"
)

PAGE_TARGET_MS = 50
RSS_TARGET_MIB = 1024
RESTART_TARGET_S = 10
LOSS_TARGET_S = 3


def read_create_runs(data: Path) -> dict[int, dict[str, dict[str, float]]]:
    """{threads: {row name: {tput, p50, p99, err}}} from the saved create_throughput outputs."""
    runs: dict[int, dict[str, dict[str, float]]] = {}
    for path in sorted(data.glob("create-threads-*.txt")):
        threads = int(path.stem.rsplit("-", 1)[1])
        rows = {}
        for line in path.read_text().splitlines():
            found = ROW.match(line.strip())
            if found:
                rows[found["name"]] = {k: float(found[k]) for k in ("tput", "p50", "p99", "err")}
        if rows:
            runs[threads] = rows
    return dict(sorted(runs.items()))


def plot_create(runs: dict[int, dict[str, dict[str, float]]], out: Path) -> None:
    threads = list(runs)
    names = sorted({name for rows in runs.values() for name in rows})
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name in names:
        xs = [t for t in threads if name in runs[t]]
        ax.plot(xs, [runs[t][name]["tput"] for t in xs], marker="o", label=name)
    tls = "echo (TLS gRPC + token)"
    xs = [t for t in threads if tls in runs[t]]
    if xs:
        ax.plot(xs, [0.4 * runs[t][tls]["tput"] for t in xs], "k--", lw=1, label="target: 0.4 x TLS echo")
    ax.set_xscale("log", base=2)
    ax.set_xticks(threads, [str(t) for t in threads])
    ax.set_xlabel("client threads")
    ax.set_ylabel("calls/s")
    ax.set_title("Create throughput against client threads (hollow fleet, 2 cores)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "create-throughput.png", dpi=110)
    plt.close(fig)


def plot_latency(
    runs: dict[int, dict[str, dict[str, float]]], scale: dict[str, Any] | None, out: Path
) -> None:
    panels = (1 if runs else 0) + (1 if scale else 0)
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.2), squeeze=False)
    ax_iter = iter(axes[0])
    if runs:
        ax = next(ax_iter)
        threads = list(runs)
        for name in sorted({n for rows in runs.values() for n in rows}):
            xs = [t for t in threads if name in runs[t]]
            line = ax.plot(xs, [runs[t][name]["p99"] for t in xs], marker="o", label=f"{name} p99")
            ax.plot(
                xs, [runs[t][name]["p50"] for t in xs], ls=":", color=line[0].get_color(), label=f"{name} p50"
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(threads, [str(t) for t in threads])
        ax.set_xlabel("client threads")
        ax.set_ylabel("latency (ms)")
        ax.set_title("Create and echo latency at peak load")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, loc="upper left", ncol=2)
    if scale:
        ax = next(ax_iter)
        last = scale["steps"][-1]
        calls = (
            ("list by host", "list_by_host"),
            ("list by label", "list_by_label"),
            ("GetContainer", "get"),
        )
        pcts = ("p50_ms", "p90_ms", "p99_ms")
        width = 0.25
        for i, pct in enumerate(pcts):
            xs = [j + (i - 1) * width for j in range(len(calls))]
            ax.bar(xs, [last[key][pct] for _, key in calls], width, label=pct.split("_")[0])
        ax.axhline(PAGE_TARGET_MS, color="k", ls="--", lw=1, label=f"page target {PAGE_TARGET_MS} ms")
        ax.set_xticks(range(len(calls)), [name for name, _ in calls])
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"Reads at {last['containers']:,} containers, {scale['hosts']:,} hosts")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)


def plot_scale(scale: dict[str, Any], out: Path) -> None:
    steps = scale["steps"]
    xs = [s["containers"] for s in steps]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, key in (
        ("list by host", "list_by_host"),
        ("list by label", "list_by_label"),
        ("GetContainer", "get"),
    ):
        a.plot(xs, [s[key]["p99_ms"] for s in steps], marker="o", label=f"{name} p99")
    a.axhline(PAGE_TARGET_MS, color="k", ls="--", lw=1, label="page target")
    a.set_ylabel("p99 (ms)")
    a.set_title("Page latency (100 per page)")
    b.plot(xs, [s["rss_bytes"] / 2**20 for s in steps], marker="o", label="RSS")
    b.plot(xs, [s["rss_peak_bytes"] / 2**20 for s in steps], marker=".", ls=":", label="peak RSS")
    b.axhline(RSS_TARGET_MIB, color="k", ls="--", lw=1, label="target 1 GiB")
    b.set_ylabel("MiB")
    b.set_ylim(bottom=0)
    b.set_title("Controller resident memory")
    c.plot(xs, [s["restart_to_serving_s"] for s in steps], marker="o", label="restart to serving")
    c.plot(
        xs,
        [s["restart_to_serving_s"] + s["all_ready_s"] for s in steps],
        marker=".",
        ls=":",
        label="to all READY",
    )
    c.axhline(RESTART_TARGET_S, color="k", ls="--", lw=1, label="target 10 s")
    c.set_ylabel("seconds")
    c.set_ylim(bottom=0)
    c.set_title("Controller restart")
    for ax in (a, b, c):
        ax.set_xlabel(f"containers ({scale['hosts']:,} hosts)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scale.png", dpi=110)
    plt.close(fig)


def create_table(runs: dict[int, dict[str, dict[str, float]]]) -> list[str]:
    lines = ["| threads | call | calls/s | p50 | p99 | errors |", "|---:|---|---:|---:|---:|---:|"]
    for threads, rows in runs.items():
        for name, r in rows.items():
            lines.append(
                f"| {threads} | {name} | {r['tput']:.0f} | {r['p50']:.2f} ms | {r['p99']:.2f} ms "
                f"| {r['err']:.0f} |"
            )
    return lines


def scale_table(scale: dict[str, Any]) -> list[str]:
    lines = [
        "| containers | list by host p99 | list by label p99 | GetContainer p99 | RSS (peak) "
        "| restart to serving | to all READY | idle controller CPU | idle hosts CPU | sync repairs | load |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in scale["steps"]:
        rss, peak = s["rss_bytes"] / 2**20, s["rss_peak_bytes"] / 2**20
        lines.append(
            f"| {s['containers']:,} | {s['list_by_host']['p99_ms']:.1f} ms "
            f"| {s['list_by_label']['p99_ms']:.1f} ms "
            f"| {s['get']['p99_ms']:.1f} ms | {rss:.0f} MiB ({peak:.0f}) "
            f"| {s['restart_to_serving_s']:.2f} s | {s['restart_to_serving_s'] + s['all_ready_s']:.1f} s "
            f"| {s['idle_controller_cpu']:.2f} s/s | {s['idle_hosts_cpu']:.2f} s/s | {s['sync_repairs']:.0f} "
            f"| {s['load']} |"
        )
    return lines


def verdict(ok: bool) -> str:
    return "holds" if ok else "missed"


def targets_table(scale: dict[str, Any]) -> list[str]:
    last = scale["steps"][-1]
    rows = [
        (
            "ListContainers p99, by host",
            f"{last['list_by_host']['p99_ms']:.1f} ms",
            "≤ 50 ms",
            last["list_by_host"]["p99_ms"] <= PAGE_TARGET_MS,
        ),
        (
            "ListContainers p99, by label",
            f"{last['list_by_label']['p99_ms']:.1f} ms",
            "≤ 50 ms",
            last["list_by_label"]["p99_ms"] <= PAGE_TARGET_MS,
        ),
        (
            "controller RSS (peak)",
            f"{last['rss_peak_bytes'] / 2**20:.0f} MiB",
            "≤ 1 GiB",
            last["rss_peak_bytes"] / 2**20 <= RSS_TARGET_MIB,
        ),
        (
            "restart to serving",
            f"{last['restart_to_serving_s']:.2f} s",
            "≤ 10 s",
            last["restart_to_serving_s"] <= RESTART_TARGET_S,
        ),
    ]
    loss = scale.get("loss")
    if loss:
        value = loss["all_not_ready_s"]
        rows.append(
            (
                f"{loss['hosts']} hosts lost at once: all NOT_READY",
                f"{value:.2f} s" if value is not None else "not all detected",
                "≤ 3 s",
                value is not None and value <= LOSS_TARGET_S,
            )
        )
    lines = ["| figure | measured | target | |", "|---|---:|---|---|"]
    lines += [f"| {name} | {value} | {target} | {verdict(ok)} |" for name, value, target, ok in rows]
    return lines


def write_summary(
    runs: dict[int, dict[str, dict[str, float]]], scale: dict[str, Any] | None, out: Path
) -> None:
    lines = [
        "# Benchmark plots",
        "",
        "Written by `make bench` (`bench/plots.py`) from the figures of one run on the project's",
        "development machine: 2 cores, shared with other jobs (the load average is printed beside the",
        "figures). Nothing here is a timed assertion; rerun `make bench` and commit the new plots to",
        "replace them. What each benchmark measures, and how: [Benchmarks](../benchmarks.md).",
        "",
    ]
    if scale:
        last = scale["steps"][-1]
        lines += [
            f"## Scale: {scale['hosts']:,} hollow hosts, up to {last['containers']:,} containers "
            f"({scale['database']})",
            "",
            "`bench/scale.py`: each host a real gRPC server on its own loopback port "
            f"({scale['hosts_per_process']} per process); containers seeded on the agents and in the "
            "database alike; one client thread times every call.",
            "",
            *targets_table(scale),
            "",
            "![page latency, memory and restart time against containers](scale.png)",
            "",
            *scale_table(scale),
            "",
        ]
        loss = scale.get("loss")
        if loss:
            first = loss["first_not_ready_s"]
            lines += [
                f"Loss detection: {loss['hosts']} hosts killed at once (SIGKILL of their process); "
                f"first NOT_READY after {first:.2f} s, all after "
                + (f"{loss['all_not_ready_s']:.2f} s" if loss["all_not_ready_s"] is not None else "—")
                + f" (load {loss['load']}).",
                "",
            ]
    else:
        lines += ["## Scale", "", "No `scale.json` in the data directory: not plotted.", ""]
    if runs:
        lines += [
            "## Create throughput and latency",
            "",
            "`bench/create_throughput.py --threads N`: a bare gRPC echo, a relay (a call that makes one",
            "call to the echo server: the ceiling of a create that waits for its agent) and",
            "`CreateContainer` through the controller to hollow agents, driven by the same client",
            "threads in the same run.",
            "",
            "![create and echo throughput against client threads](create-throughput.png)",
            "",
            "![latency percentiles](latency.png)",
            "",
            *create_table(runs),
            "",
        ]
    else:
        lines += [
            "## Create throughput",
            "",
            "No `create-threads-*.txt` in the data directory: not plotted.",
            "",
        ]
        if scale:
            lines += ["![latency percentiles](latency.png)", ""]
    (out / "summary.md").write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("docs/benchmarks/data"))
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = read_create_runs(args.data)
    scale_path = args.data / "scale.json"
    scale = json.loads(scale_path.read_text()) if scale_path.exists() else None
    if runs:
        plot_create(runs, args.out)
    if runs or scale:
        plot_latency(runs, scale, args.out)
    if scale:
        plot_scale(scale, args.out)
    write_summary(runs, scale, args.out)
    written = [*sorted(p.name for p in args.out.glob("*.png")), "summary.md"]
    print(f"wrote {', '.join(written)} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
