"""tpbench vm for real: the kprobe backend on a kernel that has kprobes (Debian's 6.1), in a
virtme-ng VM on this machine, against the tracepoint backend on the same kernel and the
workload's declaration. Emulated here (KVM guests hang): ~45 s boot, ~2.5 min per bcc compile,
so one VM, one trial per backend, aggregate mode (the counts are the point, not the cost)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import tpbench

pytestmark = [pytest.mark.root, pytest.mark.vm]

KERNELS = sorted(Path("/boot").glob("vmlinuz-6.1.*-amd64"))
needs_kernel = pytest.mark.skipif(not KERNELS, reason="no /boot/vmlinuz-6.1.*-amd64 (make setup installs "
                                  "linux-image-amd64)")
# Debian's two kernels on either side of 6.7, where trace_call_bpf() began counting its misses
SERIES = {"6.1": KERNELS, "6.12": sorted(Path("/boot").glob("vmlinuz-6.12.*-amd64"))}
# hook -> the function its kprobe is on, on both of Debian's kernels (no clone, nothing inlined)
DEBIAN_FUNCTIONS = {"state": "tcp_set_state", "state_other": "inet_sk_set_state", "listen": "inet_csk_listen_start",
                    "retransmit": "__tcp_retransmit_skb", "synack": "tcp_rtx_synack", "send_reset": "tcp_v4_send_reset",
                    "active_reset": "tcp_send_active_reset", "receive_reset": "tcp_reset",
                    "destroy": "tcp_v4_destroy_sock", "probe": "tcp_rcv_established"}


def _our_qemus() -> list[str]:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in ps if line.startswith("/usr/bin/qemu-system") and "tpbench-" in line]


@pytest.mark.parametrize("series", sorted(SERIES))
def test_kprobe_in_a_vm_sees_exactly_the_transitions_the_tracepoint_sees_on_churn(tmp_path, series):
    images = SERIES[series]
    if not images:
        pytest.skip(f"no /boot/vmlinuz-{series}.*-amd64 (make setup installs it)")
    # concurrency 2 (churn's default until 2026-12-03): with 4 workers the kprobe trial's
    # witnesses once saw 2 state changes and a destroy the kprobes did not, skipped silently
    # (6.1 counts no recursion misses; issue 15 is about that), which this field-by-field check
    # of the two paths cannot tell from a missed code path
    connections = 200
    result = tpbench("vm", "--kernel", str(images[-1]), "--timeout", "780", "-o", str(tmp_path), "--",
                     "run", "-b", "kprobe,tracepoint", "-w", "churn",
                     "-p", f"connections={connections},concurrency=2,mode=aggregate", "--json", timeout=840)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    release = images[-1].name.removeprefix("vmlinuz-")
    assert summary["kernel"] == summary["vm"]["release"] == release  # the guest's own uname
    assert isinstance(summary["vm"]["emulated"], bool)
    record = json.loads(Path(summary["run_json"]).read_text())
    assert record["vm"]["release"] == release and Path(summary["run_json"]).parent.name.endswith(f"-vm-{release}")
    if record["vm"]["emulated"]:
        assert "emulated" in record["vm"]["timings"]
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):  # looked at here: without KVM a guest can only be emulated
        assert record["vm"]["emulated"] is True, record["vm"]
    assert record["vm"]["boot_attempts"] in (1, 2)  # a boot that never started is tried once more
    cells = {cell["backend"]: cell for cell in summary["cells"]}
    trials = {}
    for backend in ("kprobe", "tracepoint"):
        [trial] = cells[backend]["trials"]
        assert trial["status"] == "ok", trial.get("traceback")
        assert trial["emulated"] == record["vm"]["emulated"]
        trials[backend] = trial
    shortfall = {}
    for backend, trial in trials.items():
        observed, expected = trial["observed"], trial["ground_truth"]["expected"]
        assert trial["ground_truth"]["generator"]["connections"] == connections
        details = observed["details"]
        if backend == "kprobe" and series == "6.1":
            # 6.1 cannot count the kprobe runs it skips (trace_call_bpf, from 6.7): no loss count
            # is claimed, and the record says why
            assert observed["lost"] is None and details["lost_recursion"] is None
            assert details["loss_method"].startswith("unknown: this kernel"), details["loss_method"]
        elif backend == "kprobe":
            # 6.7+: every skip is counted, the kprobe layer's (nmissed) and trace_call_bpf's: held
            # below to the declaration (every transition missing is in the count), and here to the
            # kprobe layer's own count, which the loss must include
            assert observed["lost"] >= sum(details["kprobe_missed"].values()), details
        else:
            # the default flavour, raw_tp, runs through __bpf_trace_run, which counts (6.0+)
            assert details["flavour"] == "raw_tp"
        # 6.1 does not count the events trace_call_bpf skips while another BPF program runs on the
        # CPU (bpf_prog_active; counted from 6.7): a softirq arriving during a program run loses
        # its events silently, for every kprobe and tracepoint program alike. Under emulation a
        # run takes ~10-20 us, so this happened in 1 of 2 measured trials (3 events of one socket).
        # So: never more than declared, and any shortfall tiny.
        missing = 0
        for side in ("client", "server"):
            seen = observed["sides"][side]["transitions"]
            assert set(seen) == set(expected[side]["transitions"]), (backend, side)
            for name, count in expected[side]["transitions"].items():
                assert seen[name] <= count, (backend, side, name)
                missing += count - seen[name]
        shortfall[backend] = missing
        assert missing <= 0.005 * 10 * connections, (backend, missing)
        if observed["lost"] is not None:  # a kernel that counts every skip: nothing missing uncounted
            assert missing <= observed["lost"], (backend, missing, observed["lost"], details.get("loss_method"))
        assert observed["details"]["bpf_stats"]["ns_per_event"] > 0
    # The kprobe's reads agree with the tracepoints' on the same events of the same traffic: every
    # state change the tracepoint saw in the kprobe's trial, the kprobe saw, field for field. A kprobe
    # hit while another kprobe's handler runs is dropped by the kprobe layer (CI on 6.1 and 6.12: 2 of
    # 2002 state changes and 1 of 1001 destroys) and counted in its nmissed, which the backend reads
    # from its tracefs kprobes (one count per kprobe made). On 6.12 every skip is counted, so an
    # event the witness alone saw is within the counted loss (or the check has an error); on 6.1 a
    # run trace_call_bpf skips is counted nowhere, and the check reports those few as probable
    # silent loss.
    details = trials["kprobe"]["observed"]["details"]
    fidelity = details["fidelity"]
    assert fidelity["checked"] and fidelity["errors"] == [], fidelity
    # the ten hooks' functions on Debian's 6.1 and 6.12 (each in their /proc/kallsyms, as the VM
    # records of both kernels in results/ show), each with its kprobe's miss count read
    assert details["functions"] == DEBIAN_FUNCTIONS, details["functions"]
    assert set(details["kprobe_missed"]) == set(DEBIAN_FUNCTIONS.values())
    assert "nmissed per kprobe" in details["loss_method"]
    assert ("probable_silent_loss" in fidelity) == (series == "6.1"), fidelity
    silent = fidelity.get("probable_silent_loss", {})
    assert sum(silent.values()) <= 0.005 * 10 * connections, silent
    states = fidelity["per_kind"]["state_change"]
    assert states["matched"] == trials["kprobe"]["observed"]["events"]["state_change"] - states["kprobe_only"]
    # what the witness alone saw is missing from the kprobe's counts against the declaration
    assert states["tracepoint_only"] <= shortfall["kprobe"], (states, shortfall)
    if series != "6.1":
        assert states["kprobe_only"] == 0 and states["tracepoint_only"] <= trials["kprobe"]["observed"]["lost"]
    assert not states["fields_differing"]
    destroys = fidelity["per_kind"]["sock_destroy"]
    assert destroys["matched"] == trials["kprobe"]["observed"]["events"]["sock_destroy"] - destroys["kprobe_only"]
    # Across the two trials (separate traffic), counts are equal unless a silent drop hit one
    [check] = summary["cross_check"]
    assert check["ns_per_event_ratio"] is not None
    if not check["counts_equal"]:
        assert sum(shortfall.values()) > 0, check["differences"]
    assert not _our_qemus()


@needs_kernel
def test_a_vm_that_does_not_finish_in_time_is_killed_with_one_line_and_exit_2(tmp_path):
    result = tpbench("vm", "--kernel", str(KERNELS[-1]), "--kvm", "off", "--timeout", "5", "-o", str(tmp_path),
                     "--", "run", "-b", "none", "-w", "churn", timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("tpbench:")]
    assert lines == ["tpbench: error: the VM did not finish within --timeout 5 s (qemu killed; never booted)"]
    assert not _our_qemus()
