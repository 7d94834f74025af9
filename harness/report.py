"""Everything derived from run.json alone: analysis.json, benchmark.json (pytest-benchmark format),
report.md with its PNG plots, and the terminal verdict. `tpbench report DIR` rebuilds them without
rerunning anything, and rebuilding gives identical files (no generation timestamps; the bootstrap
seed is fixed; PNGs carry no software tag).

The verdict never says more than the analysis decided: "do tracepoints beat libpcap?" is answered
from the paired comparison's CI (analysis.py), and "not decided" stays "not decided".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from . import flowmatch, headline, inkernel, preflight, toggle_stats
from .analysis import analyse, cell_label, workload_key
from .attribution import attribution
from .benchjson import benchmark_json
from .errors import UsageError
from .fidelity import fidelity, row_status
from .record import SCHEMA_VERSION, write_json_atomic
from .visibility import visibility


def load_run(path: Path) -> dict[str, Any]:
    """run.json from a run folder (or the file itself), validated enough to analyse."""
    path = path / "run.json" if path.is_dir() else path
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"no run record at {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON (line {exc.lineno}): a corrupt or partial record") from None
    if not isinstance(data, dict) or "cells" not in data or "schema_version" not in data:
        raise UsageError(f"{path} is not a tpbench run record (no schema_version/cells)")
    if data["schema_version"] > SCHEMA_VERSION:
        raise UsageError(f"{path} has schema {data['schema_version']}, newer than this tpbench ({SCHEMA_VERSION})")
    return data


def full_analysis(run: dict[str, Any]) -> dict[str, Any]:
    """analysis.py's statistics plus fidelity, visibility and attribution (all from run.json)."""
    result = analyse(run)
    result["fidelity"] = fidelity(run)
    result["visibility"] = visibility(run)
    result["attribution"] = attribution(run)
    result["flows"] = flowmatch.aggregate(run)
    result["answers"] = {key: tracepoint_vs_pcap(key, entry) for key, entry in result["workloads"].items()}
    toggled = toggle_stats.analyse(run, result["decide_pp"])
    result["toggle"] = {"method": toggled["method"], "groups": toggled["groups"]}
    result["headline"], result["aa"] = toggled["headline"], toggled["aa"]
    result["matrix"] = headline.matrix(result)
    result["in_kernel"] = inkernel.analyse(run)
    return result


def write_outputs(directory: Path, run: dict[str, Any]) -> dict[str, Any]:
    from .plots import plot_overheads, plot_sweep, sweeps

    analysis = full_analysis(run)
    operations = {c["workload"]: c.get("operation") or "operation" for c in run["cells"]}
    found = sweeps(analysis, operations)
    analysis["sweeps"] = found
    write_json_atomic(directory / "analysis.json", analysis)
    write_json_atomic(directory / "benchmark.json", benchmark_json(run, analysis))
    plots: dict[str, str] = {}
    swept = {p["key"] for s in found for p in s["points"]}
    main_keys = [k for k in analysis["workloads"] if k not in swept]
    if plot_overheads(analysis, main_keys, directory / "overhead.png"):
        plots["overhead"] = "overhead.png"
    for sweep in found:
        name = f"sweep-{sweep['workload']}-{sweep['parameter']}.png"
        plot_sweep(sweep, directory / name)
        plots[f"{sweep['workload']}:{sweep['parameter']}"] = name
    _write_text(directory / "report.md", render_markdown(run, analysis, plots))
    return analysis


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ---------------------------------------------------------------- verdicts

def _backend_of(label: str) -> str:
    return label.split("/", 1)[-1].split("[")[0]


