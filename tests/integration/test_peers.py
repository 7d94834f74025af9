"""The peers (Debian's bcc tools and bpftrace) run as users run them and their output becomes the
common observation: per side, per transition, with the tool's and the kernel's losses. Every peer
on every workload, beside foreign traffic, is the smoke bench's (test_smoke.py); their loss
accounting is held here, on a host with no other TCP traffic."""

import json
import shutil

import pytest

from harness.backends.peers import TOOLS
from harness.backends.bpf_build import kernel_version
from tests.helpers import tpbench
from tests.host import BLIND_CONNECTIONS

pytestmark = pytest.mark.root

# the peers and the programs users run for them, as Debian's bpfcc-tools and bpftrace install them
PROGRAMS = {"bcc-tcpstates": "tcpstates-bpfcc", "bcc-tcplife": "tcplife-bpfcc", "bcc-tcpretrans": "tcpretrans-bpfcc",
            "bpftrace": "bpftrace"}


def _trial(backend: str, tmp_path, *args: str) -> dict:
    # skipped only where the tool itself is not installed (an independent look at PATH): where it
    # is, a backend that refuses it fails here rather than skipping with its own verdict
    if shutil.which(PROGRAMS[backend]) is None:
        pytest.skip(f"{PROGRAMS[backend]} is not installed (make setup installs it)")
    result = tpbench("run", "-b", backend, *args, "--json", "-q", "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    [trial] = json.loads(result.stdout)["cells"][0]["trials"]
    assert trial["status"] == "ok", trial.get("error")
    return trial


def test_every_peer_is_a_listed_backend():
    assert set(TOOLS) == set(PROGRAMS)
    assert {name: tool.argv[0] for name, tool in TOOLS.items()} == PROGRAMS  # run as users run them
    listed = json.loads(tpbench("list", "--json").stdout)["backends"]
    assert set(PROGRAMS) <= set(listed)


@pytest.mark.parametrize("backend", ["bcc-tcpstates", "bpftrace"])
def test_state_peers_report_every_churn_transition_or_its_loss(backend, tmp_path):
    """On a host with no other TCP traffic (the smoke bench has some: there a whole-host tool's
    loss count includes foreign events), the tool's counted loss covers exactly what it missed."""
    trial = _trial(backend, tmp_path, "-w", "churn", "-p", "connections=1000")
    observed, expected = trial["observed"], trial["ground_truth"]["expected"]
    details = observed["details"]
    assert details["scope"] == "whole host" and details["tool_cpu_s"]["total"] > 0
    assert details["unparsed"] == []
    total_expected = sum(n for side in expected.values() for n in side["transitions"].values())
    total_seen = sum(observed["transitions"].values())
    assert total_seen > 0
    # no count is safe from loss, not even the client's opens in process context: a perf ring that
    # is full when the tool falls behind drops whatever comes, and the tool then owes a loss count
    if backend == "bcc-tcpstates":  # drained by a sentinel per CPU, which also makes each ring write its count
        assert details["drain"]["complete"], details["drain"]
    if kernel_version() >= (6, 7):
        # the loss is held to the declaration, not to its own sum: it covers what the tool printed
        # as lost and what the kernel counted for the tool's programs (read from their fds: at
        # least one program was found), and what the workload declared but no one saw
        assert details["programs"]["programs"] >= 1, details["programs"]
        assert observed["lost"] >= max(details["lost_reported_by_tool"], details["programs"]["recursion_misses"])
        missing = total_expected - total_seen
        if backend == "bpftrace":  # counts in a kernel map: a run either counts or is a counted miss
            # (or, on these hosts, never happens: tests/host.py)
            assert 0 <= missing - observed["lost"] <= 3 * BLIND_CONNECTIONS, (missing, observed["lost"])
        else:  # a printed line per event: what is neither printed nor counted would be silent loss
            assert 0 <= missing - observed["lost"] <= 0.01 * total_expected, (missing, observed["lost"])
    else:
        assert observed["lost"] is None and "before 6.7" in details["loss_method"]


def test_tcpretrans_sees_the_loss_workloads_retransmits(tmp_path):
    trial = _trial("bcc-tcpretrans", tmp_path, "-w", "loss")
    observed = trial["observed"]
    retransmits = observed["sides"]["client"]["events"].get("retransmit", 0)
    segments = trial["ground_truth"]["nstat"]["client"]["TcpRetransSegs"]
    assert 0 < retransmits <= segments  # a line per skb; RetransSegs counts segments (>= skbs with TSO)
    assert observed["details"]["unparsed"] == []
