"""Fidelity, visibility, attribution, the verdict sentence, report.md and compare, from synthetic
run records (no root): each test names the behaviour it proves and asserts the numbers."""

import subprocess
import sys

import pytest

from harness.analysis.attribution import attribution
from harness.analysis.fidelity import fidelity, row_status
from harness.report import compare, full_analysis, load_run, tracepoint_vs_pcap, write_outputs
from harness.record import write_json_atomic
from harness.analysis.visibility import visibility
from harness.cli.compare import with_machines

TP_LOST = "none expected on a loss-free veth"


def _expected(connections: int) -> dict:
    return {
        "client": {"transitions": {"CLOSE->SYN_SENT": connections, "SYN_SENT->ESTABLISHED": connections},
                   "events": {"state_change": 2 * connections, "reset_sent": 0},
                   "nstat": {"TcpActiveOpens": connections}, "at_least": {"probe": 1},
                   "equals_nstat": {"retransmit": "TcpRetransSegs"}, "inexact": {"sock_destroy": "timing"}},
        "server": {"transitions": {"LISTEN->SYN_RECV": connections},
                   "events": {"state_change": connections},
                   "nstat": {"TcpPassiveOpens": connections}, "at_least": {}, "equals_nstat": {}, "inexact": {}},
    }


def _trial(index, busy, sides, lost=0, details=None, connections=100, retrans=2, pids=None, rate=None):
    return {
        "index": index, "status": "ok", "operations": 1000, "operation_rate": rate or 10_000 * (1 - busy),
        "duration_s": 0.1, "cpu_seconds": {"busy": busy, "softirq": busy / 4},
        "ground_truth": {"generator": {}, "expected": _expected(connections),
                         "nstat": {"client": {"TcpActiveOpens": connections, "TcpRetransSegs": retrans},
                                   "server": {"TcpPassiveOpens": connections}},
                         "pids": pids or {"client": [10], "server": [20]}},
        "observed": {"events": {}, "transitions": {}, "sides": sides, "lost": lost, "details": details or {}},
    }


def _perfect(connections=100, retrans=2):
    return {"client": {"events": {"state_change": 2 * connections, "probe": 5, "retransmit": retrans},
                       "transitions": {"CLOSE->SYN_SENT": connections, "SYN_SENT->ESTABLISHED": connections}},
            "server": {"events": {"state_change": connections}, "transitions": {"LISTEN->SYN_RECV": connections}}}


def _cell(backend, trials, label=None, workload="churn", params=None):
    return {"label": label or f"{workload}/{backend}", "workload": workload, "backend": backend,
            "operation": "connection", "params": {"workload": params or {"connections": 100}, "backend": {}},
            "available": True, "trials": trials}


def _run(*cells):
    return {"schema_version": 1, "run_id": "r1", "status": "complete",
            "kernel": {"release": "6.18", "version": "#1", "machine": "x86_64"},
            "headers": {"kind": "fallback", "package_version": "6.1"}, "host": {"python": "3.11", "cpus": 2},
            "config": {"trials": 5}, "git": {"commit": "abc", "dirty": False}, "command_line": ["tpbench"],
            "started_at": "2026-11-26T00:00:00+00:00", "finished_at": "2026-11-26T00:10:00+00:00", "cells": list(cells)}


def _rows(result, label):
    return {(r["side"], r["name"]): r for r in next(iter(result.values()))[label]["rows"]}


def test_missing_is_what_reported_losses_cannot_explain_and_extra_is_what_was_not_caused():
    short = _perfect()
    short["client"]["transitions"]["CLOSE->SYN_SENT"] = 90  # 10 short, 4 reported lost
    short["client"]["transitions"]["SYN_SENT->CLOSE"] = 3  # not declared: all extra
    rows = _rows(fidelity(_run(_cell("tracepoint", [_trial(0, 0.1, short, lost=4)]))), "churn/tracepoint")
    row = rows[("client", "CLOSE->SYN_SENT")]
    assert (row["expected"], row["seen"], row["lost"], row["missing"], row["extra"]) == (100, 90, 4, 6, 0)
    assert row_status(row) == "missing"
    extra = rows[("client", "SYN_SENT->CLOSE")]
    assert (extra["expected"], extra["extra"], row_status(extra)) == (0, 3, "extra")
    assert rows[("server", "LISTEN->SYN_RECV")]["missing"] == 0


