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
"""

from __future__ import annotations

import bisect
import struct
from collections import Counter
from typing import Any, Iterable

from ..tcp import FLOW_SAMPLE, KIND_NAMES, KIND_SOCK_DESTROY, KIND_STATE_CHANGE, SIDES, transition

# ts_ns, sk, kind, side, old, new, sport, dport of tcp_events.bpf.h's 56-byte record
_RECORD = struct.Struct("<QQ4xBBBB8xHH")
OUTCOMES = ("exact", "missing", "duplicated", "unexpected", "out_of_order", "unseen")
EXAMPLES = 3  # flows that are not exact, quoted with their events


def truth_flows(sample: int, flows: list[list[int]], overflow: int,
                per_connection: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The workload's side: sampled flows [port, start_ns] and one connection's transitions per side."""
    return {"sample": sample, "flows": flows, "overflow": overflow, "per_connection": per_connection}


def sample_record(raw: bytes, offset: int = 0) -> list[int] | None:
    """One raw event record -> [ts, side, kind, old, new, port] if its flow is sampled, as the C
    consumer decides (used for the few events still staged per CPU at detach). A port not yet
    chosen or already cleared (port 0) is not recovered here: the C consumer's socket map is."""
    ts, _, kind, side, old, new, sport, dport = _RECORD.unpack_from(raw, offset)
    port = sport if side == 0 else dport if side == 1 else 0
    if port == 0 or port % FLOW_SAMPLE:
        return None
    return [ts, side, kind, old, new, port]


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


SCORED = frozenset({"transitions", "sock_destroy"})
# hook (tracepoint, or the kprobe/fentry backend's function) -> what it lets a flow be scored on
_HOOK_SCORES = {"inet_sock_set_state": "transitions", "tcp_set_state": "transitions",
                "tcp_destroy_sock": "sock_destroy", "tcp_v4_destroy_sock": "sock_destroy"}


def scored_from_hooks(hooks: Iterable[str]) -> frozenset[str]:
    """"sock:inet_sock_set_state", "kprobe:tcp_set_state" ... -> what the observer can be scored on."""
    return frozenset(_HOOK_SCORES[h.rsplit(":", 1)[-1]] for h in hooks if h.rsplit(":", 1)[-1] in _HOOK_SCORES)


def match(truth: dict[str, Any], events: Iterable[list[int]], overflow: int = 0,
          scored: frozenset[str] = SCORED, invisible: Iterable[str] = (),
          tolerance_ns: int = 0) -> dict[str, Any]:
    """truth: truth_flows(); events: [ts_ns, side, kind, old, new, port] as the consumer kept them;
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


def flow_sample(truth: dict[str, Any], observed: dict[str, Any]) -> dict[str, Any]:
    """What a trial's record keeps for per-flow matching, raw: the workload's sampled flows
    (truth_flows()) and the observer's sampled events with what qualifies them (overflow, scored,
    invisible, clock_tolerance_ns, sk_overflow). Bounded: both sides keep fixed tables (FLOW_SLOTS
    per churn worker, FLOW_EVENTS in the consumers) and count their overflow. Each flow and event is
    one string of its numbers ("ts side kind old new port"): one line of run.json, not eight."""
    keep = ("overflow", "scored", "invisible", "clock_tolerance_ns", "sk_overflow")
    return {"truth": {**truth, "flows": [_pack(f) for f in truth["flows"]]},
            "observed": {"events": [_pack(e) for e in observed["events"]],
                         **{k: observed[k] for k in keep if k in observed}}}


def _pack(numbers: Iterable[int]) -> str:
    return " ".join(map(str, numbers))


def _unpack(text: str) -> list[int]:
    return [int(n) for n in text.split()]


def trial_flows(trial: dict[str, Any]) -> dict[str, Any] | None:
    """A trial's per-flow result, matched from its raw flow_sample (records before 2026-12-05
    stored only the result, as "flows")."""
    if "flow_sample" not in trial:
        return trial.get("flows")
    truth, seen = trial["flow_sample"]["truth"], trial["flow_sample"]["observed"]
    result = match({**truth, "flows": [_unpack(f) for f in truth["flows"]]}, [_unpack(e) for e in seen["events"]],
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

