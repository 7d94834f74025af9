"""run.json's schema: what `tpbench report` and `tpbench compare` read from a run record, checked
before they read it, so a malformed record is refused in one line naming its first bad field
(`cells[0].params: missing`, `cells: expected a list, got the string "x"`) instead of failing
inside the analysis. The loader (report.load_run) and the writer (record.RunRecord.finish) share it.

The schema follows what the analysis (harness/analysis/, report*.py, `compare`) reads:
- a field the analysis reads unconditionally is required (`cells[].params.workload`, `kernel.release`;
  `observed`, `cpu_seconds.busy`... of a trial whose status is "ok");
- a field it reads with a default is optional, but checked for its type when present (an old
  record lacks `machine`, `toggle`, `preflight`, a cell's `setting`);
- what it never reads (a backend's own details beyond the few the analysis uses, the capability
  probe, the generator's counts) is not checked, and unknown fields are allowed: a newer writer
  adds fields, and a change of shape is a new schema_version.
The schema is data: a few small spec classes below, no third-party validator.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

from .errors import UsageError
from .record import SCHEMA_VERSION

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class RecordError(UsageError):
    """A run record the analysis cannot read: `path` names the first bad field (`cells[0].params`)."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path, self.problem = path, problem


def describe(value: Any) -> str:
    """A JSON value as an error message names it: `the string "x"`, `a list`, `null`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {json.dumps(value[:40] + ('...' if len(value) > 40 else ''))}"
    return "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else type(value).__name__


def _key(path: str, name: str) -> str:
    return (f"{path}.{name}" if path else name) if _IDENTIFIER.match(name) else f"{path}[{json.dumps(name)}]"


# ---------------------------------------------------------------- specs

class Spec:
    """One JSON value's expected shape; `what` names it in messages ("a list")."""

    what = "a value"

    def matches(self, value: Any) -> bool:
        """Whether the value has this spec's JSON type (its content is check()'s business)."""
        return True

    def check(self, value: Any, path: str) -> None:
        """Raise RecordError at the first part of `value` (found at `path`) that does not fit."""
        if not self.matches(value):
            raise RecordError(path, f"expected {self.what}, got {describe(value)}")


class Scalar(Spec):
    """A string, number, true/false or null: a type test and its name."""

    def __init__(self, what: str, test: Callable[[Any], bool]):
        self.what, self.test = what, test

    def matches(self, value: Any) -> bool:
        """The type test."""
        return self.test(value)


