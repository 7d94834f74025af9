"""The default suite `tpbench bench` (and `make bench`) runs, and its profiles.

Each workload is sized for about one second of traffic at this machine's rates, so one round of
every cell takes ~2-3 s with namespace set-up and BPF compilation; the profiles trade rounds (and
with them confidence-interval width) against time. Every registered backend is measured, the
baseline first; those this kernel cannot run are recorded with the probe's reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from .backends import BACKENDS
from .runner import Cell, build_cell

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
SWEEP_BACKENDS = ("none", "tracepoint", "pcap")
CHURN_RATES = ("2000", "5000", "10000", "20000", "0")  # connections/s; 0 = as fast as possible
STREAM_MESSAGES = ("1024", "8192", "65536", "131072")  # bytes per send(): throughput rises with it


@dataclass(frozen=True)
class Profile:
    name: str
    trials: int
    warmup: int
    sweeps: bool
    description: str
    suite: bool = True  # the main suite (every workload x backend); False: the sweeps alone


PROFILES = {
    "quick": Profile("quick", 3, 0, False, "3 rounds, no warm-up: a smoke run (wide intervals)"),
    "default": Profile("default", 5, 1, False, "5 rounds after a warm-up: what `make bench` runs"),
    "thorough": Profile("thorough", 10, 1, True, "10 rounds, plus the churn-rate and stream-size sweeps"),
    "sweeps": Profile("sweeps", 5, 1, True, "the churn-rate and stream-size sweeps alone, 5 rounds",
                      suite=False),
}


# Measured, not observers: in the thorough profile only (the default must fit in 10 minutes here).
FLOORS = ("tracepoint-empty",)


def backend_settings(profile: "Profile | None" = None) -> list[tuple[str, dict[str, str]]]:
    settings = []
    for name in BACKENDS:
        if name in FLOORS and profile is not None and not profile.sweeps:
            continue
        for params in VARIANTS.get(name, ({},)):
            settings.append((name, params))
    return settings


def cells(profile: Profile) -> list[Cell]:
    out = []
    if profile.suite:
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
