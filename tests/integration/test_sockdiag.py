"""The sockdiag backend (netlink polling, what ss does): what it misses, measured against the
kernel's own open counters, falls as the poll interval shrinks."""

import json

import pytest

from tests.helpers import tpbench

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
    # whatever it does see is a real transition of this workload's sockets: a poll may skip any
    # number of states, so any pair along a declared path (its transitive closure) is allowed
    allowed = set()
    for side in ("client", "server"):
        reach: dict[str, set[str]] = {}
        for key in fast["ground_truth"]["expected"][side]["transitions"]:
            a, b = key.split("->")
            if b == "CLOSE":  # a socket's end; polls never see it, and it would close the cycle
                continue
            reach.setdefault(a, set()).add(b)
            reach.setdefault(b, set())
        for _ in reach:  # len(reach) rounds reach the fixed point
            for a in reach:
                reach[a] |= set().union(*(reach[b] for b in reach[a]))
        # the listener is not its children: it is seen only handing out SYN_RECVs
        allowed |= {f"{a}->{b}" for a, bs in reach.items() if a not in ("CLOSE", "LISTEN") for b in bs}
    allowed.add("LISTEN->SYN_RECV")
    assert "SYN_SENT->LAST_ACK" in allowed and "FIN_WAIT1->ESTABLISHED" not in allowed
    assert set(fast["observed"]["transitions"]) <= allowed
