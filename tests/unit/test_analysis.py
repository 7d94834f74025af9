import json
import subprocess
import sys

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


def test_estimate_brackets_the_median_and_needs_three_samples():
    est = estimate([10.0, 11.0, 12.0, 13.0, 50.0])
    assert est.median == 12.0 and est.low <= 12.0 <= est.high
    assert est.outliers == 1  # 50 is beyond 1.5 IQR, kept but counted
    assert estimate([1.0, 2.0]).low is None
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
    over = cells["churn/tracepoint"]["overhead"]["cpu_per_op"]
    assert over["diff"]["median"] == pytest.approx(10.0)  # us per operation
    assert over["percent"]["median"] == pytest.approx(10.0, rel=0.01)  # of the baseline's 100 us
    assert over["verdict"] == "costs more" and over["code"] == "costs_more" and over["direction"] is None
    assert cells["churn/pcap"]["overhead"]["cpu_per_op"]["verdict"] == "no significant difference"
    assert cells["churn/sockdiag"]["overhead"]["cpu_per_op"]["verdict"].startswith("not decided")


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


def test_analysis_is_reproducible():
    run = _run(_cell("none", [0.1, 0.12, 0.09, 0.11]), _cell("tracepoint", [0.13, 0.1, 0.12, 0.14]))
    assert analyse(run) == analyse(run)  # fixed bootstrap seed: a report rebuilds identically


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
    verdict = entry["cells"]["churn/pcap"]["overhead"]["cpu_per_op"]["verdict"]
    assert verdict.startswith("not decided") and verdict.endswith("direction only: above 0 at 95% confidence")
    assert entry["cells"]["churn/pcap"]["overhead"]["cpu_per_op"]["direction"] == "above"
    [comparison] = entry["comparisons"]
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
