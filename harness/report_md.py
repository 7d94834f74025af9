"""report.md: the Markdown report rendered from run.json and its analysis (render_markdown and
its sections: toggled overhead, verdict, conditions, fidelity, in-kernel cost, per-flow matching,
visibility, attribution and caveats).
"""

from __future__ import annotations

from typing import Any

from . import tcp
from .analysis import flowmatch, headline
from .analysis.fidelity import row_status
from .analysis.answers import signed
from .analysis.stats import BASELINE, decided as is_decided
from .report_format import (crossover_sentence, fidelity_summary, fmt, md_table, pct_ci, pp_ci, preflight_summary,
                             toggle_lines)


def _lost_text(cell: dict[str, Any]) -> str:
    if cell["lost_reported"] is None:  # the kernel cannot count the observer's skipped runs
        return f"not countable (probably {cell['probable_silent_loss']:,} silently, by kernel counters)"
    if cell.get("uncounted_shortfall"):
        return (f"{cell['lost_reported']:,} {cell['lost_unit']}, and at least {cell['uncounted_shortfall']:,} "
                "uncounted (kernel counters)")
    return f"{cell['lost_reported']:,} {cell['lost_unit']}"


def _n(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return f"{value:,}"


def render_markdown(run: dict[str, Any], analysis: dict[str, Any], plots: dict[str, str]) -> str:
    """report.md from run.json and its analysis; `plots` maps a plot's key to its PNG file name."""
    out: list[str] = [f"# tpbench report: run {run['run_id']}", ""]
    out += _header(run, analysis)
    out += headline.markdown(analysis)
    out += _toggle_section(analysis)
    out += _verdict_section(run, analysis, plots)
    out += _conditions_section(analysis, plots)
    out += _fidelity_section(analysis)
    out += _in_kernel_section(analysis)
    out += _cross_check_section(analysis)
    out += _flows_section(analysis)
    out += _visibility_section(analysis)
    out += _attribution_section(analysis)
    out += _caveats_section(run, analysis)
    return "\n".join(out).rstrip() + "\n"


def _toggle_section(analysis: dict[str, Any]) -> list[str]:
    groups = analysis.get("toggle", {}).get("groups") or []
    if not groups:
        return []
    pp = analysis["decide_pp"]
    out = ["## Do tracepoints beat libpcap here? (toggled overhead)", "", "```", *toggle_lines(analysis), "```", "",
           "Each observer was prepared once and switched on and off in short windows under one running "
           "workload, in a random order per cycle beside the no-observer arm and its A/A twin; cost per "
           "operation is the machine's CPU (cpuacct) per operation, each observer's own processes charged "
           "to their own on-period; A - B is paired per cycle, 95% Student-t CI, in percent of the "
           f"no-observer cost. Decided: half-width <= {pp:g} pp.", ""]
    for group in groups:
        rows = []
        for label, row in group["arms"].items():
            over = row.get("overhead")
            rows.append([label, row.get("level") or "-", str(row["windows"]), _n(row.get("rate")),
                         _n(row.get("cpu_per_op_us")), pp_ci(over) if over else "baseline",
                         _n(row.get("events_per_op")), _n(row.get("lost"))])
        out += [f"### {group['workload']} (toggled)", ""]
        out += md_table(["arm", "level", "windows", "rate /s", "CPU µs/op", "vs none [95% CI]", "events/op",
                          "lost"], rows)
        cons = group.get("conservation") or {}
        if cons.get("checked"):
            leaks = "; ".join(f"{label}: {v['outside_pct']:.1f}% of its CPU outside its on-periods"
                              for label, v in cons["observer_cpu"].items())
            out += ["", f"Conservation: windows plus margins = the measurement's CPU within "
                    f"{cons['windows_plus_margins_error_pct']:.3f}% (measured windows: {cons['windows_share_pct']:.0f}% of "
                    f"it). {leaks}. Excluded windows: {group['excluded']} ({group['exclusion_rule']})."]
        out.append("")
    return out


def _header(run: dict[str, Any], analysis: dict[str, Any]) -> list[str]:
    kernel, headers, git = run["kernel"], run.get("headers") or {}, run.get("git") or {}
    host = run.get("host") or {}
    lines = [
        f"- **kernel**: {kernel['release']} ({kernel.get('version', '')}, {kernel.get('machine', '')}), "
        f"{host.get('cpus', '?')} CPUs",
        f"- **headers used by bcc**: {headers.get('kind', '?')}"
        + (f" ({headers['package_version']})" if headers.get("package_version") else "")
        + (f": {headers['detail']}" if headers.get("detail") else ""),
        f"- **run**: status {run['status']}, started {run.get('started_at')}, finished {run.get('finished_at')}, "
        f"{run['config']['trials']} interleaved trials per cell"
        + (f", profile `{run['profile']}`" if run.get("profile") else ""),
        f"- **code**: commit {git.get('commit', 'unknown')}{' (uncommitted changes)' if git.get('dirty') else ''}",
        f"- **command**: `{' '.join(run.get('command_line') or [])}`",
    ]
    if "preflight" in run:
        lines.insert(0, f"- **{preflight_summary(run['preflight'])}**" if run["preflight"].get("warnings")
                     else f"- {preflight_summary(run['preflight'])}")
    if run.get("vm"):
        vm = run["vm"]
        lines.append(f"- **VM**: kernel {vm.get('release')}, "
                     f"{'EMULATED (TCG): timings are not native' if vm.get('emulated') else 'KVM'}")
    return lines + [""]


def exact_cpu(run: dict[str, Any]) -> bool:
    """Whether this run's CPU is the scheduler's exact task runtime (else /proc/stat's ticks)."""
    return any("cpu" in (t.get("cpu_seconds") or {}) for c in run["cells"] for t in c.get("trials", []))


def _verdict_section(run: dict[str, Any], analysis: dict[str, Any], plots: dict[str, str]) -> list[str]:
    what = ("the system-wide runtime of all tasks (cgroup v1 cpuacct, exact to the ns; softirq work is "
            "charged to the task it interrupts) per operation" if exact_cpu(run) else "system-wide busy time per operation")
    out = ["## Verdict", "",
           f"CPU is {what} over the measured loop; overhead is paired per "
           f"round against the no-observer baseline (median, 95% bootstrap CI). A verdict needs the CI to "
           f"exclude 0 and a half-width of at most {analysis['decide_pp']:g} percentage points of the baseline.", ""]
    if "overhead" in plots:
        out += [f"![CPU overhead per workload]({plots['overhead']})", ""]
    fid = analysis.get("fidelity", {})
    for key, entry in analysis["workloads"].items():
        answer = analysis["answers"][key]
        out += [f"### {key}", "", f"**Do tracepoints beat libpcap here?** {answer['sentence']}", ""]
        ranked = []
        for label, cell in entry["cells"].items():
            if not cell["available"]:
                continue
            over = cell["overhead"].get("cpu_per_op")
            ranked.append((over["percent"]["median"] if over else float("-inf") if cell["backend"] == BASELINE else float("inf"),
                           label, cell, over))
        ranked.sort(key=lambda r: (r[0], r[1]))
        rows = []
        for rank, (_, label, cell, over) in enumerate(ranked, 1):
            cpu = cell["metrics"].get("cpu_per_op", {})
            rate = cell["metrics"].get("rate", {})
            rows.append([str(rank), label, _n(rate.get("median")), _n(cpu.get("median")),
                         pct_ci(over["percent"]) if over else ("baseline" if cell["backend"] == BASELINE else "-"),
                         over["verdict"] if over else "-", fidelity_summary(fid.get(key, {}).get(label)) or "-",
                         f"{cell['trials'] - cell['failed']}" + (f" ({cell['failed']} failed)" if cell["failed"] else "")])
        out += md_table(["#", "cell", "rate /s", "CPU µs/op", "CPU overhead [95% CI]", "verdict", "fidelity",
                          "ok trials"], rows)
        deferred = [f"{label} {d:.3g}" for label, cell in entry["cells"].items()
                    if (d := ((cell.get("metrics") or {}).get("deferred_cpu_per_op") or {}).get("median"))]
        if deferred:
            out += ["", "Deferred work inside CPU µs/op (what the observer did after the loop to turn its data "
                    "into events: a drain, a decode, a file parse; µs/op): " + "; ".join(deferred)]
        unavailable = [f"{label}: {cell['reason']}" for label, cell in entry["cells"].items() if not cell["available"]]
        if unavailable:
            out += ["", "Not measured on this kernel: " + "; ".join(unavailable)]
        decided = [c for c in entry["comparisons"] if is_decided(c["code"])]
        if entry["comparisons"]:
            out += ["", f"Pairwise (paired per round, CPU µs/op, A - B): {len(decided)} of "
                    f"{len(entry['comparisons'])} pairs decided."]
            rows = [[c["a"], c["b"], _diff(c["diff_a_minus_b"]), c["verdict"]] for c in entry["comparisons"]
                    if {c["a_backend"], c["b_backend"]} & {"tracepoint", "pcap"}]
            if rows:
                out += [""] + md_table(["A", "B", "A - B µs/op [95% CI]", "verdict"], rows)
        out.append("")
    return out


def _diff(d: dict[str, Any]) -> str:
    if d["low"] is None:
        return f"{signed(d['median'])} (no CI)"
    return f"{signed(d['median'])} [{signed(d['low'])}, {signed(d['high'])}]"


def _conditions_section(analysis: dict[str, Any], plots: dict[str, str]) -> list[str]:
    out = ["## Conditions: when does the answer hold?", ""]
    if not analysis.get("sweeps"):
        return out + ["Not explored in this run: it has no sweep (cells of one workload differing in one "
                      "parameter at three or more values). `tpbench bench --profile thorough` adds a churn-rate "
                      "sweep and a stream message-size sweep (`--profile sweeps`: the sweeps alone); `tpbench report` then plots CPU per operation "
                      "against the measured rate and throughput and marks any tracepoint/pcap crossover.", ""]
    for sweep in analysis["sweeps"]:
        name = plots.get(f"{sweep['workload']}:{sweep['parameter']}")
        out += [f"### {sweep['workload']}: {sweep['parameter']} swept", ""]
        if name:
            out += [f"![{sweep['workload']} {sweep['parameter']} sweep]({name})", ""]
        out += [f"**Tracepoint vs pcap**: {crossover_sentence(sweep)}.", ""]
        rows = [[str(p["value"]), p["verdict"]] for p in sweep["tracepoint_vs_pcap"]["points"]]
        out += md_table([sweep["parameter"], "tracepoint vs pcap (paired, CPU per operation)"], rows) + [""]
        rows = []
        for setting, pts in sorted(sweep["lines"].items()):
            for p in pts:
                rows.append([setting, str(p["value"]), _n(p["rate"]), _n(p["cpu"]),
                             pct_ci({"median": p["overhead_pct"], "low": p["overhead_low"], "high": p["overhead_high"]})
                             if p["overhead_pct"] is not None else "-"])
        out += md_table(["backend", sweep["parameter"], "measured rate /s", "CPU µs/op", "overhead [95% CI]"], rows)
        out.append("")
    return out


def _fidelity_section(analysis: dict[str, Any]) -> list[str]:
    out = ["## Fidelity", "",
           "Summed over each cell's ok trials. *expected*: the workload's exact declaration (or the nstat "
           "counter it must equal); *bound*: a declared lower bound; *lost*: the part of a shortfall the "
           "observer's own reported losses (in events) could explain; *missing*: expected (or bound) - seen "
           "- lost, per trial; *extra*: seen - expected. Matching is by per-trial totals per side and "
           "kind/transition; the next section matches a sample of flows one by one.", ""]
    for key, cells in analysis.get("fidelity", {}).items():
        out += [f"### {key}", ""]
        checks = [c["ground_truth"] for c in cells.values()]
        matching = sum(g["trials_matching"] for g in checks)
        total = sum(g["trials"] for g in checks)
        out += [f"Ground truth checked: the kernel's counters equal the workload's exact nstat declarations in "
                f"{matching} of {total} observer trials." + (" Mismatches: " + "; ".join(
                    f"{m['side']} {m['counter']} declared {m['declared']}, counted {m['counted']} (trial {m['trial']})"
                    for g in checks for m in g["mismatches"][:3]) if matching < total else ""), ""]
        summary = []
        for label, cell in cells.items():
            rows_ = cell["rows"]
            checks = cell["kernel_checks"]
            summary.append([label, _n(sum(r["expected"] or 0 for r in rows_ if r["category"] == "event")),
                            _n(sum(r["missing"] or 0 for r in rows_)), _n(sum(r["extra"] or 0 for r in rows_)),
                            _lost_text(cell),
                            ", ".join(sorted({r["name"] for r in rows_ if row_status(r) == "invisible"})) or "-",
                            _n(sum(cell["other_side"].values())),
                            f"{sum(1 for c in checks if c['difference'] == 0)}/{len(checks)}" if checks else "-"])
        out += md_table(["cell", "events expected (exact)", "missing", "extra", "lost (reported)",
                          "cannot see (declared)", "events of neither host", "kernel counters equal"], summary)
        out += ["", "<details><summary>Per side, kind and transition</summary>", ""]
        for label, cell in cells.items():
            rows = []
            for r in cell["rows"]:
                status = row_status(r)
                if status == "none seen" and r["declared"] == "not declared":
                    continue
                rows.append([r["side"], r["name"], r["declared"] or "-", _n(r["expected"]), _n(r["bound"]),
                             _n(r["seen"]), _n(r["lost"]) if r["lost"] else "0", _n(r["missing"]), _n(r["extra"]),
                             f"{r['trials_as_declared']}/{r['trials']}" if r["declared"] in ("exact", "equals_nstat", "at_least") else "-",
                             status + (f": {r['invisible']}" if status == "invisible" else "")
                             + (f" ({r['note']})" if r["note"] and status != "invisible" else "")])
            lost = _lost_text(cell)
            out += [f"**{label}** ({cell['trials']} trials; observer-reported lost: {lost})", ""]
            out += md_table(["side", "transition / kind", "declared", "expected", "bound", "seen", "lost",
                              "missing", "extra", "trials as declared", "status"], rows)
            if cell["other_side"]:
                out += ["", "Events of neither host (their addresses were not the topology's): " + ", ".join(
                    f"{name} {n:,}" for name, n in sorted(cell["other_side"].items()))]
            if cell["field_check"]:
                wrong = "; ".join(f"{k}: " + ", ".join(f"{f} {n:,}" for f, n in sorted(v.items()))
                                  for k, v in sorted(cell["wrong_fields"].items())) or "none"
                out += ["", f"Wrong fields (struct reads vs the tracepoint's fields for the same event): {wrong}"]
            if cell["kernel_checks"]:
                out += ["", "Against the kernel's own counters:", ""]
                out += md_table(["side", "observer", "counter", "seen", "counted", "seen - counted", "relation",
                                  "why"],
                                 [[c["side"], c["observed"], c["counter"], _n(c["seen"]), _n(c["counted"]),
                                   f"{c['difference']:+,}",
                                   c["relation"] + (" (partly invisible here: a bound)"
                                                    if c.get("partly_invisible") and c["relation"] == "equal" else ""),
                                   c["why"] + (f" (offloads on: {'; '.join(c['offloads_on'])})" if c["offloads_on"] else "")]
                                  for c in cell["kernel_checks"]])
            out.append("")
        out += ["</details>", ""]
    return out


def _multiple(m: dict[str, Any]) -> str:
    ci = "" if m["low"] is None else f" [{m['low']:.2f}, {m['high']:.2f}]"
    return f"{m['median']:.2f}x{ci}"


def _in_kernel_section(analysis: dict[str, Any]) -> list[str]:
    section = analysis.get("in_kernel") or {}
    if not section.get("workloads"):
        return []
    out = ["## In-kernel cost (bpf_stats)", "",
           "The kernel's own run time of each cell's BPF programs per delivered event (kernel.bpf_stats_enabled, "
           "read from each program's fdinfo; rescue and witness programs included), median and 95% CI over the "
           "trials; and each observer as a multiple of the empty program on the same hooks and flavour, paired "
           f"per round (goal: within {section['goal_multiple']:g}x). The kernel's entry into the programs, a classic "
           "tracepoint's record and the consumer are not in it: they are in the CPU per operation.", ""]
    for key, group in section["workloads"].items():
        rows = [[label, fmt(est["median"]), "-" if est["low"] is None else f"[{est['low']:.1f}, {est['high']:.1f}]",
                 str(est["n"])] for label, est in group["cells"].items()]
        out += [f"### {key}", ""] + md_table(["cell", "ns/event", "95% CI", "trials"], rows) + [""]
        for m in group["multiples"]:
            out.append(f"- {m['a']} / {m['empty']}: {_multiple(m['multiple'])}, "
                       f"{m['against_goal']} {m['goal']:g}x")
        if group["multiples"]:
            out.append("")
    return out


def _against_loss(check: dict[str, Any]) -> str:
    """' (6 short, 0 extra: within the counted loss 6 / 0)', or why it cannot be held to one."""
    if "lost" not in check:  # an analysis from before the cross-check weighed losses
        return ""
    gaps = f" ({check['events_short']} short, {check['events_extra']} extra: "
    if check["within_counted_loss"] is None:
        return gaps + "loss not countable on this kernel)"
    return gaps + (f"{'within' if check['within_counted_loss'] else 'BEYOND'} the counted loss "
                   f"{' / '.join(str(check['lost'][b]) for b in check['backends'])})")


def _cross_check_section(analysis: dict[str, Any]) -> list[str]:
    checks = analysis.get("cross_check") or []
    if not checks:
        return []
    out = ["## Function probes against the tracepoint", "",
           "Each kprobe/fentry cell against the tracepoint cell of the same workload, trial by trial (same index: "
           "two runs of the same declared traffic): transitions per side, and the declared events of every kind "
           "both attached for; and the in-kernel ns per event (bpf_stats, witness programs apart).", ""]
    rows = [[c["workload"], " vs ".join(c["backends"]), str(c["trials_compared"]),
             "equal" if c["counts_equal"] else f"{len(c['differences'])} differ" + _against_loss(c),
             " / ".join(fmt(c["ns_per_event"].get(b)) for b in c["backends"]),
             "-" if c["ns_per_event_ratio"] is None else f"{c['ns_per_event_ratio']:.2f}x"] for c in checks]
    out += md_table(["workload", "backends", "trials", "counts", "ns/event", "ratio"], rows) + [""]
    for c in checks:
        out += [f"- {c['workload']}, {c['backends'][0]}: {d}" for d in c["differences"][:10]]
        if len(c["differences"]) > 10:
            out.append(f"- {c['workload']}, {c['backends'][0]}: ... {len(c['differences']) - 10} more")
    return out + ([""] if any(c["differences"] for c in checks) else [])


def _visibility_section(analysis: dict[str, Any]) -> list[str]:
    vis = analysis.get("visibility") or {}
    out = ["## Kernel-state visibility", "",
           "Filled from this run's trials only. *seen k/n*: reported in k of the n trials whose workload "
           "declared it; *inferred*: reconstructed from packets or socket snapshots; *invisible*: declared "
           "by the workload and reported in none of its trials, or declared invisible by the backend itself; "
           "*not measured*: no trial exercised it. The evidence (cell #trial) for each cell follows the table.", ""]
    columns = vis.get("columns") or []
    if not columns:
        return out + ["No observer cell with ok trials in this run.", ""]
    evidence: list[str] = []
    rows = []
    for row in vis["rows"]:
        cells = []
        for column in columns:
            value = row["cells"][column]
            text = value["text"]
            if value.get("evidence"):
                evidence.append(f"{row['row']} / {column}: {value['evidence']}"
                                + (f" ({value['reason']})" if value.get("reason") else ""))
                text += f" [{len(evidence)}]"
            cells.append(text)
        rows.append([row["row"], *cells])
    out += md_table(["", *columns], rows)
    if vis.get("unavailable"):
        out += ["", "Not available on this kernel (no column): " + "; ".join(
            f"{k}: {v}" for k, v in sorted(vis["unavailable"].items()))]
    out += ["", "<details><summary>Evidence</summary>", ""]
    out += [f"{i}. {text}" for i, text in enumerate(evidence, 1)]
    return out + ["", "</details>", ""]


def _attribution_section(analysis: dict[str, Any]) -> list[str]:
    out = ["## Attribution", "",
           "Share of events whose recorded pid is one of the workload's own pids for that side. Passive-side "
           "events (a received SYN, FIN or RST) are handled in softirq and charged to whichever task was "
           "interrupted: the peer's process, the idle task (pid 0) or another task.", ""]
    data = analysis.get("attribution") or {}
    if not data:
        return out + ["No cell of this run recorded per-event pids (stream-mode tracepoint/kprobe or tracefs do).", ""]
    for key, cells in data.items():
        rows = []
        for label, cell in cells.items():
            for r in cell["rows"]:
                rows.append([label, r["side"], r["kind"], _n(r["attributed"]),
                             f"{r['share_right']:.1%}" if r["share_right"] is not None else "-",
                             _n(r["other_side_process"]), _n(r["idle_task"]), _n(r["other_task"]),
                             f"{r['coverage']:.0%}" if r["coverage"] is not None else "-",
                             ", ".join(f"{c} {n:,}" for c, n in r["wrong_comms"].items()) or "-"])
        out += [f"### {key}", ""] + md_table(
            ["cell", "side", "kind", "events scored", "right process", "peer's process", "idle task",
             "other task", "scored / seen", "top wrong comms"], rows) + [""]
    return out


def _flows_section(analysis: dict[str, Any]) -> list[str]:
    flows = analysis.get("flows") or {}
    out = ["## Per-flow matching", "",
           f"Totals can hide compensating errors, so a sample of flows is matched one by one: the connections "
           f"whose client port is a multiple of {tcp.FLOW_SAMPLE}, recorded by the workload (port and "
           "connect() time) and kept whole by the observer (every event of those ports, with the kernel's "
           "time). An event belongs to the flow on its port that began last before it; each flow and side "
           "is scored against one connection's declared transitions and one sock_destroy (what the observer "
           "hooked of them). *exact*: all of them once, nothing else, in chain order. A flow can count "
           "under several faults. Sampled today: churn with the C generator, observed by the BPF backends' "
           "C consumer (tracepoint, kprobe, fentry) and by pcap (both consumers; packet times converted from "
           "CLOCK_REALTIME, scored on the transitions it can see at all); other cells have no per-flow data.", ""]
    if not flows:
        return out + ["No cell of this run has per-flow data.", ""]
    for key, cells in flows.items():
        rows = []
        for label, r in cells.items():
            for side in tcp.SIDES:
                counts = r["sides"][side]
                rows.append([label, side, _n(r["flows"]), f"{counts['exact']:,}",
                             *(_n(counts[name]) for name in flowmatch.OUTCOMES[1:]),
                             _n(sum(r["unmatched_events"].values())) if side == "client" else "",
                             ", ".join(r["scored"])])
        out += [f"### {key}", ""]
        out += md_table(["cell", "side", "sampled flows", "exact", *flowmatch.OUTCOMES[1:], "unmatched events",
                          "scored on"], rows)
        examples = [e for r in cells.values() for e in r["examples"]][:flowmatch.EXAMPLES]
        if examples:
            out += ["", "Flows that were not exact (first few): " + "; ".join(
                f"{e['side']} port {e['port']} ({', '.join(e['outcomes'])}): {' '.join(e['events']) or 'no events'}"
                for e in examples)]
        out.append("")
    return out


def _caveats_section(run: dict[str, Any], analysis: dict[str, Any]) -> list[str]:
    headers = run.get("headers") or {}
    failed = sum(1 for c in run["cells"] for t in c.get("trials", []) if t.get("status") != "ok")
    out = ["## Caveats", "",
           "- **Per-flow matching is sampled and partial.** Only churn (C generator) records flows, and only "
           "the BPF backends' C consumer and pcap keep their events; the other cells are matched by per-trial totals "
           "against the workloads' exact declarations and the kernel's SNMP counters, where an observer that "
           "reported one flow's event twice and another's not at all would pass. Wrong addresses show only "
           "as events of neither host (or unmatched flow events); wrong fields only where a kprobe/fentry "
           "cell ran its tracepoint check.",
           "- **Losses are per trial, not per kind.** *lost* in the fidelity tables is an upper bound of what "
           "the reported losses could explain for that row; pcap reports dropped packets and sockdiag missed "
           "connections, which are shown but never subtracted from event counts.",
           f"- **Statistics**: {analysis['method']}",
           ("- **CPU** is system-wide (the root cpuacct cgroup's task runtime; /proc/stat's tick-sampled busy "
            "time is kept beside it as tick_cpu_per_op: the two agree at full speed, but ticks alias with paced "
            "work) over the measured loop: anything else running on "
            if exact_cpu(run) else "- **CPU** is system-wide (/proc/stat, 10 ms ticks) over the measured loop: anything else running on ")
           + "the machine lands in every cell; interleaving spreads it, it does not remove it.",
           ]
    if headers.get("kind") == "fallback":
        out.append(f"- **Headers are a fallback** ({headers.get('package_version')}): tracepoint arguments come "
                   "from tracefs and are unaffected; struct layouts read through these headers (kprobe/fentry) "
                   "are checked against the tracepoints in their cells.")
    if run["status"] != "complete":
        out.append(f"- **The run is {run['status']}**: only its finished trials are analysed.")
    if failed:
        out.append(f"- **{failed} trials failed** and are excluded (their errors are in run.json).")
    if run.get("vm", {}).get("emulated"):
        out.append("- **Emulated VM (TCG)**: timings are not native; compare counts, not costs.")
    pcap_caveats = sorted({((t.get("observed") or {}).get("details") or {}).get("pcap_stats", {}).get("caveat", "")
                           for c in run["cells"] for t in c.get("trials", []) if t.get("status") == "ok"} - {""})
    for caveat in pcap_caveats:
        out.append(f"- **pcap counters**: {caveat}.")
    assumptions = sorted({a for c in run["cells"] for t in c.get("trials", []) if t.get("status") == "ok"
                          for a in ((t.get("observed") or {}).get("details") or {}).get("assumptions", [])})
    if assumptions:
        out.append("- **pcap inference assumes**: " + "; ".join(assumptions) + ".")
    return out + [""]
