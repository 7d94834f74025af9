"""The default suite `tpbench bench` (and `make bench`) runs, and its profiles.

Two measurements, each for what it does best:
- overhead, toggled (harness/toggle.py): per workload one live workload with the observers of the
  headline switched on and off in short windows beside the no-observer arm and its A/A twin,
  until the headline comparisons are decided or the workload's time cap;
- fidelity and visibility, trials (harness/runner.py): every registered backend on every
  workload in fresh namespaces, counted against the generators and the kernel's counters. Those
  this kernel cannot run are recorded with the probe's reason.
The profiles trade time for precision; the default fits 10 minutes on a 2-vCPU machine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .backends import BACKENDS
from .record import BASELINE
from .runner import Cell, build_cell

if TYPE_CHECKING:
    from .toggle import Group

# (workload, its parameters for the suite), each about a second of traffic: long enough to average
# the machine's noise, short enough for five rounds of every cell in the 10-minute budget.
WORKLOADS: tuple[tuple[str, dict[str, str]], ...] = (
    ("churn", {"connections": "40000"}),  # state changes at the top rate: the tracepoints' case
    ("rr", {"transactions": "30000"}),  # few state changes, many small packets
    ("stream", {"duration": "1"}),  # bulk: the case where packet capture should pay
    ("resets", {"aborts": "12000", "refused": "12000"}),  # RSTs both ways
)
# extra settings of a backend measured beside its defaults
VARIANTS: dict[str, tuple[dict[str, str], ...]] = {
    "tracepoint": ({}, {"mode": "aggregate"}),
    "pcap": ({}, {"consumer": "tcpdump"}),
}
# sweeps (thorough profile): overhead against event rate and against throughput
SWEEP_BACKENDS = (BASELINE, "tracepoint", "pcap")
CHURN_RATES = ("2000", "5000", "10000", "20000", "0")  # connections/s; 0 = as fast as possible
STREAM_MESSAGES = ("1024", "8192", "65536", "131072")  # bytes per send(): throughput rises with it


# The toggled headline: per workload, (its live parameters, seconds cap on its windows, estimator
# of the per-cycle differences). Churn, the tracepoints' case, gets most of the time: its
# comparison is the one the headline must decide (in two make bench runs it was decided after
# 152 s in one and still +-2.3 pp at a 210 s cap in the other; later runs after 162-246 s). The
# caps are one budget (toggle.run_groups): time churn leaves goes to rr and stream, whose A/A
# controls need about 120-170 s each. Stream's rate stalls for about
# 250 ms every ~10 s whatever is attached (to 22-33% of its rate at unchanged CPU, measured with
# no observer): those windows are left out by the stall rule (toggle_stats), after which the mean
# serves stream as it serves the others (the median, `--estimator median`, was tried first: with
# the stalls excluded its interval was the wider, 1.87 and 3.20 pp against 1.22 and 2.13 for the
# A/A control of the same two runs).
TOGGLED: tuple[tuple[str, dict[str, str], float, str], ...] = (
    ("churn", {}, 270.0, "mean"),
    ("rr", {}, 120.0, "mean"),
    ("stream", {}, 120.0, "mean"),
)
# The arms, matched in level and consumer (toggle_stats.level_of, consumer_of): `state` is what
# tcpstates/tcplife need against a SYN/FIN/RST capture; `full`, every hook including per-segment
# tcp_probe against every header. `c`: the tracepoint backend's libbpf ring-buffer consumer against
# libpcap in C (pcap_consumer.c), both decoding as they read; `python`: a Python callback per ring
# record (agents/observers/ringbuf_py_consumer.py, bcc's RingBuf path) against pcapy-ng's per-packet callback.
TOGGLED_ARMS: dict[tuple[str, str], tuple[tuple[str, dict[str, str]], ...]] = {
    ("state", "c"): (("tracepoint", {"hooks": "state+destroy"}), ("pcap", {"filter": "state", "consumer": "c"})),
    ("full", "c"): (("tracepoint", {"hooks": "all"}), ("pcap", {"filter": "full", "consumer": "c"})),
    ("state", "python"): (("tracepoint", {"hooks": "state+destroy", "consumer": "python"}),
                          ("pcap", {"filter": "state", "consumer": "python"})),
    ("full", "python"): (("tracepoint", {"hooks": "all", "consumer": "python"}),
                         ("pcap", {"filter": "full", "consumer": "python"})),
}
# Per profile, the pairings measured on churn (the state-change workload the question is about)
# and on the others: every arm more in a group is a window more per cycle, fewer cycles in its cap.
DEFAULT_PAIRINGS = {"churn": (("state", "c"), ("full", "c"), ("state", "python")), "*": (("state", "c"),)}
THOROUGH_PAIRINGS = {"churn": tuple(TOGGLED_ARMS), "*": (("state", "c"), ("full", "c"))}
QUICK_PAIRINGS = {"*": (("state", "c"),)}
# Fidelity trials beside the toggled measurement: short, one round each.
FIDELITY_WORKLOADS: tuple[tuple[str, dict[str, str]], ...] = (
    ("churn", {"connections": "10000"}),
    ("rr", {"transactions": "10000"}),
    ("stream", {"duration": "0.5"}),
    ("resets", {"aborts": "3000", "refused": "3000"}),
)
# The smoke profile's: the same four workloads at the smallest sizes that still exercise every
# backend's path on each (a few hundred connections, exchanges and RSTs, a fifth of a second of stream).
SMOKE_WORKLOADS: tuple[tuple[str, dict[str, str]], ...] = (
    ("churn", {"connections": "1000"}),
    ("rr", {"transactions": "1000"}),
    ("stream", {"duration": "0.2"}),
    ("resets", {"aborts": "200", "refused": "200"}),
)


@dataclass(frozen=True)
class Profile:
    name: str
    trials: int
    warmup: int
    sweeps: bool
    description: str
    suite: bool = True  # the trial suite (every workload x backend); False: the sweeps alone
    toggle_scale: float = 0.0  # the toggled workloads' time caps times this (0: no toggling)
    pairings: dict[str, tuple[tuple[str, str], ...]] = dataclasses.field(default_factory=lambda: DEFAULT_PAIRINGS)
    fidelity_only: bool = False  # the trial suite as short fidelity trials (fidelity_workloads)
    fidelity_workloads: tuple[tuple[str, dict[str, str]], ...] = FIDELITY_WORKLOADS
    toggle_settings: dict[str, float | int] = dataclasses.field(default_factory=dict)  # toggle.Settings overrides


PROFILES = {
    "smoke": Profile("smoke", 1, 0, False, "the default's whole path at the smallest sizes (toggled churn, 3 cycles "
                     "of 0.5 s windows; one tiny fidelity trial of every backend on every workload): proves it "
                     "works, measures nothing worth reading (~2 minutes)",
                     toggle_scale=10 / 270, fidelity_only=True, pairings=QUICK_PAIRINGS,
                     fidelity_workloads=SMOKE_WORKLOADS,
                     toggle_settings={"window_s": 0.5, "settle_s": 0.1, "warmup_s": 1.0, "min_cycles": 3}),
    "quick": Profile("quick", 1, 0, False, "toggled churn for up to 45 s, one round of fidelity trials: a smoke run",
                     toggle_scale=1 / 6, fidelity_only=True, pairings=QUICK_PAIRINGS),
    "default": Profile("default", 1, 0, False, "toggled overhead (churn up to 270 s, rr and stream up to 120 s plus what churn leaves), "
                       "then one round of short fidelity trials: what `make bench` runs (~10 minutes)",
                       toggle_scale=1.0, fidelity_only=True),
    "thorough": Profile("thorough", 10, 1, True, "toggled overhead at both levels and both consumers with doubled "
                        "caps, 10 rounds of trials (the peers included), the churn-rate and stream-size sweeps",
                        toggle_scale=2.0, pairings=THOROUGH_PAIRINGS),
    "sweeps": Profile("sweeps", 5, 1, True, "the churn-rate and stream-size sweeps alone, 5 rounds",
                      suite=False),
}


def toggle_groups(profile: Profile) -> list[Group]:
    """The profile's toggled groups, one per TOGGLED workload (quick: churn only); [] if it toggles nothing."""
    from .toggle import Settings, plan_group

    if not profile.toggle_scale:
        return []
    groups = []
    for workload, params, cap_s, estimator in TOGGLED:
        if profile.name in ("quick", "smoke") and workload != "churn":
            continue
        pairings = profile.pairings.get(workload, profile.pairings["*"])
        observers = [arm for pairing in pairings for arm in TOGGLED_ARMS[pairing]]
        groups.append(plan_group(workload, params, observers,
                                 Settings(**{"max_s": cap_s * profile.toggle_scale, "estimator": estimator,
                                             **profile.toggle_settings})))
    return groups


