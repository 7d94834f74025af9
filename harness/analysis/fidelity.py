"""Fidelity: what each observer saw against what the workload declared and the kernel counted.

Reads only run.json. Per cell, per side (client/server: the host whose socket the event belongs
to), per transition and event kind, summed over the cell's ok trials:

  expected  from the workload's declaration for that trial (`transitions`/`events`: exact;
            `equals_nstat`: exactly the named counter's delta in that side's namespace)
  bound     `at_least` declarations: a lower bound, never an exact count
  seen      what the observer reported for that side
  lost      the part of a trial's shortfall (expected - seen) that the observer's own reported
            losses could explain; observers report losses per trial, not per kind, so this is an
            upper bound on what was lost *of this kind*, and it is only used when the observer
            reports them in events (pcap reports packets, sockdiag connections: shown, never
            subtracted)
  missing   max(0, expected - seen - lost) per trial: what nothing the observer said explains
  extra     max(0, seen - expected) per trial: seen but not caused (transitions are declared
            exhaustively, so an undeclared transition is all extra)

`inexact` declarations carry the workload's reason instead of a number; kinds no declaration
mentions are listed as "not declared" with what was seen. Kinds or transitions a backend declares
it cannot see (details.invisible) are "invisible", never "missing", and the kernel checks leave
them out: a declaration covers a name by itself or by its whole kind (`state_change` covers every
transition; declared_invisible decides it, for every such skip).

Matching here is by totals per trial, side and kind/transition; harness/flowmatch.py matches a
sample of flows one by one (4-tuple and time) where the workload and the observer keep them.

Kernel-counter cross-checks (KERNEL_CHECKS) set an observer's counts beside the SNMP counters that
the same kernel code paths increment, with the measured difference and, where the two count
different things, why.
"""

from __future__ import annotations

from typing import Any

from .stats import BASELINE, cell_label, setting_label, workload_key
from ..tcp import (CLOSE, CLOSE_WAIT, CLOSING, ESTABLISHED, EVENT_KINDS, FIN_WAIT2, KIND_STATE_CHANGE, LISTEN, SIDES,
                   SYN_RECV, SYN_SENT, arrow)

STATE_CHANGE = EVENT_KINDS[KIND_STATE_CHANGE]

# Precedence when a name has several declarations (synack's server declares synack_retransmit
# at_least, equals_nstat and inexact): an exact count beats a bound beats a reason.
DECLARATION_ORDER = ("exact", "equals_nstat", "at_least", "inexact")

# (observer names summed, SNMP counter, relation, why). "equal" means the same kernel function
# fires the event and increments the counter, so any difference is the observer's.
KERNEL_CHECKS: tuple[tuple[tuple[str, ...], str, str, str], ...] = (
    ((arrow(CLOSE, SYN_SENT),), "TcpActiveOpens", "equal",
     "tcp_v4_connect sets SYN_SENT and tcp_connect counts ActiveOpens for the same connect()"),
    ((arrow(LISTEN, SYN_RECV),), "TcpPassiveOpens", "equal",
     "the child socket is cloned from the listener in SYN_RECV by tcp_create_openreq_child, which counts PassiveOpens"),
    (("reset_sent",), "TcpOutRsts", "equal",
     "tcp_v4_send_reset and tcp_send_active_reset fire tcp_send_reset and count OutRsts"),
    ((arrow(ESTABLISHED, CLOSE), arrow(CLOSE_WAIT, CLOSE)), "TcpEstabResets", "equal",
     "tcp_set_state itself counts EstabResets for every ESTABLISHED or CLOSE_WAIT socket it closes"),
    ((arrow(FIN_WAIT2, CLOSE), arrow(CLOSING, CLOSE)), "TcpExtTW", "equal",
     "tcp_time_wait hands the connection to a TIME_WAIT socket and closes the full one from FIN_WAIT2 "
     "(or CLOSING); TW counts those sockets (measured equal in churn on 6.1 and 6.18)"),
    (("retransmit", "synack_retransmit"), "TcpRetransSegs", "segments vs skbs",
     "RetransSegs adds tcp_skb_pcount() per retransmitted skb (more than 1 with TSO/GSO) plus one per "
     "SYN-ACK retransmit; tcp_retransmit_skb fires once per skb (also for attempts that fail), so the two "
     "agree only when every retransmitted skb is one segment"),
)


