"""Statistics over a run record: per-cell metrics with confidence intervals, overhead against the
no-observer baseline, and pairwise verdicts. Reads only run.json's raw trials.

Method (stated, so a reader can judge it):
- Each trial gives one sample per metric. Trials of all cells of a workload are interleaved in
  rounds (round t of the baseline ran next to round t of every observer), so overhead is computed
  on *paired* differences, observer_t - baseline_t, which cancels drift that hits a whole round.
- Location is the median (robust to the outliers a shared 2-core machine produces; no trial is
  discarded, the count beyond 1.5 IQR is reported). 95% confidence intervals come from scipy's
  bootstrap (percentile method, 4000 resamples, fixed seed: the report is reproducible).
- Overhead in percent is relative to the baseline's median. A verdict needs the CI to exclude 0
  and its half-width to be at most `decide_pp` percentage points; otherwise it says "not decided,
  run longer" rather than ranking on noise.
- A trial during which the host's CPU outside the run's cgroup (a neighbour, a daemon, kernel
  threads) exceeded FOREIGN_TRIAL_LIMIT of its CPUs' capacity is left out of every metric (of
  every pairing it was in) and counted under `excluded_foreign`.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any, Callable

from ..record import BASELINE

CONFIDENCE = 0.95
RESAMPLES = 4000
SEED = 20261126
DECIDE_PP = 2.0  # a verdict needs a CI half-width of at most this many percentage points
FOREIGN_TRIAL_LIMIT = 0.10  # share of the CPUs' capacity used outside the run over the measured loop


def foreign_trial(trial: dict[str, Any]) -> bool:
    """Whether CPU outside the run's cgroup exceeded FOREIGN_TRIAL_LIMIT of the CPUs' capacity in the trial."""
    return (trial.get("foreign_share") or 0.0) > FOREIGN_TRIAL_LIMIT


def observer_cpu_s(details: dict[str, Any]) -> float | None:
    """The observer's own user-space CPU (consumer thread or process), whatever its shape."""
    value = details.get("consumer_cpu_s")
    if isinstance(value, dict):
        return value.get("capturing", value.get("total"))
    return value


def deferred_cpu_s(trial: dict[str, Any]) -> float:
    """CPU the observer spent after the measured loop turning its data into events (Attachment.loop_ended)."""
    return ((trial.get("observed") or {}).get("details") or {}).get("deferred_cpu_s") or 0.0


# metric name -> (unit, how to read it from a trial); lower is better for all but the rate
METRICS: dict[str, tuple[str, Callable[[dict[str, Any]], float | None]]] = {
    "rate": ("ops/s", lambda t: t.get("operation_rate")),
    # CPU: the scheduler's exact task runtime where the trial has it (counters.cpu_seconds_delta),
    # else /proc/stat's ticks (older records, kernels without cgroup v1 cpuacct)
    # plus the observer's deferred work (its drain, decode or file parse after the loop: no cell
    # may look cheap because its work happens after the clock stops); 0 in older records
    "cpu_per_op": ("us", lambda t: (t["cpu_seconds"].get("cpu", t["cpu_seconds"]["busy"]) + deferred_cpu_s(t)) * 1e6
                   / t["operations"] if t["operations"] else None),
    "deferred_cpu_per_op": ("us", lambda t: deferred_cpu_s(t) * 1e6 / t["operations"]
                            if t["operations"] and "deferred_cpu_s" in t["observed"].get("details", {}) else None),
    "tick_cpu_per_op": ("us", lambda t: t["cpu_seconds"]["busy"] * 1e6 / t["operations"] if t["operations"] else None),
    "softirq_per_op": ("us", lambda t: t["cpu_seconds"]["softirq"] * 1e6 / t["operations"] if t["operations"] else None),
    "latency_p50": ("us", lambda t: (t.get("latency") or {}).get("p50", 0) / 1e3 or None),
    "latency_p99": ("us", lambda t: (t.get("latency") or {}).get("p99", 0) / 1e3 or None),
    "observer_cpu_per_op": ("us", lambda t: (c * 1e6 / t["operations"]) if (c := observer_cpu_s(t["observed"]["details"])) is not None and t["operations"] else None),
    "kernel_ns_per_event": ("ns", lambda t: (t["observed"]["details"].get("bpf_stats") or {}).get("ns_per_event")),
}


@dataclass(frozen=True)
class Estimate:
    median: float
    low: float | None  # 95% CI; None with fewer than 3 samples
    high: float | None
    n: int
    outliers: int  # samples beyond 1.5 IQR (kept: the median is robust to them)

    @property
    def half_width(self) -> float | None:
        return None if self.low is None else (self.high - self.low) / 2

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "half_width": self.half_width}


