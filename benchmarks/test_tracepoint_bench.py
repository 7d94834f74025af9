"""The tracepoint backend's numbers (issue 4), measured, not asserted in tests/:

- stream mode queues every event: zero output losses at the churn generator's top rate;
- in-kernel cost per event (bpf_stats) of each mode against the empty-program floor;
- the consumer's CPU per event (C/libbpf and Python/bcc) and the C consumer's peak memory.

Cells are interleaved by the runner (empty, aggregate, stream/c, stream/python, rotating), so drift
on this noisy 2-core machine lands on all of them alike. TPBENCH_BENCH_CONNECTIONS sets the trial
size (default 200,000: ~5 s at the top rate; 1,200,000 gives the 30 s run).
"""

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
    return Cell(
        workload,
        observer,
        resolve("churn", workload.params, {"connections": str(CONNECTIONS)}),
        resolve(backend, observer.params, params),
    )


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def test_tracepoint_modes_cost_and_losses_at_top_churn_rate(benchmark, tmp_path):
    cells = [
        _cell("tracepoint-empty"),
        _cell("tracepoint", mode="aggregate"),
        _cell("tracepoint", mode="stream", consumer="c"),
        _cell("tracepoint", mode="stream", consumer="python"),
    ]
    record = benchmark.pedantic(lambda: execute(cells, TRIALS, tmp_path, strict=True), rounds=1, iterations=1)
    summary = {}
    for cell, data in zip(cells, record.data["cells"]):
        trials = [t for t in data["trials"] if t["status"] == "ok"]
        assert len(trials) == TRIALS, [t.get("error") for t in data["trials"]]
        details = [t["observed"]["details"] for t in trials]
        events = [d["bpf_stats"]["run_cnt"] for d in details]
        summary[cell.label] = {
            "connections_per_s": _median(t["operation_rate"] for t in trials),
            "ns_per_event": _median(d["bpf_stats"]["ns_per_event"] for d in details),
            "events_per_trial": _median(events),
            "lost_output": [d["lost_output"] for d in details],
            "lost_recursion": [d["lost_recursion"] for d in details],
            "consumer_ns_per_event": _median(
                d["consumer_cpu_s"] * 1e9 / n for d, n in zip(details, events) if "consumer_cpu_s" in d),
            "consumer_max_rss_kib": _median(d.get("consumer_max_rss_kib") for d in details),
        }
    floor = summary["churn/tracepoint-empty"]["ns_per_event"]
    for numbers in summary.values():
        numbers["ns_per_event_vs_empty"] = round(numbers["ns_per_event"] / floor, 2)
    benchmark.extra_info.update({"connections_per_trial": CONNECTIONS, "trials": TRIALS, "cells": summary})
    print()
    for label, numbers in summary.items():
        print(f"{label:<48} {numbers}")
    # the number to reach: with the C consumer, the ring never overflows at the top rate
    stream_c = summary["churn/tracepoint[consumer=c]"]
    assert stream_c["lost_output"] == [0] * TRIALS, stream_c
