"""Attribution accuracy: did the observer name the process that caused each event?

Reads only run.json. Backends that record a pid per event (tracepoint and kprobe in stream mode,
tracefs) put counts per (side, kind, pid[, comm]) in `details.attribution`; the workload records
the pids that made its traffic, per side, in `ground_truth.pids`. An event of side S is attributed
right when its pid is one of S's pids.

Why it is not 100%: passive-side work (a SYN_RECV child, a received FIN or RST, an ACK that moves
a socket on) runs in softirq, in the context of whichever task the interrupt hit: the peer's
process when both namespaces share a CPU (veth delivers in the sender's softirq), the idle task
(pid 0) on an idle CPU, or anything else that was running. So the share is measured per side and
kind, and the wrong attributions are split by who got them.
"""

from __future__ import annotations

from typing import Any

from .stats import workload_key
from .stats import setting_label

OTHER_SIDE = {"client": "server", "server": "client"}


def cell_attribution(cell: dict[str, Any]) -> dict[str, Any] | None:
    """(side, kind) -> counts, summed over the cell's ok trials that recorded attribution."""
    trials = [t for t in cell.get("trials", []) if t.get("status") == "ok"
              and isinstance(((t.get("observed") or {}).get("details") or {}).get("attribution"), list)]
    if not trials:
        return None
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for trial in trials:
        pids = {side: set(p) for side, p in ((trial.get("ground_truth") or {}).get("pids") or {}).items()}
        sides = (trial.get("observed") or {}).get("sides") or {}
        for entry in trial["observed"]["details"]["attribution"]:
            side, kind, pid, n = entry["side"], entry["kind"], int(entry["pid"]), int(entry["count"])
            if side not in OTHER_SIDE:
                continue  # events of neither host (fidelity reports them)
            row = rows.setdefault((side, kind), {"side": side, "kind": kind, "attributed": 0, "right": 0,
                                                 "other_side_process": 0, "idle_task": 0, "other_task": 0,
                                                 "events_seen": 0, "wrong_comms": {}})
            row["attributed"] += n
            if pid in pids.get(side, ()):
                row["right"] += n
                continue
            if pid in pids.get(OTHER_SIDE[side], ()):
                row["other_side_process"] += n
            elif pid == 0:  # the idle task: softirq on an idle CPU
                row["idle_task"] += n
            else:
                row["other_task"] += n
            comm = entry.get("comm")
            if comm is not None:
                row["wrong_comms"][comm] = row["wrong_comms"].get(comm, 0) + n
        for side in OTHER_SIDE:
            for kind, n in ((sides.get(side) or {}).get("events") or {}).items():
                if (side, kind) in rows:
                    rows[(side, kind)]["events_seen"] += int(n)
    out = []
    for _key, row in sorted(rows.items()):
        row["share_right"] = row["right"] / row["attributed"] if row["attributed"] else None
        # tracefs keeps only its 50 largest (side, kind, pid) counts: coverage says how much was scored
        row["coverage"] = row["attributed"] / row["events_seen"] if row["events_seen"] else None
        row["wrong_comms"] = dict(sorted(row["wrong_comms"].items(), key=lambda kv: (-kv[1], kv[0]))[:3])
        out.append(row)
    return {"label": cell.get("label"), "workload": workload_key(cell), "backend": cell["backend"],
            "setting": setting_label(cell), "trials": len(trials), "rows": out}


def attribution(run: dict[str, Any]) -> dict[str, Any]:
    """workload key -> cell label -> cell_attribution, for cells that recorded pids."""
    out: dict[str, dict[str, Any]] = {}
    for cell in run["cells"]:
        result = cell_attribution(cell)
        if result is not None:
            out.setdefault(result["workload"], {})[result["label"]] = result
    return out
