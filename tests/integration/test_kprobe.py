"""The kprobe and fentry backends on the host kernel: the capability probe's verdict, and the run
refusing them with that reason where the kernel cannot run them (this project's 6.18 host has no
CONFIG_KPROBES and refuses fentry). Where a host can run them, they run for real on churn."""

import json

import pytest

from harness.backends import get_backend
from harness.kernel import kernel_config, probe
from tests.helpers import tpbench

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def kernel():
    return probe()


def test_the_probe_says_why_kprobes_are_unavailable_or_resolves_every_hook(kernel):
    availability = get_backend("kprobe").availability(kernel)
    if not kernel.available("kprobes"):
        assert not availability.available
        if (kernel_config() or {}).get("CONFIG_KPROBES") == "n":
            assert "CONFIG_KPROBES is not set" in availability.reason
        assert "no kprobe PMU" in availability.reason
    else:
        assert availability.available, availability.reason
    # per function, present/absent/clone from /proc/kallsyms, whatever the kprobe verdict
    assert kernel.available("function:tcp_set_state"), kernel["function:tcp_set_state"].reason


def test_the_probe_says_why_fentry_is_unavailable(kernel):
    availability = get_backend("fentry").availability(kernel)
    assert availability.available == kernel.available("fentry")
    if not availability.available:
        assert "fentry" in availability.reason


def test_tpbench_kernel_explains_kprobe_and_fentry():
    result = tpbench("kernel", "--json", check=True)
    caps = json.loads(result.stdout)["capabilities"]
    for name in ("kprobes", "fentry"):
        assert caps[name]["reason"]
    # against an independent read of /proc/kallsyms: the function itself, only its compiler clones
    # (tcp_set_state.part.0, .isra.0 ...), or neither
    names = {line.split()[2] for line in open("/proc/kallsyms") if line.split()[2].split(".")[0] == "tcp_set_state"}
    expected = "present" if "tcp_set_state" in names else "clone" if names else "absent"
    assert caps["function:tcp_set_state"]["data"]["status"] == expected


def test_run_refuses_kprobe_with_the_kernels_reason_or_runs_it(kernel, tmp_path):
    result = tpbench("run", "-b", "kprobe", "-w", "churn", "-p", "connections=200,mode=aggregate",
                     "--json", "-o", str(tmp_path))
    if not kernel.available("kprobes"):
        assert result.returncode == 2
        assert "backend unavailable on this kernel (kprobe:" in result.stderr
        assert "kprobe" in result.stderr and len(result.stderr.strip().splitlines()) == 1
        return
    assert result.returncode == 0, result.stderr
    [cell] = json.loads(result.stdout)["cells"]
    [trial] = cell["trials"]
    expected = trial["ground_truth"]["expected"]
    for side in ("client", "server"):
        assert trial["observed"]["sides"][side]["transitions"] == expected[side]["transitions"]
    assert trial["observed"]["details"]["fidelity"]["errors"] == []


def test_record_unavailable_runs_what_this_kernel_can_and_records_the_rest_with_its_reason(kernel, tmp_path):
    """One command line for a kernel matrix: the same backends on every kernel, each cell either
    measured or recorded as unavailable with the probe's reason (never silently dropped)."""
    result = tpbench("run", "-b", "kprobe,fentry,tracepoint", "--record-unavailable", "-w", "churn",
                     "-p", "connections=50,mode=aggregate", "--json", "-q", "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    cells = {c["backend"]: c for c in json.loads(result.stdout)["cells"]}
    assert set(cells) == {"kprobe", "fentry", "tracepoint"}
    for name, cell in cells.items():
        found = get_backend(name).availability(kernel, cell["params"]["backend"])
        assert cell["available"] == found.available, (name, cell["availability"])
        if found.available:
            assert [t["status"] for t in cell["trials"]] == ["ok"], name
        else:
            assert cell["availability"] == found.reason and cell["trials"] == [], name
