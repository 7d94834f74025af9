"""The preflight: a host that is not fit to measure is refused with one line (exit 2), or measured
anyway and marked, before anything is measured (harness/preflight.py)."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from harness import preflight
from harness.system import tracefs_mounted
from tests.helpers import REPO, measuring, tpbench, wait_for

pytestmark = pytest.mark.root


def _record(out) -> dict:
    [run] = list(out.glob("*/run.json"))
    return json.loads(run.read_text())


@pytest.mark.skipif(shutil.which("bpftrace") is None, reason="bpftrace is not installed (make setup installs it)")
def test_a_bpftrace_one_liner_on_the_hook_is_refused_unless_measured_anyway(tmp_path):
    with tracefs_mounted():  # bpftrace resolves tracepoints through tracefs
        tracer = subprocess.Popen(
            ["bpftrace", "-e", "tracepoint:sock:inet_sock_set_state { @[args->newstate] = count(); }"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            # ready when the kernel shows its program on the hook (bpftrace's own line comes first)
            wait_for(lambda: preflight.foreign_programs()[0], 60, "bpftrace's program on inet_sock_set_state")
            refused = tpbench("run", "-q", "-b", "tracepoint", "-p", "connections=200", "-o", str(tmp_path / "refused"),
                              measure_anyway=False)
            assert refused.returncode == 2, refused.stderr
            [line] = refused.stderr.strip().splitlines()
            assert line.startswith("tpbench: error: this host is not fit to measure: a BPF program of another "
                                   "tracer is attached to inet_sock_set_state"), line
            assert f"pid {tracer.pid} bpftrace" in line and "--measure-anyway" in line, line
            assert not (tmp_path / "refused").exists()  # nothing was measured, not even a folder
            anyway = tpbench("run", "-b", "tracepoint", "-p", "connections=200", "-o", str(tmp_path / "anyway"),
                             "--measure-anyway")
            assert anyway.returncode == 0, anyway.stderr
        finally:
            tracer.terminate()
            tracer.communicate(timeout=30)
    record = _record(tmp_path / "anyway")
    [found] = record["preflight"]["foreign_programs"]
    assert (found["hook"], found["via"], found["pid"]) == ("inet_sock_set_state", "perf tracepoint", tracer.pid)
    assert record["preflight"]["measured_anyway"] is True
    assert all(cell["warnings"] == record["preflight"]["warnings"] for cell in record["cells"])
    report = (next((tmp_path / "anyway").iterdir()) / "report.md").read_text()
    assert "MEASURED ON A DIRTY HOST" in report.split("\n## ")[0]  # on the first screen


def test_a_cpu_hog_is_reported_with_its_busy_share_and_refused(tmp_path):
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        wait_for(lambda: preflight._cpu_sample(0.2)["busy_share"] > 0.3, 10, "the hog to run")
        refused = tpbench("run", "-q", "-p", "connections=200", "-o", str(tmp_path / "refused"), measure_anyway=False)
        anyway = tpbench("run", "-p", "connections=200", "-o", str(tmp_path / "anyway"), "--measure-anyway")
    finally:
        hog.kill()
        hog.wait()
    assert refused.returncode == 2, refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert "the host is busy:" in line and f"(pid {hog.pid})" in line, line  # named, with its share
    assert anyway.returncode == 0, anyway.stderr
    cpu = _record(tmp_path / "anyway")["preflight"]["cpu"]
    cpus = os.cpu_count() or 1
    assert 0.6 / cpus < cpu["busy_share"] <= 1.0, cpu  # one busy CPU of `cpus`
    assert cpu["samples"] == preflight.SAMPLES  # a busy first sample is taken again before refusing
    assert any(t["pid"] == hog.pid for t in cpu["top"]), cpu


def test_an_orphaned_agent_is_a_leftover_until_cleanup_kills_it(tmp_path):
    # a generator that outlived its run (started detached, as by an older tpbench): its command
    # line names a tpbench agent module; it is no child of the run that finds it
    launcher = subprocess.run(
        ["sh", "-c", f"{sys.executable} -c 'import time; time.sleep(120)' -m harness.agents.traffic.churn >/dev/null 2>&1 & "
                     "echo $!"], capture_output=True, text=True, check=True)
    orphan = int(launcher.stdout.strip())
    try:
        refused = tpbench("run", "-q", "-p", "connections=200", "-o", str(tmp_path), measure_anyway=False)
        assert refused.returncode == 2, refused.stderr
        [line] = refused.stderr.strip().splitlines()
        assert f"an earlier run left process {orphan} (" in line and line.endswith("run `tpbench cleanup` first"), line
        cleaned = tpbench("cleanup", check=True)
        assert f"killed orphaned process {orphan}" in cleaned.stdout, cleaned.stdout
        assert tpbench("run", "-p", "connections=200", "-o", str(tmp_path)).returncode == 0
    finally:
        try:
            os.kill(orphan, 9)
        except ProcessLookupError:
            pass


def _run_with_peak_rss(tmp_path, connections: int) -> tuple[dict, int, float]:
    """A churn run, its summary, its peak RSS in KiB (wait4: the run and every agent it reaped;
    RUSAGE_CHILDREN would be the largest of every process this session reaped) and its wall time."""
    started = time.monotonic()
    run = subprocess.Popen([*measuring("run"), "-b", "none", "-w", "churn", "-p", f"connections={connections}", "-q",
                            "--json", "-o", str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    stdout, stderr = run.stdout.read(), run.stderr.read()  # -q: stderr holds one line at most
    _, status, usage = os.wait4(run.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, stderr
    return json.loads(stdout), usage.ru_maxrss, time.monotonic() - started


def test_churn_at_ten_times_the_default_completes_with_a_bounded_runner(tmp_path):
    _, small_rss, _ = _run_with_peak_rss(tmp_path, 1000)
    summary, rss, wall = _run_with_peak_rss(tmp_path, 400_000)
    [cell] = summary["cells"]
    [trial] = cell["trials"]
    assert trial["status"] == "ok", trial.get("error")
    assert trial["ground_truth"]["generator"]["connections"] == 400_000
    assert trial["ground_truth"]["nstat"]["client"]["TcpActiveOpens"] == 400_000
    # memory does not grow with the run's size: 400 times the connections, at most 32 MiB more
    # (the runner's own floor, about 200 MiB with bcc loaded by the probe, is not this test's point)
    assert rss < small_rss + 32 * 1024, (small_rss, rss)
    assert wall < 300  # "a few minutes at most" (about 10 s here): a bound, not a timing
