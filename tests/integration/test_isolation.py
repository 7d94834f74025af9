"""Every observer counts only its trial's own traffic: unrelated TCP traffic on the host's loopback
runs throughout a trial, and no backend may report an event the workload did not cause."""

import json

import pytest

from harness.backends import BACKENDS
from harness.kernel import probe
from tests.helpers import foreign_loopback_churn, tpbench

pytestmark = pytest.mark.root

OBSERVERS = [name for name in BACKENDS if name not in ("none", "tracepoint-empty")]


@pytest.fixture(scope="module")
def kernel():
    return probe()


@pytest.mark.parametrize("backend", OBSERVERS)
def test_foreign_loopback_traffic_never_reaches_the_results(backend, kernel, tmp_path):
    availability = BACKENDS[backend].availability(kernel)
    if not availability.available:
        pytest.skip(f"{backend} cannot run on this kernel: {availability.reason}")
    with foreign_loopback_churn(60):
        # the foreign traffic keeps a CPU busy, which the preflight refuses unless told
        result = tpbench("run", "-b", backend, "-w", "churn", "-p", "connections=1000", "--json", "-q",
                         "-o", str(tmp_path), "--measure-anyway")
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
