"""Text shared by the terminal verdict, `tpbench compare` and report.md: number, CI and table formatting,
the preflight's and fidelity's one-line summaries, the toggled measurement's lines and the sweep crossover
sentence.
"""

from __future__ import annotations

from typing import Any

from .analysis import toggle_stats
from .analysis.fidelity import row_status


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines; `|` in a cell is escaped and newlines become spaces."""
    def esc(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return lines


def fmt(value: float | None, digits: int = 1) -> str:
    """A number with thousands separators and `digits` decimals; None as "-"."""
    return "-" if value is None else f"{value:,.{digits}f}"


def preflight_summary(found: dict[str, Any] | None) -> str:
    """The preflight's findings as run.json records them (`preflight`, harness/preflight.py's check()) in one
    line, for the report's first screen."""
    if not found:
        return "preflight: not recorded"
    cpu = found["cpu"]
    head = (f"preflight: background CPU {100 * cpu['busy_share']:.1f}% busy, {100 * cpu['steal_share']:.1f}% "
            f"steal over {cpu['seconds']:.1f} s")
    if found["warnings"]:
        return f"{head}; MEASURED ON A DIRTY HOST: {'; '.join(found['warnings'])}"
    return f"{head}; no foreign tracer, capture or leftover found"


def fidelity_summary(cell_fid: dict[str, Any] | None) -> str:
    """One cell's fidelity in one line: missing, extra, lost, invisible kinds, or "as declared"; "" without any."""
    if not cell_fid:
        return ""
    missing = sum(r["missing"] or 0 for r in cell_fid["rows"])
    extra = sum(r["extra"] or 0 for r in cell_fid["rows"])
    invisible = sorted({r["name"] for r in cell_fid["rows"] if row_status(r) == "invisible"})
    parts = [f"missing {missing:,}"] if missing else []
    parts += [f"extra {extra:,}"] if extra else []
    if cell_fid["lost_reported"]:
        parts.append(f"lost {cell_fid['lost_reported']:,} {cell_fid['lost_unit']}")
    if cell_fid["lost_reported"] is None:
        parts.append(f"loss not countable here, probably {cell_fid['probable_silent_loss']:,} lost silently "
                     "(kernel counters)")
    elif cell_fid.get("uncounted_shortfall"):
        parts.append(f"at least {cell_fid['uncounted_shortfall']:,} lost uncounted (kernel counters exceed "
                     "what was seen plus what was counted lost)")
    if invisible:
        parts.append(f"cannot see {', '.join(invisible)}")
    return "; ".join(parts) or "as declared"


OUTCOME_WORDS = {"a_cheaper": "{a} is cheaper", "b_cheaper": "{b} is cheaper",
                 "no_difference": "no difference beyond the CI", "not_decided": "not decided (CI wider than {pp:g} pp)"}


def outcome_sentence(entry: dict[str, Any], decide_pp: float = toggle_stats.DECIDE_PP) -> str:
    """A toggled comparison's outcome in words (`decide_pp`: the decision threshold it names)."""
    return OUTCOME_WORDS[entry["outcome"]].format(a=entry["a"], b=entry["b"], pp=decide_pp)


def pp_ci(entry: dict[str, Any]) -> str:
    """A toggled comparison's difference in % with its 95% CI, `+1.2% [+0.3, +2.1]`; "-" without one."""
    if entry.get("diff_pct") is None:
        return "-"
    low, high = entry["ci_pct"]
    if low is None:
        return f"{entry['diff_pct']:+.1f}% (no CI)"
    return f"{entry['diff_pct']:+.1f}% [{low:+.1f}, {high:+.1f}]"


def pct_ci(pct: dict[str, Any] | None) -> str:
    """An overhead's median % with its 95% CI from {median, low, high}, `+1.2% [+0.3, +2.1]`; "-" without one."""
    if not pct:
        return "-"
    if pct["low"] is None:
        return f"{pct['median']:+.1f}% (no CI)"
    return f"{pct['median']:+.1f}% [{pct['low']:+.1f}, {pct['high']:+.1f}]"


