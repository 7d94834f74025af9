"""The one-screen answer: per workload, level x consumer, tracepoint against libpcap, with the peers.

Reads only analysis results (toggle_stats' groups, stats.py's trial cells, visibility.py's
matrix), so `tpbench report` rebuilds it from run.json. Per toggled workload, one row per headline
pairing (level: state or full; consumer: c or python):

  tracepoint - pcap   the paired difference in % of the no-observer CPU per operation [95% CI]
                      and whether it is decided (CI half-width within the decision threshold)
  each vs none        each side's own overhead
  events/op           what each side delivered per operation (events; packets for capture)
  ns/event            each side's overhead per delivered event: what one visible thing costs

Beside them, the peers (the tools users run: bcc-tcpstates, bcc-tcplife, bcc-tcpretrans,
bpftrace) from the trials of the same run on the same workload: their overhead against the
trials' own no-observer baseline, rows they printed, and what they lost (their own reports plus
the kernel's misses; "n/a" where the kernel cannot count). Trials and toggled windows are
different measurements: the peers' rows are comparable with each other and with the trials'
tracepoint cells, not number for number with the toggled rows.

Bulk is in the units a person reads: stream's operations are bytes, shown as MB/s and CPU ms/MB.
"""

from __future__ import annotations

from typing import Any

PEERS = ("bcc-tcpstates", "bcc-tcplife", "bcc-tcpretrans", "bpftrace")


def _visibility_counts(analysis: dict[str, Any]) -> dict[str, dict[str, int]]:
    """backend -> {seen, inferred, invisible, rows}: what each backend showed at all in this run."""
    vis = analysis.get("visibility") or {}
    out: dict[str, dict[str, int]] = {}
    for column in vis.get("columns") or []:
        counts = {"seen": 0, "inferred": 0, "invisible": 0, "rows": 0}
        for row in vis.get("rows") or []:
            status = (row["cells"].get(column) or {}).get("status")
            if status in ("seen", "inferred", "invisible"):
                counts[status] += 1
                counts["rows"] += 1
        out[column] = counts
    return out


def _per_event_ns(row: dict[str, Any] | None) -> float | None:
    if not row or not row.get("overhead") or row["overhead"].get("diff_us") is None:
        return None
    events = row.get("events_per_op")
    return row["overhead"]["diff_us"] * 1e3 / events if events else None


def _peer_rows(analysis: dict[str, Any], workload: str) -> list[dict[str, Any]]:
    rows = []
    for key, entry in (analysis.get("workloads") or {}).items():
        if key.split("(", 1)[0] != workload:
            continue
        for cell in entry["cells"].values():
            if cell["backend"] not in PEERS or not cell["available"]:
                continue
            over = (cell.get("overhead") or {}).get("cpu_per_op") or {}
            pct = over.get("percent") or {}
            lost = cell.get("lost") or []
            rows.append({"backend": cell["backend"], "key": key, "trials": cell["trials"] - cell["failed"],
                         "overhead_pct": pct.get("median"), "ci_pct": [pct.get("low"), pct.get("high")],
                         "cpu_per_op_us": ((cell.get("metrics") or {}).get("cpu_per_op") or {}).get("median"),
                         "lost": None if any(n is None for n in lost) else sum(lost)})
    return rows


def matrix(analysis: dict[str, Any]) -> list[dict[str, Any]]:
    """Per toggled workload: the level x consumer rows, the peers, and each backend's visibility."""
    visible = _visibility_counts(analysis)
    out = []
    for group in (analysis.get("toggle") or {}).get("groups") or []:
        arms = group.get("arms") or {}
        rows = []
        for h in group.get("headline") or []:
            a, b = arms.get(h["a"]), arms.get(h["b"])
            rows.append({
                "level": h["level"], "consumer": h["consumer"], "a": h["a"], "b": h["b"],
                "diff_pct": h.get("diff_pct"), "ci_pct": h.get("ci_pct"), "decided": h.get("decided"),
                "outcome": h.get("outcome"),
                "a_vs_none_pct": ((a or {}).get("overhead") or {}).get("diff_pct"),
                "a_vs_none_ci_pct": ((a or {}).get("overhead") or {}).get("ci_pct"),
                "b_vs_none_pct": ((b or {}).get("overhead") or {}).get("diff_pct"),
                "b_vs_none_ci_pct": ((b or {}).get("overhead") or {}).get("ci_pct"),
                "a_events_per_op": (a or {}).get("events_per_op"), "b_events_per_op": (b or {}).get("events_per_op"),
                "a_ns_per_event": _per_event_ns(a), "b_ns_per_event": _per_event_ns(b),
                "a_lost": (a or {}).get("lost"), "b_lost": (b or {}).get("lost"),
            })
        baseline = next((row for row in arms.values() if row.get("role") == "baseline"), {})
        out.append({"workload": group["workload"], "rows": rows,
                    "baseline_cpu_per_op_us": group.get("baseline_cpu_per_op_us"),
                    "baseline_rate": baseline.get("rate"),
                    "peers": _peer_rows(analysis, group["workload"]),
                    "visibility": {name: visible[name] for name in ("tracepoint", "pcap", *PEERS) if name in visible}})
    return out


