"""The kernel-state visibility matrix, filled from measurement only.

Rows: every state transition a workload declared or an observer reported (and, for each TCP
state that no such transition enters, one row saying it was not measured), the event kinds, and
the per-event fields pid, comm and socket identity. Columns: the backend settings of the run.
A cell is, with the trial that is its evidence:

  seen k/n       the backend reported it in k of the n trials whose workload declared it (> 0)
  inferred k/n   the same, for a backend that reconstructs events from packets or snapshots
  partial k/n    reported in only some of those trials (or short of the declared count: the
                 share of the declared events is given)
  invisible      declared by the workload in n trials and reported in none, or the backend
                 itself declares it cannot see it (details.invisible; its reason is kept)
  seen (not declared)  reported, but no workload in the run declared it
  not measured   no trial of the run exercised it, so nothing is claimed

Nothing is filled from documentation or expectation: a cell with no trial behind it says so.
"""

from __future__ import annotations

from typing import Any

from .attribution import cell_attribution
from .fidelity import declared_invisible, invisible_names, observes_nothing
from .stats import BASELINE, cell_label, setting_label

from ..tcp import EVENT_KINDS, LIFE_ORDER as STATES, NEW_SYN_RECV, ends

KINDS = EVENT_KINDS[1:]  # every kind but state_change, whose rows are the states themselves
KIND_LABELS = {"probe": "probe (cwnd, srtt: tcp_probe)", "sock_destroy": "sock_destroy (socket destroyed)"}
# Backends whose events are reconstructed rather than reported by the kernel as they happen.
INFERRED = {"pcap": "inferred from packets", "sockdiag": "inferred from socket snapshots"}


def _state_rank(transition: str) -> tuple[int, int]:
    old, new = ends(transition)
    rank = {s: i for i, s in enumerate(STATES)}
    return rank.get(old, len(STATES)), rank.get(new, len(STATES))


def _declared_count(expected_side: dict[str, Any], nstat_side: dict[str, Any], category: str, name: str) -> int | None:
    """How many the workload declared for this side (None: not declared as a count)."""
    if category == "transition":
        return expected_side.get("transitions", {}).get(name)
    if name in expected_side.get("events", {}):
        return expected_side["events"][name]
    if name in expected_side.get("equals_nstat", {}):
        return int(nstat_side.get(expected_side["equals_nstat"][name], 0))
    if name in expected_side.get("at_least", {}):
        return expected_side["at_least"][name]
    return None


def _evidence(cell: dict[str, Any], trial: dict[str, Any]) -> str:
    return f"{cell_label(cell)} #{trial.get('index')}"


def _cell_value(trials: list[tuple[dict[str, Any], dict[str, Any]]], backend: str, category: str,
                name: str) -> dict[str, Any]:
    declared_n = reported_k = 0
    expected_total = seen_total = 0
    evidence = None
    backend_declared = None
    undeclared_reports = []
    for cell, trial in trials:
        details = (trial.get("observed") or {}).get("details") or {}
        reason = declared_invisible(name, invisible_names(details))  # by name or by its kind
        if reason is not None and backend_declared is None:
            backend_declared = (reason, _evidence(cell, trial))
        sides = (trial.get("observed") or {}).get("sides") or {}
        expected = (trial.get("ground_truth") or {}).get("expected") or {}
        nstat = (trial.get("ground_truth") or {}).get("nstat") or {}
        key = "transitions" if category == "transition" else "events"
        declared_here = False
        seen_here = 0
        for side in ("client", "server"):
            count = _declared_count(expected.get(side) or {}, nstat.get(side) or {}, category, name)
            seen = int(((sides.get(side) or {}).get(key) or {}).get(name, 0))
            if count:
                declared_here = True
                expected_total += count
                seen_here += seen
            elif seen:
                undeclared_reports.append(_evidence(cell, trial))
        if declared_here:
            declared_n += 1
            seen_total += seen_here
            if seen_here:
                reported_k += 1
                evidence = evidence or _evidence(cell, trial)
    if declared_n:
        if reported_k == 0:
            reason = backend_declared[0] if backend_declared else None
            first = next(_evidence(c, t) for c, t in trials if _declared_in(t, category, name))
            return {"status": "invisible", "text": f"invisible (0/{declared_n})", "k": 0, "n": declared_n,
                    "evidence": first, "reason": reason}
        word = "inferred" if backend in INFERRED else "seen"
        share = seen_total / expected_total if expected_total else None
        # short of the declared count: the share says how much (lost or missed events; fidelity has which)
        short = f", {share:.1%} of declared" if share is not None and share < 0.9995 else ""
        if reported_k < declared_n or (share is not None and share < 0.99):
            return {"status": "partial", "text": f"partial {reported_k}/{declared_n}{short}", "k": reported_k,
                    "n": declared_n, "evidence": evidence, "share": share}
        return {"status": word, "text": f"{word} {reported_k}/{declared_n}{short}", "k": reported_k,
                "n": declared_n, "evidence": evidence, "share": share}
    if undeclared_reports:
        return {"status": "seen (not declared)",
                "text": f"seen, not declared (in {len(dict.fromkeys(undeclared_reports))} trials)",
                "evidence": undeclared_reports[0]}
    if backend_declared:
        return {"status": "invisible", "text": "invisible (declared by the backend)", "reason": backend_declared[0],
                "evidence": backend_declared[1]}
    return {"status": "not measured", "text": "not measured", "evidence": None}


