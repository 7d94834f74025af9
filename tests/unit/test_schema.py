"""run.json's schema (harness/schema.py) and the machine section (harness/machine.py): a malformed
record is refused in one line naming its first bad field, exit status 2; every committed reference
and every record the runner's code paths write validate; `machine` is read from /proc and shown by
`tpbench compare`."""

import contextlib
import copy
import json
import os
from pathlib import Path

import pytest

from harness import machine
from harness.report import load_run
from harness.schema import ESTIMATORS, FLOW_OUTCOMES, PROBES, RecordError, validate_run
from tests.helpers import REPO, tpbench

REFERENCES = sorted((REPO / "results").glob("*/run.json"))
SMALL = REPO / "results" / "vm-6.12-20261203T131126-d49a" / "run.json"  # kprobe, fentry and tracepoint cells
WITH_BASELINE = REPO / "results" / "host-6.18-matrix-20261207T052742-be6f" / "run.json"


def _report(tmp_path: Path, record) -> tuple[int, str]:
    (tmp_path / "run.json").write_text(record if isinstance(record, str) else json.dumps(record))
    done = tpbench("report", str(tmp_path))
    return done.returncode, done.stderr


@pytest.mark.parametrize("record, message", [
    ({"schema_version": 1, "cells": "x"}, 'cells: expected a list, got the string "x"'),
    ({"schema_version": 1, "cells": [{"workload": "churn"}]}, "cells[0].params: missing"),
    ({"schema_version": "1", "cells": []}, 'schema_version: expected a whole number, got the string "1"'),
    ({"schema_version": 7, "cells": []}, "has schema 7, newer than this tpbench (1)"),
    ({"cells": []}, "not a tpbench run record (no schema_version)"),
    ([1, 2], "not a tpbench run record (expected an object, got a list)"),
])
def test_a_malformed_record_exits_2_with_one_line_naming_its_first_bad_field(tmp_path, record, message):
    status, stderr = _report(tmp_path, record)
    assert status == 2, stderr
    assert stderr == f"tpbench: error: {tmp_path / 'run.json'}: {message}\n"  # one line, no traceback


def _reference() -> dict:
    return json.loads(SMALL.read_text())


def _first_ok(run: dict, backend: str = "tracepoint") -> dict:
    return next(t for c in run["cells"] if c["backend"] == backend for t in c["trials"] if t["status"] == "ok")


def _where(run: dict, trial: dict) -> str:
    """`cells[i].trials[j]` of a trial found by identity."""
    return next(f"cells[{i}].trials[{j}]" for i, c in enumerate(run["cells"])
                for j, t in enumerate(c["trials"]) if t is trial)


def _lost_as_text(run):
    trial = _first_ok(run)
    trial["observed"]["lost"] = "3"
    return f'{_where(run, trial)}.observed.lost: expected a number or null, got the string "3"'


def _ok_trial_without_observation(run):
    trial = _first_ok(run)
    del trial["observed"]
    return f'{_where(run, trial)}.observed: missing (a trial with status "ok" needs it)'


def _transition_as_text(run):
    trial = _first_ok(run)
    trial["observed"]["sides"]["client"]["transitions"]["CLOSE->SYN_SENT"] = "many"
    return (f'{_where(run, trial)}.observed.sides.client.transitions["CLOSE->SYN_SENT"]: '
            'expected a number, got the string "many"')


def _cross_checked_without_bpf_stats(run):
    trial = _first_ok(run, "kprobe")
    del trial["observed"]["details"]["bpf_stats"]
    return (f"{_where(run, trial)}.observed.details.bpf_stats: missing (a kprobe, fentry or tracepoint cell "
            "in a run with a kprobe or fentry cell needs it)")


def _params_as_list(run):
    run["cells"][0]["params"]["workload"] = []
    return "cells[0].params.workload: expected an object, got a list"


def _unhashable_parameter(run):
    run["cells"][0]["params"]["workload"]["closer"] = ["server"]
    return "cells[0].params.workload.closer: expected a string, a number, true or false or null, got a list"


def _no_release(run):
    del run["kernel"]["release"]
    return "kernel.release: missing"


def _trials_as_number(run):
    run["config"]["trials"] = 2.5
    return "config.trials: expected a whole number, got the number 2.5"


def _machine_mhz_as_text(run):
    run["machine"] = {"cpu_model": "AMD EPYC", "cpu_mhz": "2445"}
    return 'machine.cpu_mhz: expected a list or null, got the string "2445"'