def estimate(samples: list[float]) -> Estimate | None:
    """Median, bootstrap 95% CI of the median, and how many lie beyond 1.5 IQR (Nones dropped); None if empty.

    The CI is None with fewer than 3 samples, and the median itself when 3 or more are all equal.
    """
    samples = [float(s) for s in samples if s is not None]
    if not samples:
        return None
    # numpy and scipy.stats are imported here, where 3 or more samples need them (quartiles from
    # 4), not at import: they would cost every tpbench command ~1.5 s (a one-trial run never needs them)
    median = statistics.median(samples)
    outliers = 0  # Tukey's fences need quartiles: none below 4 samples (every sample off the median was one)
    if len(samples) >= 4:
        import numpy as np

        q1, q3 = np.percentile(samples, [25, 75])
        outliers = sum(1 for s in samples if s < q1 - 1.5 * (q3 - q1) or s > q3 + 1.5 * (q3 - q1))
    if len(samples) < 3 or len(set(samples)) == 1:
        low = high = (median if len(set(samples)) == 1 and len(samples) >= 3 else None)
        return Estimate(median, low, high, len(samples), outliers)
    import numpy as np
    from scipy import stats as scipy_stats

    result = scipy_stats.bootstrap(
        (np.asarray(samples),), np.median, confidence_level=CONFIDENCE, n_resamples=RESAMPLES,
        method="percentile", random_state=np.random.default_rng(SEED),
    )
    return Estimate(median, float(result.confidence_interval.low), float(result.confidence_interval.high),
                    len(samples), outliers)


def _samples(cell: dict[str, Any], metric: str) -> dict[int, float]:
    """trial index -> value, ok trials only."""
    read = METRICS[metric][1]
    values = {}
    for trial in cell["trials"]:
        if trial.get("status") != "ok" or foreign_trial(trial):
            continue
        try:
            value = read(trial)
        except (KeyError, TypeError, ZeroDivisionError):
            value = None
        if value is not None:
            values[trial["index"]] = value
    return values


def cell_label(cell: dict[str, Any]) -> str:
    """`churn/tracepoint[mode=aggregate]`: the workload, the backend and its non-default parameters."""
    return cell.get("label") or f"{cell['workload']}/{cell['backend']}"


def setting_label(cell: dict[str, Any]) -> str:
    """The backend and its non-default parameters: `tracepoint[mode=aggregate]`. Records carry it
    as "setting" (from 2026-12-05); in older ones it is the label's part after the workload."""
    if "setting" in cell:
        return cell["setting"]
    label = cell_label(cell)
    return label.split("/", 1)[1] if "/" in label else cell["backend"]


def _verdict_fields(verdict: dict[str, Any]) -> dict[str, Any]:
    """An overhead's verdict as analysis.json keeps it: the code, the direction, the sentence."""
    return {"verdict": verdict["sentence"], "code": verdict["code"], "direction": verdict["direction"]}


def _paired(a: dict[int, float], b: dict[int, float]) -> list[float]:
    return [a[i] - b[i] for i in sorted(set(a) & set(b))]


# Verdict codes: what code reads. The sentence beside each ("verdict") is made for display only.
TOO_FEW, NOT_DECIDED, NO_DIFFERENCE, COSTS_MORE, COSTS_LESS = (
    "too_few_trials", "not_decided", "no_difference", "costs_more", "costs_less")


def judge(diff: Estimate | None, scale: float, decide_pp: float, lower_is_better: bool = True) -> dict[str, Any]:
    """{"code", "direction", "sentence"}: direction is "above"/"below" when an undecided CI still
    excludes 0 (the sign known, the precision not yet), else None."""
    if diff is None or diff.low is None:
        return {"code": TOO_FEW, "direction": None,
                "sentence": "not decided: too few paired trials (need 3 or more)"}
    half_pp = diff.half_width / scale * 100 if scale else float("inf")
    if half_pp > decide_pp:
        text = f"not decided: CI half-width {half_pp:.1f} pp > {decide_pp:g} pp, run longer"
        direction = None
        if not diff.low <= 0 <= diff.high:  # imprecise, but the sign is known: say so, apart
            direction = "above" if diff.low > 0 else "below"
            text += f"; direction only: {direction} 0 at {CONFIDENCE:.0%} confidence"
        return {"code": NOT_DECIDED, "direction": direction, "sentence": text}
    if diff.low <= 0 <= diff.high:
        return {"code": NO_DIFFERENCE, "direction": None, "sentence": "no significant difference"}
    worse = diff.low > 0 if lower_is_better else diff.high < 0
    code = COSTS_MORE if worse else COSTS_LESS
    return {"code": code, "direction": None, "sentence": code.replace("_", " ")}


def decided(code: str) -> bool:
    """Whether a verdict code is a decision (neither too few trials nor not decided)."""
    return code not in (TOO_FEW, NOT_DECIDED)


