"""Everything derived from run.json alone: analysis.json, benchmark.json (pytest-benchmark format)
and the verdict table. `tpbench report DIR` rebuilds them without rerunning anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from .analysis import analyse
from .benchjson import benchmark_json
from .errors import UsageError
from .record import SCHEMA_VERSION, write_json_atomic


def load_run(path: Path) -> dict[str, Any]:
    """run.json from a run folder (or the file itself), validated enough to analyse."""
    path = path / "run.json" if path.is_dir() else path
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"no run record at {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON (line {exc.lineno}): a corrupt or partial record") from None
    if not isinstance(data, dict) or "cells" not in data or "schema_version" not in data:
        raise UsageError(f"{path} is not a tpbench run record (no schema_version/cells)")
    if data["schema_version"] > SCHEMA_VERSION:
        raise UsageError(f"{path} has schema {data['schema_version']}, newer than this tpbench ({SCHEMA_VERSION})")
    return data


def write_outputs(directory: Path, run: dict[str, Any]) -> dict[str, Any]:
    analysis = analyse(run)
    write_json_atomic(directory / "analysis.json", analysis)
    write_json_atomic(directory / "benchmark.json", benchmark_json(run, analysis))
    return analysis


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_verdict(run: dict[str, Any], analysis: dict[str, Any], out: TextIO) -> None:
    print(f"run {run['run_id']} ({run['status']}), kernel {run['kernel']['release']}, "
          f"headers {run['headers']['kind']}, {run['config']['trials']} trials per cell", file=out)
    for key, workload in analysis["workloads"].items():
        print(f"\n{key}  (baseline: {workload['baseline'] or 'none measured'})", file=out)
        print(f"  {'cell':<44} {'rate/s':>14} {'CPU us/op':>10} {'overhead [95% CI]':>24}  verdict", file=out)
        for label, cell in workload["cells"].items():
            if not cell["available"]:
                print(f"  {label:<44} unavailable: {cell['reason']}", file=out)
                continue
            rate = cell["metrics"].get("rate", {}).get("median")
            cpu = cell["metrics"].get("cpu_per_op", {}).get("median")
            over = cell["overhead"].get("cpu_per_op")
            if over:
                pct = over["percent"]
                ci = f"{_fmt(pct['median'])}% [{_fmt(pct['low'])}, {_fmt(pct['high'])}]"
                verdict = over["verdict"]
            else:
                ci, verdict = "-", ("baseline" if cell["backend"] == "none" else "no baseline")
            lost = sum(cell["lost"])
            notes = (f"; {lost} events lost" if lost else "") + (f"; {cell['failed']} failed" if cell["failed"] else "")
            cpu_text = "-" if cpu is None else f"{cpu:.3g}"
            print(f"  {label:<44} {_fmt(rate, 0):>14} {cpu_text:>10} {ci:>24}  {verdict}{notes}", file=out)
        claims = [c for c in workload["comparisons"]
                  if {c["a"].split("/")[1].split("[")[0], c["b"].split("/")[1].split("[")[0]} == {"tracepoint", "pcap"}]
        for c in claims:
            d = c["diff_a_minus_b"]
            print(f"  {c['a']} - {c['b']}: {d['median']:.3g} us/op [{d['low']:.3g}, {d['high']:.3g}]"
                  f" -> {c['verdict']}", file=out) if d["low"] is not None else None