def _short_toggle_sample(run):
    run["toggle"] = [_toggle_entry()]
    run["toggle"][0]["windows"][1]["end"]["stat"] = [1, 2, 3]
    return "toggle[0].windows[1].end.stat: expected at least 8 items, got 3"


def _toggle_sample_without_an_observer(run):
    run["toggle"] = [_toggle_entry()]
    del run["toggle"][0]["windows"][1]["start"]["tasks"]["tracepoint"]
    return ("toggle[0].windows[1].start.tasks: expected the observers of toggle[0].windows[0].on.tasks "
            "(tracepoint), got none")


def _toggle_entry() -> dict:
    def sample(t):
        return {"t": t, "ops": 100 * t, "cpu_ns": 10**6 * t, "run_ns": None, "stat": [t] * 8, "tasks": {"tracepoint": t}}

    windows = [{"cycle": 0, "arm": arm, "on": sample(3 * i), "start": sample(3 * i + 1), "end": sample(3 * i + 2),
                "slices": [[3 * i + 1.5, 150 * i]], "off": {"events": 10, "lost": 0}}
               for i, arm in enumerate(("none", "tracepoint"))]
    return {"workload": "churn", "arms": [{"label": "none", "backend": "none", "role": "baseline", "level": None},
                                          {"label": "tracepoint", "backend": "tracepoint", "role": "observer",
                                           "level": "state"}],
            "windows": windows, "final": sample(9), "hz": 100, "cpus": 2}


@pytest.mark.parametrize("corrupt", [
    _lost_as_text, _ok_trial_without_observation, _transition_as_text, _cross_checked_without_bpf_stats,
    _params_as_list, _unhashable_parameter, _no_release, _trials_as_number, _machine_mhz_as_text,
    _short_toggle_sample, _toggle_sample_without_an_observer,
])
def test_each_malformed_field_is_named_by_its_path(corrupt):
    run = _reference()
    message = corrupt(run)
    with pytest.raises(RecordError) as raised:
        validate_run(run)
    assert str(raised.value) == message


def test_a_malformed_field_deep_in_a_real_record_fails_the_real_cli_in_one_line(tmp_path):
    run = _reference()
    message = _transition_as_text(run)
    status, stderr = _report(tmp_path, run)
    assert (status, stderr) == (2, f"tpbench: error: {tmp_path / 'run.json'}: {message}\n")


def test_the_synthetic_toggle_entry_itself_validates():
    run = _reference()
    run["toggle"] = [_toggle_entry()]
    validate_run(run)


@pytest.mark.parametrize("path", REFERENCES, ids=lambda p: p.parent.name)
def test_every_committed_reference_validates(path):
    validate_run(json.loads(path.read_text()))
    assert load_run(path.parent)["cells"]


def test_the_schemas_names_are_the_analysis_names():
    from harness.analysis import toggle_stats
    from harness.analysis.crosscheck import PROBE_BACKENDS
    from harness.analysis.flowmatch import OUTCOMES

    assert FLOW_OUTCOMES == OUTCOMES
    assert set(ESTIMATORS) == set(toggle_stats.ESTIMATORS)
    assert set(PROBES) == set(PROBE_BACKENDS)


# ---------------------------------------------------------------- the writer

class _Switch:
    def on(self):
        pass

    def off(self):
        return {"events": 5, "lost": 0, "run_time_ns": 1000}

    def tasks(self):
        return [os.getpid()]

    def close(self):
        return {}


class _Backend:
    """A toggled observer without a kernel: the real measure() loop switches it."""

    def __init__(self, name):
        self.name, self.params = name, ()

    def availability(self, probe, params=None):
        from harness.backends.base import Availability

        return Availability(True, "fake")

    def prepare(self, topology, params):
        return _Switch()


class _Live:
    pids = {"client": [os.getpid()], "server": [os.getpid()]}
    result = {"client": {}, "server": {}}

    def __init__(self, *args):
        self.count = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def operations(self):
        self.count += 1000
        return self.count

    def alive(self):
        return True