ANY = Spec()
STR = Scalar("a string", lambda v: isinstance(v, str))
INT = Scalar("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool))
NUM = Scalar("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
BOOL = Scalar("true or false", lambda v: isinstance(v, bool))
NULL = Scalar("null", lambda v: v is None)
PACKED = Scalar('a string of whole numbers ("12 0 1")', lambda v: isinstance(v, str) and all(
    part.lstrip("-").isdigit() for part in v.split()))


class AnyOf(Spec):
    """One of several shapes, chosen by the value's JSON type (the first alternative that matches it)."""

    def __init__(self, *options: Spec):
        self.options = options
        names = [o.what for o in options]
        self.what = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]

    def matches(self, value: Any) -> bool:
        """Whether any alternative has the value's type."""
        return any(o.matches(value) for o in self.options)

    def check(self, value: Any, path: str) -> None:
        """Check against the first alternative of the value's type."""
        for option in self.options:
            if option.matches(value):
                option.check(value, path)
                return
        super().check(value, path)


def nullable(spec: Spec) -> AnyOf:
    """`spec`, or null."""
    return AnyOf(spec, NULL)


class List(Spec):
    """A list whose every item fits `items` (at least `min_items` of them)."""

    what = "a list"

    def __init__(self, items: Spec = ANY, min_items: int = 0):
        self.items, self.min_items = items, min_items

    def matches(self, value: Any) -> bool:
        """A JSON array."""
        return isinstance(value, list)

    def check(self, value: Any, path: str) -> None:
        """The type, the length, then each item in order."""
        super().check(value, path)
        if len(value) < self.min_items:
            raise RecordError(path, f"expected at least {self.min_items} items, got {len(value)}")
        if self.items is not ANY:
            for index, item in enumerate(value):
                self.items.check(item, f"{path}[{index}]")


class Map(Spec):
    """An object with any keys, every value fitting `values` (counts by name, sides, arms...)."""

    what = "an object"

    def __init__(self, values: Spec = ANY):
        self.values = values

    def matches(self, value: Any) -> bool:
        """A JSON object."""
        return isinstance(value, dict)

    def check(self, value: Any, path: str) -> None:
        """The type, then each value in order."""
        super().check(value, path)
        if self.values is not ANY:
            for name, item in value.items():
                self.values.check(item, _key(path, name))


class Obj(Map):
    """An object with named fields: `required` ones must be there, `optional` ones are checked when
    they are, `values` checks every other field; each `when` (predicate, reason, spec) checks the
    object against one more spec when the predicate picks it (what an ok trial must hold), and a
    field that spec misses is "missing (<reason> needs it)" (just "missing" when the reason is empty)."""

    def __init__(self, required: dict[str, Spec] | None = None, optional: dict[str, Spec] | None = None,
                 values: Spec = ANY, when: tuple[tuple[Callable[[dict[str, Any]], bool], str, Spec], ...] = ()):
        super().__init__(values)
        self.required, self.optional, self.when = required or {}, optional or {}, when

    def check(self, value: Any, path: str) -> None:
        """The type, the required fields in order, the optional ones, the rest, then the conditions."""
        Spec.check(self, value, path)
        for name, spec in self.required.items():
            if name not in value:
                raise RecordError(_key(path, name), "missing")
            spec.check(value[name], _key(path, name))
        for name, spec in self.optional.items():
            if name in value:
                spec.check(value[name], _key(path, name))
        if self.values is not ANY:
            for name, item in value.items():
                if name not in self.required and name not in self.optional:
                    self.values.check(item, _key(path, name))
        for applies, reason, spec in self.when:
            if applies(value):
                try:
                    spec.check(value, path)
                except RecordError as exc:
                    if not reason or exc.problem != "missing":
                        raise
                    raise RecordError(exc.path, f"missing ({reason} needs it)") from None


# ---------------------------------------------------------------- run.json

COUNTS = Map(NUM)  # name -> count: transitions, events, nstat counters
SCALAR = AnyOf(STR, NUM, BOOL, NULL)
SIDES = ("client", "server")
# analysis/flowmatch.py's OUTCOMES: every one is summed from an older record's per-flow result
FLOW_OUTCOMES = ("exact", "missing", "duplicated", "unexpected", "out_of_order", "unseen")
# analysis/crosscheck.py pairs the probes' trials with the tracepoint's when a run has a probe cell
PROBES = ("kprobe", "fentry")
ESTIMATORS = ("mean", "median")  # analysis/toggle_stats.py's, of the toggled cycles' differences
CROSS_CHECKED = (*PROBES, "tracepoint")

SIDE_COUNTS = Obj(optional={"events": COUNTS, "transitions": COUNTS})

DETAILS = Obj(optional={  # only what the analysis reads; each backend records much more
    "mode": nullable(STR),
    "bpf_stats": Obj(optional={"ns_per_event": nullable(NUM), "run_time_ns": NUM, "run_cnt": NUM}),
    "consumer_cpu_s": AnyOf(NUM, Map(), NULL),  # a dict may hold an "error" (pcap.py)
    "deferred_cpu_s": nullable(NUM),
    "lost_unit": nullable(STR),
    "invisible": nullable(Map(STR)),
    "hooks_attached": List(STR),
    "functions": Map(),
    "assumptions": List(STR),
    "pcap_stats": Obj(optional={"caveat": STR}),
    "attribution": List(Obj(required={"side": STR, "kind": STR, "pid": INT, "count": NUM},
                            optional={"comm": nullable(STR)})),
    "fidelity": nullable(Obj(optional={  # the witnesses' field-by-field check (-p check=true)
        "per_kind": nullable(Map(Obj(optional={"fields_differing": nullable(COUNTS)})))})),
})

OBSERVED = Obj(
    required={"lost": nullable(NUM), "details": DETAILS},
    optional={"events": COUNTS, "transitions": COUNTS, "sides": Map(SIDE_COUNTS)},
)

EXPECTED_SIDE = Obj(optional={
    "transitions": COUNTS, "events": COUNTS, "nstat": COUNTS, "at_least": COUNTS,
    "equals_nstat": Map(STR), "inexact": Map(STR),
})

GROUND_TRUTH = Obj(optional={
    "generator": nullable(Obj(optional={"offloads": nullable(Map(Map()))})),
    "expected": Map(EXPECTED_SIDE),
    "nstat": Map(COUNTS),
    "pids": Map(List(INT)),
})

FLOW_SAMPLE = Obj(required={  # raw per-flow sample (from 2026-12-05), matched by analysis/flowmatch.py
    "truth": Obj(required={"flows": List(PACKED), "sample": INT, "overflow": NUM,
                           "per_connection": Obj(required={side: COUNTS for side in SIDES})}),
    "observed": Obj(required={"events": List(PACKED), "scored": List(STR)},
                    optional={"overflow": NUM, "invisible": List(STR), "clock_tolerance_ns": NUM,
                              "sk_overflow": NUM}),
})

FLOWS = Obj(  # the per-flow result older records stored instead of the sample
    required={"sample_every": INT, "flows": NUM, "truth_overflow": NUM, "events_overflow": NUM,
              "unmatched_events": COUNTS,
              "sides": Obj(required={side: Obj(required={name: NUM for name in FLOW_OUTCOMES}) for side in SIDES}),
              "examples": List(Obj(required={"side": STR, "port": NUM, "outcomes": List(STR),
                                             "events": List(STR)}))},
    optional={"scored": List(STR), "not_scored": List(STR), "sk_overflow": NUM},
)


def _ok(trial: dict[str, Any]) -> bool:
    return trial.get("status") == "ok"


TRIAL = Obj(
    required={"status": STR, "index": INT},
    optional={
        "operation_rate": nullable(NUM), "ground_truth": GROUND_TRUTH,
        "latency": nullable(Obj(optional={"p50": NUM, "p99": NUM})),
        "foreign_share": nullable(NUM), "cpu_count": INT,
        "flow_sample": FLOW_SAMPLE, "flows": nullable(FLOWS),
        "error": STR, "traceback": STR,
    },
    when=((_ok, 'a trial with status "ok"', Obj(required={
        "operations": NUM, "duration_s": NUM,
        "cpu_seconds": Obj(required={"busy": NUM}, values=nullable(NUM)),
        "observed": OBSERVED,
    })),),
)

CELL = Obj(
    required={
        "workload": STR,
        "params": Obj(required={"workload": Map(SCALAR), "backend": Map(SCALAR)}),
        "backend": STR,
        "label": STR,
        "trials": List(TRIAL),
    },
    optional={"setting": STR, "operation": nullable(STR), "available": BOOL,
              "availability": nullable(STR), "missing_hooks": List(STR), "warnings": List(STR), "timing": STR},
)


# A run with an available kprobe or fentry cell has its trials compared event by event with the
# tracepoint's (analysis/crosscheck.py), and their in-kernel cost from bpf_stats' totals: the ok
# trials of those three backends' cells then need both.
def _cross_checked_run(run: dict[str, Any]) -> bool:
    return any(c.get("available") and c["backend"] in PROBES for c in run["cells"])


def _cross_checked_cell(cell: dict[str, Any]) -> bool:
    return bool(cell.get("available")) and cell["backend"] in CROSS_CHECKED


_CROSS_CHECKED_TRIAL = Obj(required={"observed": Obj(required={
    "sides": Map(Obj(required={"events": COUNTS, "transitions": COUNTS})),
    "details": Obj(required={"bpf_stats": Obj(required={"run_time_ns": NUM, "run_cnt": NUM})}),
})})
CROSS_CHECK = Obj(required={"cells": List(Obj(when=((
    _cross_checked_cell, "a kprobe, fentry or tracepoint cell in a run with a kprobe or fentry cell",
    Obj(required={"trials": List(Obj(when=((_ok, "", _CROSS_CHECKED_TRIAL),)))})),)))})

SAMPLE = Obj(  # one reading of the toggled measurement's counters (harness/toggle.py's Sampler)
    required={"t": NUM, "ops": NUM, "cpu_ns": nullable(NUM), "stat": List(NUM, min_items=8), "tasks": COUNTS},
    optional={"run_ns": nullable(NUM)},
)


class ToggleEntry(Obj):
    """A toggled group: its fields, then what the window arithmetic (analysis/toggle_stats.py)
    assumes of every sample of the group: the same observers' tasks, and cpu_ns read in all or none."""

    def check(self, value: Any, path: str) -> None:
        """The fields, then the samples against the group's first."""
        super().check(value, path)
        samples = [(f"{path}.windows[{i}].{when}", w[when]) for i, w in enumerate(value.get("windows") or [])
                   for when in ("on", "start", "end")]
        if value.get("final") is not None:
            samples.append((f"{path}.final", value["final"]))
        if not samples:
            return
        first_path, first = samples[0]
        for where, sample in samples[1:]:
            if set(sample["tasks"]) != set(first["tasks"]):
                raise RecordError(f"{where}.tasks", f"expected the observers of {first_path}.tasks "
                                  f"({', '.join(sorted(first['tasks'])) or 'none'}), got "
                                  f"{', '.join(sorted(sample['tasks'])) or 'none'}")
            if (sample["cpu_ns"] is None) != (first["cpu_ns"] is None):
                raise RecordError(f"{where}.cpu_ns", f"expected {'null' if first['cpu_ns'] is None else 'a number'} "
                                  f"as in {first_path} (cpuacct is read in every sample or in none), "
                                  f"got {describe(sample['cpu_ns'])}")


TOGGLE_ENTRY = ToggleEntry(optional={
    "workload": nullable(STR), "params": nullable(Map()), "status": STR,
    "settings": nullable(Obj(optional={"estimator": Scalar(" or ".join(map(json.dumps, ESTIMATORS)),
                                                           lambda v: v in ESTIMATORS)})),
    "arms": List(Obj(required={"label": STR, "backend": STR, "role": STR, "level": nullable(STR)},
                     optional={"consumer": nullable(STR), "params": Map()})),
    "windows": List(Obj(
        required={"cycle": INT, "arm": STR, "on": SAMPLE, "start": SAMPLE, "end": SAMPLE},
        optional={"slices": nullable(List(List(NUM, min_items=2))),
                  "off": nullable(Obj(optional={"events": nullable(NUM), "lost": nullable(NUM),
                                                "run_time_ns": nullable(NUM)}))})),
    "final": nullable(SAMPLE), "hz": NUM, "cpus": NUM, "cycles": INT, "stop_reason": nullable(STR),
})

MACHINE = Obj(optional={  # harness/machine.py (from 2026-12-08; older records have host.cpus only)
    "cpu_model": nullable(STR), "cpu_vendor": nullable(STR), "cpu_signature": nullable(STR),
    "microcode": nullable(STR), "cpu_mhz": nullable(List(NUM)), "cpu_flags": nullable(STR),
    "cpu_bugs": nullable(STR), "cpus": nullable(INT), "memory_total_kib": nullable(INT), "boot_id": nullable(STR),
    "hypervisor": nullable(Obj(optional={"cpu_flag": nullable(BOOL)}, values=nullable(STR))),
})

RUN = Obj(
    required={  # cells first: a record's body is its cells, and the analysis reads them first
        "cells": List(CELL),
        "run_id": STR,
        "status": STR,
        "kernel": Obj(required={"release": STR, "machine": STR}, optional={"version": STR}),
        "host": Obj(required={"python": STR, "cpus": nullable(INT)}),
        "headers": Obj(required={"kind": STR}, optional={"package_version": nullable(STR), "detail": nullable(STR)}),
        "config": Obj(required={"trials": INT},
                      optional={"cells": List(STR), "workloads": List(STR), "backends": List(STR), "order": STR}),
    },
    optional={
        "started_at": nullable(STR), "finished_at": nullable(STR), "command_line": List(STR),
        "git": nullable(Obj(optional={"commit": nullable(STR), "dirty": BOOL})),
        "profile": nullable(STR), "error": STR, "run_cgroup": nullable(STR),
        "preflight": Obj(required={
            "cpu": Obj(required={"busy_share": NUM, "steal_share": NUM, "seconds": NUM}),
            "warnings": List(STR)}),
        "vm": Obj(optional={"release": nullable(STR), "emulated": BOOL, "memory": nullable(STR),
                            "cpus": nullable(INT), "accelerator": nullable(STR)}),
        "machine": nullable(MACHINE),
        "warmup": List(Obj(optional={"cell": STR, "status": STR})),
        "toggle": List(TOGGLE_ENTRY),
    },
    when=((_cross_checked_run, "", CROSS_CHECK),),
)


def validate_run(data: Any, newest: int = SCHEMA_VERSION) -> None:
    """Raise RecordError naming the first field of `data` (a parsed run.json) that the analysis
    cannot read; a schema_version above `newest` is refused before anything else (its shape may differ)."""
    if not isinstance(data, dict):
        raise RecordError("", f"not a tpbench run record (expected an object, got {describe(data)})")
    absent = [name for name in ("schema_version", "cells") if name not in data]
    if absent:
        raise RecordError("", f"not a tpbench run record (no {'/'.join(absent)})")
    version = data["schema_version"]
    INT.check(version, "schema_version")
    if version > newest:
        raise RecordError("", f"has schema {version}, newer than this tpbench ({newest})")
    if version < 1:
        raise RecordError("schema_version", f"expected 1 to {newest}, got {version}")
    RUN.check(data, "")


__all__ = ["RUN", "RecordError", "describe", "validate_run"]
