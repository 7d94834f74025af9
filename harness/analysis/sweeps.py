"""Sweeps, found in the run rather than assumed: cells of one workload whose parameters differ in
exactly one parameter (the thorough profile's churn `rate` and stream `message`) form a sweep over
it. Each backend setting measured at two or more of its points becomes one line: CPU per operation
(median, 95% CI) against the *measured* operation rate at that point (each backend at its own rate:
an observer that slows the workload moves left). At each point the paired tracepoint-vs-pcap
verdict; a crossover is two decided points with opposite winners. Computed from stats.analyse()'s
output alone; harness/plots.py draws them.
"""

from __future__ import annotations

from typing import Any


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
        for cell in entry["cells"].values():
            if not cell.get("available") or "cpu_per_op" not in cell["metrics"] or "rate" not in cell["metrics"]:
                continue
            over = cell["overhead"].get("cpu_per_op")
            lines.setdefault(cell["setting"], []).append({
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
            a, b = c["a_setting"], c["b_setting"]
            if {a, b} != {"tracepoint", "pcap"}:
                continue
            text = c["verdict"]
            low, high = c["diff_a_minus_b"]["low"], c["diff_a_minus_b"]["high"]
            if low is not None and not low <= 0 <= high:  # the 95% CI excludes 0, precise or not
                a_cheaper = high < 0
                direction = 1 if (a == "tracepoint") == a_cheaper else -1
            if c["cheaper"]:
                sign = 1 if c[f"{c['cheaper']}_setting"] == "tracepoint" else -1
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