def tracepoint_vs_pcap(key: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The explicit answer for one workload, from the paired comparisons only."""
    pairs = [c for c in entry.get("comparisons", []) if {_backend_of(c["a"]), _backend_of(c["b"])} == {"tracepoint", "pcap"}]
    if not pairs:
        return {"answer": "not measured", "sentence": "not measured: this run has no tracepoint and pcap cells "
                "for this workload", "pairs": []}
    results = []
    for c in pairs:
        tp, pc = (c["a"], c["b"]) if _backend_of(c["a"]) == "tracepoint" else (c["b"], c["a"])
        if c["verdict"].startswith(f"{tp} is cheaper"):
            outcome = "yes"
        elif c["verdict"].startswith(f"{pc} is cheaper"):
            outcome = "no"
        elif c["verdict"] == "no significant difference":
            outcome = "no difference"
        else:
            outcome = "not decided"
        diff = c["diff_a_minus_b"]
        sign = 1 if c["a"] == tp else -1  # report tracepoint - pcap
        lo, hi = (diff["low"], diff["high"]) if sign == 1 else (
            (-diff["high"] if diff["high"] is not None else None), (-diff["low"] if diff["low"] is not None else None))
        results.append({"tracepoint": tp, "pcap": pc, "outcome": outcome, "verdict": c["verdict"],
                        "diff_us": sign * diff["median"], "low_us": lo, "high_us": hi,
                        "percent_of_baseline": (sign * c["percent_of_baseline"]) if c["percent_of_baseline"] is not None else None})
    default = next((r for r in results if "[" not in r["tracepoint"] and "[" not in r["pcap"]), results[0])
    outcomes = {r["outcome"] for r in results}
    head = {"yes": "yes", "no": "no", "no difference": "no significant difference",
            "not decided": "not decided"}[default["outcome"]]
    ci = _ci_us(default)
    sentence = f"{head}: CPU per operation of {default['tracepoint']} - {default['pcap']} = {ci}"
    if default["outcome"] == "not decided":
        sentence += f" ({default['verdict'].removeprefix('not decided: ')})"
    if len(outcomes) > 1:
        sentence += "; other settings differ: " + "; ".join(
            f"{_setting(r['tracepoint'])} vs {_setting(r['pcap'])}: {r['outcome']}" for r in results if r is not default)
    return {"answer": head, "sentence": sentence, "pairs": results}


def _setting(label: str) -> str:
    return label.split("/", 1)[-1]


def _signed(value: float) -> str:
    """Readable at every scale: +3,012 for thousands of µs, +1.66e-05 for µs per byte."""
    return f"{value:+,.0f}" if abs(value) >= 1000 else f"{value:+.3g}"


def _ci_us(r: dict[str, Any]) -> str:
    if r["low_us"] is None:
        return f"{_signed(r['diff_us'])} µs/op (no CI: fewer than 3 paired trials)"
    pct = f" ({r['percent_of_baseline']:+.1f}% of the baseline's)" if r["percent_of_baseline"] is not None else ""
    return f"{_signed(r['diff_us'])} µs/op [{_signed(r['low_us'])}, {_signed(r['high_us'])}]{pct}"


# ---------------------------------------------------------------- terminal

def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _fidelity_summary(cell_fid: dict[str, Any] | None) -> str:
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
    return OUTCOME_WORDS[entry["outcome"]].format(a=entry["a"], b=entry["b"], pp=decide_pp)


def _pp(entry: dict[str, Any]) -> str:
    if entry.get("diff_pct") is None:
        return "-"
    low, high = entry["ci_pct"]
    if low is None:
        return f"{entry['diff_pct']:+.1f}% (no CI)"
    return f"{entry['diff_pct']:+.1f}% [{low:+.1f}, {high:+.1f}]"


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
            lines.append(f"  [{h['level']}, consumers {h['consumer']}] {h['a']} - {h['b']}: {_pp(h)} of the baseline's CPU/op: "
                         f"{outcome_sentence(h, analysis['decide_pp'])}")
        for label, row in group["arms"].items():
            if "overhead" in row:
                cross = row.get("cross_check")
                bottom = (f"; bottom-up {cross['bottom_up_us_per_op']:.3g} us/op (kernel {cross['kernel_us_per_op']:.3g}"
                          f" + consumer {cross['consumer_us_per_op']:.3g}) vs measured {row['overhead']['diff_us']:.3g}"
                          if cross and row["overhead"]["diff_us"] is not None else "")
                lines.append(f"  {label} vs none: {_pp(row['overhead'])}{bottom}")
        aa = group.get("aa")
        if aa:
            ok = aa["half_width_pp"] is not None and aa["half_width_pp"] <= analysis["decide_pp"] and abs(aa["diff_pct"]) <= analysis["decide_pp"]
            lines.append(f"  A/A control (none against none): {_pp(aa)}: {'within' if ok else 'OUTSIDE'} "
                         f"+-{analysis['decide_pp']:g} pp")
    return lines


def print_verdict(run: dict[str, Any], analysis: dict[str, Any], out: TextIO) -> None:
    if "preflight" in run:  # older records have none
        print(preflight.summary(run["preflight"]), file=out)
    if analysis.get("toggle", {}).get("groups"):
        print(f"run {run['run_id']} ({run['status']}), kernel {run['kernel']['release']}: "
              "do tracepoints beat libpcap here?", file=out)
        for line in headline.lines(analysis):
            print(line, file=out)
        print("\nthe toggled measurement in detail:", file=out)
        for line in toggle_lines(analysis):
            print(line, file=out)
        if not run["cells"]:
            return
        print("\nfidelity and trial-based overhead:", file=out)
    print(f"run {run['run_id']} ({run['status']}), kernel {run['kernel']['release']}, "
          f"headers {run['headers']['kind']}, {run['config']['trials']} trials per cell", file=out)
    fid = analysis.get("fidelity", {})
    for key, workload in analysis["workloads"].items():
        print(f"\n{key}  (baseline: {workload['baseline'] or 'none measured'})", file=out)
        print(f"  {'cell':<44} {'rate/s':>14} {'CPU us/op':>10} {'overhead [95% CI]':>24}  verdict", file=out)
        for label, cell in workload["cells"].items():
            if not cell["available"]:
                print(f"  {label:<44} unavailable: {cell['reason']}", file=out)
                continue
            rate = cell["metrics"].get("rate", {}).get("median")
            cpu = cell["metrics"].get("cpu_per_op", {}).get("median")
            over = cell["overhead"].get("cpu_per_op")
            if over:
                pct = over["percent"]
                ci = f"{_fmt(pct['median'])}% [{_fmt(pct['low'])}, {_fmt(pct['high'])}]"
                verdict = over["verdict"]
            else:
                ci, verdict = "-", ("baseline" if cell["backend"] == "none" else "no baseline")
            notes = _fidelity_summary(fid.get(key, {}).get(label))
            notes = (f"; {notes}" if notes else "") + (f"; {cell['failed']} failed" if cell["failed"] else "")
            cpu_text = "-" if cpu is None else f"{cpu:.3g}"
            print(f"  {label:<44} {_fmt(rate, 0):>14} {cpu_text:>10} {ci:>24}  {verdict}{notes}", file=out)
        answer = analysis.get("answers", {}).get(key) or tracepoint_vs_pcap(key, workload)
        print(f"  do tracepoints beat libpcap here? {answer['sentence']}", file=out)
    for sweep in analysis.get("sweeps", []):
        print(f"\nsweep {sweep['workload']} over {sweep['parameter']}: {_crossover_sentence(sweep)}", file=out)


def _crossover_sentence(sweep: dict[str, Any]) -> str:
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


# ---------------------------------------------------------------- report.md

def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def esc(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return lines


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


def _pct_ci(pct: dict[str, Any] | None) -> str:
    if not pct:
        return "-"
    if pct["low"] is None:
        return f"{pct['median']:+.1f}% (no CI)"
    return f"{pct['median']:+.1f}% [{pct['low']:+.1f}, {pct['high']:+.1f}]"


def render_markdown(run: dict[str, Any], analysis: dict[str, Any], plots: dict[str, str]) -> str:
    out: list[str] = [f"# tpbench report: run {run['run_id']}", ""]
    out += _header(run, analysis)
    out += headline.markdown(analysis)
    out += _toggle_section(analysis)
    out += _verdict_section(run, analysis, plots)
    out += _conditions_section(analysis, plots)
    out += _fidelity_section(analysis)
    out += _in_kernel_section(analysis)
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
                         _n(row.get("cpu_per_op_us")), _pp(over) if over else "baseline",
                         _n(row.get("events_per_op")), _n(row.get("lost"))])
        out += [f"### {group['workload']} (toggled)", ""]
        out += _md_table(["arm", "level", "windows", "rate /s", "CPU µs/op", "vs none [95% CI]", "events/op",
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
        lines.insert(0, f"- **{preflight.summary(run['preflight'])}**" if run["preflight"].get("warnings")
                     else f"- {preflight.summary(run['preflight'])}")
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
            ranked.append((over["percent"]["median"] if over else float("-inf") if cell["backend"] == "none" else float("inf"),
                           label, cell, over))
        ranked.sort(key=lambda r: (r[0], r[1]))
        rows = []
        for rank, (_, label, cell, over) in enumerate(ranked, 1):
            cpu = cell["metrics"].get("cpu_per_op", {})
            rate = cell["metrics"].get("rate", {})
            rows.append([str(rank), label, _n(rate.get("median")), _n(cpu.get("median")),
                         _pct_ci(over["percent"]) if over else ("baseline" if cell["backend"] == "none" else "-"),
                         over["verdict"] if over else "-", _fidelity_summary(fid.get(key, {}).get(label)) or "-",
                         f"{cell['trials'] - cell['failed']}" + (f" ({cell['failed']} failed)" if cell["failed"] else "")])
        out += _md_table(["#", "cell", "rate /s", "CPU µs/op", "CPU overhead [95% CI]", "verdict", "fidelity",
                          "ok trials"], rows)
        deferred = [f"{label} {d:.3g}" for label, cell in entry["cells"].items()
                    if (d := ((cell.get("metrics") or {}).get("deferred_cpu_per_op") or {}).get("median"))]
        if deferred:
            out += ["", "Deferred work inside CPU µs/op (what the observer did after the loop to turn its data "
                    "into events: a drain, a decode, a file parse; µs/op): " + "; ".join(deferred)]
        unavailable = [f"{label}: {cell['reason']}" for label, cell in entry["cells"].items() if not cell["available"]]
        if unavailable:
            out += ["", "Not measured on this kernel: " + "; ".join(unavailable)]
        decided = [c for c in entry["comparisons"] if not c["verdict"].startswith("not decided")]
        if entry["comparisons"]:
            out += ["", f"Pairwise (paired per round, CPU µs/op, A - B): {len(decided)} of "
                    f"{len(entry['comparisons'])} pairs decided."]
            rows = [[c["a"], c["b"], _diff(c["diff_a_minus_b"]), c["verdict"]] for c in entry["comparisons"]
                    if {_backend_of(c["a"]), _backend_of(c["b"])} & {"tracepoint", "pcap"}]
            if rows:
                out += [""] + _md_table(["A", "B", "A - B µs/op [95% CI]", "verdict"], rows)
        out.append("")
    return out


def _diff(d: dict[str, Any]) -> str:
    if d["low"] is None:
        return f"{_signed(d['median'])} (no CI)"
    return f"{_signed(d['median'])} [{_signed(d['low'])}, {_signed(d['high'])}]"


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
        out += [f"**Tracepoint vs pcap**: {_crossover_sentence(sweep)}.", ""]
        rows = [[str(p["value"]), p["verdict"]] for p in sweep["tracepoint_vs_pcap"]["points"]]
        out += _md_table([sweep["parameter"], "tracepoint vs pcap (paired, CPU per operation)"], rows) + [""]
        rows = []
        for setting, pts in sorted(sweep["lines"].items()):
            for p in pts:
                rows.append([setting, str(p["value"]), _n(p["rate"]), _n(p["cpu"]),
                             _pct_ci({"median": p["overhead_pct"], "low": p["overhead_low"], "high": p["overhead_high"]})
                             if p["overhead_pct"] is not None else "-"])
        out += _md_table(["backend", sweep["parameter"], "measured rate /s", "CPU µs/op", "overhead [95% CI]"], rows)
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
        out += _md_table(["cell", "events expected (exact)", "missing", "extra", "lost (reported)",
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
            out += _md_table(["side", "transition / kind", "declared", "expected", "bound", "seen", "lost",
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
                out += _md_table(["side", "observer", "counter", "seen", "counted", "seen - counted", "relation",
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
        rows = [[label, _fmt(est["median"]), "-" if est["low"] is None else f"[{est['low']:.1f}, {est['high']:.1f}]",
                 str(est["n"])] for label, est in group["cells"].items()]
        out += [f"### {key}", ""] + _md_table(["cell", "ns/event", "95% CI", "trials"], rows) + [""]
        for m in group["multiples"]:
            out.append(f"- {m['a']} / {m['empty']}: {_multiple(m['multiple'])}, "
                       f"{m['against_goal']} {m['goal']:g}x")
        if group["multiples"]:
            out.append("")
    return out


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
    out += _md_table(["", *columns], rows)
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
        out += [f"### {key}", ""] + _md_table(
            ["cell", "side", "kind", "events scored", "right process", "peer's process", "idle task",
             "other task", "scored / seen", "top wrong comms"], rows) + [""]
    return out


def _flows_section(analysis: dict[str, Any]) -> list[str]:
    flows = analysis.get("flows") or {}
    out = ["## Per-flow matching", "",
           f"Totals can hide compensating errors, so a sample of flows is matched one by one: the connections "
           f"whose client port is a multiple of {flowmatch.FLOW_SAMPLE}, recorded by the workload (port and "
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
            for side in flowmatch.SIDES:
                counts = r["sides"][side]
                rows.append([label, side, _n(r["flows"]), f"{counts['exact']:,}",
                             *(_n(counts[name]) for name in flowmatch.OUTCOMES[1:]),
                             _n(sum(r["unmatched_events"].values())) if side == "client" else "",
                             ", ".join(r["scored"])])
        out += [f"### {key}", ""]
        out += _md_table(["cell", "side", "sampled flows", "exact", *flowmatch.OUTCOMES[1:], "unmatched events",
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


# ---------------------------------------------------------------- compare

def _ns_per_event(run: dict[str, Any], key: str, label: str) -> float | None:
    values = [((t.get("observed") or {}).get("details") or {}).get("bpf_stats", {}).get("ns_per_event")
              for cell in run["cells"] if workload_key(cell) == key and cell_label(cell) == label
              for t in cell.get("trials", []) if t.get("status") == "ok"]
    values = sorted(v for v in values if v)
    return values[len(values) // 2] if values else None


def _compare_cell(run: dict[str, Any], an: dict[str, Any], fid: dict[str, Any], key: str, label: str) -> str:
    """One run's view of one cell: availability, overhead, fidelity, loss and in-kernel cost."""
    cell = an["workloads"].get(key, {}).get("cells", {}).get(label)
    if cell is None:
        return "not run"
    if not cell["available"]:
        return "unavailable: " + str(cell.get("reason") or "")[:80]
    parts = []
    over = (cell.get("overhead") or {}).get("cpu_per_op")
    if over:
        parts.append(f"{_pct_ci(over['percent'])} ({over['verdict']})")
    cell_fid = fid.get(key, {}).get(label)
    if cell_fid:
        parts.append(_fidelity_summary(cell_fid))
        if cell_fid["lost_reported"] is not None:
            parts.append(f"lost {cell_fid['lost_reported']:,}")
    ns = _ns_per_event(run, key, label)
    if ns:
        parts.append(f"{ns:,.0f} ns/event")
    return "; ".join(parts) or "-"


def compare(runs: list[tuple[str, dict[str, Any]]]) -> tuple[str, list[str]]:
    """Runs side by side (two or more: e.g. one per kernel): per workload and cell, each run's
    overhead against its own baseline, fidelity, loss and in-kernel cost. Returns (markdown,
    terminal lines)."""
    letters = [chr(ord("A") + i) for i in range(len(runs))]
    analyses = [analyse(run) for _, run in runs]
    fidelities = [fidelity(run) for _, run in runs]

    def title(run: dict[str, Any]) -> str:
        emulated = ", EMULATED VM: timings not native" if (run.get("vm") or {}).get("emulated") else ""
        return (f"{run['run_id']} (kernel {run['kernel']['release']}, headers {(run.get('headers') or {}).get('kind', '?')}, "
                f"{str(run.get('started_at') or '?')[:10]}{emulated})")

    md = ["# tpbench compare", ""]
    md += [f"- **{letter}**: {title(run)} from `{name}`" for letter, (name, run) in zip(letters, runs)]
    md += ["", "Per cell and run: CPU overhead per operation against that run's own no-observer baseline "
           "(median, 95% CI, verdict) where it has one, fidelity against the workload's declaration, the "
           "losses the observer reported (none where the kernel cannot count them) and the in-kernel cost "
           "per event (bpf_stats median). Runs on different kernels or machines are compared by these, "
           "never by raw CPU time.", ""]
    terminal = [f"{letter}: {title(run)}" for letter, (_, run) in zip(letters, runs)]
    keys = list(dict.fromkeys(k for an in analyses for k in an["workloads"]))
    shared = [k for k in keys if sum(k in an["workloads"] for an in analyses) >= 2]
    if not shared:
        md += ["No workload (with the same parameters) is in two of the runs."]
        terminal.append("no workload with the same parameters in two of the runs")
    for key in shared:
        labels = list(dict.fromkeys(label for an in analyses for label, cell in
                                    an["workloads"].get(key, {}).get("cells", {}).items() if cell["backend"] != "none"))
        rows = []
        terminal.append(f"\n{key}")
        for label in labels:
            texts = [_compare_cell(run, an, fid, key, label)
                     for (_, run), an, fid in zip(runs, analyses, fidelities)]
            rows.append([label, *texts])
            terminal.append(f"  {label}")
            terminal += [f"    {letter}: {text}" for letter, text in zip(letters, texts)]
        md += [f"## {key}", ""] + _md_table(["cell", *letters], rows)
        answers = [tracepoint_vs_pcap(key, an["workloads"][key])["sentence"] if key in an["workloads"] else "not run"
                   for an in analyses]
        if any("pcap" in label for label in labels):
            md += ["", "Do tracepoints beat libpcap? " +
                   " ".join(f"**{letter}**: {answer}." for letter, answer in zip(letters, answers)), ""]
            terminal += [f"  tracepoints beat libpcap? {letter}: {answer}" for letter, answer in zip(letters, answers)]
        md.append("")
    only = [k for k in keys if k not in shared]
    if only:
        md += ["In one run only: " + ", ".join(f"`{k}`" for k in only), ""]
    return "\n".join(md).rstrip() + "\n", terminal


__all__ = ["compare", "full_analysis", "load_run", "print_verdict", "render_markdown", "write_outputs",
           "workload_key"]
