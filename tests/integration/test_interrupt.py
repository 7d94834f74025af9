"""Ctrl-C (SIGINT, what a user's terminal sends) in the middle of `bench`'s toggled group, the
measurement every default run begins with (a `run` interrupted between trials is test_faults'
SIGTERM test). The run stops, keeps what it measured (run.json says "interrupted", the windows so
far analysed), and leaves nothing behind: no namespace, no BPF program, no consumer or capture
process, bpf_stats as it was."""

import json
import signal
import subprocess
import time

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
        sent = time.monotonic()
        try:
            _, stderr = run.communicate(timeout=90)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    # "within seconds": the window in progress ends, then the unwinding (analysis, cleanup); a
    # generous bound, not a timing
    assert time.monotonic() - sent < 30, time.monotonic() - sent
    return run.returncode, stderr, _record(out)


def _left_nothing(before: dict, programs: set[int], stats: str) -> None:
    # the consumer exits on its pipe's EOF and BPF programs go with their last holder: a moment after
    wait_for(lambda: not _our_processes() and _our_programs() <= programs, 30, "consumers and programs to go")
    assert leftovers() == before
    assert read_sysctl("kernel.bpf_stats_enabled") == stats


def test_ctrl_c_during_benchs_toggled_group_keeps_its_windows_and_leaves_nothing(tmp_path):
    """`bench` (the smoke profile) interrupted in its toggled group, the measurement every default
    run begins with: the windows of the cycles finished are kept and analysed, no trial follows."""
    before, programs, stats = leftovers(), _our_programs(), read_sysctl("kernel.bpf_stats_enabled")
    argv = measuring("bench", "--profile", "smoke", "-q", "-o", str(tmp_path))

    def a_cycle_saved(record: dict) -> bool:  # run.json is saved after each cycle: the next one runs
        return bool(record.get("toggle")) and bool(record["toggle"][0].get("windows"))

    status, stderr, record = _interrupt(argv, tmp_path, a_cycle_saved)
    assert status == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("tpbench: interrupted by SIGINT"), stderr
    assert "Traceback" not in stderr
    assert record["status"] == "interrupted"
    [entry] = record["toggle"]
    assert entry["status"] == "interrupted", entry.get("stop_reason")
    arms = {a["label"] for a in entry["arms"]}
    cycles = {w["cycle"] for w in entry["windows"]}
    # every cycle before the last is whole (the cycle the interrupt cut is kept as far as it got)
    for cycle in sorted(cycles)[:-1] or sorted(cycles):
        assert {w["arm"] for w in entry["windows"] if w["cycle"] == cycle} == arms, cycle
    assert all(cell["trials"] == [] for cell in record["cells"])  # the trials come after the toggled groups
    # what was measured is analysed: the interrupted group's windows reach analysis.json and report.md
    [run_dir] = list(tmp_path.iterdir())
    [group] = json.loads((run_dir / "analysis.json").read_text())["toggle"]["groups"]
    assert group["workload"] == "churn" and group["cycles"] >= 1, group
    assert (run_dir / "report.md").exists()
    _left_nothing(before, programs, stats)
