import json
import os
import subprocess
import sys
from math import comb
from pathlib import Path

import pytest

from harness.analysis.stats import analyse, estimate
from harness.analysis.benchjson import benchmark_json
from tests.helpers import tpbench


def _trial(index: int, rate: float, busy_s: float, ops: int = 1000, lost: int = 0) -> dict:
    return {
        "index": index, "status": "ok", "operations": ops, "operation_rate": rate,
        "duration_s": ops / rate, "cpu_seconds": {"busy": busy_s, "softirq": busy_s / 4},
        "latency": {"p50": 50_000, "p99": 200_000},
        "observed": {"lost": lost, "details": {"consumer_cpu_s": 0.01, "bpf_stats": {"ns_per_event": 80.0}}},
    }


def _cell(backend: str, busy: list[float], label: str | None = None) -> dict:
    return {
        "label": label or f"churn/{backend}", "workload": "churn", "backend": backend, "operation": "connection",
        "params": {"workload": {"connections": 1000}, "backend": {}}, "available": True,
        "trials": [_trial(i, 10_000 * (1 - b), b) for i, b in enumerate(busy)],
    }


def _run(*cells: dict) -> dict:
    return {"run_id": "r", "status": "complete", "kernel": {"release": "6.18", "machine": "x86_64"},
            "headers": {"kind": "fallback"}, "host": {"python": "3.11", "cpus": 2}, "config": {"trials": 5},
            "git": {"commit": "abc", "dirty": False}, "finished_at": "2026-11-26T00:00:00+00:00",
            "cells": list(cells)}


