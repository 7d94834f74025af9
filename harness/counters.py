"""Counter snapshots: the kernel's per-namespace SNMP counters and system-wide CPU time.

nstat's delta mode keeps one history file for every namespace and mixes them up, so the harness
reads absolute values (/proc/net/snmp and /proc/net/netstat as each namespace sees them) before
and after a trial and subtracts. Names follow nstat's: the table prefix plus the column
(`Tcp` + `ActiveOpens` -> `TcpActiveOpens`, `TcpExt` + `TCPSynRetrans` -> `TcpExtTCPSynRetrans`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Mapping

from .tcp import STATE_NAMES

if TYPE_CHECKING:  # agents import this module and must not pay for pyroute2
    from netns import Host

SNMP_FILES = ("/proc/net/snmp", "/proc/net/netstat")
# Always present in a trial's nstat deltas (0 included), so readers need not guess absence.
KEY_COUNTERS = (
    "TcpActiveOpens",
    "TcpPassiveOpens",
    "TcpAttemptFails",
    "TcpEstabResets",
    "TcpOutRsts",
    "TcpRetransSegs",
    "TcpInSegs",
    "TcpOutSegs",
    "TcpExtTCPSynRetrans",
    "TcpExtTCPAbortOnData",
    "TcpExtTCPAbortOnClose",
    "TcpExtTW",
)
# Gauges, not counters: a difference of them means nothing.
GAUGES = frozenset({"TcpCurrEstab", "TcpRtoAlgorithm", "TcpRtoMin", "TcpRtoMax", "TcpMaxConn"})


def parse_snmp(text: str) -> dict[str, int]:
    """/proc/net/snmp or /proc/net/netstat: pairs of `Table: names...` / `Table: values...` lines."""
    counters: dict[str, int] = {}
    lines = text.splitlines()
    for header, values in zip(lines[0::2], lines[1::2]):
        table, _, names = header.partition(":")
        table_v, _, numbers = values.partition(":")
        if table != table_v:
            raise ValueError(f"malformed SNMP text: {table!r} followed by {table_v!r}")
        for name, number in zip(names.split(), numbers.split()):
            counters[table + name] = int(number)
    return counters


def _read_snmp_here() -> dict[str, int]:
    counters: dict[str, int] = {}
    for path in SNMP_FILES:
        with open(path) as f:
            counters.update(parse_snmp(f.read()))
    return counters


def read_snmp(host: "Host") -> dict[str, int]:
    """All Ip/Icmp/Tcp/Udp/TcpExt/IpExt... counters as `host`'s namespace counts them."""
    return host.run(_read_snmp_here)


def snmp_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """Tcp* and TcpExt* counters that changed, plus KEY_COUNTERS always."""
    delta = {}
    for name, value in after.items():
        if not name.startswith("Tcp") or name in GAUGES:
            continue
        change = value - before.get(name, 0)
        if change or name in KEY_COUNTERS:
            delta[name] = change
    return dict(sorted(delta.items()))


_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")

# cgroup v1 cpuacct's root: the scheduler's own runtime of every task on the machine, in ns
# (charged at every update_curr, not sampled). /proc/stat is sampled at each tick (CONFIG_HZ): the
# tick's whole period goes to whatever runs at that instant, which is unbiased only when the work
# is not in step with the tick. Paced work is: churn paced at 2,000 connections/s read 708, 3 and
# 1 us per connection by /proc/stat in three trials, 91, 88 and 84 by cpuacct (unpaced: 37 vs 39).
CPUACCT_USAGE = "/sys/fs/cgroup/cpuacct/cpuacct.usage"
# The run's own cpuacct group (system.run_cgroup), set by the runner for the run's duration:
# root usage minus this is the host's CPU that is not the run's (neighbours, kernel threads).
RUN_CPUACCT_USAGE: str | None = None


def own_run_cgroup_usage() -> str | None:
    """cpuacct.usage of the run cgroup this process is in (an agent inherits the runner's), or None."""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if "cpuacct" in controllers.split(",") and path.startswith("/tpbench-"):
                    return f"/sys/fs/cgroup/cpuacct{path}/cpuacct.usage"
    except (OSError, ValueError):
        pass
    return None


def read_cpu_ticks() -> dict[str, int]:
    """System-wide CPU time from /proc/stat's `cpu` line, in USER_HZ ticks per field, plus
    `task_ns`, the root cpuacct cgroup's task runtime in ns, where that cgroup exists."""
    with open("/proc/stat") as f:
        first = f.readline().split()
    ticks = dict(zip(_CPU_FIELDS, map(int, first[1 : 1 + len(_CPU_FIELDS)])))
    for key, path in (("task_ns", CPUACCT_USAGE), ("run_ns", RUN_CPUACCT_USAGE or own_run_cgroup_usage())):
        if path is None:
            continue
        try:
            with open(path) as f:
                ticks[key] = int(f.read())
        except (OSError, ValueError):
            pass
    return ticks


def cpu_seconds_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds per field over an interval, all CPUs summed; `busy` excludes idle and iowait.

    Softirq is its own field: it is where packet processing (and the probes that fire inside it,
    such as passive-side TCP state changes) is charged. `task` is the ns-exact runtime of all
    tasks (cpuacct) when both readings have it.
    """
    hz = os.sysconf("SC_CLK_TCK")
    seconds = {name: (after[name] - before[name]) / hz for name in _CPU_FIELDS}
    seconds["busy"] = sum(v for k, v in seconds.items() if k not in ("idle", "iowait"))
    rounded = {k: round(v, 4) for k, v in seconds.items()}
    if "task_ns" in before and "task_ns" in after:
        rounded["task"] = round((after["task_ns"] - before["task_ns"]) / 1e9, 6)
        # The measure the analysis uses. Without IRQ time accounting (this kernel) interrupt and
        # softirq work is charged to the task it interrupts, so task runtime holds it; with it,
        # tasks are not charged and /proc/stat's irq and softirq become exact: add them.
        extra = seconds["irq"] + seconds["softirq"] if irq_time_accounting() else 0.0
        rounded["cpu"] = round(rounded["task"] + extra, 6)
        if "run_ns" in before and "run_ns" in after:  # the run's own tasks, and everything else
            rounded["run"] = round((after["run_ns"] - before["run_ns"]) / 1e9, 6)
            rounded["foreign"] = round(rounded["task"] - rounded["run"], 6)
    return rounded


_IRQ_TIME: bool | None = None


def irq_time_accounting() -> bool:
    """CONFIG_IRQ_TIME_ACCOUNTING of the running kernel (/proc/config.gz or /boot/config-*);
    unknown counts as on (then only /proc/stat's irq and softirq are added, never lost)."""
    global _IRQ_TIME
    if _IRQ_TIME is None:
        import gzip
        import platform

        text = None
        for path, opener in (("/proc/config.gz", gzip.open), (f"/boot/config-{platform.release()}", open)):
            try:
                with opener(path, "rt") as f:
                    text = f.read()
                break
            except OSError:
                continue
        _IRQ_TIME = text is None or "CONFIG_IRQ_TIME_ACCOUNTING=y" in text
    return _IRQ_TIME


def _tcp_states_here() -> dict[str, int]:
    states: dict[str, int] = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as f:
            next(f)
            for line in f:
                name = STATE_NAMES.get(int(line.split()[3], 16), "?")  # the `st` column
                states[name] = states.get(name, 0) + 1
    return states


def tcp_states(host: "Host") -> dict[str, int]:
    """How many TCP sockets (timewait and request socks included) `host` holds, per state."""
    return host.run(_tcp_states_here)