def test_a_record_written_by_the_runners_code_paths_validates_with_its_machine(tmp_path, monkeypatch):
    """execute() and the toggled measure() as they run, with what needs root, namespaces or BPF (the
    kernel probe, headers, preflight, cgroup, topology, live traffic, trials) replaced; a real ok
    trial (from a committed reference) and a failed one. finish() validates: it raises otherwise."""
    import harness.runner as runner
    import harness.toggle as toggle
    from harness.kernel import KernelProbe
    from harness.runner import build_cell, execute

    real = _first_ok(json.loads(WITH_BASELINE.read_text()), "tracepoint")
    calls = []

    def fake_trial(cell, run_id):
        calls.append(cell.label)
        if len(calls) == 2:
            raise RuntimeError("the workload's agents stopped")
        return copy.deepcopy(real)

    class Headers:
        def to_dict(self):
            return {"kind": "exact", "package_version": "6.1", "path": "/x", "detail": "fake", "bcc_kernel_source": None}

        def environment(self):
            return {}

    @contextlib.contextmanager
    def fit_host(run_id, measure_anyway, say):
        yield {"warnings": [], "cpu": {"busy_share": 0.0, "steal_share": 0.0, "seconds": 0.5}}

    monkeypatch.setattr(runner, "run_trial", fake_trial)
    monkeypatch.setattr(runner, "require_root", lambda what: None)
    monkeypatch.setattr(runner, "_fit_host", fit_host)
    monkeypatch.setattr(runner, "probe", lambda: KernelProbe(os.uname().release, os.uname().machine, {}))
    monkeypatch.setattr(runner, "find_headers", lambda: Headers())
    monkeypatch.setattr(runner, "run_cgroup", lambda run_id: contextlib.nullcontext(None))
    monkeypatch.setattr(toggle, "Topology", lambda run_id, guard: contextlib.nullcontext())
    monkeypatch.setattr(toggle, "LiveTraffic", _Live)
    group = toggle.Group("churn", {"connections": 10}, settings=toggle.Settings(
        window_s=0.02, settle_s=0.0, warmup_s=0.0, min_cycles=2, max_s=0.0))
    group.arms = [toggle.Arm("none", _Backend("none"), {}, "baseline"), toggle.Arm("none (A/A)", _Backend("none"), {}, "aa"),
                  toggle.Arm("tracepoint", _Backend("tracepoint"), {}, "observer")]
    cells = [build_cell("churn", {"connections": "10"}, "none", {})]
    record = execute(cells, 2, tmp_path, toggle=[group])  # finish("complete") validates
    statuses = [t["status"] for t in record.data["cells"][0]["trials"]]
    assert statuses == ["ok", "failed"] and record.data["toggle"][0]["status"] == "complete"
    assert len(record.data["toggle"][0]["windows"]) == 6  # 2 cycles x 3 arms
    loaded = load_run(record.directory)
    assert set(loaded["machine"]) == set(machine.collect(detect_virt=False))
    assert loaded["machine"]["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()


# ---------------------------------------------------------------- machine

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
stepping\t: 1
microcode\t: 0x1000065
cpu MHz\t\t: 2445.402
flags\t\t: fpu vme de pse hypervisor sse
bugs\t\t: sysret_ss_attrs spectre_v1

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
cpu MHz\t\t: 3100.000
flags\t\t: fpu vme de pse hypervisor sse
bugs\t\t: sysret_ss_attrs spectre_v1
"""


def test_cpuinfo_gives_model_signature_every_cpus_mhz_and_sorted_flags():
    found = machine.parse_cpuinfo(CPUINFO)
    assert found == {"cpu_model": "AMD EPYC", "cpu_vendor": "AuthenticAMD",
                     "cpu_signature": "family 25 model 1 stepping 1", "microcode": "0x1000065",
                     "cpu_mhz": [2445.402, 3100.0], "cpu_flags": "de fpu hypervisor pse sse vme",
                     "cpu_bugs": "spectre_v1 sysret_ss_attrs"}
    arm = machine.parse_cpuinfo("processor\t: 0\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n")
    assert (arm["cpu_model"], arm["cpu_mhz"], arm["cpu_flags"], arm["cpu_bugs"]) == (None, None, "asimd fp", None)
    assert arm["cpu_signature"] == "part 0xd0c variant ? revision ?"


def test_the_machine_section_is_what_proc_says_on_this_host():
    found = machine.collect(detect_virt=False)
    cpuinfo = Path("/proc/cpuinfo").read_text()
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    mhz = [float(line.split(":", 1)[1]) for line in cpuinfo.splitlines() if line.startswith("cpu MHz")]
    mem_kib = int(next(line for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal:")).split()[1])
    assert found["cpu_model"] == (models[0] if models else None)
    assert found["cpu_mhz"] == (mhz or None) and found["cpus"] == os.cpu_count()
    assert found["memory_total_kib"] == mem_kib
    assert found["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert found["hypervisor"]["cpu_flag"] == (" hypervisor " in f" {found['cpu_flags']} ")
    assert found["cpu_flags"].split() == sorted(found["cpu_flags"].split())
    validate_run({**_reference(), "machine": found})


def test_a_missing_proc_gives_nones_not_an_error(tmp_path):
    found = machine.collect(proc=tmp_path, sys=tmp_path, detect_virt=False)
    assert found["cpu_model"] is found["memory_total_kib"] is found["boot_id"] is None
    assert found["hypervisor"] == {"cpu_flag": None, "sys_type": None, "dmi_vendor": None, "dmi_product": None,
                                   "virt": None, "container": None}


def test_hypervisor_text_names_the_best_evidence():
    assert machine.hypervisor_text({"cpu_flag": True, "virt": "kvm", "container": "docker"}) == \
        "kvm, in a docker container"
    assert machine.hypervisor_text({"cpu_flag": True, "virt": None, "dmi_vendor": "QEMU"}) == "QEMU"
    assert machine.hypervisor_text({"cpu_flag": False, "virt": "none", "dmi_vendor": "Dell Inc."}) == \
        "none (bare metal)"
    assert machine.hypervisor_text({"cpu_flag": True}) == "yes (CPU flag)"
    assert machine.hypervisor_text(None) == "not recorded"


def _machine_table(stdout: str) -> dict[str, str]:
    """The terminal's machine block: row name -> its line, and where it sits."""
    lines = stdout.splitlines()
    start = lines.index("machines:")
    assert lines[start - 1] == "" and lines[start - 2].startswith("B: ")  # right after the runs' titles
    return {line[2:].split("  ")[0]: line for line in lines[start + 2:start + 8]}


def test_compare_shows_the_machines_side_by_side(tmp_path):
    a, b = (REPO / "results" / name for name in ("vm-6.1-20261205T002805-11d7", "host-6.18-matrix-20261203T131911-c257"))
    done = tpbench("compare", str(a), str(b), "-o", str(tmp_path))
    assert done.returncode == 0, done.stderr
    table = _machine_table(done.stdout)
    assert list(table) == ["CPU model", "CPUs", "MHz", "hypervisor", "memory", "boot id"]
    # older records: what their `vm` and `host` sections say, the rest not recorded
    assert table["hypervisor"].split()[1:] == ["tpbench", "vm", "guest", "(tcg,", "emulated)", "not", "recorded"]
    assert table["memory"].split()[1:] == ["2G", "(tpbench", "vm", "setting)", "not", "recorded"]
    markdown = (tmp_path / "compare.md").read_text()
    assert ("## Machines\n\n|  | A | B |\n|---|---|---|\n| CPU model | not recorded | not recorded |\n"
            "| CPUs | 2 | 2 |\n| MHz | not recorded | not recorded |\n"
            "| hypervisor | tpbench vm guest (tcg, emulated) | not recorded |\n") in markdown


def test_compare_shows_a_recorded_machine_and_the_same_boot(tmp_path):
    run = _reference()
    run["machine"] = {"cpu_model": "AMD EPYC", "cpus": 2, "cpu_mhz": [2445.4, 3100.0], "memory_total_kib": 24683772,
                      "boot_id": "1e36e424-c22e-4d5d-82fd-3c24cfe6b2aa",
                      "hypervisor": {"cpu_flag": True, "virt": "kvm", "container": "none"}}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps(run))
    done = tpbench("compare", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path))
    assert done.returncode == 0, done.stderr
    table = _machine_table(done.stdout)
    assert table["CPU model"].split() == ["CPU", "model", "AMD", "EPYC", "AMD", "EPYC"]
    assert table["boot id"].endswith("(same boot as A)")
    markdown = (tmp_path / "compare.md").read_text()
    assert "| MHz | 2,445-3,100 | 2,445-3,100 |" in markdown and "| memory | 23.5 GiB | 23.5 GiB |" in markdown
    assert "| hypervisor | kvm | kvm |" in markdown
    assert "| boot id | 1e36e424-c22e-4d5d-82fd-3c24cfe6b2aa | 1e36e424-c22e-4d5d-82fd-3c24cfe6b2aa (same boot as A) |" \
        in markdown