def _p_median_at_most(k: int, n: int) -> float:
    """The chance that the median of n draws (with replacement) from n distinct values is at most
    the k-th smallest: at least n // 2 + 1 of the draws are among the k smallest (n odd)."""
    return sum(comb(n, j) * (k / n) ** j * (1 - k / n) ** (n - j) for j in range(n // 2 + 1, n + 1))


def test_percentile_bootstrap_intervals_of_the_median_are_the_hand_computed_order_statistics():
    """The bootstrap distribution of a median is known exactly (order statistics of n draws), so the
    percentile interval of 4000 resamples is known whatever the seed wherever that distribution
    jumps well clear of 2.5% and 97.5%. Five values: the median of five draws is the smallest with
    chance 5.8% (> 2.5%) and the largest with 5.8%: the interval is [min, max]. Seven: the smallest
    1.0% (< 2.5%), up to the second 10.8% (> 2.5%): [2nd, 6th]."""
    assert _p_median_at_most(1, 5) == pytest.approx(0.0579, abs=1e-4)
    assert (_p_median_at_most(1, 7), _p_median_at_most(2, 7)) == (pytest.approx(0.0102, abs=1e-4),
                                                                  pytest.approx(0.1083, abs=1e-4))
    est = estimate([10.0, 11.0, 12.0, 13.0, 50.0])
    assert (est.median, est.low, est.high, est.n) == (12.0, 10.0, 50.0, 5)
    est = estimate([13.0, 50.0, 10.0, 15.0, 11.0, 14.0, 12.0])  # order does not matter
    assert (est.median, est.low, est.high, est.half_width) == (13.0, 11.0, 15.0, 2.0)


def test_estimate_counts_outliers_by_tukeys_fences_and_needs_three_samples():
    est = estimate([10.0, 11.0, 12.0, 13.0, 50.0])
    # quartiles (linear, as numpy) 11 and 13: fences 8 and 16, so 50 is an outlier, kept but counted
    assert est.outliers == 1 and est.median == 12.0
    # [10, 11, 12, 13, 14, 15, 50]: quartiles 11.5 and 14.5, fences 7 and 19: 50 again, alone
    assert estimate([10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 50.0]).outliers == 1
    assert estimate([10.0, 11.0, 12.0, 13.0, 16.0]).outliers == 0  # 16 is on the fence, not beyond
    assert estimate([1.0, 2.0]).low is None
    assert estimate([4.0, 4.0, 4.0]) == estimate([4.0, 4.0, 4.0])  # all equal: the interval is the value
    assert (estimate([4.0, 4.0, 4.0]).low, estimate([4.0, 4.0, 4.0]).high) == (4.0, 4.0)
    assert estimate([]) is None
    # no quartiles below 4 samples, so no outliers (not every sample off the median)
    assert estimate([1.0, 2.0, 3.0]).outliers == estimate([1.0, 2.0]).outliers == 0


def test_overhead_is_paired_per_round_and_decided_only_when_tight():
    base = [0.100, 0.110, 0.090, 0.105, 0.095]
    dearer = [b + 0.010 for b in base]  # +10 us/op in every round, whatever the round's drift
    same = [b + d for b, d in zip(base, (0.0005, -0.0005, 0.0004, -0.0004, 0.0))]
    noisy = [b + d for b, d in zip(base, (0.05, -0.04, 0.03, -0.05, 0.04))]
    result = analyse(_run(_cell("none", base), _cell("tracepoint", dearer), _cell("pcap", same),
                          _cell("sockdiag", noisy)))
    cells = next(iter(result["workloads"].values()))["cells"]
    # the baseline itself: 90 to 110 us per operation, 9,000 operations/s at the median; five
    # samples, so each interval is [min, max] (see the bootstrap test above)
    baseline = cells["churn/none"]["metrics"]
    assert (baseline["cpu_per_op"]["median"], baseline["cpu_per_op"]["low"], baseline["cpu_per_op"]["high"]) == \
        (pytest.approx(100.0), pytest.approx(90.0), pytest.approx(110.0))
    assert (baseline["rate"]["median"], baseline["rate"]["low"], baseline["rate"]["high"]) == \
        (pytest.approx(9000.0), pytest.approx(8900.0), pytest.approx(9100.0))
    over = cells["churn/tracepoint"]["overhead"]["cpu_per_op"]
    assert over["diff"]["median"] == pytest.approx(10.0)  # us per operation
    assert (over["diff"]["low"], over["diff"]["high"]) == (pytest.approx(10.0), pytest.approx(10.0))
    assert over["percent"]["median"] == pytest.approx(10.0, rel=0.01)  # of the baseline's 100 us
    assert over["verdict"] == "costs more" and over["code"] == "costs_more" and over["direction"] is None
    # paired differences of +-0.5, +-0.4 and 0 us: [-0.5, 0.5], 0.5 pp of the baseline wide each side
    same = cells["churn/pcap"]["overhead"]["cpu_per_op"]
    assert (same["diff"]["low"], same["diff"]["high"]) == (pytest.approx(-0.5), pytest.approx(0.5))
    assert (same["percent"]["low"], same["percent"]["high"]) == (pytest.approx(-0.5), pytest.approx(0.5))
    assert same["verdict"] == "no significant difference"
    # paired differences of 50, -40, 30, -50 and 40 us: [-50, 50], far wider than 2 pp
    noisy = cells["churn/sockdiag"]["overhead"]["cpu_per_op"]
    assert (noisy["diff"]["median"], noisy["diff"]["low"], noisy["diff"]["high"]) == \
        (pytest.approx(30.0), pytest.approx(-50.0), pytest.approx(50.0))
    assert noisy["verdict"] == "not decided: CI half-width 50.0 pp > 2 pp, run longer"


def test_pairwise_comparison_names_the_cheaper_backend():
    base = [0.100, 0.110, 0.090, 0.105, 0.095]
    result = analyse(_run(_cell("none", base), _cell("tracepoint", [b + 0.001 for b in base]),
                          _cell("pcap", [b + 0.010 for b in base])))
    [comparison] = next(iter(result["workloads"].values()))["comparisons"]
    assert comparison["verdict"] == "churn/tracepoint is cheaper than churn/pcap"
    # what code reads: the code and the structured identity, never the sentence or the label
    assert (comparison["code"], comparison["cheaper"]) == ("a_cheaper", "a")
    assert (comparison["a_backend"], comparison["a_setting"], comparison["b_setting"]) == ("tracepoint", "tracepoint", "pcap")
    assert comparison["diff_a_minus_b"]["median"] == pytest.approx(-9.0)


# Ten trials whose intervals depend on the resampling (an even count: medians of resamples are
# averages of two values, so the 2.5% and 97.5% points fall between many close values)
SEED_SENSITIVE = [0.093, 0.097, 0.101, 0.104, 0.108, 0.111, 0.115, 0.120, 0.126, 0.133]


def test_analysis_is_reproducible():
    """The bootstrap's seed is fixed: the same record gives the same analysis, in this process and
    in another one (another hash seed), on samples whose intervals do change with the seed."""
    import numpy as np
    from scipy import stats as scipy_stats

    intervals = {(ci.low, ci.high) for seed in (1, 2, 3, 4, 5) for ci in [scipy_stats.bootstrap(
        (np.asarray(SEED_SENSITIVE) * 1000,), np.median, n_resamples=4000, method="percentile",
        random_state=np.random.default_rng(seed)).confidence_interval]}
    assert len(intervals) > 1  # an unseeded analysis would show here
    run = _run(_cell("none", SEED_SENSITIVE), _cell("tracepoint", [b * 1.1 + 0.002 * (i % 3)
                                                                  for i, b in enumerate(SEED_SENSITIVE)]))
    first = json.loads(json.dumps(analyse(run)))
    assert json.loads(json.dumps(analyse(run))) == first
    other = subprocess.run(
        [sys.executable, "-c", "import json, sys; from harness.analysis.stats import analyse; "
                               "print(json.dumps(analyse(json.load(sys.stdin))))"],
        input=json.dumps(run), capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "12345"},
        cwd=Path(__file__).resolve().parents[2])
    assert other.returncode == 0, other.stderr
    assert json.loads(other.stdout) == first


def test_benchmark_json_is_read_by_pytest_benchmark_compare(tmp_path):
    run = _run(_cell("none", [0.1, 0.12, 0.09]), _cell("tracepoint", [0.13, 0.1, 0.12]))
    path = tmp_path / "benchmark.json"
    path.write_text(json.dumps(benchmark_json(run, analyse(run))))
    cli = "from pytest_benchmark.cli import main; main()"  # the `pytest-benchmark` command
    result = subprocess.run([sys.executable, "-c", cli, "compare", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "churn/tracepoint" in result.stdout and "churn/none" in result.stdout


def test_report_rebuilds_from_run_json_and_refuses_a_corrupt_one(tmp_path):
    run = _run(_cell("none", [0.1, 0.12, 0.09]), _cell("tracepoint", [0.13, 0.1, 0.12]))
    run["schema_version"] = 1
    (tmp_path / "run.json").write_text(json.dumps(run))
    result = tpbench("report", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "churn/tracepoint" in result.stdout
    first = (tmp_path / "analysis.json").read_text()
    assert tpbench("report", str(tmp_path)).returncode == 0
    assert (tmp_path / "analysis.json").read_text() == first
    (tmp_path / "run.json").write_text('{"cells": [')
    bad = tpbench("report", str(tmp_path))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not valid JSON" in bad.stderr
    missing = tpbench("report", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no run record" in missing.stderr


def test_an_imprecise_but_significant_difference_says_its_direction_and_stays_undecided():
    base = [0.100, 0.110, 0.090, 0.105, 0.095]
    # always dearer than the baseline by 10-40 us: the sign is certain, the size is not within 2 pp
    dearer = [b + d for b, d in zip(base, (0.010, 0.040, 0.020, 0.035, 0.015))]
    result = analyse(_run(_cell("none", base), _cell("tracepoint", base), _cell("pcap", dearer)))
    entry = next(iter(result["workloads"].values()))
    over = entry["cells"]["churn/pcap"]["overhead"]["cpu_per_op"]
    # paired differences of 10 to 40 us: [10, 40] (five samples: [min, max]), 15 pp each side
    assert (over["diff"]["median"], over["diff"]["low"], over["diff"]["high"]) == \
        (pytest.approx(20.0), pytest.approx(10.0), pytest.approx(40.0))
    verdict = over["verdict"]
    assert verdict == "not decided: CI half-width 15.0 pp > 2 pp, run longer; direction only: above 0 at 95% confidence"
    assert over["direction"] == "above"
    [comparison] = entry["comparisons"]
    assert (comparison["diff_a_minus_b"]["low"], comparison["diff_a_minus_b"]["high"]) == \
        (pytest.approx(-40.0), pytest.approx(-10.0))
    assert comparison["verdict"].startswith("not decided")
    assert comparison["verdict"].endswith("direction only: churn/tracepoint is cheaper at 95% confidence")
    assert (comparison["code"], comparison["cheaper"], comparison["direction_cheaper"]) == ("not_decided", None, "a")


def test_two_paired_trials_compare_as_too_few_without_a_direction():
    result = analyse(_run(_cell("none", [0.1, 0.11]), _cell("tracepoint", [0.1, 0.11]), _cell("pcap", [0.2, 0.21])))
    [comparison] = next(iter(result["workloads"].values()))["comparisons"]
    assert comparison["verdict"] == "not decided: too few paired trials (need 3 or more)"
    assert (comparison["code"], comparison["direction_cheaper"]) == ("too_few_trials", None)


def test_an_observers_deferred_work_is_inside_its_cost_per_operation():
    from harness.analysis.stats import METRICS

    trial = {"operations": 1000, "cpu_seconds": {"cpu": 0.05, "busy": 0.05},
             "observed": {"details": {"deferred_cpu_s": 0.04}}}
    assert METRICS["cpu_per_op"][1](trial) == pytest.approx(90.0)  # (0.05 + 0.04) s / 1000 ops
    assert METRICS["deferred_cpu_per_op"][1](trial) == pytest.approx(40.0)
    trial["observed"]["details"] = {}  # older records: nothing measured, nothing added
    assert METRICS["cpu_per_op"][1](trial) == pytest.approx(50.0)
    assert METRICS["deferred_cpu_per_op"][1](trial) is None
