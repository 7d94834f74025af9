"""Statistics of the toggled measurement, from run.json's raw windows alone (harness/toggle.py).

Method (stated, so a reader can judge it):
- A window's cost is the machine's CPU over its measured part (root cpuacct, ns-exact), minus
  every observer process's own CPU in it, plus the switched-on observer's own CPU over its whole
  on-period (switch-on to the next switch-on: its settle, its window, its drain after the switch
  off) spread over the on-period's traffic time. So a consumer's work is charged to the window
  whose events it handled, never to a neighbour's, even when it finishes after the switch-off.
  Cost per operation = cost / operations counted in the window.
- Every arm runs once per cycle in a random order; a comparison A - B takes one difference per
  cycle (B = the mean of both no-observer windows when B is the baseline), and its 95% CI is
  Student's t on those per-cycle differences (n - 1 degrees of freedom): cycles are short and
  randomized, so slow drift cancels within a cycle and the differences are close to independent
  (tests/unit/test_toggle_stats.py simulates drift plus autocorrelated noise and finds ~95% coverage).
  A group may name the median of the differences instead (`--estimator median`), with the sign
  test's distribution-free interval (order statistics; coverage >= 95% whatever the noise's
  shape); each group names its estimator.
- A stalled window (one 0.1 s slice of the live counter below STALL_RATIO of the window's median
  slice rate) is left out, but only while the stalls spread over the arms as chance would
  (binomial test): stalls that follow an arm are its cost, and are kept.
- Percentages are of the no-observer arms' mean cost per operation.
- A cycle whose windows' mean steal time exceeds the run's median cycle by more than STEAL_LIMIT
  of their CPU capacity, or whose CPU outside the run's own cgroup (a neighbour, a daemon) exceeds
  the median cycle's by more than FOREIGN_LIMIT, is excluded, every arm of it alike (a hypervisor taking the CPUs away makes every operation dearer, measured:
  +20-80% per operation at 25-35% steal; per window it would be biased, since a window that leaves
  vCPUs idle shows more steal than a busy one), and the exclusions are counted.
- Decided: CI half-width <= DECIDE_PP percentage points; then A is cheaper (CI below 0), B is
  cheaper (above 0), or no difference larger than the CI's bound (CI contains 0). Wider: not
  decided. The A/A control (the baseline against its twin, both with nothing attached) must come
  out within +-2 pp with a half-width <= 2 pp; its CI misses 0 about one run in twenty by chance.
"""

from __future__ import annotations

import math
import statistics
from typing import Any


DECIDE_PP = 2.0
CONFIDENCE = 0.95
STEAL_LIMIT = 0.10  # share of the window's CPU capacity (cpus x wall time)
FOREIGN_LIMIT = 0.05  # CPU outside the run's cgroup: a neighbour, a daemon, kernel threads
STALL_RATIO = 0.4  # a window stalled: one 0.1 s slice ran below this share of its median slice rate
STALL_P = 0.01  # stalls follow an arm (binomial test, one-sided) when less likely than this by chance
BASELINE_ROLES = ("baseline", "aa")
STATE_HOOKS = {"state", "destroy"}  # what tcpstates/tcplife need


def level_of(backend: str, params: dict[str, Any]) -> str | None:
    """`state` (what tcpstates needs / a SYN-FIN-RST capture) or `full` (every hook / every header)."""
    if backend.startswith("tracepoint"):
        hooks = str(params.get("hooks", "all"))
        return "state" if hooks != "all" and set(hooks.split("+")) <= STATE_HOOKS else "full"
    if backend == "pcap":
        return params.get("filter")
    return None


def consumer_of(backend: str, params: dict[str, Any]) -> str | None:
    """Who turns the observer's raw data into events: "c", "python", or "kernel" (maps read once)."""
    if backend.startswith("tracepoint"):
        if backend.endswith("empty") or params.get("mode") == "aggregate":
            return "kernel"
        return "python" if params.get("consumer") == "python" else "c"
    if backend == "pcap":
        return params.get("consumer")
    return None


