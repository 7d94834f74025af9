"""pytest-benchmark's JSON format, written from a run record, so `pytest-benchmark compare` can
set runs side by side (two dates, two kernels).

One benchmark per cell: its timing samples are each trial's seconds per operation (so
pytest-benchmark's `ops` is the cell's operation rate), and extra_info carries what matters here:
CPU per operation, overhead against the baseline with its CI and verdict, losses.
"""

from __future__ import annotations

import datetime as dt
import platform
import statistics
from typing import Any


from .. import __version__
from .stats import cell_label, workload_key


def _stats(samples: list[float]) -> dict[str, Any]:
    data = sorted(samples)
    q1 = q3 = data[0]
    if len(data) > 1:
        import numpy as np  # here, not at import: a one-round run's report needs no numpy

        q1, q3 = np.percentile(data, [25, 75])
    iqr = q3 - q1
    mean = statistics.fmean(data)
    stddev = statistics.stdev(data) if len(data) > 1 else 0.0
    low, high = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    return {
        "min": data[0], "max": data[-1], "mean": mean, "stddev": stddev, "rounds": len(data),
        "median": statistics.median(data), "iqr": float(iqr), "q1": float(q1), "q3": float(q3),
        "iqr_outliers": sum(1 for d in data if d < low or d > high),
        "stddev_outliers": sum(1 for d in data if abs(d - mean) > stddev),
        "outliers": f"{sum(1 for d in data if abs(d - mean) > stddev)};{sum(1 for d in data if d < low or d > high)}",
        "ld15iqr": min((d for d in data if d >= low), default=data[0]),
        "hd15iqr": max((d for d in data if d <= high), default=data[-1]),
        "ops": 1 / mean if mean else 0.0, "total": sum(data), "iterations": 1, "data": data,
    }


def benchmark_json(run: dict[str, Any], analysis: dict[str, Any]) -> dict[str, Any]:
    """The run in pytest-benchmark's JSON: one benchmark per available cell with ok trials (seconds per operation)."""
    benchmarks = []
    for key, workload in analysis["workloads"].items():
        for cell in run["cells"]:
            label = cell_label(cell)
            summary = workload["cells"].get(label)
            if summary is None or not summary.get("available") or workload_key(cell) != key:
                continue
            samples = [t["duration_s"] / t["operations"] for t in cell["trials"]
                       if t.get("status") == "ok" and t.get("operations")]
            if not samples:
                continue
            benchmarks.append({
                "group": key,
                "name": f"{label}",
                "fullname": f"tpbench::{key}::{label}",
                "params": {"workload": cell["params"]["workload"], "backend": cell["params"]["backend"]},
                "param": label,
                "extra_info": {
                    "operation": cell.get("operation"),
                    "metrics": summary["metrics"],
                    "overhead": summary["overhead"],
                    "lost": summary["lost"],
                    "failed_trials": summary["failed"],
                },
                "options": {"timer": "trial duration / operations (agents' CLOCK_MONOTONIC)",
                            "min_rounds": len(samples), "warmup": bool(run.get("warmup"))},
                "stats": _stats(samples),
            })
    git = run.get("git") or {}
    return {
        "machine_info": {"node": platform.node(), "machine": run["kernel"]["machine"],
                         "release": run["kernel"]["release"], "system": "Linux",
                         "python_version": run["host"]["python"], "cpu": {"count": run["host"]["cpus"]}},
        "commit_info": {"id": git.get("commit"), "dirty": git.get("dirty"), "project": "tpbench"},
        "benchmarks": benchmarks,
        "datetime": run.get("finished_at") or dt.datetime.now(dt.timezone.utc).isoformat(),
        "version": f"tpbench {__version__} (pytest-benchmark format)",
    }

