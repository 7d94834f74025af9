"""In-kernel cost from the kernel's own accounting (bpf_stats), read from run.json alone.

Per BPF cell: the programs' run time per event (`observed.details.bpf_stats.ns_per_event`: every
program's run_time_ns over the events delivered, rescue and witness programs' time included),
and, for each observer with an `-empty` twin on the same hooks and flavour in the same run, the
multiple of the empty program's cost: the per-round ratio observer / empty (trials paired by
round, as the overhead is), its median and 95% bootstrap CI. bpf_stats covers the programs'
bodies only: not the kernel's entry into them (trace_call_bpf, __bpf_trace_run), not the record a
classic tracepoint assembles, not the consumer. Those are in the CPU per operation.
"""

from __future__ import annotations

from typing import Any

from .stats import foreign_trial, cell_label, estimate, workload_key

EMPTY_SUFFIX = "-empty"
GOAL_MULTIPLE = 2.0  # issue 15: the streaming observer within 2x of the empty program
# backend parameters the empty program shares with its observer (the rest are the observer's own)
SHARED_PARAMS = ("hooks", "flavour")


def _ns(trial: dict[str, Any]) -> float | None:
    stats = ((trial.get("observed") or {}).get("details") or {}).get("bpf_stats") or {}
    return stats.get("ns_per_event")


def _per_round(cell: dict[str, Any]) -> dict[int, float]:
    return {t["index"]: value for t in cell.get("trials", [])
            if t.get("status") == "ok" and not foreign_trial(t) and (value := _ns(t))}


def _empty_twin(cell: dict[str, Any], cells: list[dict[str, Any]]) -> dict[str, Any] | None:
    shared = {k: v for k, v in cell["params"].get("backend", {}).items() if k in SHARED_PARAMS}
    for other in cells:
        if other["backend"] != cell["backend"] + EMPTY_SUFFIX or workload_key(other) != workload_key(cell):
            continue
        theirs = {k: v for k, v in other["params"].get("backend", {}).items() if k in SHARED_PARAMS}
        if theirs == shared:
            return other
    return None


def _against_goal(ratio: dict[str, Any] | None) -> str:
    if ratio is None or ratio["low"] is None:
        return "undecided"
    if ratio["high"] <= GOAL_MULTIPLE:
        return "within"
    return "beyond" if ratio["low"] > GOAL_MULTIPLE else "undecided"


def analyse(run: dict[str, Any]) -> dict[str, Any]:
    """workload key -> {cells: label -> ns/event estimate, multiples: observer vs its empty twin}."""
    out: dict[str, Any] = {}
    cells = [c for c in run["cells"] if c.get("available", True)]
    for cell in cells:
        rounds = _per_round(cell)
        if not rounds:
            continue
        group = out.setdefault(workload_key(cell), {"cells": {}, "multiples": []})
        group["cells"][cell_label(cell)] = estimate(list(rounds.values())).to_dict()
        twin = _empty_twin(cell, cells)
        twin_rounds = _per_round(twin) if twin is not None else {}
        paired = [rounds[i] / twin_rounds[i] for i in sorted(set(rounds) & set(twin_rounds))]
        if paired:
            ratio = estimate(paired).to_dict()
            group["multiples"].append({"a": cell_label(cell), "empty": cell_label(twin), "multiple": ratio,
                                       "goal": GOAL_MULTIPLE, "against_goal": _against_goal(ratio)})
    return {"goal_multiple": GOAL_MULTIPLE, "workloads": out}