def window_costs(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Per window: operations, cost (ns), cost per operation (us), steal share, exclusion."""
    windows = entry.get("windows") or []
    hz, cpus = entry.get("hz", 100), entry.get("cpus", 1)
    out = []
    for i, w in enumerate(windows):
        start, end, on = w["start"], w["end"], w["on"]
        closing = windows[i + 1]["on"] if i + 1 < len(windows) else entry.get("final")
        if closing is None or closing["t"] < end["t"]:
            closing = end
        wall = end["t"] - start["t"]
        ops = end["ops"] - start["ops"]
        if start["cpu_ns"] is not None and end["cpu_ns"] is not None:
            cpu_ns = end["cpu_ns"] - start["cpu_ns"]
        else:  # no cpuacct: /proc/stat busy ticks (user..softirq, steal excluded)
            cpu_ns = sum(end["stat"][k] - start["stat"][k] for k in (0, 1, 2, 5, 6)) * 1e9 / hz
        observers = sum(end["tasks"][label] - start["tasks"][label] for label in end["tasks"])
        own_period = (closing["tasks"][w["arm"]] - on["tasks"][w["arm"]]) if w["arm"] in on["tasks"] else 0
        traffic_s = end["t"] - on["t"]
        attributed = own_period * wall / traffic_s if traffic_s > 0 else 0
        cost = cpu_ns - observers + attributed
        steal = (end["stat"][7] - start["stat"][7]) / (hz * wall * cpus) if wall > 0 else 0.0
        foreign = None  # the host's CPU outside the run's cgroup, as a share of the CPUs' capacity
        if start.get("run_ns") is not None and end.get("run_ns") is not None and start["cpu_ns"] is not None \
                and end["cpu_ns"] is not None and wall > 0:
            foreign = (cpu_ns - (end["run_ns"] - start["run_ns"])) / (wall * cpus * 1e9)
        excluded = "no operations" if ops <= 0 else None
        period_ops = closing["ops"] - on["ops"]
        stalled = _stalled(start, w.get("slices"), end)
        out.append({
            "cycle": w["cycle"], "arm": w["arm"], "ops": ops, "wall_s": wall, "rate": ops / wall if wall else None,
            "cost_ns": cost, "cpu_ns": cpu_ns, "observer_ns": observers, "attributed_ns": attributed,
            "own_period_ns": own_period, "period_ops": period_ops,
            "cpu_per_op_us": cost / ops / 1e3 if ops > 0 else None, "steal_share": steal,
            "foreign_share": foreign, "stalled": stalled, "excluded": excluded,
            "events": (w.get("off") or {}).get("events"), "lost": (w.get("off") or {}).get("lost"),
            "run_time_ns": (w.get("off") or {}).get("run_time_ns"),
        })
    # Steal is a host condition, but it is larger in windows that leave vCPUs idle (a busy arm
    # shows less of it): judged per window it would exclude light arms more often than heavy ones.
    # So whole cycles go, for every arm alike.
    # The bar is relative to the run's own level: a host with steady steal is flagged (report,
    # `median_steal`), not emptied; a burst above it is what distorts a cycle.
    # A neighbour (CPU outside the run's cgroup) that appears mid-run is judged the same way.
    for key, limit, reason in (("steal_share", STEAL_LIMIT, "steal"), ("foreign_share", FOREIGN_LIMIT, "foreign")):
        by_cycle: dict[int, list[float]] = {}
        for c in out:
            if c[key] is not None:
                by_cycle.setdefault(c["cycle"], []).append(c[key])
        cycle_mean = {cycle: statistics.fmean(v) for cycle, v in by_cycle.items()}
        bar = steal_bar(list(cycle_mean.values()), limit)
        for c in out:
            if not c["excluded"] and cycle_mean.get(c["cycle"], 0.0) > bar:
                c["excluded"] = reason
    # A stall (the workload's rate collapsing for a slice, as stream's does every ~10 s here with
    # nothing attached) is a host event landing on whichever arm is on: that window goes (its
    # cycle's other comparisons keep theirs), unless stalls follow one arm: then they are the
    # arm's own cost, kept, and the group says so (stall_rule).
    if _stalls_exogenous(out):
        for c in out:
            if not c["excluded"] and c["stalled"]:
                c["excluded"] = "stall"
    return out


def _stalled(start: dict[str, Any], slices: list[list[float]] | None, end: dict[str, Any]) -> bool | None:
    """Whether one slice of the window ran below STALL_RATIO of the window's median slice rate."""
    if not slices:
        return None
    points = [(start["t"], start["ops"]), *[(t, ops) for t, ops in slices], (end["t"], end["ops"])]
    rates = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(points, points[1:]) if b[0] - a[0] >= 0.05]
    if len(rates) < 3:
        return None
    return min(rates) < STALL_RATIO * statistics.median(rates)


def stall_counts(costs: list[dict[str, Any]]) -> dict[str, int]:
    """arm -> how many of its windows stalled."""
    counts: dict[str, int] = {}
    for c in costs:
        counts[c["arm"]] = counts.get(c["arm"], 0) + bool(c["stalled"])
    return counts


