"""Per-flow matching: which connections an observer saw whole, and which it saw in part.

Totals can hide compensating errors (one flow's event twice, another's not at all), so fidelity is
also checked flow by flow, on a sample that keeps memory bounded at any rate: the flows whose
client port is a multiple of FLOW_SAMPLE. Both sides sample alike without talking to each other:
  - the workload (harness/agents/traffic/c/churn.c) records each sampled connection's port and the
    CLOCK_MONOTONIC time its connect() began: the ground truth, one entry per flow;
  - the observer keeps every event of those ports with its time: the BPF backends' C consumer
    with the kernel's (bpf_ktime_get_ns: the same clock), pcap with the packet's (converted).
A port is reused over a long run, so an event belongs to the flow on its port that began last
before it (4-tuple plus time). Events are sorted by time within a flow (per-CPU batches arrive out
of order), then each flow and side is scored against what one connection declares (the workload's
per-connection transitions and one sock_destroy):
  exact        every declared transition and the destroy once, nothing else, in chain order
               (each transition leaves the state the previous one entered);
  missing      a declared transition or the destroy not seen;
  duplicated   one seen more often than declared;
  unexpected   a transition the connection does not declare;
  out_of_order the right set, but not a chain in time order (a wrong timestamp or state);
  unseen       no event at all for that flow and side.
Events on a sampled port before its first flow began, or on a port the workload never used, are
`unmatched` (a wrong port, or traffic that is not the workload's). Retransmits, resets and
tcp_probe are not scored: their number per connection is not declared.

The sample as the run keeps it (the truth, the event record, the packing in run.json) is
harness/flows.py's: the run writes it without importing this module, which only reads it.
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Any, Iterable

from ..flows import SCORED, unpack
from ..tcp import KIND_NAMES, KIND_SOCK_DESTROY, KIND_STATE_CHANGE, SIDES, transition

OUTCOMES = ("exact", "missing", "duplicated", "unexpected", "out_of_order", "unseen")
EXAMPLES = 3  # flows that are not exact, quoted with their events


def _score(events: list[tuple[int, int, int, int]], declared: dict[str, int],
           scored: frozenset[str], invisible: frozenset[str] = frozenset()) -> set[str]:
    """events: (ts, kind, old, new) of one flow and side, in time order -> its outcomes."""
    seen: Counter = Counter()
    chain_ok, state = True, None
    for _, kind, old, new in events:
        if kind == KIND_STATE_CHANGE:
            seen[transition(old, new)] += 1
            if state is not None and old != state:
                chain_ok = False
            state = new
        elif kind == KIND_SOCK_DESTROY:
            seen["sock_destroy"] += 1
    declared = {name: n for name, n in declared.items() if name not in invisible}
    want = {**(declared if "transitions" in scored else {}),
            **({"sock_destroy": 1} if "sock_destroy" in scored else {})}
    seen = Counter({name: n for name, n in seen.items()
                    if (name == "sock_destroy" and "sock_destroy" in scored)
                    or (name != "sock_destroy" and "transitions" in scored)})
    outcomes = set()
    if not events:
        return {"unseen"}
    if any(seen[name] < n for name, n in want.items()):
        outcomes.add("missing")
    if any(seen[name] > n for name, n in want.items()):
        outcomes.add("duplicated")
    if any(name not in want for name in seen):
        outcomes.add("unexpected")
    if not outcomes:
        outcomes.add("exact" if chain_ok else "out_of_order")
    return outcomes


def match(truth: dict[str, Any], events: Iterable[list[int]], overflow: int = 0,
          scored: frozenset[str] = SCORED, invisible: Iterable[str] = (),
          tolerance_ns: int = 0) -> dict[str, Any]:
    """truth: flows.truth_flows(); events: [ts_ns, side, kind, old, new, port] as the consumer kept them;
    scored: what the observer hooked of "transitions" and "sock_destroy" (the rest is not its fault);
    invisible: transitions the observer declares it cannot see (not scored either); tolerance_ns:
    how far before its flow's connect() an event's clock may put it (packet times: microseconds)."""
    invisible = frozenset(invisible)
    starts: dict[int, list[int]] = {}
    for port, start in truth["flows"]:
        starts.setdefault(port, []).append(start)
    for times in starts.values():
        times.sort()
    per_flow: dict[tuple[int, int], list[list[tuple[int, int, int, int]]]] = {}
    unmatched: Counter = Counter()
    for ts, side, kind, old, new, port in events:
        times = starts.get(port)
        index = bisect.bisect_right(times, ts + tolerance_ns) - 1 if times else -1
        if index < 0 or side not in (0, 1):
            unmatched["state_change" if kind == KIND_STATE_CHANGE else KIND_NAMES.get(kind, str(kind))] += 1
            continue
        sides = per_flow.setdefault((port, index), [[], []])
        sides[side].append((ts, kind, old, new))
    result: dict[str, Any] = {
        "sample_every": truth["sample"],
        "scored": sorted(scored),
        "not_scored": sorted(invisible),
        "flows": len(truth["flows"]),
        "truth_overflow": truth["overflow"],
        "events_overflow": overflow,
        "unmatched_events": dict(unmatched),
        "sides": {},
        "examples": [],
    }
    for side_index, side in enumerate(SIDES):
        declared = truth["per_connection"][side]
        outcomes: Counter = Counter()
        for port, times in sorted(starts.items()):
            for index in range(len(times)):
                # by time; events of one time keep the order they were kept in (stable sort)
                flow_events = sorted(per_flow.get((port, index), [[], []])[side_index], key=lambda e: e[0])
                found = _score(flow_events, declared, scored, invisible)
                outcomes.update(found)
                if "exact" not in found and len(result["examples"]) < EXAMPLES:
                    result["examples"].append({
                        "side": side, "port": port, "outcomes": sorted(found),
                        "events": [transition(o, n) if k == KIND_STATE_CHANGE else KIND_NAMES.get(k, f"kind {k}")
                                   for _, k, o, n in flow_events],
                    })
        result["sides"][side] = {name: outcomes.get(name, 0) for name in OUTCOMES}
    return result


def trial_flows(trial: dict[str, Any]) -> dict[str, Any] | None:
    """A trial's per-flow result, matched from its raw flow_sample (harness/flows.py's flow_sample();
    records before 2026-12-05 stored only the result, as "flows")."""
    if "flow_sample" not in trial:
        return trial.get("flows")
    truth, seen = trial["flow_sample"]["truth"], trial["flow_sample"]["observed"]
    result = match({**truth, "flows": [unpack(f) for f in truth["flows"]]}, [unpack(e) for e in seen["events"]],
                   seen.get("overflow", 0), frozenset(seen["scored"]), seen.get("invisible", ()),
                   seen.get("clock_tolerance_ns", 0))
    result["sk_overflow"] = seen.get("sk_overflow", 0)  # socket-address table full
    return result


def aggregate(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """workload key -> cell label -> the ok trials' per-flow results summed (cells with any)."""
    from .stats import workload_key

    out: dict[str, dict[str, Any]] = {}
    for cell in run["cells"]:
        results = [r for t in cell.get("trials", []) if t.get("status") == "ok" and (r := trial_flows(t))]
        if not results:
            continue
        total: dict[str, Any] = {
            "trials": len(results),
            "sample_every": results[0]["sample_every"],
            "scored": results[0].get("scored", sorted(SCORED)),
            "flows": sum(r["flows"] for r in results),
            "truth_overflow": sum(r["truth_overflow"] for r in results),
            "events_overflow": sum(r["events_overflow"] for r in results),
            "unmatched_events": dict(sum((Counter(r["unmatched_events"]) for r in results), Counter())),
            "sides": {side: {name: sum(r["sides"][side][name] for r in results) for name in OUTCOMES}
                      for side in SIDES},
            "examples": [e for r in results for e in r["examples"]][:EXAMPLES],
        }
        out.setdefault(workload_key(cell), {})[cell["label"]] = total
    return out

