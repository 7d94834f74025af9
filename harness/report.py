"""Writing what is derived from run.json alone: analysis.json (harness/analysis/full.py computes
it), benchmark.json (pytest-benchmark format), report.md with its PNG plots, the terminal verdict
and `tpbench compare`. `tpbench report DIR` rebuilds them without rerunning anything, and
rebuilding gives identical files (no generation timestamps; the bootstrap seed is fixed; PNGs carry
no software tag). report.md's Markdown is rendered in report_md.py; the text both share is in
report_format.py; the plots are drawn in plots.py.

Nothing here decides: "do tracepoints beat libpcap?" is answered in harness/analysis/answers.py from
the paired comparison's CI, and "not decided" stays "not decided".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from .analysis import headline
from .analysis.full import full_analysis
from .analysis.answers import tracepoint_vs_pcap
from .analysis.stats import BASELINE, analyse, cell_label, workload_key
from .analysis.benchjson import benchmark_json
from .errors import UsageError
from .analysis.fidelity import fidelity
from .record import SCHEMA_VERSION, write_json_atomic
from .report_format import (crossover_sentence, fidelity_summary, fmt, md_table, pct_ci, preflight_summary,
                             toggle_lines)
from .report_md import render_markdown


def load_run(path: Path) -> dict[str, Any]:
    """run.json from a run folder (or the file itself), checked against harness/schema.py: a malformed
    record is a UsageError naming its first bad field."""
    path = path / "run.json" if path.is_dir() else path
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"no run record at {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON (line {exc.lineno}): a corrupt or partial record") from None
    from .schema import RecordError, validate_run  # shared with the writer (record.RunRecord.finish)

    try:
        validate_run(data, newest=SCHEMA_VERSION)
    except RecordError as exc:  # one line naming the first bad field: "run.json: cells[0].params: missing"
        raise UsageError(f"{path}: {exc}") from None
    return data


def write_outputs(directory: Path, run: dict[str, Any]) -> dict[str, Any]:
    """analysis.json, benchmark.json, report.md and PNGs into `directory` from `run` alone; returns the analysis."""
    from .plots import plot_overheads, plot_sweep

    analysis = full_analysis(run)
    found = analysis["sweeps"]
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


# ---------------------------------------------------------------- terminal

def print_verdict(run: dict[str, Any], analysis: dict[str, Any], out: TextIO) -> None:
    """The terminal verdict: the preflight, the toggled headline, each cell's rate, CPU, overhead and fidelity,
    each workload's answer and the sweeps."""
    if "preflight" in run:  # older records have none
        print(preflight_summary(run["preflight"]), file=out)
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
                ci = f"{fmt(pct['median'])}% [{fmt(pct['low'])}, {fmt(pct['high'])}]"
                verdict = over["verdict"]
            else:
                ci, verdict = "-", ("baseline" if cell["backend"] == BASELINE else "no baseline")
            notes = fidelity_summary(fid.get(key, {}).get(label))
            notes = (f"; {notes}" if notes else "") + (f"; {cell['failed']} failed" if cell["failed"] else "")
            cpu_text = "-" if cpu is None else f"{cpu:.3g}"
            print(f"  {label:<44} {fmt(rate, 0):>14} {cpu_text:>10} {ci:>24}  {verdict}{notes}", file=out)
        answer = analysis.get("answers", {}).get(key) or tracepoint_vs_pcap(key, workload)
        print(f"  do tracepoints beat libpcap here? {answer['sentence']}", file=out)
    for sweep in analysis.get("sweeps", []):
        print(f"\nsweep {sweep['workload']} over {sweep['parameter']}: {crossover_sentence(sweep)}", file=out)


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
        parts.append(f"{pct_ci(over['percent'])} ({over['verdict']})")
    cell_fid = fid.get(key, {}).get(label)
    if cell_fid:
        parts.append(fidelity_summary(cell_fid))
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
                                    an["workloads"].get(key, {}).get("cells", {}).items() if cell["backend"] != BASELINE))
        rows = []
        terminal.append(f"\n{key}")
        for label in labels:
            texts = [_compare_cell(run, an, fid, key, label)
                     for (_, run), an, fid in zip(runs, analyses, fidelities)]
            rows.append([label, *texts])
            terminal.append(f"  {label}")
            terminal += [f"    {letter}: {text}" for letter, text in zip(letters, texts)]
        md += [f"## {key}", ""] + md_table(["cell", *letters], rows)
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