def test_losses_in_packets_or_connections_never_explain_missing_events():
    short = _perfect()
    short["client"]["transitions"]["CLOSE->SYN_SENT"] = 90
    cell = _cell("pcap", [_trial(0, 0.1, short, lost=50, details={"pcap_stats": {"dropped": 50}})])
    row = _rows(fidelity(_run(cell)), "churn/pcap")[("client", "CLOSE->SYN_SENT")]
    assert (row["lost"], row["missing"]) == (0, 10)
    assert fidelity(_run(cell))["churn(connections=100)"]["churn/pcap"]["lost_unit"] == "packets"


def test_at_least_equals_nstat_and_inexact_are_handled_as_declared():
    sides = _perfect(retrans=1)  # the kernel counted 2 RetransSegs: retransmit must equal it
    sides["client"]["events"]["probe"] = 0  # at_least 1: short by one
    sides["client"]["events"]["sock_destroy"] = 7  # inexact: seen only, with the reason
    rows = _rows(fidelity(_run(_cell("tracepoint", [_trial(0, 0.1, sides)]))), "churn/tracepoint")
    retrans = rows[("client", "retransmit")]
    assert (retrans["declared"], retrans["expected"], retrans["missing"]) == ("equals_nstat", 2, 1)
    probe = rows[("client", "probe")]
    assert (probe["declared"], probe["bound"], probe["expected"], probe["missing"]) == ("at_least", 1, None, 1)
    destroy = rows[("client", "sock_destroy")]
    assert (destroy["declared"], destroy["seen"], destroy["missing"], destroy["note"]) == ("inexact", 7, None, "timing")


def test_a_kind_the_backend_declares_invisible_is_invisible_not_missing():
    sides = _perfect()
    del sides["client"]["events"]["probe"]
    details = {"invisible": {"probe": "sender-internal", "pid, comm": "no process on the wire"}}
    rows = _rows(fidelity(_run(_cell("pcap", [_trial(0, 0.1, sides, details=details)]))), "churn/pcap")
    assert row_status(rows[("client", "probe")]) == "invisible"
    assert rows[("client", "probe")]["missing"] is None


def test_kernel_counter_checks_show_the_measured_difference():
    sides = _perfect(retrans=1)
    checks = next(iter(fidelity(_run(_cell("tracepoint", [_trial(0, 0.1, sides, retrans=3)]))).values()))[
        "churn/tracepoint"]["kernel_checks"]
    by = {(c["side"], c["counter"]): c for c in checks}
    assert by[("client", "TcpActiveOpens")]["difference"] == 0
    assert by[("client", "TcpRetransSegs")]["difference"] == 1 - 3
    assert "segments" in by[("client", "TcpRetransSegs")]["relation"]


def test_visibility_has_no_cell_without_a_trial_behind_it():
    sides = _perfect()
    pcap_sides = {"client": {"events": {"state_change": 100}, "transitions": {"CLOSE->SYN_SENT": 100}},
                  "server": {"events": {}, "transitions": {}}}
    pcap_details = {"invisible": {"probe": "sender-internal", "pid, comm": "none on the wire"}}
    run = _run(_cell("tracepoint", [_trial(i, 0.1, sides) for i in range(3)]),
               _cell("pcap", [_trial(i, 0.1, pcap_sides, details=pcap_details) for i in range(3)]))
    vis = visibility(run)
    rows = {r["row"]: r["cells"] for r in vis["rows"]}
    assert rows["CLOSE->SYN_SENT"]["tracepoint"]["text"] == "seen 3/3"
    assert rows["CLOSE->SYN_SENT"]["pcap"]["text"] == "inferred 3/3"
    assert rows["LISTEN->SYN_RECV"]["pcap"]["text"] == "invisible (0/3)"
    assert rows["* -> CLOSING"]["tracepoint"]["text"] == "not measured"  # no trial exercised it
    assert rows["reset_received"]["tracepoint"]["status"] == "not measured"
    assert rows["probe (cwnd, srtt: tcp_probe)"]["pcap"]["status"] == "invisible"
    for row in vis["rows"]:
        for value in row["cells"].values():
            # every claim other than "not measured"/"not recorded" names its evidence trial
            assert value["status"] in ("not measured", "not recorded") or value["evidence"], (row["row"], value)


