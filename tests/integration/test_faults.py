"""A run stopped at any point leaves nothing behind, or `tpbench cleanup` removes what it left."""

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness.system import read_sysctl
from tests.helpers import REPO, leftovers, measuring, tpbench, wait_for

pytestmark = pytest.mark.root


def _start(out: Path, connections: int, trials: int) -> subprocess.Popen:
    return subprocess.Popen(
        [*measuring("run"), "-w", "churn", "-p", f"connections={connections}", "-n", str(trials), "-o", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for init to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _record(out: Path) -> dict | None:
    runs = list(out.glob("*/run.json"))
    return json.loads(runs[0].read_text()) if runs else None


def test_sigkill_mid_workload_then_cleanup_removes_every_leftover(tmp_path):
    from netns.topology import pids_in_netns

    before = leftovers()
    run = _start(tmp_path, connections=5_000_000, trials=1)
    try:
        found = wait_for(lambda: set(leftovers()["namespaces"]) - set(before["namespaces"]),
                          what="the run's namespaces")
        # the agents are churning inside them: wait for them rather than for a fixed time
        wait_for(lambda: all(pids_in_netns(name) for name in found), what="agents inside the namespaces")
        agents = {pid for name in found for pid in pids_in_netns(name)}
    finally:
        run.kill()
        run.wait()
    # every agent (and every churn worker it forked) dies with its runner: PR_SET_PDEATHSIG
    wait_for(lambda: not any(_alive(pid) for pid in agents), timeout_s=1.0,
              what=f"the agents {sorted(agents)} to die with their runner")
    assert not any(pids_in_netns(name) for name in found)
    assert set(leftovers()["namespaces"]) >= found  # SIGKILL gave the run no chance to clean up
    # until cleanup has run, the next run refuses with one line that names what was left
    for _ in range(2):
        refused = tpbench("run", "-q", "-p", "connections=10", "-o", str(tmp_path / "next"))
        assert refused.returncode == 2, refused.stderr
        [line] = refused.stderr.strip().splitlines()
        assert line.startswith("tpbench: error: an earlier run left namespace tpb-"), line
        assert line.endswith("run `tpbench cleanup` first"), line
        assert not (tmp_path / "next").exists()
    result = tpbench("cleanup", check=True)
    for name in found:
        assert f"removed namespace {name}" in result.stdout, result.stdout
    assert "killed pids" not in result.stdout, result.stdout  # nothing was left running inside
    assert leftovers() == before, (result.stdout, before)
    again = tpbench("cleanup", check=True).stdout.strip()
    assert again == "nothing of tpbench's found", again
    assert tpbench("run", "-q", "-p", "connections=10", "-o", str(tmp_path / "next")).returncode == 0


def test_sigterm_keeps_finished_trials_and_removes_everything(tmp_path):
    before = leftovers()
    run = _start(tmp_path, connections=20_000, trials=50)
    try:
        wait_for(lambda: (r := _record(tmp_path)) and r["cells"][0]["trials"], what="a finished trial")
        # while it runs, a second run is refused: it would share the CPUs being measured
        second = tpbench("run", "-p", "connections=10", "-o", str(tmp_path / "second"))
        assert second.returncode == 2
        assert "another tpbench run holds" in second.stderr
        run.send_signal(signal.SIGTERM)
        _, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("tpbench: interrupted by SIGTERM")
    assert "Traceback" not in stderr
    record = _record(tmp_path)
    assert record["status"] == "interrupted"
    kept = record["cells"][0]["trials"]
    assert 1 <= len(kept) < 50
    assert [t["status"] for t in kept] == ["ok"] * len(kept), [t.get("traceback") for t in kept]
    assert all(t["ground_truth"]["nstat"]["client"]["TcpActiveOpens"] == 20_000 for t in kept)
    assert leftovers() == before


# SIGKILL at random points of a run that loads BPF programs, starts a C consumer, a capture agent
# and tcpdump, sets kernel.bpf_stats_enabled and writes run.json after each trial: after
# `tpbench cleanup --run ID` nothing of the run may remain. TPBENCH_FAULT_LOOPS=100 runs the full loop.
FAULT_LOOPS = int(os.environ.get("TPBENCH_FAULT_LOOPS", "4"))


def _our_programs() -> set:
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True, check=True)
    return {p["id"] for p in json.loads(out.stdout) if p.get("name", "").startswith(("tracepoint__", "rawtp", "tpbtf"))}


def _processes(pattern: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


@pytest.mark.parametrize("iteration", range(FAULT_LOOPS))
def test_sigkill_at_a_random_point_leaves_nothing_after_cleanup(tmp_path, iteration):
    rng = random.Random(iteration)
    stats_before, programs_before = read_sysctl("kernel.bpf_stats_enabled"), _our_programs()
    run = subprocess.Popen(
        [*measuring("run"), "-b", "tracepoint,pcap", "-w", "churn", "-p", "connections=20000", "-n", "3",
         "-q", "-o", str(tmp_path)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    # 0.3-8 s covers the probe, BPF compile and attach, the workload, detach and the record's writes
    time.sleep(rng.uniform(0.3, 8.0))
    run.kill()
    run.wait()
    runs = list(tmp_path.iterdir())
    if runs:
        [run_dir] = runs
        result = tpbench("cleanup", "--run", run_dir.name, check=True)
        assert not leftovers_of(run_dir.name)
        if (run_dir / "run.json").exists():  # written atomically: whole, never torn
            assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    else:  # killed before the run folder existed: nothing of it may exist either
        result = tpbench("cleanup", "--run", "00000000T000000-0000", check=True)
    assert read_sysctl("kernel.bpf_stats_enabled") == stats_before, result.stdout
    # the C consumer exits when its stdin (the dead run's pipe) reaches EOF, and the BPF programs
    # die with the last process that held them: wait for both, then look once more
    wait_for(lambda: not _processes("ringbuf_consumer") and _our_programs() == programs_before, 30,
             "the dead run's consumer and programs to go")
    assert _our_programs() == programs_before
    assert not _processes("ringbuf_consumer"), _processes("ringbuf_consumer")
    assert not [p for p in _processes("harness.agents") if str(tmp_path) in p or "pcap_capture" in p]


def leftovers_of(run_id: str) -> list[str]:
    return [s for s in leftovers()["namespaces"] if s.startswith(f"tpb-{run_id}-")]
