"""Is this machine fit to measure? Checked before any measurement, recorded in run.json.

A benchmark that measures on a dirty host writes a wrong number as if it were true: an orphaned
churn generator of a killed run (PR_SET_PDEATHSIG prevents it, but a generator started by an
older tpbench or by hand does not have it) made a later baseline about 30% dearer. So before
anything is measured (after the run lock is held, so nothing found can be a live run's):

- leftovers of tpbench: namespaces and links it names tpb*, processes inside them, its agents and
  consumers running anywhere, saved state under /run/tpbench (sysctls, a tracefs mount, live
  counters), tracefs instances tpb* and kprobe events tpb/*, run cgroups. Always refused:
  `tpbench cleanup` removes them.
- foreign observers on the hooks being measured: BPF programs attached to the seven tracepoints
  or the kernel functions behind them (bpftool perf / link: another tracer changes every number,
  and classic tracepoint programs skip each other), tracefs events enabled on them (in any
  instance), packet sockets open in the root namespace (on kernels with one global ptype_all
  list a tap is called for every packet of every namespace), kernel.bpf_stats_enabled left on by
  someone else (every BPF program then pays two clock reads).
- background CPU: the host's busy share (every CPU, tpbench's own process excluded) and steal
  share over a short sample, and the CPU frequency governor where the guest shows one.

Foreign observers and a busy host are refused unless the user says to measure anyway; then the
record, every cell and the report's first screen carry the warnings. The report renders them from
run.json's `preflight` (what check() returns) with report_format.preflight_summary: it never
imports this module.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from .errors import UsageError
from .system import (CPUACCT_ROOT, KPROBE_GROUP, RUN_CGROUP_PREFIX, STATE_DIR, kprobe_events_ours, mount_holder_alive,
                     read_sysctl, tracefs_path)

# The hooks any tpbench measurement touches: the seven tracepoints and the functions the kprobe
# and fentry backends attach to (their names as kallsyms spells them).
TRACEPOINTS = (
    "sock:inet_sock_set_state", "tcp:tcp_retransmit_skb", "tcp:tcp_retransmit_synack", "tcp:tcp_send_reset",
    "tcp:tcp_receive_reset", "tcp:tcp_destroy_sock", "tcp:tcp_probe",
)
FUNCTIONS = (
    "tcp_set_state", "__tcp_retransmit_skb", "tcp_retransmit_skb", "tcp_rtx_synack", "tcp_send_active_reset",
    "tcp_v4_send_reset", "tcp_reset", "tcp_v4_destroy_sock", "tcp_rcv_established", "inet_csk_destroy_sock",
)
BUSY_LIMIT = 0.15  # share of every CPU's capacity used by others: a 2-vCPU host with one hog reads 0.5
SAMPLE_S = 0.5
SAMPLES = 3  # a busy first sample is taken again (a namespace's teardown in a kworker is brief)
# C helpers live in ~/.cache/tpbench/bin (harness/cbuild.py); the churn agent lived in <venv>/libexec/tpbench
AGENT_MARKERS = ("harness.agents.", "/tpbench/bin/", "/libexec/tpbench/")


def _proc_cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _ancestors(pid: int) -> set[int]:
    found = set()
    while pid > 1:
        found.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def orphan_agents() -> list[tuple[int, str]]:
    """tpbench's agents and consumers running anywhere but under this process: (pid, command)."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        argv = _proc_cmdline(int(entry.name))
        text = " ".join(argv)
        if argv and any(marker in text for marker in AGENT_MARKERS):
            if me in _ancestors(int(entry.name)):
                continue  # ours (a test's helper process, say), not a leftover
            found.append((int(entry.name), text[:120]))
    return sorted(found)


def kill_orphan_agents() -> list[str]:
    """SIGKILL tpbench's agents and consumers left running outside any run (`tpbench cleanup`)."""
    done = []
    for pid, command in orphan_agents():
        try:
            os.kill(pid, signal.SIGKILL)
            done.append(f"killed orphaned process {pid} ({command})")
        except ProcessLookupError:
            pass
    return done


def run_cgroups() -> list[Path]:
    """Run cgroups (system.run_cgroup) that exist: a live run holds the lock, so these are leftovers."""
    if not CPUACCT_ROOT.is_dir():
        return []
    return sorted(CPUACCT_ROOT.glob(f"{RUN_CGROUP_PREFIX}*"))