def test_attribution_scores_pids_per_side_and_splits_the_softirq_misses():
    details = {"attribution": [
        {"side": "client", "kind": "state_change", "pid": 10, "comm": "churn", "count": 200},
        {"side": "server", "kind": "state_change", "pid": 20, "comm": "churn", "count": 20},
        {"side": "server", "kind": "state_change", "pid": 10, "comm": "churn", "count": 70},  # peer's softirq
        {"side": "server", "kind": "state_change", "pid": 0, "comm": "swapper/1", "count": 10},
    ]}
    result = attribution(_run(_cell("tracepoint", [_trial(0, 0.1, _perfect(), details=details)])))
    rows = {(r["side"], r["kind"]): r for r in next(iter(result.values()))["churn/tracepoint"]["rows"]}
    assert rows[("client", "state_change")]["share_right"] == 1.0
    server = rows[("server", "state_change")]
    assert server["share_right"] == pytest.approx(0.2)
    assert (server["other_side_process"], server["idle_task"], server["other_task"]) == (70, 10, 0)
    assert server["coverage"] == 1.0  # 100 scored of 100 server state_change events seen


def _paired_run(tp_extra: list[float], pcap_extra: list[float]):
    base = [0.100, 0.110, 0.090, 0.105, 0.095]

    def mk(backend, extra):
        return _cell(backend, [_trial(i, b + e, _perfect()) for i, (b, e) in enumerate(zip(base, extra))])

    return _run(mk("none", [0] * 5), mk("tracepoint", tp_extra), mk("pcap", pcap_extra))


def test_the_answer_is_yes_only_when_the_paired_ci_decides_it():
    run = _paired_run([0.005] * 5, [0.020] * 5)
    key, entry = next(iter(full_analysis(run)["workloads"].items()))
    answer = tracepoint_vs_pcap(key, entry)
    assert answer["answer"] == "yes" and answer["sentence"].startswith("yes: CPU per operation of churn/tracepoint - churn/pcap = -15")


def test_the_answer_is_never_decided_on_wide_intervals():
    run = _paired_run([0.005, 0.06, -0.04, 0.05, 0.0], [0.02, -0.03, 0.07, 0.0, 0.04])
    key, entry = next(iter(full_analysis(run)["workloads"].items()))
    answer = tracepoint_vs_pcap(key, entry)
    assert answer["answer"] == "not decided" and "run longer" in answer["sentence"]


def _sweep_run():
    cells = []
    # rate=0 is "as fast as possible": the highest measured rate, so it must sort last
    for rate, achieved, (tp, pc) in zip((1000, 5000, 10000, 0), (1000, 5000, 10000, 14000),
                                        ((0.002, 0.010), (0.004, 0.010), (0.012, 0.008), (0.020, 0.008))):
        params = {"connections": 100, "rate": rate}
        base = [0.100, 0.110, 0.090, 0.105, 0.095]
        for backend, extra in (("none", 0.0), ("tracepoint", tp), ("pcap", pc)):
            slower = 1 - extra * (achieved / 20000)  # an observer slows the unpaced point
            cells.append(_cell(backend, [_trial(i, b + extra, _perfect(), rate=achieved * (slower if rate == 0 else 1))
                                         for i, b in enumerate(base)], params=params))
    return _run(*cells)


def test_report_is_rebuilt_identically_and_marks_a_sweep_crossover(tmp_path):
    run = _sweep_run()
    write_json_atomic(tmp_path / "run.json", run)
    write_outputs(tmp_path, load_run(tmp_path))
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.suffix in (".md", ".png", ".json")}
    write_outputs(tmp_path, load_run(tmp_path))
    for name, data in first.items():
        assert (tmp_path / name).read_bytes() == data, f"{name} differs on rebuild"
    report = (tmp_path / "report.md").read_text()
    assert "![churn rate sweep](sweep-churn-rate.png)" in report
    assert "crossover between rate=5000 and 10000: tracepoint is cheaper below, pcap above" in report
    assert b"matplotlib" not in first["sweep-churn-rate.png"]  # no software tag: deterministic bytes