def _stalls_exogenous(costs: list[dict[str, Any]]) -> bool:
    """Stalls spread over the arms as chance spreads them (every arm has one window per cycle):
    no arm holds more than a one-sided binomial test at STALL_P allows."""
    counts = stall_counts(costs)
    total, arms = sum(counts.values()), len(counts)
    if not total:
        return False
    worst = max(counts.values())
    from scipy import stats as scipy_stats  # here, not at import (t_interval says why)

    return float(scipy_stats.binom.sf(worst - 1, total, 1 / arms)) * arms >= STALL_P  # Bonferroni over arms


def steal_bar(cycle_shares: list[float], limit: float = STEAL_LIMIT) -> float:
    """Cycles above the median cycle's share (steal, or foreign CPU) plus `limit` are excluded."""
    return (statistics.median(cycle_shares) if cycle_shares else 0.0) + limit


def t_interval(diffs: list[float]) -> tuple[float, float | None, float | None]:
    """Mean and 95% Student-t interval of independent differences (None with fewer than 2)."""
    n = len(diffs)
    mean = statistics.fmean(diffs) if diffs else math.nan
    if n < 2:
        return mean, None, None
    from scipy import stats as scipy_stats  # here, not at import: scipy.stats costs every CLI call ~1 s

    half = float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * statistics.stdev(diffs) / math.sqrt(n)
    return mean, mean - half, mean + half


def median_interval(diffs: list[float]) -> tuple[float, float | None, float | None]:
    """Median and distribution-free 95% interval of independent differences: order statistics
    d(k) and d(n-k+1), k the largest with P(Binomial(n, 1/2) < k) <= 2.5% (the sign test's;
    coverage >= 95% whatever the noise's shape). None below 6 differences (no such k)."""
    n = len(diffs)
    median = statistics.median(diffs) if diffs else math.nan
    ordered = sorted(diffs)
    from scipy import stats as scipy_stats  # here, not at import (t_interval says why)

    k = 0
    while k + 1 <= n and float(scipy_stats.binom.cdf(k, n, 0.5)) <= (1 - CONFIDENCE) / 2:
        k += 1  # P(B <= k-1) <= alpha/2 holds for the new k
    if k < 1:
        return median, None, None
    return median, ordered[k - 1], ordered[n - k]


ESTIMATORS = {"mean": t_interval, "median": median_interval}


def _by_cycle(costs: list[dict[str, Any]], labels: list[str]) -> dict[int, float]:
    """cycle -> mean cost per operation of these arms' usable windows in it."""
    values: dict[int, list[float]] = {}
    for c in costs:
        if c["arm"] in labels and not c["excluded"] and c["cpu_per_op_us"] is not None:
            values.setdefault(c["cycle"], []).append(c["cpu_per_op_us"])
    return {cycle: statistics.fmean(v) for cycle, v in values.items()}


def compare(costs: list[dict[str, Any]], a: list[str], b: list[str], scale_us: float,
            decide_pp: float = DECIDE_PP, estimator: str = "mean") -> dict[str, Any]:
    """A - B in us per operation and in percent of `scale_us`, paired per cycle."""
    va, vb = _by_cycle(costs, a), _by_cycle(costs, b)
    diffs = [va[c] - vb[c] for c in sorted(set(va) & set(vb))]
    mean, low, high = ESTIMATORS[estimator](diffs)

    def pct(v: float | None) -> float | None:
        return None if v is None or not scale_us else v / scale_us * 100

    half = None if low is None else pct((high - low) / 2)
    decided = half is not None and half <= decide_pp
    if not decided:
        outcome = "not_decided"
    elif high < 0:
        outcome = "a_cheaper"
    elif low > 0:
        outcome = "b_cheaper"
    else:
        outcome = "no_difference"
    return {"n": len(diffs), "diff_us": mean if diffs else None, "ci_us": [low, high],
            "diff_pct": pct(mean) if diffs else None, "ci_pct": [pct(low), pct(high)],
            "half_width_pp": half, "decided": decided, "outcome": outcome, "method": "toggle",
            "estimator": estimator}


