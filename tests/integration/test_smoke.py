"""`tpbench bench --profile smoke`, once for the module: the default suite's whole path (toggled
churn, then a fidelity trial of every backend on churn, rr, stream and resets) at the smallest
sizes, with unrelated TCP traffic churning on the host's loopback throughout. `bench` exits 0
whatever its trials did (a failed trial is a result), so each test reads the record: this is the
only place tracefs, sockdiag and the peers run on rr, stream and resets, and where every observer
is shown to count only its own trial's traffic."""

import json

import pytest

from harness.backends import BACKENDS, get_backend
from harness.kernel import probe
from harness.suite import FLOORS, SMOKE_WORKLOADS
from tests.helpers import foreign_loopback_churn, tpbench
from tests.host import BLIND_CONNECTIONS

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """(stdout, run folder, run.json) of one smoke bench beside foreign loopback churn."""
    out = tmp_path_factory.mktemp("smoke")
    # a few hundred foreign connections a second: in every trial's window, and no more (the peers
    # watch the whole host and print every foreign row before they drop it: a free-running loop
    # cost them seconds per trial)
    with foreign_loopback_churn(600, pause_s=0.002):
        result = tpbench("bench", "--profile", "smoke", "-q", "-o", str(out), timeout=600)
    assert result.returncode == 0, result.stderr
    [run] = list(out.iterdir())
    return result.stdout, run, json.loads((run / "run.json").read_text())


def _cells(record: dict) -> dict:
    return {(c["workload"], c["backend"]): c for c in record["cells"]}


def _churn_trial(smoke, backend: str) -> dict:
    [trial] = _cells(smoke[2])["churn", backend]["trials"]
    return trial


def test_the_toggled_headline_comes_first_and_the_answer_is_printed(smoke):
    stdout, run, record = smoke
    assert "do tracepoints beat libpcap here?" in stdout and "A/A control" in stdout
    assert record["status"] == "complete" and record["profile"] == "smoke"
    [toggled] = record["toggle"]
    assert toggled["workload"] == "churn" and toggled["status"] == "complete" and toggled["cycles"] >= 3
    [headline] = json.loads((run / "analysis.json").read_text())["headline"]
    assert headline["level"] == "state" and headline["consumer"] == "c" and headline["method"] == "toggle"
    assert (run / "report.md").exists() and (run / "benchmark.json").exists()


def test_every_backend_runs_on_every_workload_or_says_why_not(smoke):
    kernel = probe()
    cells = _cells(smoke[2])
    backends = [name for name in BACKENDS if name not in FLOORS]
    assert set(cells) == {(w, b) for w, _ in SMOKE_WORKLOADS for b in backends}
    for (workload, backend), cell in sorted(cells.items()):
        availability = get_backend(backend).availability(kernel)
        assert cell["available"] == availability.available, (workload, backend, cell.get("availability"))
        if not cell["available"]:
            assert cell["availability"] and cell["trials"] == [], (workload, backend)
            continue
        [trial] = cell["trials"]
        assert trial["status"] == "ok", (workload, backend, trial.get("error") or trial.get("traceback"))
    # what every kernel here runs: the seed's backends, ftrace, sock_diag
    assert all(cells[w, b]["available"] for w, _ in SMOKE_WORKLOADS
               for b in ("none", "tracepoint", "pcap", "tracefs", "sockdiag"))


def test_no_observer_counts_the_hosts_other_traffic(smoke):
    """No side but the trial's two hosts; on churn, whose declaration is exact per transition for
    every way of seeing, nothing seen more often than declared (the foreign churn would add
    thousands). The peers see the whole host and must keep only the trial's addresses."""
    for (workload, backend), cell in sorted(_cells(smoke[2]).items()):
        for trial in cell["trials"]:
            observed, expected = trial["observed"], trial["ground_truth"]["expected"]
            assert set(observed["sides"]) <= {"client", "server"}, (workload, backend)
            if workload != "churn":
                continue
            for side, seen in observed["sides"].items():
                for transition, count in seen.get("transitions", {}).items():
                    assert count <= expected[side]["transitions"].get(transition, 0), (backend, side, transition)
                for kind in ("state_change", "sock_destroy"):
                    assert seen.get("events", {}).get(kind, 0) <= expected[side]["events"].get(kind, 0), \
                        (backend, side, kind)


def test_tcplife_prints_one_line_per_session(smoke):
    trial = _churn_trial(smoke, "bcc-tcplife")
    observed, nstat = trial["observed"], trial["ground_truth"]["nstat"]
    connections = trial["ground_truth"]["generator"]["connections"]
    assert connections == int(dict(SMOKE_WORKLOADS)["churn"]["connections"])
    sessions = {side: observed["sides"][side]["events"].get("session", 0) for side in ("client", "server")}
    assert observed["details"]["drain"]["complete"], observed["details"]["drain"]
    # never more sessions than the kernel opened on that side (its own counters), nor than made
    assert 0 < sessions["client"] <= nstat["client"]["TcpActiveOpens"] == connections
    assert 0 < sessions["server"] <= nstat["server"]["TcpPassiveOpens"] == connections
    if observed["lost"] is not None:  # a row per session, or a lost sample or a skipped run counted
        assert sum(sessions.values()) >= 2 * connections - observed["lost"] - BLIND_CONNECTIONS  # tests/host.py
    # every line tcplife printed is a session row (a line no rule reads would be kept here), and the
    # sentinel sessions that drained it (127.0.0.1, no topology host's) are among the foreign rows
    assert observed["details"]["unparsed"] == []
    assert observed["details"]["foreign_rows"] >= observed["details"]["drain"]["sentinel_samples"]["printed"] > 0
