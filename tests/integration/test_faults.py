"""A run stopped at any point leaves nothing behind, or `tpbench cleanup` removes what it left."""

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, TPBENCH, leftovers, tpbench

pytestmark = pytest.mark.root


def _start(out: Path, connections: int, trials: int) -> subprocess.Popen:
    return subprocess.Popen(
        [*TPBENCH, "run", "-w", "churn", "-p", f"connections={connections}", "-n", str(trials), "-o", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for(condition, timeout_s: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _record(out: Path) -> dict | None:
    runs = list(out.glob("*/run.json"))
    return json.loads(runs[0].read_text()) if runs else None


def test_sigkill_mid_workload_then_cleanup_removes_every_leftover(tmp_path):
    before = leftovers()
    run = _start(tmp_path, connections=5_000_000, trials=1)
    try:
        found = _wait_for(lambda: set(leftovers()["namespaces"]) - set(before["namespaces"]),
                          what="the run's namespaces")
        time.sleep(0.5)  # the agents are now churning inside them
    finally:
        run.kill()
        run.wait()
    assert set(leftovers()["namespaces"]) >= found  # SIGKILL gave the run no chance to clean up
    result = tpbench("cleanup", check=True)
    for name in found:
        assert f"removed namespace {name}" in result.stdout
    assert "killed pids" in result.stdout  # the agents were still running inside
    assert leftovers() == before
    assert tpbench("cleanup", check=True).stdout.strip() == "nothing of tpbench's found"


def test_sigterm_keeps_finished_trials_and_removes_everything(tmp_path):
    before = leftovers()
    run = _start(tmp_path, connections=20_000, trials=50)
    try:
        _wait_for(lambda: (r := _record(tmp_path)) and r["cells"][0]["trials"], what="a finished trial")
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