def toggle_lines(analysis: dict[str, Any]) -> list[str]:
    """The toggled measurement's answer, one screen: per workload the headline and the A/A control."""
    lines = []
    for group in analysis.get("toggle", {}).get("groups", []):
        excluded = sum(group["excluded"].values())
        steal = group.get("median_steal_pct") or 0.0
        foreign = group.get("median_foreign_pct") or 0.0
        lines.append(f"{group['workload']} (toggled, {group['cycles']} cycles, {group['windows']} windows"
                     f"{f', {excluded} excluded' if excluded else ''}"
                     f"{f', STEAL {steal:.0f}% (a busy host: noisy)' if steal > 5 else ''}"
                     f"{f', FOREIGN CPU {foreign:.0f}% (a neighbour)' if foreign > 5 else ''}; stop: {group['stop_reason']}; "
                     f"baseline {group['baseline_cpu_per_op_us']:.3g} us/op)"
                     + ("" if group["status"] == "complete" else f" -- {group['status'].upper()}, partial"))
        for h in group["headline"]:
            lines.append(f"  [{h['level']}, consumers {h['consumer']}] {h['a']} - {h['b']}: {pp_ci(h)} of the baseline's CPU/op: "
                         f"{outcome_sentence(h, analysis['decide_pp'])}")
        for label, row in group["arms"].items():
            if "overhead" in row:
                cross = row.get("cross_check")
                bottom = (f"; bottom-up {cross['bottom_up_us_per_op']:.3g} us/op (kernel {cross['kernel_us_per_op']:.3g}"
                          f" + consumer {cross['consumer_us_per_op']:.3g}) vs measured {row['overhead']['diff_us']:.3g}"
                          if cross and row["overhead"]["diff_us"] is not None else "")
                lines.append(f"  {label} vs none: {pp_ci(row['overhead'])}{bottom}")
        aa = group.get("aa")
        if aa:
            ok = aa["half_width_pp"] is not None and aa["half_width_pp"] <= analysis["decide_pp"] and abs(aa["diff_pct"]) <= analysis["decide_pp"]
            lines.append(f"  A/A control (none against none): {pp_ci(aa)}: {'within' if ok else 'OUTSIDE'} "
                         f"+-{analysis['decide_pp']:g} pp")
    return lines


def crossover_sentence(sweep: dict[str, Any]) -> str:
    """One sweep's tracepoint-vs-pcap answer: the crossover, the winner at every decided point, or the
    direction alone when no point is decided."""
    tvp = sweep["tracepoint_vs_pcap"]
    if tvp["crossover"]:
        c = tvp["crossover"]
        return (f"crossover between {sweep['parameter']}={c['between'][0]} and {c['between'][1]}: "
                f"{c['cheaper_below']} is cheaper below, {c['cheaper_above']} above (decided points on each side)")
    signs = [p["sign"] for p in tvp["points"]]
    if not any(s in (1, -1) for s in signs):
        directions = [p.get("direction") for p in tvp["points"]]
        known = [d for d in directions if d in (1, -1)]
        if not known:
            return "no point decided between tracepoint and pcap (CIs too wide or not measured): no conclusion"
        if tvp.get("direction_crossover"):
            c = tvp["direction_crossover"]
            where = (f"{c['cheaper_below']} cheaper below {sweep['parameter']}={c['between'][0]}..{c['between'][1]}, "
                     f"{c['cheaper_above']} above")
        else:
            where = f"{'tracepoint' if known[0] == 1 else 'pcap'} cheaper at each of them, no crossover"
        return (f"no point decided to the verdict's precision; on direction alone (95% CI excludes 0 at "
                f"{len(known)} of {len(directions)} points): {where}")
    winners = {("tracepoint" if s == 1 else "pcap") for s in signs if s in (1, -1)}
    undecided = sum(1 for s in signs if s not in (1, -1))
    return (f"{winners.pop()} is cheaper at every decided point ({len(signs) - undecided} of {len(signs)}); "
            "no crossover observed" + (f"; {undecided} points not decided" if undecided else ""))