def analyse(run: dict[str, Any], decide_pp: float = DECIDE_PP) -> dict[str, Any]:
    """Per workload: each cell's metrics, its overhead against the baseline, and pairwise verdicts."""
    by_workload: dict[str, list[dict[str, Any]]] = {}
    for cell in run["cells"]:
        by_workload.setdefault(workload_key(cell), []).append(cell)
    result: dict[str, Any] = {"method": __doc__.split("Method (stated, so a reader can judge it):")[1].strip(),
                              "decide_pp": decide_pp, "workloads": {}}
    for key, cells in by_workload.items():
        baseline = next((c for c in cells if c["backend"] == BASELINE and c.get("available", True)), None)
        entry: dict[str, Any] = {"workload": cells[0]["workload"], "params": cells[0]["params"]["workload"],
                                 "baseline": cell_label(baseline) if baseline else None, "cells": {}}
        for cell in cells:
            label = cell_label(cell)
            if not cell.get("available", True):
                entry["cells"][label] = {"backend": cell["backend"], "setting": setting_label(cell), "available": False,
                                         "reason": cell.get("availability")}
                continue
            failed = [t for t in cell["trials"] if t.get("status") != "ok"]
            metrics, overhead = {}, {}
            for metric, (unit, _) in METRICS.items():
                samples = _samples(cell, metric)
                est = estimate(list(samples.values()))
                if est is None:
                    continue
                metrics[metric] = {"unit": unit, **est.to_dict()}
                if baseline is not None and cell is not baseline and metric in ("rate", "cpu_per_op", "softirq_per_op",
                                                                              "latency_p50", "latency_p99"):
                    base = _samples(baseline, metric)
                    diff = estimate(_paired(samples, base))
                    scale = statistics.median(base.values()) if base else 0.0
                    if diff is not None and scale:
                        overhead[metric] = {
                            "unit": unit,
                            "diff": diff.to_dict(),
                            "percent": {k: (v / scale * 100 if v is not None else None)
                                        for k, v in (("median", diff.median), ("low", diff.low), ("high", diff.high))},
                            **_verdict_fields(judge(diff, scale, decide_pp, lower_is_better=metric != "rate")),
                        }
            entry["cells"][label] = {
                "backend": cell["backend"], "setting": setting_label(cell), "available": True, "trials": len(cell["trials"]),
                "failed": len(failed), "excluded_foreign": sum(1 for t in cell["trials"] if foreign_trial(t)),
                "lost": [t["observed"]["lost"] for t in cell["trials"] if t.get("status") == "ok"],
                "metrics": metrics, "overhead": overhead,
            }
        entry["comparisons"] = _comparisons(cells, baseline, decide_pp)
        result["workloads"][key] = entry
    return result


def _comparisons(cells: list[dict[str, Any]], baseline: dict[str, Any] | None, decide_pp: float) -> list[dict[str, Any]]:
    """Every pair of observers on CPU per operation: is A cheaper than B, and how sure are we?"""
    observers = [c for c in cells if c.get("available", True) and c["backend"] != BASELINE]
    scale = statistics.median(_samples(baseline, "cpu_per_op").values()) if baseline and _samples(baseline, "cpu_per_op") else None
    out = []
    for i, a in enumerate(observers):
        for b in observers[i + 1:]:
            diff = estimate(_paired(_samples(a, "cpu_per_op"), _samples(b, "cpu_per_op")))
            if diff is None:
                continue
            verdict = judge(diff, scale or 0.0, decide_pp)
            # in A - B terms: "costs more" means A costs more, so B is the cheaper
            cheaper = {COSTS_MORE: "b", COSTS_LESS: "a"}.get(verdict["code"])
            code = f"{cheaper}_cheaper" if cheaper else verdict["code"]
            sentence = {"a": f"{cell_label(a)} is cheaper than {cell_label(b)}",
                        "b": f"{cell_label(b)} is cheaper than {cell_label(a)}"}.get(cheaper, verdict["sentence"])
            leaning = None
            if verdict["code"] == NOT_DECIDED and verdict["direction"]:
                leaning = "b" if verdict["direction"] == "above" else "a"
                sentence = sentence.split("; direction only")[0] + (
                    f"; direction only: {cell_label(b) if leaning == 'b' else cell_label(a)} is cheaper at "
                    f"{CONFIDENCE:.0%} confidence")
            out.append({"a": cell_label(a), "b": cell_label(b),
                        "a_backend": a["backend"], "b_backend": b["backend"],
                        "a_setting": setting_label(a), "b_setting": setting_label(b),
                        "metric": "cpu_per_op", "unit": "us",
                        "diff_a_minus_b": diff.to_dict(),
                        "percent_of_baseline": (diff.median / scale * 100) if scale else None,
                        "code": code, "cheaper": cheaper, "direction_cheaper": leaning,
                        "verdict": sentence, "confidence": CONFIDENCE})
    return out


def workload_key(cell: dict[str, Any]) -> str:
    """The workload and its sorted parameters, `churn(connections=2000)`: what cells are grouped by."""
    params = cell["params"]["workload"]
    return cell["workload"] + "(" + ",".join(f"{k}={v}" for k, v in sorted(params.items())) + ")"
