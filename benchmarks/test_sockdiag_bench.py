"""sockdiag (netlink polling) miss rate as a function of poll interval and connection lifetime
(issue 10), stored by the runner: one run (run.json) per lifetime, one cell per interval in it
(the runner labels cells by backend parameters only, so two lifetimes cannot share a run).

Connection lifetime is varied through churn's `bytes` (echoed both ways before the close) and read
back from the trial itself (the client's per-connection latency, connect to close). Churn is paced
(`rate`), so every cell lasts the same time whatever its interval. Misses are measured against
the kernel's own open counters in each namespace, so the miss rate needs no model.
TPBENCH_SOCKDIAG_INTERVALS (ms, '+'-separated) and TPBENCH_SOCKDIAG_BYTES set the grid.
"""

import os
import statistics

from harness.backends import get_backend
from harness.params import resolve
from harness.runner import Cell, execute
from harness.workloads import get_workload

INTERVALS_MS = os.environ.get("TPBENCH_SOCKDIAG_INTERVALS", "1000+100+10+1+0.5").split("+")
SIZES = os.environ.get("TPBENCH_SOCKDIAG_BYTES", "0+1048576+8388608").split("+")
TRIALS = int(os.environ.get("TPBENCH_BENCH_TRIALS", "1"))
CONNECTIONS, RATE = "600", "200"


def _cell(interval_ms: str, size: str) -> Cell:
    workload, observer = get_workload("churn"), get_backend("sockdiag")
    return Cell(workload, observer,
                resolve("churn", workload.params, {"connections": CONNECTIONS, "rate": RATE, "bytes": size,
                                                   "concurrency": "1"}),
                resolve("sockdiag", observer.params, {"interval_ms": interval_ms}))


def test_sockdiag_miss_rate_by_poll_interval_and_connection_lifetime(benchmark, tmp_path):
    def sweep():
        return {size: execute([_cell(i, size) for i in INTERVALS_MS], TRIALS, tmp_path, strict=True) for size in SIZES}

    records = benchmark.pedantic(sweep, rounds=1, iterations=1)
    table = []
    for record in records.values():
        for data in record.data["cells"]:
            trials = [t for t in data["trials"] if t["status"] == "ok"]
            assert len(trials) == TRIALS, [t.get("error") for t in data["trials"]]
            details = [t["observed"]["details"] for t in trials]
            table.append({
                "run_json": str(record.path),
                "bytes": data["params"]["workload"]["bytes"],
                "interval_ms": data["params"]["backend"]["interval_ms"],
                "lifetime_p50_us": statistics.median(t["latency"]["p50"] for t in trials) / 1000,
                "miss_rate": statistics.median(d["miss_rate"] for d in details),
                "achieved_polls_per_s": statistics.median(d["sides"]["server"]["achieved_polls_per_s"]
                                                          for d in details),
                "poll_p50_us": statistics.median(d["sides"]["server"]["poll_duration_us"]["p50"] for d in details),
            })
    benchmark.extra_info.update({"sweep": table})
    print()
    for row in table:
        print(row)
    # the number to reach: for each lifetime, misses never rise as the interval shrinks (5% slack)
    for size in {row["bytes"] for row in table}:
        rates = [row["miss_rate"] for row in table if row["bytes"] == size]  # intervals in given order
        assert all(b <= a + 0.05 for a, b in zip(rates, rates[1:])), (size, rates)
