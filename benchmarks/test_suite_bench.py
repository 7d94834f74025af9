"""One pytest-benchmark per workload x backend of the default suite (`pytest benchmarks
--benchmark-only -k suite --benchmark-json results/<id>/pytest-benchmark.json`).

Each benchmark alternates a baseline trial (its setup, untimed) with an observer trial (timed), so
every observer trial has a baseline neighbour in time; the timing is the whole observer trial,
and what matters is in extra_info: CPU per operation against the paired baseline (median and 95% CI
from harness.analysis.stats), the operation rates, events seen and lost. `tpbench bench` measures the
same suite interleaved across all cells at once and writes benchmark.json in the same format.
"""

import os

import pytest

from harness.analysis.stats import analyse
from harness.headers import find_headers
from harness.kernel import probe
from harness.runner import build_cell, run_trial
from harness.suite import WORKLOADS, backend_settings
from harness.system import tracefs_mounted

ROUNDS = int(os.environ.get("TPBENCH_BENCH_ROUNDS", "3"))
CASES = [(w, wp, b, bp) for w, wp in WORKLOADS for b, bp in backend_settings() if b != "none"]


@pytest.fixture(scope="module")
def kernel():
    with tracefs_mounted():
        os.environ.update(find_headers().environment())
        yield probe()


@pytest.mark.parametrize("workload, wparams, backend, bparams", CASES,
                         ids=[build_cell(w, wp, b, bp).label for w, wp, b, bp in CASES])
def test_suite(benchmark, kernel, tmp_path, workload, wparams, backend, bparams):
    cell = build_cell(workload, wparams, backend, bparams)
    availability = cell.backend.availability(kernel)
    if not availability.available:
        pytest.skip(f"{cell.backend.name} unavailable on this kernel: {availability.reason}")
    baseline = build_cell(workload, wparams, "none", {})
    trials = {"baseline": [], "observer": []}

    def setup():
        trials["baseline"].append({**run_trial(baseline, "bench"), "index": len(trials["baseline"])})

    def observe():
        trials["observer"].append({**run_trial(cell, "bench"), "index": len(trials["observer"])})

    benchmark.pedantic(observe, setup=setup, rounds=ROUNDS, iterations=1)
    run = {"cells": [
        {"label": baseline.label, "workload": workload, "backend": "none", "available": True,
         "params": {"workload": baseline.workload_params, "backend": {}}, "trials": trials["baseline"]},
        {"label": cell.label, "workload": workload, "backend": backend, "available": True,
         "params": {"workload": cell.workload_params, "backend": cell.backend_params}, "trials": trials["observer"]},
    ]}
    summary = next(iter(analyse(run)["workloads"].values()))["cells"][cell.label]
    benchmark.extra_info.update({
        "cell": cell.label,
        "overhead": summary["overhead"],
        "metrics": summary["metrics"],
        "lost": summary["lost"],
        "events": [t["observed"]["events"] for t in trials["observer"]],
        "expected": trials["observer"][0]["ground_truth"]["expected"],
    })
    assert all(t["status"] == "ok" for t in trials["observer"] + trials["baseline"])
