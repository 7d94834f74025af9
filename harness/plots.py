"""The report's plots (PNG, matplotlib's Agg backend): drawing only.

Everything comes from the analysis of one run.json (harness/analysis/stats.py; the sweeps from
harness/analysis/sweeps.py). PNGs are written without the `Software` tag and with fixed size and
resolution, so rebuilding a report gives identical files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .analysis.stats import decided

PNG_METADATA = {"Software": None}  # matplotlib writes its version otherwise
DPI = 100
DECIDED, UNDECIDED = "#3b75af", "#c4c4c4"
# cpu_per_op is in microseconds per operation; per byte that is unreadably small
SCALE = {"byte": (1e6, "CPU µs per MB", "throughput, MB/s", 1e-6)}


def _pyplot():
    """matplotlib's pyplot on the Agg backend, imported when a plot is drawn (it costs ~0.9 s: a
    report without plots, and every other tpbench command, never pays it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sweep(sweep: dict[str, Any], path: Path) -> None:
    """One sweep's PNG at `path`: CPU per operation and overhead against the measured rate, with 95% CI bands
    and the tracepoint/pcap crossover shaded."""
    factor, cpu_label, rate_label, rate_factor = SCALE.get(
        sweep["operation"], (1.0, f"CPU µs per {sweep['operation']}", f"measured {sweep['operation']}s/s", 1.0))
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for setting, pts in sorted(sweep["lines"].items()):
        pts = sorted(pts, key=lambda p: p["rate"])  # a line along the measured rate
        x = [p["rate"] * rate_factor for p in pts]
        y = [p["cpu"] * factor for p in pts]
        line, = left.plot(x, y, marker="o", label=setting)
        if all(p["cpu_low"] is not None for p in pts):
            left.fill_between(x, [p["cpu_low"] * factor for p in pts], [p["cpu_high"] * factor for p in pts],
                              color=line.get_color(), alpha=0.18, linewidth=0)
        over = [p for p in pts if p["overhead_pct"] is not None]  # already in rate order
        if over:
            ox = [p["rate"] * rate_factor for p in over]
            right.plot(ox, [p["overhead_pct"] for p in over], marker="o", label=setting, color=line.get_color())
            if all(p["overhead_low"] is not None for p in over):
                right.fill_between(ox, [p["overhead_low"] for p in over], [p["overhead_high"] for p in over],
                                   color=line.get_color(), alpha=0.18, linewidth=0)
    crossing = sweep["tracepoint_vs_pcap"]["crossover"]
    if crossing:
        tp = {p["value"]: p["rate"] * rate_factor for p in sweep["lines"].get("tracepoint", [])}
        xs = [tp[v] for v in crossing["between"] if v in tp]
        if len(xs) == 2:
            for axis in (left, right):
                axis.axvspan(min(xs), max(xs), color="grey", alpha=0.15, label="tracepoint/pcap crossover")
    left.set_xlabel(rate_label)
    left.set_ylabel(cpu_label + " (system-wide)")
    left.set_title(f"{sweep['workload']}: CPU per operation vs rate ({sweep['parameter']} swept)")
    right.axhline(0, color="black", linewidth=0.8)
    right.set_xlabel(rate_label)
    right.set_ylabel("CPU overhead vs no observer, %")
    right.set_title("overhead (paired per round), 95% CI bands")
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata=PNG_METADATA)
    plt.close(fig)


def plot_overheads(analysis: dict[str, Any], keys: list[str], path: Path) -> bool:
    """One panel per workload: CPU overhead per operation (%, 95% CI) of every observer."""
    panels = []
    for key in keys:
        cells = analysis["workloads"][key]["cells"]
        bars = [(c["setting"], c["overhead"]["cpu_per_op"]["percent"], c["overhead"]["cpu_per_op"]["code"])
                for label, c in cells.items() if c.get("available") and c["overhead"].get("cpu_per_op")]
        if bars:
            panels.append((key, sorted(bars, key=lambda b: b[1]["median"])))
    if not panels:
        return False
    height = sum(0.35 * len(b) + 0.9 for _, b in panels)
    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, max(2.5, height)), squeeze=False)
    for axis, (key, bars) in zip(axes[:, 0], panels):
        names = [b[0] for b in bars]
        med = [b[1]["median"] for b in bars]
        low = [b[1]["low"] if b[1]["low"] is not None else b[1]["median"] for b in bars]
        high = [b[1]["high"] if b[1]["high"] is not None else b[1]["median"] for b in bars]
        # decided verdicts in colour, undecided ones grey: a bar alone must not suggest a ranking
        colours = [DECIDED if decided(b[2]) else UNDECIDED for b in bars]
        axis.barh(range(len(bars)), med, color=colours,
                  xerr=[[m - lo for m, lo in zip(med, low)], [hi - m for m, hi in zip(med, high)]], capsize=3)
        axis.set_yticks(range(len(bars)), names, fontsize=8)
        axis.axvline(0, color="black", linewidth=0.8)
        axis.set_title(key, fontsize=9)
        axis.grid(True, axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("system-wide CPU per operation vs no observer, % (median, 95% CI); "
                           "grey: not decided")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata=PNG_METADATA)
    plt.close(fig)
    return True
