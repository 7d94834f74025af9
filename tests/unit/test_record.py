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
