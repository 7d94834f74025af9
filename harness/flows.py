"""The flow sample as a run keeps it: the workload's sampled flows (its ground truth), the observer's
sampled events, and the two packed into a trial's `flow_sample` in run.json.

One connection in tcp.FLOW_SAMPLE (by client port) is followed event by event. The workload (churn)
records each sampled flow's port and start, the observers keep each event of those ports; the runner
stores both, raw. Matching them comes after the run (harness/analysis/flowmatch.py reads what this
module writes), so backends, workloads and the runner import this module, never the analysis.
Beside the TCP model at the bottom of the layering: it imports nothing of tpbench but harness/tcp.py.
"""

from __future__ import annotations

import struct
from typing import Any, Iterable

from .tcp import FLOW_SAMPLE

# ts_ns, sk, kind, side, old, new, sport, dport of tcp_events.bpf.h's 56-byte record
_RECORD = struct.Struct("<QQ4xBBBB8xHH")

SCORED = frozenset({"transitions", "sock_destroy"})
# hook (tracepoint, or the kprobe/fentry backend's function) -> what it lets a flow be scored on
_HOOK_SCORES = {"inet_sock_set_state": "transitions", "tcp_set_state": "transitions",
                "tcp_destroy_sock": "sock_destroy", "tcp_v4_destroy_sock": "sock_destroy"}


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


def scored_from_hooks(hooks: Iterable[str]) -> frozenset[str]:
    """"sock:inet_sock_set_state", "kprobe:tcp_set_state" ... -> what the observer can be scored on."""
    return frozenset(_HOOK_SCORES[h.rsplit(":", 1)[-1]] for h in hooks if h.rsplit(":", 1)[-1] in _HOOK_SCORES)


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


def unpack(text: str) -> list[int]:
    """One packed flow or event of a flow_sample ("ts side kind old new port") -> its numbers."""
    return [int(n) for n in text.split()]
