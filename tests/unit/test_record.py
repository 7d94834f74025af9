import json

from harness.record import RunRecord, new_run_id, write_json_atomic
from harness.runner import interleaved


def test_atomic_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "run.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"a": 2, "b": [1, 2]})
    assert json.loads(target.read_text()) == {"a": 2, "b": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_record_is_versioned_and_marks_its_end(tmp_path):
    record = RunRecord(tmp_path, "r1", {"kernel": {"release": "x"}})
    cell = record.add_cell({"workload": "churn", "backend": "none"})
    cell["trials"].append({"status": "ok"})
    record.save()
    saved = json.loads(record.path.read_text())
    assert saved["schema_version"] == 1 and saved["status"] == "running"
    assert saved["cells"][0]["trials"] == [{"status": "ok"}]
    record.finish("interrupted", "SIGTERM")
    saved = json.loads(record.path.read_text())
    assert saved["status"] == "interrupted" and saved["finished_at"] and saved["error"] == "SIGTERM"


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
        return {"status": "ok", "operation_rate": cell.workload_params["rate"], "duration_s": 1.0}

    monkeypatch.setattr(runner, "run_trial", fake_trial)
    monkeypatch.setattr(runner, "require_root", lambda what: None)
    monkeypatch.setattr(runner, "run_lock", lambda run_id: __import__("contextlib").nullcontext())
    monkeypatch.setattr(runner, "tracefs_mounted", lambda: __import__("contextlib").nullcontext())
    record = execute(cells, 2, tmp_path)
    rates = [[t["operation_rate"] for t in cell["trials"]] for cell in record.data["cells"]]
    assert rates == [[100.0, 100.0], [200.0, 200.0]]
