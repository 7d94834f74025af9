"""Ctrl-C (SIGINT, what a user's terminal sends) in the middle of the two long commands: the
toggled measurement and `bench`. The run stops, keeps what it measured (run.json says
"interrupted", the windows or trials so far analysed), and leaves nothing behind: no namespace,
no BPF program, no consumer or capture process, bpf_stats as it was."""

import json
import signal
import subprocess

import pytest

from harness.system import read_sysctl
from tests.helpers import REPO, leftovers, measuring, wait_for

pytestmark = pytest.mark.root


def _our_programs() -> set[int]:
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True, check=True)
    return {p["id"] for p in json.loads(out.stdout) if p.get("type") in ("tracepoint", "raw_tracepoint", "tracing")}


def _our_processes() -> list[str]:
    out = subprocess.run(["pgrep", "-af", "ringbuf_consumer|pcap_consumer|harness.agents"], capture_output=True,
                         text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def _record(out) -> dict | None:
    runs = list(out.glob("*/run.json"))
    return json.loads(runs[0].read_text()) if runs else None


def _interrupt(argv: list[str], out, ready) -> tuple[int, str, dict]:
    """Start tpbench, wait until `ready(record)` holds, send SIGINT; (exit status, stderr, record)."""
    run = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (record := _record(out)) and ready(record), 300, "the run to reach the point of interrupt")
    finally:  # reached or not, the run is interrupted as a user would, so it cleans up after itself
        run.send_signal(signal.SIGINT)
        try:
            # a generous bound (the run finishes the window or trial step it is in, then unwinds)
            _, stderr = run.communicate(timeout=90)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    return run.returncode, stderr, _record(out)


def _left_nothing(before: dict, programs: set[int], stats: str) -> None:
    # the consumer exits on its pipe's EOF and BPF programs go with their last holder: a moment after
    wait_for(lambda: not _our_processes() and _our_programs() <= programs, 30, "consumers and programs to go")
    assert leftovers() == before
    assert read_sysctl("kernel.bpf_stats_enabled") == stats


def test_ctrl_c_during_a_toggled_group_keeps_its_windows_and_leaves_nothing(tmp_path):
    before, programs, stats = leftovers(), _our_programs(), read_sysctl("kernel.bpf_stats_enabled")
    argv = measuring("toggle", "-b", "tracepoint,pcap", "-w", "churn", "-p", "tracepoint.hooks=state+destroy",
                     "-p", "pcap.consumer=c", "--window", "0.5", "--settle", "0.1", "--min-cycles", "100",
                     "--max-s", "300", "-q", "-o", str(tmp_path))
    def two_cycles_saved(record: dict) -> bool:  # windows of a third cycle: the first two are whole
        return bool(record.get("toggle")) and len({w["cycle"] for w in record["toggle"][0].get("windows", [])}) >= 3

    status, stderr, record = _interrupt(argv, tmp_path, two_cycles_saved)
    assert status == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("tpbench: interrupted by SIGINT"), stderr
    assert "Traceback" not in stderr
    assert record["status"] == "interrupted"
    [entry] = record["toggle"]
    assert entry["status"] == "interrupted"
    cycles = {w["cycle"] for w in entry["windows"]}
    assert len(cycles) >= 2 and len(entry["windows"]) >= 2 * 4  # none, A/A, tracepoint, pcap per cycle
    # what was measured is analysed: the interrupted group's windows reach analysis.json
    [run_dir] = list(tmp_path.iterdir())
    analysis = json.loads((run_dir / "analysis.json").read_text())
    [group] = analysis["toggle"]["groups"]
    assert group["workload"] == "churn" and group["cycles"] >= 2, group
    _left_nothing(before, programs, stats)


def test_ctrl_c_during_bench_keeps_the_finished_trials_and_leaves_nothing(tmp_path):
    before, programs, stats = leftovers(), _our_programs(), read_sysctl("kernel.bpf_stats_enabled")
    argv = measuring("bench", "--profile", "smoke", "-q", "-o", str(tmp_path))

    def some_trials_done(record: dict) -> bool:
        return sum(len(c["trials"]) for c in record.get("cells", [])) >= 3

    status, stderr, record = _interrupt(argv, tmp_path, some_trials_done)
    assert status == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("tpbench: interrupted by SIGINT"), stderr
    assert "Traceback" not in stderr
    assert record["status"] == "interrupted"
    assert record["toggle"][0]["status"] == "complete"  # the toggled group came first and finished
    trials = [t for c in record["cells"] for t in c["trials"]]
    assert len(trials) >= 3 and all(t["status"] == "ok" for t in trials[:3]), [t.get("error") for t in trials]
    [run_dir] = list(tmp_path.iterdir())
    assert (run_dir / "analysis.json").exists() and (run_dir / "report.md").exists()
    _left_nothing(before, programs, stats)
