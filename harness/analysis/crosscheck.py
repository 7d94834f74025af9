"""kprobe/fentry cells against the tracepoint cell of the same workload, from run.json alone
(analysis.json's `cross_check`; `tpbench vm` prints it).

Each trial is fresh traffic, so only a deterministic workload (churn) must give equal counts; the
witness programs (a trial's details.fidelity) are the per-event check on the same traffic. Compared
per side: state transitions, and the events of every kind both backends attached for. Also the
in-kernel cost per event from bpf_stats, and their ratio (the kernel's own bench: tracepoints
~1.4x faster).
"""

from __future__ import annotations

from typing import Any

from ..tcp import FUNCTION_HOOKS, SIDE_NAMES, TRACEPOINT_KINDS
from .stats import setting_label

PROBE_BACKENDS = ("kprobe", "fentry")


def cross_check(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per (kprobe or fentry cell, tracepoint cell) pair of the same workload, each
    named by its setting (`tracepoint[flavour=tp]`)."""
    results = []
    cells = [c for c in record.get("cells", []) if c.get("available")]
    for probe_cell in (c for c in cells if c["backend"] in PROBE_BACKENDS):
        for tp_cell in (c for c in cells if c["backend"] == "tracepoint" and c["workload"] == probe_cell["workload"]):
            pairs = [(a, b) for a in probe_cell["trials"] for b in tp_cell["trials"]
                     if a.get("index") == b.get("index") and a["status"] == b["status"] == "ok"]
            differences: list[str] = []
            gaps = {"short": 0, "extra": 0, "probe_lost": 0, "tracepoint_lost": 0}
            for probe_trial, tp_trial in pairs:
                found, short, extra = _differences(probe_cell["backend"], probe_trial, tp_trial)
                differences += found
                gaps["short"] += short
                gaps["extra"] += extra
                for key, trial in (("probe_lost", probe_trial), ("tracepoint_lost", tp_trial)):
                    lost = trial["observed"].get("lost")
                    gaps[key] = None if lost is None or gaps[key] is None else gaps[key] + lost
            # named by setting: one run may hold the tracepoint in several flavours
            names = [setting_label(cell) for cell in (probe_cell, tp_cell)]
            cost = {name: _ns_per_event(cell) for name, cell in zip(names, (probe_cell, tp_cell))}
            ratio = (round(cost[names[0]] / cost[names[1]], 2) if cost[names[0]] and cost[names[1]] else None)
            results.append({
                "workload": probe_cell["workload"],
                "backends": names,
                "trials_compared": len(pairs),
                "counts_equal": bool(pairs) and not differences,
                "differences": differences,
                # events one saw and the other did not, against what each counted as lost: a
                # difference within the counted loss is accounted for, beyond it (or where a
                # kernel cannot count, null) it is not
                "events_short": gaps["short"], "events_extra": gaps["extra"],
                "lost": {names[0]: gaps["probe_lost"], names[1]: gaps["tracepoint_lost"]},
                "within_counted_loss": (None if not differences or None in (gaps["probe_lost"], gaps["tracepoint_lost"])
                                        else gaps["short"] <= gaps["probe_lost"]
                                        and gaps["extra"] <= gaps["tracepoint_lost"]),
                "ns_per_event": cost,
                "ns_per_event_ratio": ratio,
            })
    return results


def _differences(backend: str, probe_trial: dict[str, Any], tp_trial: dict[str, Any]) -> tuple[list[str], int, int]:
    """What differs, as sentences; and the events (not transitions, which state_change sums) the
    probe saw fewer and more of than the tracepoint."""
    kinds = {TRACEPOINT_KINDS[FUNCTION_HOOKS[h]] for h in probe_trial["observed"]["details"].get("functions", {})}
    tp_kinds = {TRACEPOINT_KINDS[tp] for tp in tp_trial["observed"]["details"].get("hooks_attached", [])
                if tp in TRACEPOINT_KINDS}
    expected = probe_trial.get("ground_truth", {}).get("expected", {})
    index, out, short, extra = probe_trial["index"], [], 0, 0
    for side in SIDE_NAMES:
        # Two trials are two runs of traffic: only what the workload declares exactly is the same in
        # both. Rare events (a port reused against TIME_WAIT: one RST, one SYN retransmit) differ by
        # nature and are held to each trial's own kernel counters. (declared 0 included: churn
        # declares no RST, yet a reused port can cause one)
        declared = {k for k, n in expected.get(side, {}).get("events", {}).items() if n}
        mine = probe_trial["observed"]["sides"].get(side, {"events": {}, "transitions": {}})
        theirs = tp_trial["observed"]["sides"].get(side, {"events": {}, "transitions": {}})
        if "state_change" in kinds & tp_kinds:
            for name in sorted(set(mine["transitions"]) | set(theirs["transitions"])):
                a, b = mine["transitions"].get(name, 0), theirs["transitions"].get(name, 0)
                if a != b:
                    out.append(f"trial {index} {side} {name}: {backend} {a}, tracepoint {b}")
        for kind in sorted(kinds & tp_kinds & declared):
            a, b = mine["events"].get(kind, 0), theirs["events"].get(kind, 0)
            if a != b:
                out.append(f"trial {index} {side} {kind}: {backend} {a}, tracepoint {b}")
                short, extra = short + max(0, b - a), extra + max(0, a - b)
    return out, short, extra


def _ns_per_event(cell: dict[str, Any]) -> float | None:
    ok = [t["observed"]["details"]["bpf_stats"] for t in cell["trials"] if t["status"] == "ok"]
    runs, count = sum(s["run_time_ns"] for s in ok), sum(s["run_cnt"] for s in ok)
    return round(runs / count, 1) if count else None
