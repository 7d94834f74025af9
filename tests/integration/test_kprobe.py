"""The kprobe and fentry backends on the host kernel: the capability probe's verdict, and the run
refusing them with that reason where the kernel cannot run them (this project's 6.18 host has no
CONFIG_KPROBES and refuses fentry). Where a host can run them, they run for real on churn.

Each verdict is held to an independent look at the kernel, never to the probe's own answer: its
build config (/proc/config.gz) and kprobe PMU for kprobes, /proc/kallsyms for the functions, and
another loader (bpftrace, through libbpf) attaching an fentry program for fentry."""

import gzip
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.backends import get_backend
from harness.backends.kprobe import HOOKS
from harness.kernel import probe
from harness.system import tracefs_mounted
from tests.helpers import tpbench

pytestmark = pytest.mark.root

KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe")


@pytest.fixture(scope="module")
def kernel():
    return probe()


def _config() -> dict[str, str] | None:
    """The running kernel's build config, read here: CONFIG_* -> value ("is not set" lines absent)."""
    for path in (Path("/proc/config.gz"), Path(f"/boot/config-{os.uname().release}")):
        try:
            raw = path.read_bytes()
        except OSError:
            continue
        text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode(errors="replace")
        return dict(re.findall(r"^(CONFIG_\w+)=(.*)$", text, re.MULTILINE))
    return None


def _kernel_has_kprobes() -> bool:
    """Built with kprobes (the config), or, without a config to read, a kprobe PMU registered."""
    config = _config()
    return config.get("CONFIG_KPROBES") == "y" if config is not None else KPROBE_PMU.exists()


def _text_symbols() -> set[str]:
    """Function names in /proc/kallsyms (text symbols), read here."""
    return {parts[2] for parts in (line.split() for line in open("/proc/kallsyms"))
            if len(parts) >= 3 and parts[1] in "TtWw"}


@pytest.fixture(scope="module")
def fentry_attaches() -> tuple[bool | None, str]:
    """Whether another loader gets an fentry program onto tcp_set_state here: bpftrace's kfunc probe
    (libbpf), attached and at once detached (BEGIN runs after every probe is attached); None
    without bpftrace."""
    if shutil.which("bpftrace") is None:
        return None, "bpftrace is not installed (make setup installs it): no independent fentry loader"
    with tracefs_mounted():  # as a user's system has it (bpftrace looks up functions there too)
        done = subprocess.run(["bpftrace", "-e", "kfunc:tcp_set_state { } BEGIN { exit(); }"],
                              capture_output=True, text=True, timeout=180)
    return done.returncode == 0, (done.stderr.strip().splitlines() or ["no output"])[-1]


def test_the_probe_says_why_kprobes_are_unavailable_or_resolves_every_hook(kernel):
    availability = get_backend("kprobe").availability(kernel)
    symbols = _text_symbols()
    if not _kernel_has_kprobes():
        assert not availability.available, availability.reason
        assert "no kprobe PMU" in availability.reason
        if _config() is not None:  # this host: "# CONFIG_KPROBES is not set"
            assert "CONFIG_KPROBES is not set" in availability.reason, availability.reason
    else:
        assert availability.available, availability.reason
        # a hook is resolved exactly when one of its functions is in /proc/kallsyms as read here
        unresolved = {name for name, hook in HOOKS.items() if not set(hook.candidates) & symbols}
        assert {entry.split(":")[0] for entry in availability.missing_hooks} == unresolved, availability.reason
        assert availability.reason.startswith(f"{len(HOOKS) - len(unresolved)} of {len(HOOKS)} hooks resolved")
    # per function, whatever the kprobe verdict: the probe agrees with /proc/kallsyms
    assert "tcp_set_state" in symbols
    assert kernel.available("function:tcp_set_state"), kernel["function:tcp_set_state"].reason


def test_the_probe_says_why_fentry_is_unavailable(kernel, fentry_attaches):
    attaches, bpftrace_says = fentry_attaches
    if attaches is None:
        pytest.skip(bpftrace_says)
    availability = get_backend("fentry").availability(kernel)
    # the probe's verdict is bpftrace's: available where another loader attaches fentry, not elsewhere
    assert availability.available == attaches, (availability.reason, bpftrace_says)
    if not availability.available:
        assert "fentry" in availability.reason


def test_tpbench_kernel_explains_kprobe_and_fentry():
    result = tpbench("kernel", "--json", check=True)
    caps = json.loads(result.stdout)["capabilities"]
    for name in ("kprobes", "fentry"):
        assert caps[name]["reason"]
    assert caps["kprobes"]["available"] == _kernel_has_kprobes(), caps["kprobes"]["reason"]
    # against an independent read of /proc/kallsyms: the function itself, only its compiler clones
    # (tcp_set_state.part.0, .isra.0 ...), or neither
    names = {line.split()[2] for line in open("/proc/kallsyms") if line.split()[2].split(".")[0] == "tcp_set_state"}
    expected = "present" if "tcp_set_state" in names else "clone" if names else "absent"
    assert caps["function:tcp_set_state"]["data"]["status"] == expected


def test_run_refuses_kprobe_with_the_kernels_reason_or_runs_it(tmp_path):
    result = tpbench("run", "-b", "kprobe", "-w", "churn", "-p", "connections=200,mode=aggregate",
                     "--json", "-o", str(tmp_path))
    if not _kernel_has_kprobes():
        assert result.returncode == 2
        # one line says it (a busy host adds the preflight's "WARNING (measuring anyway)" line before it)
        lines = result.stderr.strip().splitlines()
        [error] = [line for line in lines if not line.startswith("WARNING (measuring anyway)")]
        assert error == lines[-1] and "backend unavailable on this kernel (kprobe:" in error, result.stderr
        return
    assert result.returncode == 0, result.stderr
    [cell] = json.loads(result.stdout)["cells"]
    [trial] = cell["trials"]
    expected = trial["ground_truth"]["expected"]
    for side in ("client", "server"):
        assert trial["observed"]["sides"][side]["transitions"] == expected[side]["transitions"]
    assert trial["observed"]["details"]["fidelity"]["errors"] == []


def test_record_unavailable_runs_what_this_kernel_can_and_records_the_rest_with_its_reason(tmp_path,
                                                                                          fentry_attaches):
    """One command line for a kernel matrix: the same backends on every kernel, each cell either
    measured or recorded as unavailable with the probe's reason (never silently dropped)."""
    result = tpbench("run", "-b", "kprobe,fentry,tracepoint", "--record-unavailable", "-w", "churn",
                     "-p", "connections=50,mode=aggregate", "--json", "-q", "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    cells = {c["backend"]: c for c in json.loads(result.stdout)["cells"]}
    assert set(cells) == {"kprobe", "fentry", "tracepoint"}
    # what each kernel can run, from the independent looks above; the tracepoints every kernel here has
    can_run = {"kprobe": _kernel_has_kprobes(), "fentry": fentry_attaches[0], "tracepoint": True}
    why = {"kprobe": "no kprobe PMU", "fentry": "fentry"}
    for name, cell in cells.items():
        if can_run[name] is not None:
            assert cell["available"] == can_run[name], (name, cell.get("availability"), fentry_attaches[1])
        if cell["available"]:
            assert [t["status"] for t in cell["trials"]] == ["ok"], name
        else:
            assert why[name] in cell["availability"] and cell["trials"] == [], (name, cell["availability"])
