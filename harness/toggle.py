"""The toggled overhead measurement (switchback): observers switched on and off under one workload.

Trials in fresh namespaces minutes apart vary 5-12% in CPU per operation on this kind of machine,
with nothing to pair away; inside one continuous workload, windows a second apart correlate
(lag-1 0.79) and the difference of two adjacent 1 s windows has a standard deviation of ~4.5% of
the mean (../shared/KERNEL-FACTS.md). So, per workload:

    one topology; every observer prepared once (compiled, loaded, consumer running), all off
    -> live traffic (workloads/live.py) with a shared-memory operation counter
    -> cycles: every arm once per cycle, in a random order (the baseline twice: "none" and its
       A/A twin, a second no-observer arm whose difference from the first must be ~0);
       per window: sample, switch the arm on, settle, sample, measure for `window_s`, sample,
       switch it off (the observer's consumer drains first)
    -> until every headline comparison and the A/A control is decided (CI half-width <= 2 pp)
       after `min_cycles`, or the workload's time cap.

A sample holds the live operation count, the root cpuacct's ns-exact task runtime, the run's own
cpuacct group's (the rest is the host's CPU that is not the run's: foreign), /proc/stat (steal)
and each observer's own processes' ns-exact runtime (/proc/<pid>/task/*/schedstat).
Everything raw goes into run.json (`toggle`, saved after every cycle); harness/analysis/toggle_stats.py computes
the per-window costs and the statistics from it alone. Fidelity stays with the trials.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

from netns import Topology

from . import counters
from .analysis import toggle_stats
from .backends import Backend, get_backend
from .backends.processes import task_runtime_ns as _task_ns
from .counters import CPUACCT_USAGE
from .errors import Interrupted, UsageError
from .interrupts import critical
from .params import resolve_plugin
from .record import BASELINE
from .workloads import get_workload
from .workloads.live import LIVE_WORKLOADS, LiveTraffic

AA_TWIN = f"{BASELINE} (A/A)"


@dataclass(frozen=True)
class Arm:
    label: str
    backend: Backend
    params: dict[str, Any]
    role: str  # "baseline", "aa" (the baseline's twin) or "observer"

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "backend": self.backend.name, "params": self.params, "role": self.role,
                "level": toggle_stats.level_of(self.backend.name, self.params),
                "consumer": toggle_stats.consumer_of(self.backend.name, self.params)}


@dataclass(frozen=True)
class Settings:
    window_s: float = 1.0  # measured part of a window
    settle_s: float = 0.2  # after switching on, left out of the measurement
    warmup_s: float = 2.0  # live traffic before the first window
    min_cycles: int = 8  # run even past max_s
    max_s: float = 120.0  # cap on the windows' wall time for one workload
    decide_pp: float = toggle_stats.DECIDE_PP
    estimator: str = "mean"  # of the per-cycle differences: "mean" (Student t) or "median" (sign test)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Group:
    """One workload measured by toggling: its live parameters and its arms."""

    workload: str
    params: dict[str, Any]
    arms: list[Arm] = field(default_factory=list)
    settings: Settings = field(default_factory=Settings)


def _label(backend: Backend, params: dict[str, Any]) -> str:
    changed = [f"{p.name}={params[p.name]}" for p in backend.params if params.get(p.name) != p.default]
    return backend.name + (f"[{','.join(changed)}]" if changed else "")


def plan_group(workload_name: str, workload_params: dict[str, str],
               observers: list[tuple[str, dict[str, str]]], settings: Settings | None = None) -> Group:
    """Validate names and parameters up front; the baseline and its A/A twin are always there."""
    if workload_name not in LIVE_WORKLOADS:
        raise UsageError(f"workload {workload_name!r} has no live mode for toggling "
                         f"(toggled: {', '.join(LIVE_WORKLOADS)}; other workloads run as trials)")
    workload = get_workload(workload_name)
    group = Group(workload_name, resolve_plugin(workload, workload_params), settings=settings or Settings())
    none = get_backend(BASELINE)
    group.arms += [Arm(BASELINE, none, {}, "baseline"), Arm(AA_TWIN, none, {}, "aa")]
    for name, given in observers:
        if name == BASELINE:
            continue
        backend = get_backend(name)
        if not hasattr(backend, "prepare"):
            raise UsageError(f"backend {name} cannot be switched on and off yet (toggled: "
                             "tracepoint, tracepoint-empty, pcap); measure it with trials")
        params = resolve_plugin(backend, given)
        label = _label(backend, params)
        if label in {a.label for a in group.arms}:
            raise UsageError(f"{label} given twice")
        group.arms.append(Arm(label, backend, params, "observer"))
    return group


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


class Sampler:
    def __init__(self, live: LiveTraffic, tasks: dict[str, list[int]]):
        self.live, self.tasks = live, tasks

    def __call__(self) -> dict[str, Any]:
        with open("/proc/stat") as f:
            stat = [int(v) for v in f.readline().split()[1:9]]  # user .. steal, USER_HZ ticks
        run = counters.RUN_CPUACCT_USAGE
        return {"t": round(time.monotonic(), 6), "ops": self.live.operations(), "cpu_ns": _read_int(CPUACCT_USAGE),
                "run_ns": _read_int(run) if run else None, "stat": stat, "tasks": {label: _task_ns(pids) for label, pids in self.tasks.items()}}


Say = Callable[[str], None]
SLICE_S = 0.1  # the live counter is read this often inside a window (a memory load): stalls show


def _slices(live: LiveTraffic, until: float) -> list[list[float]]:
    """[t, operations] every SLICE_S until `until` (monotonic): the window's rate, slice by slice."""
    out = []
    while True:
        now = time.monotonic()
        if now >= until:
            return out
        time.sleep(min(SLICE_S, until - now))
        out.append([round(time.monotonic(), 6), live.operations()])