# Measured, not observers: in the thorough profile only (the default must fit in 10 minutes here).
FLOORS = ("tracepoint-empty",)


def backend_settings(profile: "Profile | None" = None) -> list[tuple[str, dict[str, str]]]:
    """(backend, params) for every backend and its VARIANTS; FLOORS only with sweeps or without a profile."""
    settings = []
    for name in BACKENDS:
        if name in FLOORS and profile is not None and not profile.sweeps:
            continue
        for params in VARIANTS.get(name, ({},)):
            settings.append((name, params))
    return settings


def cells(profile: Profile) -> list[Cell]:
    """The profile's trial cells: fidelity trials or every workload x backend setting, plus sweeps; no duplicates."""
    out = []
    if profile.suite and profile.fidelity_only:  # every backend once, for fidelity and visibility
        out += [build_cell(w, wp, b, {}) for w, wp in profile.fidelity_workloads for b in BACKENDS if b not in FLOORS]
    elif profile.suite:
        out += [build_cell(w, wp, b, bp) for w, wp in WORKLOADS for b, bp in backend_settings(profile)]
    if profile.sweeps:
        for rate in CHURN_RATES:
            out += [build_cell("churn", {"connections": "20000", "rate": rate}, b, {}) for b in SWEEP_BACKENDS]
        for message in STREAM_MESSAGES:
            out += [build_cell("stream", {"duration": "1", "message": message}, b, {}) for b in SWEEP_BACKENDS]
    return _unique(out)


def _unique(cells_: list[Cell]) -> list[Cell]:
    seen, out = set(), []
    for cell in cells_:
        key = (cell.label, repr(sorted(cell.workload_params.items())))
        if key not in seen:
            seen.add(key)
            out.append(cell)
    return out
