"""The sockdiag backend (netlink polling, what ss does): what it misses, measured against the
kernel's own open counters, falls as the poll interval shrinks."""

import json

import pytest

from tests.conftest import tpbench

pytestmark = pytest.mark.root

# Paced so the run lasts ~2 s whatever the interval; churn connections live ~0.1 ms, so most are
# invisible to any poll, but a 1 ms poll sees many more than a 100 ms one.
PACED_CHURN = "connections=1000,rate=500"


def _trial(interval_ms: str, tmp_path) -> dict:
    result = tpbench("run", "-b", "sockdiag", "-w", "churn", "-p", f"{PACED_CHURN},interval_ms={interval_ms}",
                     "--json", "-q", "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    [cell] = json.loads(result.stdout)["cells"]
    [trial] = cell["trials"]
    assert trial["status"] == "ok", trial.get("traceback")
    return trial


def test_misses_fall_as_the_poll_interval_shrinks(tmp_path):
    slow, fast = _trial("100", tmp_path), _trial("1", tmp_path)
    for trial, interval in ((slow, 100.0), (fast, 1.0)):
        details = trial["observed"]["details"]
        assert details["interval_ms"] == interval
        sides = details["sides"]
        # the kernel's counters are the denominator: every connection is either seen or missed
        assert sides["client"]["connections"]["opened"] == trial["ground_truth"]["nstat"]["client"]["TcpActiveOpens"]
        assert sides["server"]["connections"]["opened"] == trial["ground_truth"]["nstat"]["server"]["TcpPassiveOpens"]
        assert trial["observed"]["lost"] == sum(s["connections"]["missed"] for s in sides.values())
        assert sides["server"]["listeners_seen"] == 1
        assert all(s["polls"] > 0 for s in sides.values())
    assert fast["observed"]["lost"] < slow["observed"]["lost"]
    assert fast["observed"]["details"]["sides"]["server"]["polls"] > 5 * slow["observed"]["details"]["sides"]["server"]["polls"]
    # whatever it does see is a real transition of this workload's sockets
    allowed = {"LISTEN->SYN_RECV", "SYN_RECV->ESTABLISHED", "SYN_SENT->ESTABLISHED", "ESTABLISHED->FIN_WAIT1",
               "ESTABLISHED->FIN_WAIT2", "FIN_WAIT1->FIN_WAIT2", "ESTABLISHED->CLOSE_WAIT", "CLOSE_WAIT->LAST_ACK",
               "ESTABLISHED->LAST_ACK", "SYN_RECV->FIN_WAIT1", "SYN_RECV->FIN_WAIT2", "SYN_SENT->CLOSE_WAIT"}
    assert set(fast["observed"]["transitions"]) <= allowed