def measure(group: Group, run_id: str, entry: dict[str, Any], save: Callable[[], None], say: Say,
            seed: int) -> None:
    """Fill `entry` (a run.json `toggle` item) with the group's raw windows; `save` after each cycle."""
    settings, arms = group.settings, group.arms
    entry.update({"workload": group.workload, "params": group.params, "settings": settings.to_dict(),
                  "arms": [a.to_dict() for a in arms], "seed": seed, "status": "running", "windows": [],
                  "prepare_s": {}, "arm_details": {}, "cpus": os.cpu_count() or 1,
                  "hz": os.sysconf("SC_CLK_TCK")})
    rng = random.Random(seed)
    with contextlib.ExitStack() as stack:
        topology = stack.enter_context(Topology(run_id, guard=critical))
        switches = {}
        for arm in arms:
            began = time.perf_counter()
            with critical():
                switch = arm.backend.prepare(topology, arm.params)
                stack.callback(_close_into, entry["arm_details"], arm.label, switch)
            switches[arm.label] = switch
            entry["prepare_s"][arm.label] = round(time.perf_counter() - began, 3)
        live = stack.enter_context(LiveTraffic(topology, group.workload, group.params, f"{run_id}-{group.workload}"))
        entry["pids"] = live.pids
        sample = Sampler(live, {label: s.tasks() for label, s in switches.items() if s.tasks()})
        time.sleep(settings.warmup_s)
        began = time.monotonic()
        cycle = 0
        entry["stop_reason"] = "time cap"
        while True:
            order = [arm.label for arm in arms]
            rng.shuffle(order)
            for label in order:
                window: dict[str, Any] = {"cycle": cycle, "arm": label, "on": sample()}
                with critical():
                    switches[label].on()
                time.sleep(settings.settle_s)
                window["start"] = sample()
                window["slices"] = _slices(live, window["start"]["t"] + settings.window_s)
                window["end"] = sample()
                with critical():
                    window["off"] = switches[label].off()
                window["off_at"] = round(time.monotonic(), 6)
                if not live.alive():
                    raise RuntimeError(f"the {group.workload} agents stopped during the measurement")
                entry["windows"].append(window)
            cycle += 1
            entry["final"] = sample()  # closes the last on-period; replaced after every cycle
            with critical():
                save()
            result = toggle_stats.analyse_group(entry)
            widths = toggle_stats.progress_widths(result)
            elapsed = time.monotonic() - began
            say(f"{group.workload}: cycle {cycle}, {elapsed:.0f} s: half-widths "
                + ", ".join(f"{name} ±{w:.1f} pp" if w is not None else f"{name} -" for name, w in widths.items()))
            if cycle >= settings.min_cycles and widths and all(
                    w is not None and w <= settings.decide_pp for w in widths.values()):
                entry["stop_reason"] = "decided"
                break
            if cycle >= settings.min_cycles and elapsed + elapsed / cycle > settings.max_s:
                break  # another cycle would pass the cap (min_cycles are always run)
        entry["elapsed_s"] = round(time.monotonic() - began, 3)
        time.sleep(settings.settle_s)
        entry["final"] = sample()
        entry["cycles"] = cycle
    entry["live"] = live.result
    entry["status"] = "complete"


def _close_into(details: dict[str, Any], label: str, switch: Any) -> None:
    """Close one observer; a failure is recorded (never masks what ended the measurement)."""
    with critical():
        try:
            details[label] = switch.close()
        except Exception as exc:  # the observer is released by its own error paths
            details[label] = {"close_error": f"{type(exc).__name__}: {exc}"}


def run_groups(groups: list[Group], record: Any, run_id: str, say: Say) -> None:
    """Every group in turn, into record.data["toggle"]; a failed group is recorded and the run goes on.

    The groups' caps are one budget: what a group leaves unused (it was decided early) is shared
    equally by the groups after it, so a run never takes longer than its caps add up to and the
    time goes where the intervals are still wide."""
    record.data.setdefault("toggle", [])
    spare = 0.0
    for number, group in enumerate(groups):
        share = spare / (len(groups) - number)
        spare -= share
        group.settings = dataclasses.replace(group.settings, max_s=round(group.settings.max_s + share, 3))
        entry: dict[str, Any] = {"budget_share_s": round(share, 3)}
        record.data["toggle"].append(entry)
        say(f"toggling {group.workload}: {', '.join(a.label for a in group.arms)} "
            f"(windows of {group.settings.window_s:g} s, up to {group.settings.max_s:.0f} s)")
        try:
            measure(group, run_id, entry, record.save, say, seed=zlib.crc32(f"{run_id}/{number}".encode()))
        except Interrupted:
            entry["status"] = "interrupted"
            raise
        except UsageError:
            raise
        except Exception as exc:
            entry.update({"status": "failed", "error": f"{type(exc).__name__}: {exc}"})
            say(f"toggling {group.workload} failed: {exc}")
        finally:
            with critical():
                record.save()
        spare += max(group.settings.max_s - entry.get("elapsed_s", group.settings.max_s), 0.0)
