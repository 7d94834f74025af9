"""The report's plots (PNG, matplotlib's Agg backend) and the sweep data behind them.

Everything comes from analysis.py's output for one run.json. PNGs are written without the
`Software` tag and with fixed size and resolution, so rebuilding a report gives identical files.

Sweeps are found in the run, not assumed: cells of one workload whose parameters differ in exactly
one parameter (the thorough profile's churn `rate` and stream `message`) form a sweep over it.
Each backend setting measured at two or more of its points becomes one line: CPU per operation
(median, 95% CI band) against the *measured* operation rate at that point (each backend at its own
rate: an observer that slows the workload moves left).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

PNG_METADATA = {"Software": None}  # matplotlib writes its version otherwise
DPI = 100
DECIDED, UNDECIDED = "#3b75af", "#c4c4c4"
# cpu_per_op is in microseconds per operation; per byte that is unreadably small
SCALE = {"byte": (1e6, "CPU µs per MB", "throughput, MB/s", 1e-6)}


def _setting(label: str) -> str:
    return label.split("/", 1)[1] if "/" in label else label


def sweeps(analysis: dict[str, Any], operations: dict[str, str]) -> list[dict[str, Any]]:
    """[{workload, parameter, fixed, points: [{key, value}], lines: {setting: [point...]}, crossover}]."""
    by_workload: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for key, entry in analysis["workloads"].items():
        by_workload.setdefault(entry["workload"], []).append((key, entry))
    found = []
    for workload, entries in sorted(by_workload.items()):
        names = sorted({p for _, e in entries for p in e["params"]})
        for parameter in names:
            groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
            for key, entry in entries:
                fixed = {k: v for k, v in entry["params"].items() if k != parameter}
                groups.setdefault(repr(sorted(fixed.items())), []).append((key, entry))
            for _fixed, members in sorted(groups.items()):
                values = {e["params"].get(parameter) for _, e in members}
                if len(values) < 3:  # fewer than three points do not show a trend
                    continue
                found.append(_sweep(workload, parameter, members, operations.get(workload, "operation")))
    return found


def _order(entry: dict[str, Any], parameter: str) -> tuple[float, float]:
    """Points in order of the baseline's measured rate (churn's rate=0 means "as fast as possible",
    the highest, not the lowest), by the parameter where no baseline was measured."""
    base = entry["cells"].get(entry.get("baseline") or "", {})
    rate = (base.get("metrics") or {}).get("rate", {}).get("median")
    return (rate if rate is not None else float("inf"), float(entry["params"][parameter]))


def _sweep(workload: str, parameter: str, members: list[tuple[str, dict[str, Any]]], operation: str) -> dict[str, Any]:
    members = sorted(members, key=lambda m: _order(m[1], parameter))
    lines: dict[str, list[dict[str, Any]]] = {}
    for key, entry in members:
        for label, cell in entry["cells"].items():
            if not cell.get("available") or "cpu_per_op" not in cell["metrics"] or "rate" not in cell["metrics"]:
                continue
            over = cell["overhead"].get("cpu_per_op")
            lines.setdefault(_setting(label), []).append({
                "key": key, "value": entry["params"][parameter],
                "rate": cell["metrics"]["rate"]["median"],
                "cpu": cell["metrics"]["cpu_per_op"]["median"],
                "cpu_low": cell["metrics"]["cpu_per_op"]["low"], "cpu_high": cell["metrics"]["cpu_per_op"]["high"],
                "overhead_pct": over["percent"]["median"] if over else None,
                "overhead_low": over["percent"]["low"] if over else None,
                "overhead_high": over["percent"]["high"] if over else None,
            })
    lines = {s: pts for s, pts in lines.items() if len(pts) >= 2}
    return {"workload": workload, "parameter": parameter, "operation": operation,
            "points": [{"key": k, "value": e["params"][parameter]} for k, e in members],
            "lines": lines, "tracepoint_vs_pcap": _crossing(members)}


def _crossing(members: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """At each point, the analysis's paired verdict tracepoint vs pcap (default settings); a
    crossover is two decided points with opposite winners (undecided points between are kept)."""
    points = []
    for key, entry in members:
        sign, text, direction = None, "not measured at this point", None
        for c in entry.get("comparisons", []):
            a, b = _setting(c["a"]), _setting(c["b"])
            if {a, b} != {"tracepoint", "pcap"}:
                continue
            text = c["verdict"]
            low, high = c["diff_a_minus_b"]["low"], c["diff_a_minus_b"]["high"]
            if low is not None and not low <= 0 <= high:  # the 95% CI excludes 0, precise or not
                a_cheaper = high < 0
                direction = 1 if (a == "tracepoint") == a_cheaper else -1
            if c["verdict"].startswith(f"{key.split('(')[0]}/tracepoint is cheaper"):
                sign = 1
            elif c["verdict"].startswith(f"{key.split('(')[0]}/pcap is cheaper"):
                sign = -1
            else:
                sign = 0
        points.append({"key": key, "value": entry["params"].get(_param_of(members)), "sign": sign,
                       "direction": direction, "verdict": text})
    # a crossover on decided points, and the same on direction alone (the 95% CI excludes 0, its
    # half-width not yet within the verdict's bound)
    crossover, direction_crossover = _first_crossover(points, "sign"), _first_crossover(points, "direction")
    return {"points": points, "crossover": crossover, "direction_crossover": direction_crossover}


def _first_crossover(points: list[dict[str, Any]], field: str) -> dict[str, Any] | None:
    """The first two neighbouring points (among those with a winner in `field`) with opposite winners."""
    known = [p for p in points if p[field] in (1, -1)]
    for left, right in zip(known, known[1:]):
        if left[field] != right[field]:
            return {"between": [left["value"], right["value"]],
                    "cheaper_below": "tracepoint" if left[field] == 1 else "pcap",
                    "cheaper_above": "tracepoint" if right[field] == 1 else "pcap"}
    return None


def _param_of(members: list[tuple[str, dict[str, Any]]]) -> str | None:
    params = [m[1]["params"] for m in members]
    varying = [k for k in params[0] if len({repr(p.get(k)) for p in params}) > 1]
    return varying[0] if varying else None


def plot_sweep(sweep: dict[str, Any], path: Path) -> None:
    factor, cpu_label, rate_label, rate_factor = SCALE.get(
        sweep["operation"], (1.0, f"CPU µs per {sweep['operation']}", f"measured {sweep['operation']}s/s", 1.0))
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
        bars = [(_setting(label), c["overhead"]["cpu_per_op"]["percent"], c["overhead"]["cpu_per_op"]["verdict"])
                for label, c in cells.items() if c.get("available") and c["overhead"].get("cpu_per_op")]
        if bars:
            panels.append((key, sorted(bars, key=lambda b: b[1]["median"])))
    if not panels:
        return False
    height = sum(0.35 * len(b) + 0.9 for _, b in panels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, max(2.5, height)), squeeze=False)
    for axis, (key, bars) in zip(axes[:, 0], panels):
        names = [b[0] for b in bars]
        med = [b[1]["median"] for b in bars]
        low = [b[1]["low"] if b[1]["low"] is not None else b[1]["median"] for b in bars]
        high = [b[1]["high"] if b[1]["high"] is not None else b[1]["median"] for b in bars]
        # decided verdicts in colour, undecided ones grey: a bar alone must not suggest a ranking
        colours = [DECIDED if not b[2].startswith("not decided") else UNDECIDED for b in bars]
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
