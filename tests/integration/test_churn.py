import json
from pathlib import Path

import pytest

from harness.analysis.stats import foreign_trial
from tests.helpers import headers_kind, leftovers, tpbench

pytestmark = pytest.mark.root


def test_churn_of_1000_connections_matches_the_kernel_counters_exactly(tmp_path):
    before = leftovers()
    result = tpbench("run", "-b", "none", "-w", "churn", "-p", "connections=1000", "--json", "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    [cell] = summary["cells"]
    assert (cell["workload"], cell["backend"]) == ("churn", "none")
    [trial] = cell["trials"]
    truth = trial["ground_truth"]
    assert truth["generator"]["connections"] == 1000
    assert truth["generator"]["failures"] == {}
    assert truth["nstat"]["client"]["TcpActiveOpens"] == 1000
    assert truth["nstat"]["server"]["TcpPassiveOpens"] == 1000
    assert truth["nstat"]["client"]["TcpPassiveOpens"] == 0
    assert truth["nstat"]["server"]["TcpActiveOpens"] == 0
    # the server closes first: it alone enters TIME_WAIT, once per connection
    assert truth["nstat"]["server"]["TcpExtTW"] == 1000
    assert truth["nstat"]["client"]["TcpExtTW"] == 0
    assert truth["expected"]["client"]["transitions"]["CLOSE->SYN_SENT"] == 1000
    assert trial["operations"] == 1000
    assert trial["operation_rate"] == pytest.approx(1000 / trial["duration_s"], rel=1e-3)
    assert trial["latency"]["count"] == 1000
    assert trial["observed"] == {"events": {}, "transitions": {}, "sides": {}, "lost": 0, "details": {}}
    # the record on disk is the same run, complete
    record = json.loads(Path(summary["run_json"]).read_text())
    assert record["status"] == "complete" and record["schema_version"] == 1
    assert record["cells"][0]["trials"][0]["ground_truth"] == truth
    assert record["headers"]["kind"] == headers_kind()
    assert record["probe"]["release"] == record["kernel"]["release"]
    assert leftovers() == before


def test_a_run_writes_its_analysis_and_pytest_benchmark_json(tmp_path):
    result = tpbench("run", "-b", "none,tracepoint", "-w", "churn", "-p", "connections=2000", "-n", "3",
                     "-q", "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    [run_dir] = list(tmp_path.iterdir())
    analysis = json.loads((run_dir / "analysis.json").read_text())
    [workload] = analysis["workloads"].values()
    assert workload["baseline"] == "churn/none"
    # a round in which a neighbour used more than FOREIGN_TRIAL_LIMIT of the CPUs is left out of
    # the pairing (and counted): on a quiet host all 3 are paired
    record = json.loads((run_dir / "run.json").read_text())
    disturbed = {i for cell in record["cells"] for i, t in enumerate(cell["trials"]) if foreign_trial(t)}
    tracepoint = workload["cells"]["churn/tracepoint"]
    assert tracepoint["excluded_foreign"] == sum(foreign_trial(t) for c in record["cells"] if c["backend"] == "tracepoint"
                                                 for t in c["trials"])
    overhead = tracepoint["overhead"].get("cpu_per_op")
    if not disturbed:
        assert overhead["diff"]["n"] == 3 and overhead["diff"]["low"] <= overhead["diff"]["high"]
    elif overhead is not None:  # paired only in the rounds left: no interval below 3
        assert overhead["diff"]["n"] == 3 - len(disturbed), (overhead, disturbed)
    bench = json.loads((run_dir / "benchmark.json").read_text())
    assert {b["name"] for b in bench["benchmarks"]} == {"churn/none", "churn/tracepoint"}
    assert all(b["stats"]["rounds"] == 3 for b in bench["benchmarks"])
