"""Soak: consecutive short runs, each with BPF programs, a capture agent and fresh namespaces,
leave nothing behind and do not grow the machine's memory use. `make test` runs a few;
TPBENCH_SOAK_RUNS=100 runs the full soak."""

import os
from pathlib import Path

import pytest

from harness.system import read_sysctl
from tests.helpers import leftovers_of_runs, tpbench

pytestmark = pytest.mark.root

RUNS = int(os.environ.get("TPBENCH_SOAK_RUNS", "3"))


def _meminfo_kib(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _kernel_memory_kib() -> int:
    """Slab + page tables + kernel stacks: where leaked sockets, maps and namespaces would show."""
    return sum(_meminfo_kib(f) for f in ("Slab", "PageTables", "KernelStack"))


def test_consecutive_runs_leave_nothing_and_keep_kernel_memory_flat(tmp_path):
    stats_before = read_sysctl("kernel.bpf_stats_enabled")
    tpbench("run", "-b", "tracepoint,pcap", "-w", "churn", "-p", "connections=500", "-q", "-o", str(tmp_path),
            check=True)  # first run: caches, compiled consumer, merged headers
    baseline = _kernel_memory_kib()
    samples = []
    for _ in range(RUNS):
        tpbench("run", "-b", "tracepoint,pcap", "-w", "churn", "-p", "connections=500", "-q",
                "-o", str(tmp_path), check=True)
        assert leftovers_of_runs(tmp_path) == []
        samples.append(_kernel_memory_kib())
    assert read_sysctl("kernel.bpf_stats_enabled") == stats_before
    # Kernel memory moves with TIME_WAIT sockets and slab caches; a leak of a namespace (~MBs with
    # its sockets) or of BPF maps per run would show as a steady climb. Allow 32 MiB of slack.
    growth = max(samples) - baseline
    assert growth < 32 * 1024, (baseline, samples)