def test_report_without_sweep_says_conditions_were_not_explored(tmp_path):
    write_json_atomic(tmp_path / "run.json", _paired_run([0.005] * 5, [0.020] * 5))
    write_outputs(tmp_path, load_run(tmp_path))
    report = (tmp_path / "report.md").read_text()
    assert "Not explored in this run" in report and "tpbench bench --profile thorough" in report
    assert "Per-flow matching is sampled and partial" in report and "No cell of this run has per-flow data" in report
    assert "| CLOSE->SYN_SENT | seen 5/5" in report
    assert (tmp_path / "overhead.png").exists()


def test_compare_sets_two_runs_side_by_side(tmp_path):
    a = _paired_run([0.005] * 5, [0.020] * 5)
    b = _paired_run([0.010] * 5, [0.020] * 5)
    b["run_id"], b["kernel"]["release"] = "r2", "6.1.0"
    markdown, lines = compare([("a", a), ("b", b)])
    assert "kernel 6.18" in markdown and "kernel 6.1.0" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| churn/tracepoint |"))
    assert "+5.0%" in row and "+10.0%" in row  # A's and B's overhead of the same cell
    for d, run in (("ra", a), ("rb", b)):
        write_json_atomic(tmp_path / d / "run.json", run)
    done = subprocess.run([sys.executable, "-m", "harness.cli", "compare", str(tmp_path / "ra"), str(tmp_path / "rb"),
                           "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    expected = with_machines(markdown, lines, [a, b])[0]  # the CLI adds the machines (harness/machine.py)
    assert (tmp_path / "out" / "compare.md").read_text() == expected.replace("`a`", f"`{tmp_path / 'ra'}`").replace(
        "`b`", f"`{tmp_path / 'rb'}`")


def test_a_sweep_with_no_precise_point_still_reports_the_direction_where_the_ci_excludes_zero(tmp_path):
    cells = []
    for rate in (1000, 5000, 10000):
        params = {"connections": 100, "rate": rate}
        base = [0.100, 0.110, 0.090, 0.105, 0.095]
        for backend, extras in (("none", [0.0] * 5), ("tracepoint", [0.0] * 5),
                                ("pcap", [0.010, 0.040, 0.020, 0.035, 0.015])):
            cells.append(_cell(backend, [_trial(i, b + e, _perfect(), rate=rate)
                                         for i, (b, e) in enumerate(zip(base, extras))], params=params))
    write_json_atomic(tmp_path / "run.json", _run(*cells))
    write_outputs(tmp_path, load_run(tmp_path))
    report = (tmp_path / "report.md").read_text()
    assert ("no point decided to the verdict's precision; on direction alone (95% CI excludes 0 at 3 of 3 "
            "points): tracepoint cheaper at each of them, no crossover") in report


def test_where_the_kernel_cannot_count_losses_the_counters_that_cannot_miss_give_the_shortfall(tmp_path):
    # a 6.1 kprobe-like cell: lost is null (skipped runs not counted), and the server missed two
    # TIME_WAIT closes and one passive open that TcpExtTW and TcpPassiveOpens counted
    sides = _perfect()
    sides["server"]["transitions"].update({"LISTEN->SYN_RECV": 99, "FIN_WAIT2->CLOSE": 98})
    trial = _trial(0, 0.5, sides, lost=None, details={"loss_method": "unknown: this kernel ..."})
    trial["ground_truth"]["nstat"]["server"]["TcpExtTW"] = 100
    result = next(iter(fidelity(_run(_cell("kprobe", [trial]))).values()))["churn/kprobe"]
    assert result["lost_reported"] is None
    assert result["probable_silent_loss"] == 3
    tw = next(c for c in result["kernel_checks"] if c["counter"] == "TcpExtTW")
    assert (tw["seen"], tw["counted"], tw["shortfall"]) == (98, 100, 2)
    # where losses are countable, no guess is made
    counted = next(iter(fidelity(_run(_cell("kprobe", [_trial(0, 0.5, _perfect())]))).values()))["churn/kprobe"]
    assert counted["probable_silent_loss"] is None and counted["lost_reported"] == 0
    write_outputs(tmp_path, _run(_cell("kprobe", [trial])))
    assert "not countable (probably 3 silently" in (tmp_path / "report.md").read_text()


def test_where_the_kernel_counts_losses_a_shortfall_beyond_the_count_is_reported_as_uncounted(tmp_path):
    # measured on 6.18: the tracepoint fired (ftrace saw it) but no BPF program ran and no miss was
    # counted; TcpExtTW exposes the missing FIN_WAIT2->CLOSE
    sides = _perfect()
    sides["server"]["transitions"]["FIN_WAIT2->CLOSE"] = 98
    silent = _trial(0, 0.5, sides, lost=0)
    silent["ground_truth"]["nstat"]["server"]["TcpExtTW"] = 100
    explained = _trial(1, 0.5, _perfect(), lost=3)  # counted losses explain (at most) their own shortfall
    explained["observed"]["sides"]["server"]["transitions"]["FIN_WAIT2->CLOSE"] = 99
    explained["ground_truth"]["nstat"]["server"]["TcpExtTW"] = 100
    result = next(iter(fidelity(_run(_cell("tracepoint", [silent, explained]))).values()))["churn/tracepoint"]
    assert result["lost_reported"] == 3 and result["probable_silent_loss"] is None
    assert result["uncounted_shortfall"] == 2  # the silent trial's 2; the other's 1 is within its 3 counted
    clean = next(iter(fidelity(_run(_cell("tracepoint", [_trial(0, 0.5, _perfect())]))).values()))
    assert clean["churn/tracepoint"]["uncounted_shortfall"] == 0
    write_outputs(tmp_path, _run(_cell("tracepoint", [silent])))
    assert "at least 2 uncounted" in (tmp_path / "report.md").read_text()


def test_a_kind_declared_partly_invisible_is_bounded_by_its_counter_not_counted_as_loss(tmp_path):
    # 6.1: tcp:tcp_send_reset does not fire for a RST to a closed port, which TcpOutRsts counts
    sides = _perfect()
    trial = _trial(0, 0.5, sides, lost=0, details={"invisible": {"reset_sent (socketless)": "before 6.10 ..."}})
    trial["ground_truth"]["nstat"]["server"]["TcpOutRsts"] = 100
    result = next(iter(fidelity(_run(_cell("tracepoint", [trial]))).values()))["churn/tracepoint"]
    check = next(c for c in result["kernel_checks"] if c["side"] == "server" and c["counter"] == "TcpOutRsts")
    assert check["partly_invisible"] and check["shortfall"] is None and check["difference"] == -100
    assert result["uncounted_shortfall"] == 0
    write_outputs(tmp_path, _run(_cell("tracepoint", [trial])))
    assert "partly invisible here: a bound" in (tmp_path / "report.md").read_text()


def test_compare_takes_one_run_per_kernel_and_says_where_a_backend_cannot_run_or_count():
    a = _paired_run([0.005] * 5, [0.020] * 5)
    b = _paired_run([0.010] * 5, [0.020] * 5)
    c = _paired_run([0.010] * 5, [0.020] * 5)
    b["run_id"], b["kernel"]["release"] = "r2", "6.1.0"
    c["run_id"], c["kernel"]["release"] = "r3", "6.12.0"
    for cell in b["cells"]:  # 6.1: the kernel cannot count skipped runs
        for trial in cell["trials"]:
            trial["observed"]["lost"] = None
    c["cells"].append({**_cell("kprobe", []), "available": False, "availability": "CONFIG_KPROBES is not set"})
    markdown, lines = compare([("a", a), ("b", b), ("c", c)])
    assert "**C**: r3 (kernel 6.12.0" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| churn/tracepoint |"))
    assert row.count("|") == 5 and "+5.0%" in row and "+10.0%" in row
    assert "loss not countable here" in row.split("|")[3]  # B's cell only
    kprobe = next(line for line in markdown.splitlines() if line.startswith("| churn/kprobe |"))
    assert kprobe.split("|")[2:5] == [" not run ", " not run ", " unavailable: CONFIG_KPROBES is not set "]
    assert any(line.strip().startswith("C: ") for line in lines)