def headline_pairs(arms: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Tracepoint against pcap at the same level and with the same kind of consumer (c with c,
    python with python); at the same level if no consumer matches; any tracepoint x pcap pair if
    no level matches either. Empty if the group has no tracepoint and pcap arms."""
    observers = [a for a in arms if a["role"] == "observer"]
    tps = [a for a in observers if a["backend"] == "tracepoint"]
    pcaps = [a for a in observers if a["backend"] == "pcap"]
    matched = [(t, p) for t in tps for p in pcaps
               if t["level"] == p["level"] and t.get("consumer") == p.get("consumer")]
    levelled = [(t, p) for t in tps for p in pcaps if t["level"] == p["level"]]
    return matched or levelled or [(t, p) for t in tps for p in pcaps]


def analyse_group(entry: dict[str, Any], decide_pp: float = DECIDE_PP) -> dict[str, Any]:
    """One toggled group: each arm's cost and overhead, every observer pair, the headline pairs (tracepoint - pcap),
    the A/A control and the conservation check, with the windows left out and why."""
    arms = entry.get("arms") or []
    estimator = (entry.get("settings") or {}).get("estimator", "mean")
    costs = window_costs(entry)
    base_labels = [a["label"] for a in arms if a["role"] in BASELINE_ROLES]
    base_values = [c["cpu_per_op_us"] for c in costs if c["arm"] in base_labels and not c["excluded"]
                   and c["cpu_per_op_us"] is not None]
    scale = statistics.fmean(base_values) if base_values else 0.0
    result: dict[str, Any] = {
        "workload": entry.get("workload"), "params": entry.get("params"), "status": entry.get("status"),
        "cycles": entry.get("cycles", len({c["cycle"] for c in costs})), "windows": len(costs),
        "stop_reason": entry.get("stop_reason"), "baseline_cpu_per_op_us": scale, "estimator": estimator,
        "excluded": {reason: sum(1 for c in costs if c["excluded"] == reason)
                     for reason in ("steal", "foreign", "stall", "no operations")},
        "stalls": stall_counts(costs),
        "stall_rule": ("stalls spread over the arms by chance: those windows left out" if _stalls_exogenous(costs)
                       else "stalls follow an arm: kept as its cost" if any(stall_counts(costs).values())
                       else "no stall"),
        "exclusion_rule": f"a cycle whose windows' mean steal share exceeds the median cycle's by more than "
                          f"{STEAL_LIMIT:.0%} of their CPU capacity, or whose CPU outside the run's cgroup "
                          f"(foreign) exceeds the median cycle's by more than {FOREIGN_LIMIT:.0%}, is left out "
                          "for every arm; a stalled window (a 0.1 s slice below "
                          f"{STALL_RATIO:.0%} of its median rate) is left out while stalls spread over the "
                          "arms as chance would; a window that counted no operation is left out",
        "median_steal_pct": 100 * statistics.median([c["steal_share"] for c in costs]) if costs else None,
        "median_foreign_pct": (100 * statistics.median(f) if (f := [c["foreign_share"] for c in costs
                                                                     if c["foreign_share"] is not None]) else None),
        "arms": {}, "comparisons": [], "headline": [],
    }
    if not arms or not costs:
        result["aa"] = None
        return result
    for arm in arms:
        mine = [c for c in costs if c["arm"] == arm["label"] and not c["excluded"]]
        row: dict[str, Any] = {"backend": arm["backend"], "role": arm["role"], "level": arm.get("level"),
                               "windows": len(mine)}
        if mine:
            row["cpu_per_op_us"] = statistics.fmean(c["cpu_per_op_us"] for c in mine)
            row["rate"] = statistics.fmean(c["rate"] for c in mine)
            ops = sum(c["period_ops"] for c in mine)
            events = [c["events"] for c in mine if c["events"] is not None]
            row["events_per_op"] = sum(events) / ops if ops and events else None
            # None: the kernel cannot count this observer's skipped runs (tp and kprobe before 6.7)
            row["lost"] = None if any(c["lost"] is None for c in mine) else sum(c["lost"] for c in mine)
        if arm["role"] == "observer":
            row["overhead"] = compare(costs, [arm["label"]], base_labels, scale, decide_pp, estimator)
            row["cross_check"] = _cross_check(mine, row["overhead"])
        result["arms"][arm["label"]] = row
    aa_labels = [a["label"] for a in arms if a["role"] == "aa"]
    main = [a["label"] for a in arms if a["role"] == "baseline"]
    aa = compare(costs, aa_labels, main, scale, decide_pp, estimator) if aa_labels and main else None
    result["aa"] = aa and {"workload": entry.get("workload"), "a": aa_labels[0], "b": main[0], **aa}
    observers = [a for a in arms if a["role"] == "observer"]
    for i, a in enumerate(observers):
        for b in observers[i + 1:]:
            result["comparisons"].append({"a": a["label"], "b": b["label"],
                                          **compare(costs, [a["label"]], [b["label"]], scale, decide_pp, estimator)})
    for a, b in headline_pairs(arms):
        found = next(c for c in result["comparisons"] if {c["a"], c["b"]} == {a["label"], b["label"]})
        if found["a"] != a["label"]:  # the headline always says tracepoint - pcap
            found = {"a": a["label"], "b": b["label"],
                     **compare(costs, [a["label"]], [b["label"]], scale, decide_pp, estimator)}
        consumers = {a.get("consumer"), b.get("consumer")}
        result["headline"].append({"workload": entry.get("workload"),
                                   "level": a["level"] if a["level"] == b["level"] else "mixed",
                                   "consumer": consumers.pop() if len(consumers) == 1 else
                                   f"{a.get('consumer')}/{b.get('consumer')}", **found})
    result["conservation"] = _conservation(entry, costs)
    return result


def _cross_check(windows: list[dict[str, Any]], overhead: dict[str, Any]) -> dict[str, Any] | None:
    """Bottom-up: the programs' own time (bpf_stats) plus the consumer's CPU, per operation,
    against the measured overhead. The kernel's tracepoint dispatch and bpf_stats' own clock
    reads are outside run_time_ns, so bottom-up is expected a little below measured."""
    usable = [w for w in windows if w["run_time_ns"] is not None and w["period_ops"] > 0]
    if not usable:
        return None
    ops = sum(w["period_ops"] for w in usable)
    kernel_us = sum(w["run_time_ns"] for w in usable) / ops / 1e3
    consumer_us = sum(w["own_period_ns"] for w in usable) / ops / 1e3
    events = sum(w["events"] or 0 for w in usable)
    return {"kernel_us_per_op": kernel_us, "consumer_us_per_op": consumer_us,
            "bottom_up_us_per_op": kernel_us + consumer_us, "measured_us_per_op": overhead["diff_us"],
            "ns_per_event": sum(w["run_time_ns"] for w in usable) / events if events else None}


def _conservation(entry: dict[str, Any], costs: list[dict[str, Any]]) -> dict[str, Any]:
    """Windows plus margins against the whole measurement's CPU, and observer CPU outside its own
    on-periods (work that leaked to a neighbour's window or was done while off)."""
    windows = entry["windows"]
    first, final = windows[0]["on"], entry.get("final") or windows[-1]["end"]
    if first["cpu_ns"] is None or final["cpu_ns"] is None:
        return {"checked": False, "why": "no cpuacct"}
    total = final["cpu_ns"] - first["cpu_ns"]
    measured = sum(w["end"]["cpu_ns"] - w["start"]["cpu_ns"] for w in windows)
    points = [p for w in windows for p in (w["on"], w["start"], w["end"])] + [final]
    summed = sum(b["cpu_ns"] - a["cpu_ns"] for a, b in zip(points, points[1:]))
    leaks = {}
    for label in final["tasks"]:
        own_total = final["tasks"][label] - first["tasks"][label]
        own_periods = sum(c["own_period_ns"] for c in costs if c["arm"] == label)
        leaks[label] = {"own_cpu_ns": own_total, "outside_own_periods_ns": own_total - own_periods,
                        "outside_pct": (own_total - own_periods) / own_total * 100 if own_total else 0.0}
    return {"checked": True, "total_cpu_ns": total, "windows_cpu_ns": measured,
            "windows_share_pct": measured / total * 100 if total else None,
            "windows_plus_margins_error_pct": abs(summed - total) / total * 100 if total else None,
            "conserved": bool(total) and abs(summed - total) <= 0.01 * total, "observer_cpu": leaks}


def progress_widths(result: dict[str, Any]) -> dict[str, float | None]:
    """What the adaptive stop waits for: the headline comparisons' and the A/A control's half-widths."""
    widths = {f"{h['a']} vs {h['b']}": h["half_width_pp"] for h in result.get("headline", [])}
    if not widths:  # no tracepoint x pcap pair: every observer against the baseline
        widths = {f"{label} vs none": row["overhead"]["half_width_pp"]
                  for label, row in result.get("arms", {}).items() if "overhead" in row}
    if result.get("aa"):
        widths["A/A"] = result["aa"]["half_width_pp"]
    return widths


def analyse(run: dict[str, Any], decide_pp: float = DECIDE_PP) -> dict[str, Any]:
    """Every toggled group of a run, and the run-level `headline` and `aa` lists."""
    groups = [analyse_group(entry, decide_pp) for entry in run.get("toggle") or [] if entry.get("windows")]
    return {"method": __doc__.split("Method (stated, so a reader can judge it):")[1].strip(),
            "groups": groups,
            "headline": [h for g in groups for h in g["headline"]],
            "aa": [g["aa"] for g in groups if g.get("aa")]}
