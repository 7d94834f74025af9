"""The machine a run measured on, as pyperf records it: CPU model, clock and flags, the hypervisor,
memory and the boot. runner.py writes it into run.json's `machine` when the run starts;
`tpbench compare` sets the runs' machines side by side (rows()), because two runs on different
CPUs, hypervisors or boots are compared by their ratios, never by raw CPU time.

Everything is read from /proc and /sys (and systemd-detect-virt where installed); what cannot be
read is None. In a `tpbench vm` run it is the guest's view. Records before 2026-12-08 have no
`machine`: rows() shows what they do have (host.cpus, the `vm` section) and "not recorded".
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

PROC = Path("/proc")
SYS = Path("/sys")
NOT_RECORDED = "not recorded"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """The CPU fields of /proc/cpuinfo: model, vendor, signature, microcode, each CPU's MHz, the
    flags and bugs (sorted, space-separated: /proc lists them in CPUID order). x86 names them
    "model name", "flags", "bugs"; arm64 "CPU implementer", "Features" and has no MHz."""
    cpus = []
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, colon, value = line.partition(":")
            if colon:
                fields[key.strip()] = value.strip()
        if "processor" in fields:
            cpus.append(fields)
    first = cpus[0] if cpus else {}
    mhz = []
    for cpu in cpus:
        try:
            mhz.append(float(cpu["cpu MHz"]))
        except (KeyError, ValueError):
            pass
    if all(k in first for k in ("cpu family", "model", "stepping")):
        signature = f"family {first['cpu family']} model {first['model']} stepping {first['stepping']}"
    elif "CPU part" in first:
        signature = f"part {first['CPU part']} variant {first.get('CPU variant', '?')} revision {first.get('CPU revision', '?')}"
    else:
        signature = None
    flags = first.get("flags", first.get("Features"))
    bugs = first.get("bugs")
    return {
        "cpu_model": first.get("model name") or first.get("Processor") or None,
        "cpu_vendor": first.get("vendor_id") or first.get("CPU implementer") or None,
        "cpu_signature": signature,
        "microcode": first.get("microcode"),
        "cpu_mhz": mhz or None,
        "cpu_flags": " ".join(sorted(flags.split())) if flags is not None else None,
        "cpu_bugs": " ".join(sorted(bugs.split())) if bugs is not None else None,
    }


def parse_meminfo(text: str) -> int | None:
    """MemTotal of /proc/meminfo, in KiB (/proc says "kB")."""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            try:
                return int(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


def _detect_virt(option: str) -> str | None:
    """systemd-detect-virt's answer ("kvm", "docker", "none"), None without it."""
    try:
        done = subprocess.run(["systemd-detect-virt", option], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def hypervisor(cpu_flags: str | None, sys: Path = SYS, detect_virt: bool = True) -> dict[str, Any]:
    """Every sign of a hypervisor: the CPU's `hypervisor` flag (set by any hypervisor), Xen's
    /sys/hypervisor/type, the firmware's vendor and product (DMI: "QEMU", "Amazon EC2"), and
    systemd-detect-virt's VM and container answers."""
    return {
        "cpu_flag": None if cpu_flags is None else "hypervisor" in cpu_flags.split(),
        "sys_type": _read(sys / "hypervisor" / "type"),
        "dmi_vendor": _read(sys / "class" / "dmi" / "id" / "sys_vendor"),
        "dmi_product": _read(sys / "class" / "dmi" / "id" / "product_name"),
        "virt": _detect_virt("--vm") if detect_virt else None,
        "container": _detect_virt("--container") if detect_virt else None,
    }


def collect(proc: Path = PROC, sys: Path = SYS, detect_virt: bool = True) -> dict[str, Any]:
    """run.json's `machine`: the CPU, the hypervisor, memory and the boot id, as this host shows them."""
    cpu = parse_cpuinfo(_read(proc / "cpuinfo") or "")
    meminfo = _read(proc / "meminfo")
    return {
        "cpu_model": cpu["cpu_model"],
        "cpu_vendor": cpu["cpu_vendor"],
        "cpu_signature": cpu["cpu_signature"],
        "microcode": cpu["microcode"],
        "cpus": os.cpu_count(),
        "cpu_mhz": cpu["cpu_mhz"],
        "hypervisor": hypervisor(cpu["cpu_flags"], sys, detect_virt),
        "memory_total_kib": parse_meminfo(meminfo) if meminfo else None,
        "boot_id": _read(proc / "sys" / "kernel" / "random" / "boot_id"),
        "cpu_bugs": cpu["cpu_bugs"],
        "cpu_flags": cpu["cpu_flags"],
    }


# ---------------------------------------------------------------- shown by `tpbench compare`

def hypervisor_text(found: dict[str, Any] | None) -> str:
    """`kvm`, `none (bare metal)`, `yes (CPU flag)`, with `, in a docker container` where there is one."""
    if not found:
        return NOT_RECORDED
    virt = found.get("virt")
    flag = found.get("cpu_flag")
    name = (virt if virt and virt != "none" else None) or found.get("sys_type") or (
        found.get("dmi_vendor") if flag else None)
    if name:
        text = name
    elif flag:
        text = "yes (CPU flag)"
    elif flag is False or virt == "none":
        text = "none (bare metal)"
    else:
        text = "unknown"
    container = found.get("container")
    return text + (f", in a {container} container" if container and container != "none" else "")


def _mhz(values: list[float] | None) -> str:
    if not values:
        return NOT_RECORDED
    low, high = min(values), max(values)
    return f"{low:,.0f}" if round(low) == round(high) else f"{low:,.0f}-{high:,.0f}"


ROWS = ("CPU model", "CPUs", "MHz", "hypervisor", "memory", "boot id")


def describe(run: dict[str, Any]) -> list[str]:
    """One run's machine, one text per ROWS entry; from `host` and `vm` where the record has no `machine`."""
    machine = run.get("machine") or {}
    vm = run.get("vm") or {}
    cpus = machine.get("cpus") or (run.get("host") or {}).get("cpus")
    kib = machine.get("memory_total_kib")
    if "hypervisor" in machine:
        hyper = hypervisor_text(machine["hypervisor"])
    else:
        emulated = ", emulated" if vm.get("emulated") else ""
        hyper = f"tpbench vm guest ({vm.get('accelerator', '?')}{emulated})" if vm else NOT_RECORDED
    if kib:
        memory = f"{kib / 2**20:,.1f} GiB"
    else:
        memory = f"{vm['memory']} (tpbench vm setting)" if vm.get("memory") else NOT_RECORDED
    return [machine.get("cpu_model") or NOT_RECORDED, str(cpus) if cpus else NOT_RECORDED,
            _mhz(machine.get("cpu_mhz")), hyper, memory, machine.get("boot_id") or NOT_RECORDED]


def rows(runs: list[dict[str, Any]], letters: list[str]) -> list[list[str]]:
    """ROWS by run: [[row name, run A's text, run B's text, ...], ...]; a boot id seen in an
    earlier run says so (the same boot: the same kernel state, caches, frequency)."""
    columns = [describe(run) for run in runs]
    boot = ROWS.index("boot id")
    for i, column in enumerate(columns):
        same = next((letters[j] for j in range(i) if columns[j][boot] == column[boot] != NOT_RECORDED), None)
        if same:
            column[boot] += f" (same boot as {same})"
    return [[name, *(column[r] for column in columns)] for r, name in enumerate(ROWS)]