def invisible_names(details: dict[str, Any]) -> dict[str, str]:
    """details.invisible's keys are prose ("pid, comm", "retransmit (data)"): name -> reason.

    A qualified key ("retransmit (data)") means only part of that kind is invisible: it is kept
    under the qualified name, so the kind itself is still compared.
    """
    out: dict[str, str] = {}
    for key, reason in (details.get("invisible") or {}).items():
        for name in (part.strip() for part in key.split(",")):
            if name:
                out[name] = reason
    return out


def kind_of(name: str) -> str:
    """The event kind a row or check name belongs to: a transition ("FIN_WAIT2->CLOSE") is a
    state_change, a kind ("reset_sent") is itself."""
    return STATE_CHANGE if "->" in name else name


def declared_invisible(name: str, invisible: dict[str, str]) -> str | None:
    """The backend's reason for not seeing `name` (a kind or a transition), None where it claims to.

    `invisible` is invisible_names(details). A declaration covers a name by the name itself or by
    its whole kind: a peer declaring `state_change` invisible (tcplife, tcpretrans) cannot see
    FIN_WAIT2->CLOSE either. A qualified key ("reset_sent (socketless)") hides only part of a kind
    and covers nothing here: partly_invisible says so.
    """
    for key in (name, kind_of(name)):
        if key in invisible:
            return invisible[key]
    return None


def partly_invisible(name: str, invisible: dict[str, str]) -> bool:
    """A qualified declaration ("reset_sent (socketless)") hides part of `name` or of its kind."""
    return any(key.startswith(f"{k} (") for k in {name, kind_of(name)} for key in invisible)


def lost_unit(details: dict[str, Any]) -> str:
    """What the observer's `lost` counts: only event losses can explain missing events."""
    if details.get("lost_unit"):
        return str(details["lost_unit"]).split(" ")[0]
    if "pcap_stats" in details:
        return "packets"
    return "events"


