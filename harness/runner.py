"""The runner owns the measurement loop; backends and workloads only supply hooks.

One trial:
    fresh topology -> backend.attach (timed apart: compile/open is not the workload's cost)
    -> snapshot SNMP counters (both namespaces) and CPU time (/proc/stat, cpuacct)
    -> workload.run -> GroundTruth
    -> snapshot again -> attachment.detach -> Observation -> trial record (raw numbers only)
Trials are interleaved across cells in a rotating order, so slow drift on a noisy machine lands on
every backend alike, and run.json is saved after every trial.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from netns import Topology

from . import counters, machine, preflight, tcp
from .flows import flow_sample, scored_from_hooks
from .backends import Backend, get_backend
from .errors import Interrupted, UsageError
from .headers import find_headers
from .interrupts import check as check_interrupt, critical
from .kernel import KernelProbe, probe
from .params import Param, parse_setting, resolve_plugin, split_for_plugins
from .record import RunRecord, new_run_id, utc_now
from .system import require_root, run_cgroup, run_lock, tracefs_mounted
from .toggle import Group, run_groups
from .workloads import Workload, get_workload


@dataclass(frozen=True)
class Cell:
    workload: Workload
    backend: Backend
    workload_params: dict[str, Any]
    backend_params: dict[str, Any]

    @property
    def setting(self) -> str:
        """`tracepoint`, or `tracepoint[mode=aggregate]` when a backend parameter differs from its
        default (the same backend can be measured in several settings)."""
        changed = [f"{p.name}={self.backend_params[p.name]}" for p in self.backend.params
                   if self.backend_params.get(p.name) != p.default]
        return self.backend.name + (f"[{','.join(changed)}]" if changed else "")

    @property
    def label(self) -> str:
        """`churn/tracepoint[mode=aggregate]`: the workload and the setting."""
        return f"{self.workload.name}/{self.setting}"


def plan(workload_names: list[str], backend_names: list[str], assignments: dict[str, str]) -> list[Cell]:
    """Validate names and parameters up front: bad input fails before anything is touched.

    A backend may carry parameters of its own, written as the record labels it
    (`tracepoint[flavour=tp]`): they override `-p` for that setting only, so one run can measure
    the same backend in several settings side by side."""
    if not workload_names:
        raise UsageError("no workload given")
    if not backend_names:
        raise UsageError("no backend given")
    for kind, names in (("workload", workload_names), ("backend", backend_names)):
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise UsageError(f"{kind} {', '.join(sorted(duplicates))} given twice")
    settings = [parse_setting(text) for text in backend_names]
    workloads = [get_workload(n) for n in workload_names]
    backends = {name: get_backend(name) for name, _ in settings}
    plugins: dict[str, tuple[Param, ...]] = {}
    for plugin in (*workloads, *backends.values()):
        plugins[plugin.name] = tuple(plugin.params)
    routed = split_for_plugins(assignments, plugins)
    resolved = {workload.name: resolve_plugin(workload, routed.get(workload.name, {})) for workload in workloads}
    chosen: list[tuple[Backend, dict[str, Any]]] = []
    for text, (name, own) in zip(backend_names, settings):
        backend = backends[name]
        values = resolve_plugin(backend, {**routed.get(name, {}), **own})
        if any(b is backend and v == values for b, v in chosen):
            raise UsageError(f"backend {text} is a setting already given (every parameter the same)")
        chosen.append((backend, values))
    return [
        Cell(workload, backend, resolved[workload.name], values)
        for workload in workloads
        for backend, values in chosen
    ]


def build_cell(workload_name: str, workload_params: dict[str, str], backend_name: str,
               backend_params: dict[str, str]) -> Cell:
    """One cell from names and textual parameters, validated as `plan` validates them."""
    workload, backend = get_workload(workload_name), get_backend(backend_name)
    return Cell(workload, backend, resolve_plugin(workload, workload_params), resolve_plugin(backend, backend_params))


def interleaved(cells: list[Cell], trials: int) -> list[tuple[Cell, int]]:
    """(cell, trial index) in rotating order: A B C, B C A, C A B, ..."""
    if not cells:
        return []
    order = []
    for trial in range(trials):
        shift = trial % len(cells)
        for cell in cells[shift:] + cells[:shift]:
            order.append((cell, trial))
    return order


def run_trial(cell: Cell, run_id: str) -> dict[str, Any]:
    """One trial of `cell` in a topology of its own: attach, run the workload, detach; the trial's record.

    Raw numbers only, status "ok"; an exception propagates once the observer and the namespaces are gone.
    """
    trial: dict[str, Any] = {"started_at": utc_now()}
    with Topology(run_id, guard=critical) as topology:
        trial["topology_setup_s"] = round(topology.setup_s or 0.0, 4)
        started = time.perf_counter()
        with critical():
            attachment = cell.backend.attach(topology, cell.backend_params)
        trial["attach_s"] = round(time.perf_counter() - started, 4)
        detached = False
        try:
            snmp_before = {host.role: counters.read_snmp(host) for host in topology.hosts}
            cpu_before = counters.read_cpu_ticks()
            truth = cell.workload.run(topology, cell.workload_params)
            cpu_after = counters.read_cpu_ticks()
            attachment.loop_ended()  # what the observer does from here on is its deferred work
            trial["settle"] = settle(topology)
            snmp_after = {host.role: counters.read_snmp(host) for host in topology.hosts}
            started = time.perf_counter()
            with critical():
                observation = attachment.detach()
                detached = True
            # sampled events for per-flow matching: stored apart from the observation (bounded by
            # the consumers' fixed tables), matched by the analysis
            flow_events = observation.details.pop("flow_events", None)
            trial["detach_s"] = round(time.perf_counter() - started, 4)
        finally:
            if not detached:
                with critical():
                    attachment.close()
    trial.update(
        {
            "status": "ok",
            "duration_s": round(truth.duration_s, 6),
            "operations": truth.operations,
            "operation_rate": round(truth.operations / truth.duration_s, 2) if truth.duration_s else None,
            "ground_truth": {
                "generator": truth.generator,
                "nstat": {
                    role: counters.snmp_delta(snmp_before[role], snmp_after[role]) for role in snmp_before
                },
                "expected": truth.expected,
                "pids": truth.pids,
            },
            "latency": truth.latency,
            # system-wide CPU over the measured loop when the workload bracketed it, else the trial
            "cpu_seconds": counters.cpu_seconds_delta(
                *((truth.cpu_ticks["before"], truth.cpu_ticks["after"]) if truth.cpu_ticks
                  else (cpu_before, cpu_after))
            ),
            "cpu_scope": "measured loop" if truth.cpu_ticks else "whole workload",
            "cpu_count": os.cpu_count() or 1,
            "observed": observation.to_dict(),
        }
    )
    foreign = trial["cpu_seconds"].get("foreign")
    if foreign is not None and truth.duration_s:  # the host's CPU outside the run's cgroup
        trial["foreign_share"] = round(foreign / (truth.duration_s * trial["cpu_count"]), 4)
    if truth.flows is not None and flow_events is not None:
        scored = sorted(flow_events.get("scored") or
                        scored_from_hooks(observation.details.get("hooks_attached", [])))
        if scored:
            trial["flow_sample"] = flow_sample(truth.flows, {**flow_events, "scored": scored})
    return trial


# States in which a socket's remaining transitions need no further action by anyone.
_SETTLED_STATES = frozenset({tcp.TIME_WAIT, tcp.LISTEN, tcp.CLOSE_WAIT})


def settle(topology: Topology, timeout_s: float = 3.0) -> dict[str, Any]:
    """Wait until the kernel has finished what the workload started, before counting.

    A workload's loop ends when its last close() returns, but the peer processes that FIN later
    (in softirq): the last connections' final transitions may still be in flight. Counters and
    observers are read only once every socket in both namespaces is at rest (TIME_WAIT, or a
    state the workload deliberately leaves). If that never happens, the trial says what remained.
    """
    started = time.monotonic()
    while True:
        remaining = {
            host.role: {state: n for state, n in counters.tcp_states(host).items() if state not in _SETTLED_STATES}
            for host in topology.hosts
        }
        remaining = {role: states for role, states in remaining.items() if states}
        waited = time.monotonic() - started
        if not remaining or waited > timeout_s:
            return {"waited_s": round(waited, 4), "unsettled": remaining}
        time.sleep(0.005)


Progress = Callable[[int | None, int | None, str], None]  # (done, total, message)


def execute(
    cells: list[Cell],
    trials: int,
    out_root: Path,
    progress: Progress | None = None,
    run_id: str | None = None,
    strict: bool = True,
    warmup: int = 0,
    meta: dict[str, Any] | None = None,
    toggle: "list[Group] | None" = None,
    measure_anyway: bool = False,
) -> RunRecord:
    """Run every cell `trials` times, interleaved; returns the saved record (also on interrupt).

    strict: a backend unavailable on this kernel is an error (the user named it); otherwise the
    cell is recorded as unavailable, with the probe's reason, and skipped.
    warmup: untimed trials of each workload's first cell before measuring (caches, page
    allocator, first-compile costs), recorded apart under "warmup".
    toggle: workloads whose overhead is measured by switching observers on and off (toggle.py),
    before the trials; their raw windows go to run.json's "toggle".
    measure_anyway: measure on a host the preflight finds unfit (foreign tracers or captures, a
    busy host), marking the record and every cell; tpbench's own leftovers are refused regardless.
    """
    require_root("tpbench run")
    toggle = toggle or []
    if trials < 1:
        raise UsageError("--trials must be >= 1")
    run_id = run_id or new_run_id()
    say = progress or (lambda done, total, message: None)
    with _fit_host(run_id, measure_anyway, say) as fitness:
        kernel_probe = probe()
        availability = {cell.label: cell.backend.availability(kernel_probe, cell.backend_params) for cell in cells}
        refused = [f"{c.backend.name}: {availability[c.label].reason}" for c in cells
                   if not availability[c.label].available]
        for group in toggle:  # an arm this kernel cannot run is dropped (strict: refused), with its reason
            keep = []
            for arm in group.arms:
                found = arm.backend.availability(kernel_probe, arm.params)
                if found.available:
                    keep.append(arm)
                else:
                    refused.append(f"{arm.backend.name}: {found.reason}")
                    say(None, None, f"skip {group.workload}/{arm.label} (toggled): {found.reason}")
            group.arms = keep
        if strict and refused:
            raise UsageError(f"backend unavailable on this kernel ({'; '.join(dict.fromkeys(refused))})")
        headers = find_headers()
        os.environ.update(headers.environment())  # bcc reads BCC_KERNEL_SOURCE when it compiles
        directory = out_root / run_id
        try:
            directory.mkdir(parents=True, exist_ok=False)
        except OSError as exc:
            raise UsageError(f"cannot create the run folder {directory}: {exc.strerror}") from None
        record = RunRecord(directory, run_id, {**_meta(kernel_probe, headers.to_dict(), cells, trials),
                                               "preflight": fitness, **(meta or {})})
        # keyed by the cell object: labels name a backend setting and repeat across workload groups
        # (a sweep measures churn/none at several rates), so they cannot key the cells
        runnable: dict[int, dict[str, Any]] = {}
        for cell in cells:
            entry = record.add_cell(
                {
                    "label": cell.label,
                    "setting": cell.setting,
                    "workload": cell.workload.name,
                    "backend": cell.backend.name,
                    "operation": cell.workload.operation,
                    "params": {"workload": cell.workload_params, "backend": cell.backend_params},
                    "available": availability[cell.label].available,
                    "availability": availability[cell.label].reason,
                    "missing_hooks": list(availability[cell.label].missing_hooks),
                    **({"warnings": fitness["warnings"]} if fitness["warnings"] else {}),
                }
            )
            if availability[cell.label].available:
                runnable[id(cell)] = entry
            else:
                say(None, None, f"skip {cell.label}: {availability[cell.label].reason}")
        record.save()
        schedule = [(c, t) for c, t in interleaved(cells, trials) if id(c) in runnable]
        warmups = []
        for cell in cells:
            key = (cell.workload.name, repr(sorted(cell.workload_params.items())))
            if id(cell) in runnable and key not in {k for k, _ in warmups}:
                warmups.append((key, cell))
        warmups = [cell for _, cell in warmups] * warmup
        record.data["warmup"] = []
        started = time.monotonic()
        cgroup = run_cgroup(run_id)  # entered here, left in the finally below (the whole measurement)
        group_dir = cgroup.__enter__()
        counters.RUN_CPUACCT_USAGE = str(group_dir / "cpuacct.usage") if group_dir else None
        record.data["run_cgroup"] = str(group_dir) if group_dir else None
        try:
            if toggle:
                record.data["toggle"] = []
                run_groups(toggle, record, run_id, lambda message: say(None, None, message))
                started = time.monotonic()  # the trials' ETA counts the trials only
            for number, cell in enumerate(warmups, 1):
                check_interrupt()  # a signal Python dropped mid-trial is delivered here at the latest
                say(0, len(schedule), f"warm-up {number}/{len(warmups)}: {cell.label}")
                try:
                    trial = run_trial(cell, run_id)
                    record.data["warmup"].append({"cell": cell.label, "status": "ok",
                                                  "operation_rate": trial["operation_rate"]})
                except Interrupted:
                    raise
                except Exception as exc:
                    record.data["warmup"].append({"cell": cell.label, "status": "failed", "error": str(exc)})
            for done, (cell, index) in enumerate(schedule, 1):
                check_interrupt()
                say(done - 1, len(schedule), f"{cell.label} trial {index + 1}/{trials}")
                try:
                    trial = run_trial(cell, run_id)
                except (Interrupted, UsageError):
                    raise
                except Exception as exc:  # recorded, and the run goes on
                    trial = {
                        "status": "failed",
                        "error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc(limit=6),
                    }
                trial["index"] = index
                with critical():
                    runnable[id(cell)]["trials"].append(trial)
                    record.save()
                elapsed = time.monotonic() - started
                eta = elapsed / done * (len(schedule) - done)
                say(done, len(schedule), f"[{done}/{len(schedule)}] {cell.label} trial {index + 1}: "
                    f"{_trial_line(trial, cell)} (eta {eta:.0f} s)")
        except Interrupted as exc:
            with critical():  # a second Ctrl-C must not tear this write (nor re-raise: one is unwinding)
                record.finish("interrupted", str(exc))
            raise
        finally:
            counters.RUN_CPUACCT_USAGE = None
            cgroup.__exit__(None, None, None)
        with critical():
            record.finish("complete")
    return record


@contextlib.contextmanager
def _fit_host(run_id: str, measure_anyway: bool, say: Progress) -> Iterator[dict[str, Any]]:
    """The run lock, the preflight (preflight.py) and tracefs mounted, in that order: under the
    lock nothing found can be a live run's, and tpbench's leftovers are looked for before this run
    makes state of its own (its tracefs mount marker)."""
    with run_lock(run_id):
        left = preflight.leftovers()
        with tracefs_mounted():
            fitness = preflight.check(left)
            preflight.enforce(fitness, measure_anyway)
            fitness["measured_anyway"] = bool(fitness["warnings"])
            for warning in fitness["warnings"]:
                say(None, None, f"WARNING (measuring anyway): {warning}")
            yield fitness


def _trial_line(trial: dict[str, Any], cell: Cell) -> str:
    if trial["status"] != "ok":
        return f"FAILED {trial['error']}"
    return f"{trial['operation_rate']:,.0f} {cell.workload.operation}s/s over {trial['duration_s']:.2f} s"


def _meta(kernel_probe: KernelProbe, headers: dict[str, Any], cells: list[Cell], trials: int) -> dict[str, Any]:
    uname = os.uname()
    return {
        "kernel": {"release": uname.release, "version": uname.version, "machine": uname.machine},
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "executable": sys.executable},
        "machine": machine.collect(),  # CPU model, MHz, flags, hypervisor, memory, boot id (machine.py)
        "headers": headers,
        "probe": kernel_probe.to_dict(),
        "config": {
            "trials": trials,
            "cells": [c.label for c in cells],
            "order": "interleaved, rotating",
            "workloads": sorted({c.workload.name for c in cells}),
            "backends": sorted({c.backend.name for c in cells}, key=[c.backend.name for c in cells].index),
        },
    }
