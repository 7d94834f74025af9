"""The tracepoint-vs-libpcap answer per workload, from the paired comparisons of stats.analyse().

"yes" (the tracepoint costs less CPU per operation, decided), "no" (libpcap costs less), "no
significant difference", or "not decided": never a ranking the confidence interval does not carry.
The default settings of both answer; other settings measured beside them are named when they differ.
"""

from __future__ import annotations

from typing import Any

from .stats import NO_DIFFERENCE


def signed(value: float) -> str:
    """Readable at every scale: +3,012 for thousands of µs, +1.66e-05 for µs per byte."""
    return f"{value:+,.0f}" if abs(value) >= 1000 else f"{value:+.3g}"


def tracepoint_vs_pcap(key: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The explicit answer for one workload, from the paired comparisons only."""
    pairs = [c for c in entry.get("comparisons", []) if {c["a_backend"], c["b_backend"]} == {"tracepoint", "pcap"}]
    if not pairs:
        return {"answer": "not measured", "sentence": "not measured: this run has no tracepoint and pcap cells "
                "for this workload", "pairs": []}
    results = []
    for c in pairs:
        tp_side = "a" if c["a_backend"] == "tracepoint" else "b"
        pc_side = "b" if tp_side == "a" else "a"
        tp, pc = c[tp_side], c[pc_side]
        if c["cheaper"]:
            outcome = "yes" if c["cheaper"] == tp_side else "no"
        elif c["code"] == NO_DIFFERENCE:
            outcome = "no difference"
        else:
            outcome = "not decided"
        diff = c["diff_a_minus_b"]
        sign = 1 if c["a"] == tp else -1  # report tracepoint - pcap
        lo, hi = (diff["low"], diff["high"]) if sign == 1 else (
            (-diff["high"] if diff["high"] is not None else None), (-diff["low"] if diff["low"] is not None else None))
        results.append({"tracepoint": tp, "pcap": pc, "tracepoint_setting": c[f"{tp_side}_setting"],
                        "pcap_setting": c[f"{pc_side}_setting"], "outcome": outcome, "verdict": c["verdict"],
                        "diff_us": sign * diff["median"], "low_us": lo, "high_us": hi,
                        "percent_of_baseline": (sign * c["percent_of_baseline"]) if c["percent_of_baseline"] is not None else None})
    default = next((r for r in results if r["tracepoint_setting"] == "tracepoint" and r["pcap_setting"] == "pcap"),
                   results[0])
    outcomes = {r["outcome"] for r in results}
    head = {"yes": "yes", "no": "no", "no difference": "no significant difference",
            "not decided": "not decided"}[default["outcome"]]
    ci = _ci_us(default)
    sentence = f"{head}: CPU per operation of {default['tracepoint']} - {default['pcap']} = {ci}"
    if default["outcome"] == "not decided":
        sentence += f" ({default['verdict'].removeprefix('not decided: ')})"
    if len(outcomes) > 1:
        sentence += "; other settings differ: " + "; ".join(
            f"{r['tracepoint_setting']} vs {r['pcap_setting']}: {r['outcome']}" for r in results if r is not default)
    return {"answer": head, "sentence": sentence, "pairs": results}


def _ci_us(r: dict[str, Any]) -> str:
    if r["low_us"] is None:
        return f"{signed(r['diff_us'])} µs/op (no CI: fewer than 3 paired trials)"
    pct = f" ({r['percent_of_baseline']:+.1f}% of the baseline's)" if r["percent_of_baseline"] is not None else ""
    return f"{signed(r['diff_us'])} µs/op [{signed(r['low_us'])}, {signed(r['high_us'])}]{pct}"
