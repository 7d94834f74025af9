"""The toggled measurement, for real: observers switched on and off under one live churn."""

import json
import subprocess
from collections import Counter

import pytest

from harness.report import load_run
from tests.helpers import leftovers, tpbench

pytestmark = pytest.mark.root


def _our_programs() -> int:
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True, check=True)
    return sum(1 for p in json.loads(out.stdout) if p.get("type") == "tracepoint")


def test_observers_switch_on_and_off_in_balanced_cycles_and_off_means_off(tmp_path):
    before, programs = leftovers(), _our_programs()
    result = tpbench("toggle", "-b", "tracepoint,pcap", "-w", "churn", "-p", "tracepoint.hooks=state+destroy",
                     "--window", "0.5", "--settle", "0.1", "--min-cycles", "3", "--max-s", "8", "-o",
                     str(tmp_path), "--json", timeout=240)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    run = load_run(tmp_path / summary["run_id"])
    (entry,) = run["toggle"]
    assert entry["status"] == "complete", entry.get("error")
    labels = {a["label"] for a in entry["arms"]}
    assert labels == {"none", "none (A/A)", "tracepoint[hooks=state+destroy]", "pcap"}
    per_cycle = Counter((w["cycle"], w["arm"]) for w in entry["windows"])
    assert set(per_cycle.values()) == {1} and len(per_cycle) == entry["cycles"] * 4  # balanced
    assert entry["cycles"] >= 3
    for w in entry["windows"]:
        assert w["end"]["ops"] > w["start"]["ops"] > w["on"]["ops"] >= 0  # the live counter moves
        if w["arm"].startswith("tracepoint"):
            # per connection: 5 transitions each side, a destroy each side, at least
            assert w["off"]["events"] >= 10 * (w["end"]["ops"] - w["start"]["ops"])
            assert w["off"]["runs_while_off"] == 0  # detached: no program ran while off
        elif w["arm"] == "pcap":
            assert w["off"]["events"] >= 3 * (w["end"]["ops"] - w["start"]["ops"])  # SYN, SYN-ACK, FINs
            # the frozen socket's drain is exact: every packet the kernel counted was read or dropped
            assert w["off"]["events"] + w["off"]["lost"] == w["off"]["received"], w["off"]
        else:
            assert w["off"] == {"events": 0, "lost": 0}
    # the pcap agent's CPU is charged by process, and only to its own on-periods
    pcap_tasks = [w["end"]["tasks"]["pcap"] - w["start"]["tasks"]["pcap"] for w in entry["windows"]
                  if w["arm"] == "pcap"]
    assert min(pcap_tasks) > 0
    analysis = json.loads((tmp_path / summary["run_id"] / "analysis.json").read_text())
    (headline,) = analysis["headline"]
    assert headline["workload"] == "churn" and headline["method"] == "toggle"
    assert (headline["a"], headline["b"], headline["level"]) == ("tracepoint[hooks=state+destroy]", "pcap", "state")
    # the outcome is the one its interval supports: a sign only where the interval excludes 0, and
    # "not_decided" exactly where the comparison is not decided
    assert (headline["outcome"] == "not_decided") == (not headline["decided"]), headline
    if headline["n"] >= 2:  # paired per cycle: an interval from two cycles on (a neighbour may exclude some)
        low, high = headline["ci_pct"]
        assert low <= headline["diff_pct"] <= high, headline
        supported = {"a_cheaper": high < 0, "b_cheaper": low > 0, "no_difference": low <= 0 <= high,
                     "not_decided": True}
        assert supported[headline["outcome"]], headline
    assert 1 <= headline["n"] <= entry["cycles"], (headline["n"], entry["cycles"])
    (aa,) = analysis["aa"]
    assert aa["workload"] == "churn" and len(aa["ci_pct"]) == 2
    group = analysis["toggle"]["groups"][0]
    assert group["conservation"]["conserved"], group["conservation"]
    assert "toggled" in (tmp_path / summary["run_id"] / "report.md").read_text()
    assert leftovers() == before and _our_programs() == programs  # nothing left attached or loaded


def test_a_backend_that_cannot_switch_is_one_line_and_exit_2(tmp_path):
    result = tpbench("toggle", "-b", "sockdiag", "-w", "churn", "-o", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "cannot be switched" in result.stderr, result.stderr
    result = tpbench("toggle", "-b", "tracepoint", "-w", "resets", "-o", str(tmp_path))
    assert result.returncode == 2 and "no live mode" in result.stderr, result.stderr


def test_python_consumers_are_toggled_in_processes_of_their_own_and_paired_with_each_other(tmp_path):
    result = tpbench("toggle", "-b", "tracepoint,pcap", "-w", "churn", "-p",
                     "tracepoint.hooks=state+destroy,tracepoint.consumer=python,pcap.consumer=python",
                     "--window", "0.5", "--settle", "0.1", "--min-cycles", "3", "--max-s", "6", "-o",
                     str(tmp_path), "--json", timeout=240)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / json.loads(result.stdout)["run_id"]
    (entry,) = load_run(run_dir)["toggle"]
    assert entry["status"] == "complete", entry.get("error")
    label = "tracepoint[hooks=state+destroy,consumer=python]"
    windows = [w for w in entry["windows"] if w["arm"] == label]
    # the consumer is a process of its own, charged to its arm, and it was busy in its windows
    assert min(w["end"]["tasks"][label] - w["start"]["tasks"][label] for w in windows) > 0
    for w in windows:
        assert w["off"]["runs_while_off"] == 0
        assert w["off"]["events"] >= 10 * (w["end"]["ops"] - w["start"]["ops"])
    details = entry["arm_details"][label]
    assert details["consumer"] == "python"
    # every event the programs emitted reached the Python consumer (nothing left in the ring)
    assert details["events"] + (details["lost"] or 0) >= sum(w["off"]["events"] for w in windows)
    (headline,) = json.loads((run_dir / "analysis.json").read_text())["headline"]
    assert (headline["level"], headline["consumer"]) == ("state", "python")
