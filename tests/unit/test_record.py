import json

import pytest

from harness.record import InvalidRecord, RunRecord, new_run_id, write_json_atomic
from harness.runner import interleaved


def test_atomic_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "run.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"a": 2, "b": [1, 2]})
    assert json.loads(target.read_text()) == {"a": 2, "b": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


META = {"kernel": {"release": "x", "machine": "x86_64"}, "host": {"cpus": 2, "python": "3.11"},
        "headers": {"kind": "exact"}, "config": {"trials": 1}}
CELL = {"label": "churn/none", "workload": "churn", "backend": "none",
        "params": {"workload": {"connections": 10}, "backend": {}}}


def ok_trial(rate: float = 100.0) -> dict:
    """What run_trial returns, in the few fields the analysis requires of an ok trial."""
    return {"status": "ok", "operations": 100, "duration_s": 1.0, "operation_rate": rate,
            "cpu_seconds": {"busy": 0.1, "softirq": 0.01},
            "observed": {"events": {}, "transitions": {}, "sides": {}, "lost": 0, "details": {}}}


def test_record_is_versioned_and_marks_its_end(tmp_path):
    record = RunRecord(tmp_path, "r1", META)
    cell = record.add_cell(CELL)
    cell["trials"].append({**ok_trial(), "index": 0})
    record.save()
    saved = json.loads(record.path.read_text())
    assert saved["schema_version"] == 1 and saved["status"] == "running"
    assert saved["cells"][0]["trials"] == [{**ok_trial(), "index": 0}]
    record.finish("interrupted", "SIGTERM")
    saved = json.loads(record.path.read_text())
    assert saved["status"] == "interrupted" and saved["finished_at"] and saved["error"] == "SIGTERM"


def test_a_record_its_readers_would_refuse_is_saved_then_raised_as_a_bug(tmp_path):
    record = RunRecord(tmp_path, "r1", META)
    record.add_cell(CELL)["trials"].append({"status": "ok", "index": 0})  # no measurement in an ok trial
    with pytest.raises(InvalidRecord, match=r'cells\[0\]\.trials\[0\]\.operations: missing \(a trial with status "ok"'):
        record.finish("complete")
    assert json.loads(record.path.read_text())["status"] == "complete"  # saved all the same


def test_run_ids_sort_by_time_and_fit_namespace_names():
    run_id = new_run_id()
    assert len(run_id) == 20 and run_id[8] == "T"


def test_trials_rotate_across_cells():
    order = [(cell, t) for cell, t in interleaved(["base", "A", "B"], 3)]
    assert [c for c, _ in order] == ["base", "A", "B", "A", "B", "base", "B", "base", "A"]
    assert [t for _, t in order] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_cells_differing_only_in_workload_parameters_keep_their_own_trials(tmp_path, monkeypatch):
    """A sweep measures the same backend at several workload settings: same label, separate cells."""
    import harness.runner as runner
    from harness.runner import build_cell, execute

    cells = [build_cell("churn", {"rate": rate}, "none", {}) for rate in ("100", "200")]
    assert cells[0].label == cells[1].label
    seen = []

    def fake_trial(cell, run_id):
        seen.append(cell.workload_params["rate"])
        return ok_trial(cell.workload_params["rate"])

    monkeypatch.setattr(runner, "run_trial", fake_trial)
    monkeypatch.setattr(runner, "require_root", lambda what: None)
    monkeypatch.setattr(runner, "run_lock", lambda run_id: __import__("contextlib").nullcontext())
    monkeypatch.setattr(runner, "tracefs_mounted", lambda: __import__("contextlib").nullcontext())
    record = execute(cells, 2, tmp_path, measure_anyway=True)  # about the cells, not the host: no preflight refusal
    rates = [[t["operation_rate"] for t in cell["trials"]] for cell in record.data["cells"]]
    assert rates == [[100.0, 100.0], [200.0, 200.0]]