def _declared_in(trial: dict[str, Any], category: str, name: str) -> bool:
    expected = (trial.get("ground_truth") or {}).get("expected") or {}
    nstat = (trial.get("ground_truth") or {}).get("nstat") or {}
    return any(_declared_count(expected.get(s) or {}, nstat.get(s) or {}, category, name)
               for s in ("client", "server"))


def _field_value(cells: list[dict[str, Any]], trials: list[tuple[dict[str, Any], dict[str, Any]]],
                 field: str) -> dict[str, Any]:
    """pid, comm, socket identity: from what the backend recorded (attribution) or declared."""
    for cell, trial in trials:
        invisible = invisible_names((trial.get("observed") or {}).get("details") or {})
        if field in invisible:
            return {"status": "invisible", "text": "invisible (declared by the backend)", "reason": invisible[field],
                    "evidence": _evidence(cell, trial)}
    if field in ("pid", "comm"):
        with_records = [(c, t) for c, t in trials
                        if isinstance(((t.get("observed") or {}).get("details") or {}).get("attribution"), list)]
        entries = [e for _, t in with_records for e in t["observed"]["details"]["attribution"]]
        if field == "comm":
            entries = [e for e in entries if e.get("comm") is not None]
        if entries:
            scored = [cell_attribution(c) for c in cells]
            rows = [r for s in scored if s for r in s["rows"]]
            attributed = sum(r["attributed"] for r in rows)
            right = sum(r["right"] for r in rows)
            text = f"recorded ({len(with_records)}/{len(trials)} trials)"
            if field == "pid" and attributed:
                text += f"; right process {right / attributed:.0%}"
            return {"status": "seen", "text": text, "evidence": _evidence(*with_records[0]),
                    "k": len(with_records), "n": len(trials)}
        if with_records or trials:
            return {"status": "not recorded", "text": "not recorded in run.json", "evidence": None}
    return {"status": "not measured", "text": "not measured (run.json holds counts, no per-event identity)",
            "evidence": None}


def visibility(run: dict[str, Any]) -> dict[str, Any]:
    """{"columns": [...], "unavailable": {...}, "rows": [{"row", "category", "name", "cells": {column: value}}]}"""
    columns: dict[str, list[dict[str, Any]]] = {}
    unavailable: dict[str, str] = {}
    for cell in run["cells"]:
        if cell["backend"] == BASELINE or observes_nothing(cell):
            continue  # the baseline and cost-floor cells observe nothing by design
        setting = setting_label(cell)
        if not cell.get("available", True):
            unavailable.setdefault(setting, cell.get("availability") or "unavailable")
            continue
        columns.setdefault(setting, []).append(cell)
    for setting in columns:
        unavailable.pop(setting, None)
    trials_of = {s: [(c, t) for c in cells for t in c.get("trials", []) if t.get("status") == "ok"]
                 for s, cells in columns.items()}
    transitions: set[str] = set()
    for pairs in trials_of.values():
        for _, trial in pairs:
            for side in ((trial.get("ground_truth") or {}).get("expected") or {}).values():
                transitions.update(side.get("transitions", {}))
            for side, counts in ((trial.get("observed") or {}).get("sides") or {}).items():
                if side in ("client", "server"):
                    transitions.update(counts.get("transitions") or {})
    rows: list[dict[str, Any]] = []
    for name in sorted(transitions, key=_state_rank):
        rows.append({"row": name, "category": "transition", "name": name,
                     "cells": {s: _cell_value(p, columns[s][0]["backend"], "transition", name)
                               for s, p in trials_of.items()}})
    entered = {t.partition("->")[2] for t in transitions}
    for state in STATES:
        if state not in entered and state != NEW_SYN_RECV:
            rows.append({"row": f"* -> {state}", "category": "state", "name": state,
                         "cells": {s: {"status": "not measured", "text": "not measured", "evidence": None}
                                   for s in trials_of},
                         "note": "no trial of this run declared or reported a transition into this state"})
    for kind in KINDS:
        rows.append({"row": KIND_LABELS.get(kind, kind), "category": "event", "name": kind,
                     "cells": {s: _cell_value(p, columns[s][0]["backend"], "event", kind)
                               for s, p in trials_of.items()}})
    for field in ("pid", "comm", "socket identity"):
        rows.append({"row": field, "category": "field", "name": field,
                     "cells": {s: _field_value(columns[s], p, field) for s, p in trials_of.items()}})
    return {"columns": list(columns), "unavailable": unavailable, "rows": rows}