def leftovers() -> list[str]:
    """Everything of tpbench's that an earlier run left, one phrase each ([] on a clean host)."""
    from netns import find_leftovers
    from netns.topology import pids_in_netns

    found = []
    left = find_leftovers()
    for name in left["namespaces"]:
        pids = pids_in_netns(name)
        found.append(f"namespace {name}" + (f" ({len(pids)} processes inside)" if pids else ""))
    found += [f"link {name}" for name in left["links"]]
    found += [f"process {pid} ({command})" for pid, command in orphan_agents()]
    if STATE_DIR.is_dir():
        found += [f"saved state {path}" for path in sorted(STATE_DIR.iterdir()) if path.name != "lock"
                  and not (path.name == "tracefs-mounted" and mount_holder_alive(path))]
    tracefs = tracefs_path()
    if tracefs is not None and (tracefs / "instances").is_dir():
        found += [f"tracefs instance {path.name}" for path in sorted((tracefs / "instances").glob("tpb*"))]
    found += [f"kprobe event {KPROBE_GROUP}/{name}" for name in kprobe_events_ours(tracefs)]
    found += [f"cgroup {path}" for path in run_cgroups()]
    return found


def _bpftool(*args: str) -> Any:
    result = subprocess.run(["bpftool", "--json", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip() or f"bpftool {' '.join(args)} failed")
    return json.loads(result.stdout or "[]")


def foreign_programs() -> tuple[list[dict[str, Any]], str | None]:
    """BPF programs attached to the measured hooks by others: (found, why not checked or None)."""
    if shutil.which("bpftool") is None:
        return [], "bpftool is not installed (make setup installs it)"
    names = {tp.split(":")[1] for tp in TRACEPOINTS} | set(FUNCTIONS)
    me = os.getpid()
    found = []
    try:
        for item in _bpftool("perf", "show"):  # perf-event attachments: tracepoint, kprobe
            target = item.get("tracepoint") or item.get("func")
            if target in names and item.get("pid") != me:
                found.append({"via": f"perf {item.get('fd_type')}", "hook": target, "prog_id": item.get("prog_id"),
                              "pid": item.get("pid"), "command": " ".join(_proc_cmdline(item.get("pid", 0)))[:80]})
        for item in _bpftool("link", "show"):  # bpf links: raw tracepoints, tracing, perf_event
            target = item.get("tp_name") or item.get("tracepoint") or item.get("func")
            pids = [p.get("pid") for p in item.get("pids", [])]
            if target in names and me not in pids:
                found.append({"via": f"link {item.get('type')}", "hook": target, "prog_id": item.get("prog_id"),
                              "pid": pids[0] if pids else None,
                              "command": (item.get("pids") or [{}])[0].get("comm")})
    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
        return found, f"bpftool failed: {exc}"
    unique = {(f["hook"], f["prog_id"], f["pid"]): f for f in found}  # a perf link shows in both lists
    return list(unique.values()), None


def enabled_trace_events() -> list[str]:
    """tracefs events on the measured tracepoints switched on, in the top instance or any other."""
    tracefs = tracefs_path()
    if tracefs is None:
        return []
    roots = [tracefs, *sorted((tracefs / "instances").glob("*"))] if (tracefs / "instances").is_dir() else [tracefs]
    found = []
    for root in roots:
        for tp in TRACEPOINTS:
            try:
                value = (root / "events" / tp.replace(":", "/") / "enable").read_text().strip()
            except OSError:
                continue
            if value not in ("0", ""):
                found.append(f"{tp} in {'the top instance' if root == tracefs else 'instance ' + root.name}")
    return found


def packet_sockets() -> list[dict[str, Any]]:
    """Packet sockets of the root namespace (tpbench's own captures live in its namespaces)."""
    try:
        lines = Path("/proc/net/packet").read_text().splitlines()[1:]
    except OSError:
        return []
    found = []
    inodes = {}
    for line in lines:
        fields = line.split()
        if len(fields) >= 9:
            inodes[fields[8]] = {"proto": fields[3], "iface": int(fields[4]), "inode": int(fields[8])}
    if inodes:  # who holds them
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                for fd in (entry / "fd").iterdir():
                    target = os.readlink(fd)
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        inodes[target[8:-1]]["pid"] = int(entry.name)
                        inodes[target[8:-1]]["command"] = " ".join(_proc_cmdline(int(entry.name)))[:80]
            except OSError:
                continue
    me = os.getpid()
    for item in inodes.values():
        if item.get("pid") != me:
            found.append(item)
    return found


def _cpu_sample(seconds: float) -> dict[str, Any]:
    """Busy and steal share of every CPU over `seconds`, this process's own CPU taken out."""
    def stat() -> list[int]:
        with open("/proc/stat") as f:
            return [int(v) for v in f.readline().split()[1:9]]

    def own() -> int:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime of this process

    def per_process() -> dict[int, tuple[int, str]]:
        out = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    head, tail = (entry / "stat").read_text().rsplit(")", 1)
                    fields = tail.split()
                    out[int(entry.name)] = (int(fields[11]) + int(fields[12]), head.split("(", 1)[1])
                except (OSError, IndexError, ValueError):
                    continue
        return out

    before, own_before, procs_before = stat(), own(), per_process()
    started = time.monotonic()
    time.sleep(seconds)
    after, own_after, procs_after = stat(), own(), per_process()
    wall = time.monotonic() - started
    hz, cpus = os.sysconf("SC_CLK_TCK"), os.cpu_count() or 1
    delta = [b - a for a, b in zip(before, after)]
    capacity = hz * wall * cpus
    busy = sum(delta[i] for i in (0, 1, 2, 5, 6)) - (own_after - own_before)  # user nice system irq softirq
    top = sorted(((ticks - procs_before[pid][0], pid, name) for pid, (ticks, name) in procs_after.items()
                  if pid in procs_before and pid != os.getpid()), reverse=True)[:3]
    return {"seconds": round(wall, 3), "busy_share": round(max(busy, 0) / capacity, 4),
            "steal_share": round(delta[7] / capacity, 4),
            "top": [{"pid": pid, "command": name, "cpu_share": round(t / capacity, 4)} for t, pid, name in top if t > 0]}


def background_cpu(samples: int = SAMPLES, seconds: float = SAMPLE_S) -> dict[str, Any]:
    """Up to `samples` samples, stopping at the first quiet one (a short burst is not a busy host)."""
    taken = []
    for _ in range(samples):
        taken.append(_cpu_sample(seconds))
        if taken[-1]["busy_share"] <= BUSY_LIMIT:
            break
    return {**taken[-1], "samples": len(taken), "busy_limit": BUSY_LIMIT}


def cpu_frequency() -> dict[str, Any]:
    """Each cpufreq policy's governor, current and maximum frequency (sysfs text, kHz), or why none is visible."""
    policies = sorted(Path("/sys/devices/system/cpu/cpufreq").glob("policy*"))
    if not policies:
        return {"visible": False, "why": "no cpufreq in this kernel or guest: the host sets the frequency"}
    out: dict[str, Any] = {"visible": True, "policies": {}}
    for policy in policies:
        entry = {}
        for name in ("scaling_governor", "scaling_cur_freq", "scaling_max_freq"):
            try:
                entry[name] = (policy / name).read_text().strip()
            except OSError:
                pass
        out["policies"][policy.name] = entry
    return out


def check(left: list[str] | None = None) -> dict[str, Any]:
    """The raw findings (no decision): what run.json records as `preflight`. left: leftovers()
    taken earlier (before the run mounted tracefs, whose marker would count as one)."""
    started = time.monotonic()
    programs, programs_unchecked = foreign_programs()
    try:
        stats = read_sysctl("kernel.bpf_stats_enabled")
    except OSError:
        stats = None
    found = {
        "leftovers": leftovers() if left is None else left,
        "foreign_programs": programs,
        "foreign_programs_unchecked": programs_unchecked,
        "trace_events_enabled": enabled_trace_events(),
        "packet_sockets": packet_sockets(),
        "bpf_stats_enabled": stats,
        "cpu": background_cpu(),
        "cpu_frequency": cpu_frequency(),
    }
    found["warnings"] = warnings(found)
    found["took_s"] = round(time.monotonic() - started, 3)
    return found


def warnings(found: dict[str, Any]) -> list[str]:
    """What makes the host unfit, other than tpbench's own leftovers: one sentence each."""
    out = []
    for p in found["foreign_programs"]:
        holder = f"pid {p['pid']}" + (f" {p['command']}" if p.get("command") else "")
        out.append(f"a BPF program of another tracer is attached to {p['hook']} ({p['via']}, prog {p['prog_id']}, {holder})")
    out += [f"a tracefs event is enabled on {e}" for e in found["trace_events_enabled"]]
    for s in found["packet_sockets"]:
        out.append(f"a packet socket is open in the root namespace (proto 0x{s['proto']}, "
                   f"pid {s.get('pid', '?')}{' ' + s['command'] if s.get('command') else ''})")
    if found["bpf_stats_enabled"] == "1":
        out.append("kernel.bpf_stats_enabled is 1, set outside tpbench (every BPF program pays for its clock "
                   "reads): sysctl -w kernel.bpf_stats_enabled=0")
    cpu = found["cpu"]
    if cpu["busy_share"] > BUSY_LIMIT:
        top = ", ".join(f"{t['command']} (pid {t['pid']}) {100 * t['cpu_share']:.0f}%" for t in cpu["top"])
        out.append(f"the host is busy: {100 * cpu['busy_share']:.0f}% of its CPUs used by others over "
                   f"{cpu['seconds']:.1f} s (limit {100 * BUSY_LIMIT:.0f}%){': ' + top if top else ''}")
    return out


def enforce(found: dict[str, Any], measure_anyway: bool) -> None:
    """Refuse a dirty host with one line (UsageError: exit 2); leftovers are refused always."""
    if found["leftovers"]:
        shown = "; ".join(found["leftovers"][:6]) + (f"; and {len(found['leftovers']) - 6} more"
                                                     if len(found["leftovers"]) > 6 else "")
        raise UsageError(f"an earlier run left {shown}: run `tpbench cleanup` first")
    if found["warnings"] and not measure_anyway:
        raise UsageError(f"this host is not fit to measure: {'; '.join(found['warnings'])} "
                         "(--measure-anyway measures all the same and marks every result)")

