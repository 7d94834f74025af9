"""The peers (Debian's bcc tools and bpftrace) run as users run them and their output becomes the
common observation: per side, per transition, with the tool's and the kernel's losses."""

import json

import pytest

from harness.backends import BACKENDS
from harness.backends.peers import TOOLS
from harness.backends.bpf_build import kernel_version
from harness.kernel import probe
from tests.helpers import tpbench
from tests.host import BLIND_CONNECTIONS

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def kernel():
    return probe()


def _trial(backend: str, kernel, tmp_path, *args: str) -> dict:
    availability = BACKENDS[backend].availability(kernel)
    if not availability.available:
        pytest.skip(f"{backend} cannot run here: {availability.reason}")
    result = tpbench("run", "-b", backend, *args, "--json", "-q", "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    [trial] = json.loads(result.stdout)["cells"][0]["trials"]
    assert trial["status"] == "ok", trial.get("error")
    return trial


def test_every_peer_is_a_listed_backend():
    assert set(TOOLS) == {"bcc-tcpstates", "bcc-tcplife", "bcc-tcpretrans", "bpftrace"}
    listed = json.loads(tpbench("list", "--json").stdout)["backends"]
    assert set(TOOLS) <= set(listed)


@pytest.mark.parametrize("backend", ["bcc-tcpstates", "bpftrace"])
def test_state_peers_report_every_churn_transition_or_its_loss(backend, kernel, tmp_path):
    trial = _trial(backend, kernel, tmp_path, "-w", "churn", "-p", "connections=2000")
    observed, expected = trial["observed"], trial["ground_truth"]["expected"]
    details = observed["details"]
    assert details["scope"] == "whole host" and details["tool_cpu_s"]["total"] > 0
    assert details["unparsed"] == []
    total_expected = sum(n for side in expected.values() for n in side["transitions"].values())
    total_seen = sum(observed["transitions"].values())
    for side in ("client", "server"):
        for transition, count in observed["sides"][side]["transitions"].items():
            assert count <= expected[side]["transitions"].get(transition, 0), (side, transition)
    assert total_seen > 0
    # no count is safe from loss, not even the client's opens in process context: a perf ring that
    # is full when the tool falls behind drops whatever comes, and the tool then owes a loss count
    if backend == "bcc-tcpstates":  # drained by a sentinel per CPU, which also makes each ring write its count
        assert details["drain"]["complete"], details["drain"]
    if kernel_version() >= (6, 7):
        assert observed["lost"] == details["lost_reported_by_tool"] + details["programs"]["recursion_misses"]
        if backend == "bpftrace":  # counts in a kernel map: a run either counts or is a counted miss
            # (or, on these hosts, never happens: tests/host.py)
            assert 0 <= total_expected - total_seen - observed["lost"] <= 3 * BLIND_CONNECTIONS
        else:  # a printed line per event: what is neither printed nor counted would be silent loss
            assert 0 <= total_expected - total_seen - observed["lost"] <= 0.01 * total_expected
    else:
        assert observed["lost"] is None and "before 6.7" in details["loss_method"]


def test_tcplife_prints_one_line_per_session(kernel, tmp_path):
    trial = _trial("bcc-tcplife", kernel, tmp_path, "-w", "churn", "-p", "connections=1000")
    observed = trial["observed"]
    sessions = {side: observed["sides"][side]["events"].get("session", 0) for side in ("client", "server")}
    assert observed["details"]["drain"]["complete"], observed["details"]["drain"]
    assert 0 < sessions["client"] <= 1000 and 0 < sessions["server"] <= 1000
    if observed["lost"] is not None:  # a row per session, or a lost sample or a skipped run counted
        assert sum(sessions.values()) >= 2000 - observed["lost"] - BLIND_CONNECTIONS  # tests/host.py
    assert observed["details"]["rows"] == sum(sessions.values()) + observed["details"]["foreign_rows"]


def test_tcpretrans_sees_the_loss_workloads_retransmits(kernel, tmp_path):
    trial = _trial("bcc-tcpretrans", kernel, tmp_path, "-w", "loss")
    observed = trial["observed"]
    retransmits = observed["sides"]["client"]["events"].get("retransmit", 0)
    segments = trial["ground_truth"]["nstat"]["client"]["TcpRetransSegs"]
    assert 0 < retransmits <= segments  # a line per skb; RetransSegs counts segments (>= skbs with TSO)
    assert observed["details"]["unparsed"] == []