def _declarations(side_exp: dict[str, Any], category: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if category == "transition":
        found["exact"] = side_exp.get("transitions", {}).get(name, 0)  # exhaustive: absent means 0
        return found
    if name in side_exp.get("events", {}):
        found["exact"] = side_exp["events"][name]
    if name in side_exp.get("equals_nstat", {}):
        found["equals_nstat"] = side_exp["equals_nstat"][name]
    if name in side_exp.get("at_least", {}):
        found["at_least"] = side_exp["at_least"][name]
    if name in side_exp.get("inexact", {}):
        found["inexact"] = side_exp["inexact"][name]
    return found


def _ok_trials(cell: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in cell.get("trials", []) if t.get("status") == "ok"]


def _side_counts(trial: dict[str, Any], side: str, category: str) -> dict[str, int]:
    counts = ((trial.get("observed") or {}).get("sides") or {}).get(side) or {}
    return counts.get("transitions" if category == "transition" else "events") or {}


def _row_names(trials: list[dict[str, Any]], side: str) -> list[tuple[str, str]]:
    names: dict[tuple[str, str], None] = {}
    for trial in trials:
        exp = ((trial.get("ground_truth") or {}).get("expected") or {}).get(side) or {}
        for name in exp.get("transitions", {}):
            names[("transition", name)] = None
        for key in ("events", "equals_nstat", "at_least", "inexact"):
            for name in exp.get(key, {}):
                if not name.startswith("Tcp"):  # nstat names are ground truth, not observer kinds
                    names[("event", name)] = None
        for category in ("transition", "event"):
            for name in _side_counts(trial, side, category):
                names[(category, name)] = None
    return sorted(names, key=lambda cn: (cn[0] != "transition", cn[1]))


def _row(trials: list[dict[str, Any]], side: str, category: str, name: str) -> dict[str, Any]:
    row: dict[str, Any] = {"side": side, "category": category, "name": name, "trials": len(trials),
                           "declared": None, "expected": None, "bound": None, "seen": 0, "lost": 0,
                           "missing": None, "extra": None, "trials_as_declared": 0, "invisible": None,
                           "note": None}
    for trial in trials:
        details = (trial.get("observed") or {}).get("details") or {}
        invisible = invisible_names(details)
        counts = _side_counts(trial, side, category)
        reported = name in counts
        seen = int(counts.get(name, 0))
        row["seen"] += seen
        reason = None if reported else declared_invisible(name, invisible)
        if reason is not None:  # the backend says it cannot see this: not missing
            row["invisible"] = reason
            continue
        decl = _declarations(((trial.get("ground_truth") or {}).get("expected") or {}).get(side) or {}, category, name)
        kind = next((k for k in DECLARATION_ORDER if k in decl), None)
        row["declared"] = row["declared"] or kind
        if kind in ("exact", "equals_nstat"):
            if kind == "exact":
                expected = int(decl["exact"])
            else:
                nstat = ((trial.get("ground_truth") or {}).get("nstat") or {}).get(side) or {}
                expected = int(nstat.get(decl["equals_nstat"], 0))
                row["note"] = f"= {decl['equals_nstat']} (nstat)"
            lost_events = int((trial.get("observed") or {}).get("lost") or 0) if lost_unit(details) == "events" else 0
            shortfall = max(0, expected - seen)
            explained = min(shortfall, lost_events)
            row["expected"] = (row["expected"] or 0) + expected
            row["lost"] += explained
            row["missing"] = (row["missing"] or 0) + shortfall - explained
            row["extra"] = (row["extra"] or 0) + max(0, seen - expected)
            row["trials_as_declared"] += seen == expected
            if "at_least" in decl:
                row["bound"] = (row["bound"] or 0) + int(decl["at_least"])
        elif kind == "at_least":
            bound = int(decl["at_least"])
            lost_events = int((trial.get("observed") or {}).get("lost") or 0) if lost_unit(details) == "events" else 0
            shortfall = max(0, bound - seen)
            explained = min(shortfall, lost_events)
            row["bound"] = (row["bound"] or 0) + bound
            row["lost"] += explained
            row["missing"] = (row["missing"] or 0) + shortfall - explained
            row["trials_as_declared"] += seen >= bound
        if "inexact" in decl:
            row["note"] = decl["inexact"] if kind == "inexact" else (row["note"] or decl["inexact"])
    if row["declared"] is None and row["invisible"] is None:
        row["declared"] = "not declared"
    return row


def _kernel_checks(trials: list[dict[str, Any]], side: str) -> list[dict[str, Any]]:
    out = []
    for names, counter, relation, why in KERNEL_CHECKS:
        seen = counted = 0
        compared = 0
        partly = False  # e.g. "reset_sent (socketless)": the counter then bounds what is seen
        for trial in trials:
            nstat = ((trial.get("ground_truth") or {}).get("nstat") or {}).get(side) or {}
            if counter not in nstat:
                continue
            invisible = invisible_names((trial.get("observed") or {}).get("details") or {})
            counts = {**_side_counts(trial, side, "event"), **_side_counts(trial, side, "transition")}
            if not any(n in counts for n in names) and any(declared_invisible(n, invisible) is not None
                                                        for n in names):
                continue  # the backend declares it cannot see these (by name, or their whole kind)
            partly = partly or any(partly_invisible(n, invisible) for n in names)
            seen += sum(int(counts.get(n, 0)) for n in names)
            counted += int(nstat[counter])
            compared += 1
        if compared and (seen or counted):
            offloads = sorted({f"{role}: {', '.join(k for k, v in sorted(f.items()) if v) or 'all off'}"
                               for t in trials for role, f in (((t.get("ground_truth") or {}).get("generator") or {})
                                                               .get("offloads") or {}).items()})
            out.append({"side": side, "observed": " + ".join(names), "counter": counter, "relation": relation,
                        "why": why, "seen": seen, "counted": counted, "difference": seen - counted,
                        "trials": compared, "offloads_on": offloads or None,
                        "partly_invisible": partly,
                        "shortfall": max(0, counted - seen) if relation == "equal" and not partly else None})
    return out


def _uncounted_shortfall(trials: list[dict[str, Any]]) -> int:
    """Per trial, the kernel checks' shortfall less the events the trial counted lost, summed."""
    total = 0
    for trial in trials:
        shortfall = sum(c["shortfall"] or 0 for side in SIDES for c in _kernel_checks([trial], side))
        total += max(0, shortfall - int((trial.get("observed") or {}).get("lost") or 0))
    return total


def _ground_truth_check(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Did the kernel count what the workload declared (the oracle is itself checked)?"""
    matched, mismatches = 0, []
    for trial in trials:
        ok = True
        for side in SIDES:
            declared = (((trial.get("ground_truth") or {}).get("expected") or {}).get(side) or {}).get("nstat") or {}
            nstat = ((trial.get("ground_truth") or {}).get("nstat") or {}).get(side) or {}
            for counter, value in sorted(declared.items()):
                if int(nstat.get(counter, 0)) != int(value):
                    ok = False
                    mismatches.append({"trial": trial.get("index"), "side": side, "counter": counter,
                                       "declared": value, "counted": nstat.get(counter, 0)})
        matched += ok
    return {"trials": len(trials), "trials_matching": matched, "mismatches": mismatches[:20]}


def observes_nothing(cell: dict[str, Any]) -> bool:
    """A cost-floor cell (tracepoint-empty: programs that return at once) reports no events by design."""
    trials = _ok_trials(cell)
    return bool(trials) and all(((t.get("observed") or {}).get("details") or {}).get("mode") == "empty" for t in trials)


def cell_fidelity(cell: dict[str, Any]) -> dict[str, Any] | None:
    """One cell's fidelity over its ok trials: rows per side and kind, other-side events, wrong fields, losses
    and kernel checks; None for an unavailable cell, one without ok trials, or a cost-floor cell."""
    trials = _ok_trials(cell)
    if not cell.get("available", True) or not trials or observes_nothing(cell):
        return None
    rows = [_row(trials, side, category, name) for side in SIDES for category, name in _row_names(trials, side)]
    other: dict[str, int] = {}
    for trial in trials:  # events whose addresses are neither host's: a wrong (or cleared) address
        for category in ("event", "transition"):
            for name, n in _side_counts(trial, "other", category).items():
                if n:
                    other[f"{category}:{name}"] = other.get(f"{category}:{name}", 0) + int(n)
    details = [(t.get("observed") or {}).get("details") or {} for t in trials]
    field_errors: dict[str, dict[str, int]] = {}
    for d in details:  # kprobe/fentry: struct reads compared with the tracepoint for the same event
        for kind, entry in ((d.get("fidelity") or {}).get("per_kind") or {}).items():
            for field, n in (entry.get("fields_differing") or {}).items():
                field_errors.setdefault(kind, {})[field] = field_errors.setdefault(kind, {}).get(field, 0) + n
    units = sorted({lost_unit(d) for d in details})
    checks = [c for side in SIDES for c in _kernel_checks(trials, side)]
    countable = all((t.get("observed") or {}).get("lost") is not None for t in trials)
    return {
        "label": cell_label(cell), "workload": workload_key(cell), "backend": cell["backend"],
        "setting": setting_label(cell), "trials": len(trials),
        "lost_reported": sum(int((t.get("observed") or {}).get("lost") or 0) for t in trials) if countable else None,
        # where the kernel cannot count skipped programs (lost: null), the counters that cannot
        # miss say how many events an observer probably lost without knowing
        "probable_silent_loss": None if countable else sum(c["shortfall"] or 0 for c in checks),
        # where the observer counts lost events, a shortfall beyond them: each counted event explains
        # at most one unit of shortfall, so this is a lower bound on the loss nobody counted (a
        # capture or a poll misses what it cannot infer or did not sample, which is no loss)
        "uncounted_shortfall": _uncounted_shortfall(trials) if countable and units == ["events"] else None,
        "lost_unit": units[0] if len(units) == 1 else "/".join(units),
        "rows": rows,
        "other_side": other,
        "wrong_fields": field_errors,
        "field_check": any("fidelity" in d for d in details),
        "kernel_checks": checks,
        "ground_truth": _ground_truth_check(trials),
    }


def fidelity(run: dict[str, Any]) -> dict[str, Any]:
    """workload key -> cell label -> cell_fidelity (cells without ok trials are left out)."""
    out: dict[str, dict[str, Any]] = {}
    for cell in run["cells"]:
        if cell["backend"] == BASELINE:
            continue  # the baseline observes nothing
        result = cell_fidelity(cell)
        if result is not None:
            out.setdefault(workload_key(cell), {})[result["label"]] = result
    return out


def row_status(row: dict[str, Any]) -> str:
    """One word for a row: as declared, short, extra, invisible, or just seen."""
    if row["invisible"] is not None and row["declared"] is None:
        return "invisible"
    if row["missing"]:
        return "missing"
    if row["extra"]:
        return "extra"
    if row["declared"] in ("exact", "equals_nstat", "at_least"):
        return "as declared" if row["trials_as_declared"] == row["trials"] else "short (lost)"
    return "seen" if row["seen"] else "none seen"


