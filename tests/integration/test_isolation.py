"""Every observer counts only its trial's own traffic: unrelated TCP traffic on the host's loopback
runs throughout a trial, and no backend may report an event the workload did not cause."""

import json
import subprocess
import sys
import time

import pytest

from harness.backends import BACKENDS
from harness.kernel import probe
from tests.conftest import tpbench

pytestmark = pytest.mark.root

LOOPBACK_CHURN = """
import socket, sys, time
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen(128)
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    c = socket.create_connection(listener.getsockname()); a, _ = listener.accept(); a.close(); c.close()
"""
OBSERVERS = [name for name in BACKENDS if name not in ("none", "tracepoint-empty")]


@pytest.fixture(scope="module")
def kernel():
    return probe()


@pytest.mark.parametrize("backend", OBSERVERS)
def test_foreign_loopback_traffic_never_reaches_the_results(backend, kernel, tmp_path):
    availability = BACKENDS[backend].availability(kernel)
    if not availability.available:
        pytest.skip(f"{backend} cannot run on this kernel: {availability.reason}")
    foreign = subprocess.Popen([sys.executable, "-c", LOOPBACK_CHURN, "60"])
    try:
        time.sleep(0.2)
        # the foreign traffic keeps a CPU busy, which the preflight refuses unless told
        result = tpbench("run", "-b", backend, "-w", "churn", "-p", "connections=1000", "--json", "-q",
                         "-o", str(tmp_path), "--measure-anyway")
    finally:
        foreign.kill()
        foreign.wait()
    assert result.returncode == 0, result.stderr
    [trial] = json.loads(result.stdout)["cells"][0]["trials"]
    assert trial["status"] == "ok", trial.get("error")
    observed, expected = trial["observed"], trial["ground_truth"]["expected"]
    assert set(observed["sides"]) <= {"client", "server"}  # nothing attributed to another address
    for side, seen in observed["sides"].items():
        for transition, count in seen.get("transitions", {}).items():
            assert count <= expected[side]["transitions"].get(transition, 0), (side, transition, count)
        for kind in ("state_change", "sock_destroy"):
            assert seen.get("events", {}).get(kind, 0) <= expected[side]["events"].get(kind, 0), (side, kind)
