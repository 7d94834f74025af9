"""The peers (Debian's bcc tools and bpftrace) run as users run them and their output becomes the
common observation: per side, per transition, with the tool's and the kernel's losses. Their churn
trials are the smoke bench's (test_smoke.py: every peer on every workload, beside foreign traffic)."""

import json
import shutil

import pytest

from harness.backends.peers import TOOLS
from tests.helpers import tpbench

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


def test_tcpretrans_sees_the_loss_workloads_retransmits(tmp_path):
    trial = _trial("bcc-tcpretrans", tmp_path, "-w", "loss")
    observed = trial["observed"]
    retransmits = observed["sides"]["client"]["events"].get("retransmit", 0)
    segments = trial["ground_truth"]["nstat"]["client"]["TcpRetransSegs"]
    assert 0 < retransmits <= segments  # a line per skb; RetransSegs counts segments (>= skbs with TSO)
    assert observed["details"]["unparsed"] == []