def _pct(value: float | None, ci: list[float | None] | None = None) -> str:
    if value is None:
        return "-"
    if ci and ci[0] is not None and ci[1] is not None:
        return f"{value:+.1f}% [{ci[0]:+.1f}, {ci[1]:+.1f}]"
    return f"{value:+.1f}% (no CI)"


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _answer(row: dict[str, Any]) -> str:
    if not row["decided"]:
        return "not decided"
    return {"a_cheaper": "tracepoint cheaper", "b_cheaper": "pcap cheaper",
            "no_difference": "no difference"}.get(row["outcome"], row["outcome"] or "-")


def _baseline(entry: dict[str, Any]) -> str:
    cpu, rate = entry.get("baseline_cpu_per_op_us"), entry.get("baseline_rate")
    if entry["workload"] == "stream" and cpu is not None:  # operations are bytes
        return f"no observer: {rate / 1e6:.0f} MB/s, {cpu * 1e3:.2f} ms CPU/MB" if rate else \
            f"no observer: {cpu * 1e3:.2f} ms CPU/MB"
    if cpu is None:
        return "no observer: -"
    return f"no observer: {rate:,.0f} ops/s, {cpu:.3g} us CPU/op" if rate else f"no observer: {cpu:.3g} us CPU/op"


def lines(analysis: dict[str, Any]) -> list[str]:
    """The terminal's and report.md's first screen."""
    found = analysis.get("matrix") or matrix(analysis)
    if not found:
        return []
    out = ["tracepoint - pcap, in % of the no-observer CPU per operation (toggled, 95% CI); "
           "ns/event: each side's overhead per event it delivered"]
    for entry in found:
        out.append(f"{entry['workload']} ({_baseline(entry)})")
        for row in entry["rows"]:
            out.append(f"  {row['level']:<5} {row['consumer']:<6} {_pct(row['diff_pct'], row['ci_pct']):<26} "
                       f"{_answer(row):<19} tp {_pct(row['a_vs_none_pct'], row['a_vs_none_ci_pct'])}, {_num(row['a_ns_per_event'])} ns/event; "
                       f"pcap {_pct(row['b_vs_none_pct'], row['b_vs_none_ci_pct'])}, {_num(row['b_ns_per_event'])} ns/event")
        for peer in entry["peers"]:
            lost = "n/a (uncounted before 6.7)" if peer["lost"] is None else f"{peer['lost']:,}"
            out.append(f"  peer {peer['backend']:<15} {_pct(peer['overhead_pct'], peer['ci_pct'])} vs none "
                       f"({peer['trials']} trial{'s' if peer['trials'] != 1 else ''}), lost {lost}")
        vis = entry["visibility"]
        if vis:
            out.append("  sees, over the run's trials (visibility rows seen/inferred/invisible): " + "; ".join(
                f"{name} {v['seen']}/{v['inferred']}/{v['invisible']}" for name, v in vis.items()))
    return out


def markdown(analysis: dict[str, Any]) -> list[str]:
    """report.md's Summary: per toggled workload its headline rows, peers and visibility ([] without any)."""
    found = analysis.get("matrix") or matrix(analysis)
    if not found:
        return []
    out = ["## Summary", "",
           "Per workload, tracepoint against libpcap at the same level (`state`: what tcpstates needs against a "
           "SYN/FIN/RST capture; `full`: every hook against every header) with the same kind of consumer "
           "(`c`: libbpf ring buffer against libpcap in C; `python`: a Python callback on both sides), toggled "
           "under one running workload; the difference is in % of the no-observer CPU per operation. "
           "Peers: the tools users run, from this run's trials (a different measurement, see below).", ""]
    for entry in found:
        out += [f"**{entry['workload']}** ({_baseline(entry)})", ""]
        rows = [[r["level"], r["consumer"], _pct(r["diff_pct"], r["ci_pct"]), _answer(r), _pct(r["a_vs_none_pct"], r["a_vs_none_ci_pct"]),
                 _pct(r["b_vs_none_pct"], r["b_vs_none_ci_pct"]), f"{_num(r['a_events_per_op'])} / {_num(r['b_events_per_op'])}",
                 f"{_num(r['a_ns_per_event'])} / {_num(r['b_ns_per_event'])}"] for r in entry["rows"]]
        out += _table(["level", "consumer", "tracepoint - pcap [95% CI]", "answer", "tracepoint vs none",
                       "pcap vs none", "events/op (tp / pcap)", "ns/event (tp / pcap)"], rows)
        if entry["peers"]:
            out += [""] + _table(["peer", "vs none (trials) [95% CI]", "trials", "CPU µs/op", "lost"], [
                [p["backend"], _pct(p["overhead_pct"], p["ci_pct"]), str(p["trials"]), _num(p["cpu_per_op_us"]),
                 "n/a (the kernel cannot count)" if p["lost"] is None else f"{p['lost']:,}"] for p in entry["peers"]])
        if entry["visibility"]:
            out += ["", "Visibility over the run's trials (rows of the visibility table below): " + "; ".join(
                f"{name} seen {v['seen']}, inferred {v['inferred']}, invisible {v['invisible']}"
                for name, v in entry["visibility"].items())]
        out.append("")
    return out


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows)]
