"""tracefs (ftrace ring buffer, no BPF) at the churn generator's top rate (issue 10): zero ring
losses with the buffer it chooses (recorded), and the reader's CPU per event, beside the BPF
tracepoint backend (stream, C consumer) and the no-observer baseline, interleaved by the runner.
TPBENCH_BENCH_CONNECTIONS sets the trial size (default 200,000: ~2M state events)."""

import os
import statistics

from harness.backends import get_backend
from harness.params import resolve
from harness.runner import Cell, execute
from harness.workloads import get_workload

CONNECTIONS = int(os.environ.get("TPBENCH_BENCH_CONNECTIONS", "200000"))
TRIALS = int(os.environ.get("TPBENCH_BENCH_TRIALS", "3"))


def _cell(backend: str, **params: str) -> Cell:
    workload, observer = get_workload("churn"), get_backend(backend)
    return Cell(workload, observer, resolve("churn", workload.params, {"connections": str(CONNECTIONS)}),
                resolve(backend, observer.params, params))


def test_tracefs_loses_nothing_at_top_churn_rate(benchmark, tmp_path):
    cells = [_cell("none"), _cell("tracefs"), _cell("tracepoint")]
    record = benchmark.pedantic(lambda: execute(cells, TRIALS, tmp_path, strict=True), rounds=1, iterations=1)
    summary = {}
    for cell, data in zip(cells, record.data["cells"]):
        trials = [t for t in data["trials"] if t["status"] == "ok"]
        assert len(trials) == TRIALS, [t.get("error") for t in data["trials"]]
        summary[cell.label] = {
            "connections_per_s": statistics.median(t["operation_rate"] for t in trials),
            "lost": [t["observed"]["lost"] for t in trials],
            "state_changes": [t["observed"]["events"].get("state_change") for t in trials],
        }
        if cell.backend.name == "tracefs":
            details = [t["observed"]["details"] for t in trials]
            summary[cell.label].update({
                "buffer_kib_per_cpu": details[0]["buffer_kib_per_cpu"],
                "events_read": [d["events_read"] for d in details],
                "reader_ns_per_event_while_tracing": statistics.median(
                    d["consumer_ns_per_event_while_tracing"] for d in details),
                "reader_ns_per_event_total": statistics.median(d["consumer_ns_per_event"] for d in details),
                "max_pages_per_poll": max(d["max_pages_per_poll"] for d in details),
            })
            for trial in trials:  # per side, exactly the tracepoint backend's / the declaration
                for side in ("client", "server"):
                    assert (trial["observed"]["sides"][side]["transitions"]
                            == trial["ground_truth"]["expected"][side]["transitions"]) or trial["observed"]["lost"]
    benchmark.extra_info.update({"connections_per_trial": CONNECTIONS, "trials": TRIALS, "cells": summary,
                                 "run_json": str(record.path)})
    print(f"\nrun.json: {record.path}")
    for label, numbers in summary.items():
        print(f"{label:<32} {numbers}")
    assert summary["churn/tracefs"]["lost"] == [0] * TRIALS, summary["churn/tracefs"]
