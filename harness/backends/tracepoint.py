"""`tracepoint` backend: eBPF via bcc on the seven stable TCP tracepoints.

Uses sock:inet_sock_set_state (Linux 4.16+) for every TCP state change, and tcp:tcp_retransmit_skb,
tcp:tcp_retransmit_synack, tcp:tcp_send_reset, tcp:tcp_receive_reset, tcp:tcp_destroy_sock
(4.15+) and tcp:tcp_probe (4.16+). The BPF C is tracepoint.bpf.c beside this file.

Modes (both measured, `-p mode=...`):
  stream     every event to user space, 56 bytes each, through a BPF ring buffer (5.8+; a perf
             buffer where the kernel has none), with wake-ups batched; events the kernel could not
             queue are counted in a map. The consumer thread counts them as they arrive (bounded
             memory: one counter per distinct (side, kind, transition, pid, comm)).
  aggregate  counts per side, event kind and transition kept in per-CPU maps, read once at the end:
             what BPF can do that packet capture cannot.
`tracepoint-empty` attaches programs that return at once: the floor of the in-kernel cost.

Flavours (`-p flavour=...`, FLAVOURS below): classic tracepoint programs (tp, tracepoint.bpf.c),
or raw_tp / tp_btf (rawtp.bpf.c) reading TP_PROTO's arguments at the running kernel's BTF offsets,
with a rescue program per tracepoint for the runs the kernel skips and optional classic-tracepoint
witnesses (check=true, witness.bpf.h) that compare every event field by field.

Shared with the kprobe backend:
  bpf_build.py    the BPF source, its -D flags, the compile, raw_tp/tp_btf attachment, bpf_stats reads
  bpf_session.py  the attached session: modes, transports, address filter, bpf_stats, the observation
  ringbuf.py      the stream's consumers in user space (C process, Python thread, Python process)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from netns import Topology

from ..tcp import HOOKS as TCP_HOOKS
from ..errors import UsageError
from ..headers import find_headers
from ..kernel import KernelProbe, probe_tracepoints
from ..params import Param, names_check, parse_names
from .base import Availability, Backend, Observation
from .witness import witness_fidelity
from .bpf_build import (MISSES_COUNTED_FROM, BackendError, Program, attach_raw, is_rescue, kernel_version,
                        raw_offset_flags, read_prog_stats, tracepoint_flags)
from .bpf_session import Session
from .ringbuf import CConsumer, PyProcessConsumer

SOURCE = Path(__file__).with_name("tracepoint.bpf.c")
RAW_SOURCE = Path(__file__).with_name("rawtp.bpf.c")

# short name -> tracepoint (harness.tcp.HOOKS); `-p hooks=state+destroy` selects some, `all` (default) every one
HOOKS = {name: tracepoint for name, (tracepoint, _) in TCP_HOOKS.items()}
HOOK_KINDS = {name: kind for name, (_, kind) in TCP_HOOKS.items()}
# How the programs enter the tracepoints (`-p flavour=...`):
#   tp      classic tracepoint programs (BPF_PROG_TYPE_TRACEPOINT): the kernel assembles the
#           event's record (TP_fast_assign) and the program reads it. Run by trace_call_bpf(),
#           which skips a program while any BPF program runs on the CPU: softirq events are lost
#           under load, and the kernel counts those misses only from 6.7 on.
#   raw_tp  BPF_PROG_TYPE_RAW_TRACEPOINT: the TP_PROTO arguments, fields read through them at
#           BTF offsets (rawtp.bpf.c). Run by __bpf_trace_run(), which skips a program only while
#           that same program runs on the CPU, and counts those misses (6.0+).
#   tp_btf  the same entry as a BPF_PROG_TYPE_TRACING program attached by BTF id (5.5+; refused
#           where the kernel refuses tracing programs, like fentry).
FLAVOURS = ("tp", "raw_tp", "tp_btf")
DEFAULT_FLAVOUR = "raw_tp"  # measured: see the flavour table in README.md


def parse_hooks(text: str) -> tuple[str, ...]:
    """`all` or hooks joined by '+' -> hook names (ValueError on an unknown one)."""
    return parse_names(text, HOOKS)


check_hooks = names_check(HOOKS)


class _TracepointSwitch:
    """The session compiled and loaded once, its tracepoint links made and closed per on-period.

    Off: every perf-event link is closed (bcc's detach_tracepoint), so the tracepoints have no
    program and cost what they cost untraced; the programs, maps, ring buffer and consumer stay.
    Events per on-period are the programs' own run counts (bpf_stats); lost ones are the kernel's
    recursion misses (6.7+) plus ring-buffer reserve failures."""

    def __init__(self, backend: "TracepointBackend", topology: Topology, params: dict[str, Any]):
        self.session = Session(backend, topology, params, python_process=True)
        self.flavour = self.session.program.details.get("flavour", "tp")
        self.misses_counted = kernel_version() >= MISSES_COUNTED_FROM.get(self.flavour, (6, 7))
        try:
            bpf = self.session.bpf
            if self.flavour == "tp":
                self.links = {tp: b"tracepoint__" + tp.replace(b":", b"__") for tp in bpf.tracepoint_fds}
            else:
                self.links = {event: event for event in bpf.raw_tracepoint_fds}
            if not self.links:
                raise BackendError("nothing to switch: the programs attached no tracepoint")
            self._links_off()
            self.totals = self._totals()
        except BaseException:
            self.session.close()
            raise

    def _links_off(self) -> None:
        bpf = self.session.bpf
        if self.flavour == "tp":
            for tp in list(bpf.tracepoint_fds):
                bpf.detach_tracepoint(tp)
        else:
            # rescues first: a rescue program left alone would take every event for a skipped one
            for event in sorted(bpf.raw_tracepoint_fds, key=lambda key: not key.endswith(b"#rescue")):
                bpf.detach_raw_tracepoint(event)

    def _totals(self) -> dict[str, int]:
        totals = {"run_cnt": 0, "run_time_ns": 0, "recursion_misses": 0, "all_runs": 0}
        for name, fd in self.session.programs.items():
            stats = read_prog_stats(fd)
            totals["run_time_ns"] += stats["run_time_ns"]
            totals["all_runs"] += stats["run_cnt"]
            if not is_rescue(name):  # a rescue program's misses lose nothing (see detach)
                totals["run_cnt"] += stats["run_cnt"]
                totals["recursion_misses"] += stats["recursion_misses"]
        rescue = self.session.program.details.get("rescue")
        totals["rescued"] = self.session.percpu_sums("rescued", 1)[0] if rescue else 0
        totals["run_cnt"] += totals["rescued"]
        totals["lost_output"] = self.session.percpu_sums("lost", 1)[0] if self.session.mode == "stream" else 0
        return totals

    def on(self) -> None:
        # runs since the last switch-off: must stay 0 ("off" means no program runs)
        self.runs_while_off = self._totals()["all_runs"] - self.totals["all_runs"]
        for tp, fn in self.links.items():
            if self.flavour == "tp":
                self.session.bpf.attach_tracepoint(tp=tp, fn_name=fn)
            else:
                event, _, role = tp.decode().partition("#")
                attach_raw(self.session.bpf, self.flavour, event, rescue=role == "rescue")

    def off(self) -> dict[str, Any]:
        self._links_off()
        if isinstance(self.session.consumer, PyProcessConsumer):
            self.session.consumer.drain()  # its backlog is this arm's work, not the next window's
        totals = self._totals()
        delta = {key: totals[key] - self.totals[key] for key in totals}
        self.totals = totals
        empty = self.session.empty
        return {"events": delta["run_cnt"], "run_time_ns": delta["run_time_ns"],
                "lost": (delta["lost_output"] if empty else
                         delta["lost_output"] + delta["recursion_misses"] - delta["rescued"]
                         if self.misses_counted else None),
                "recursion_misses": delta["recursion_misses"], "rescued": delta["rescued"],
                "lost_output": delta["lost_output"],
                "runs_while_off": self.runs_while_off}

    def tasks(self) -> list[int]:
        consumer = self.session.consumer
        return [consumer.process.pid] if isinstance(consumer, (CConsumer, PyProcessConsumer)) else []

    def close(self) -> dict[str, Any]:
        observation = self.session.detach()
        details = observation.details
        return {"mode": details["mode"], "hooks_attached": details["hooks_attached"],
                "consumer": details.get("consumer"), "consumer_cpu_s": details.get("consumer_cpu_s"),
                "consumer_max_rss_kib": details.get("consumer_max_rss_kib"), "lost": observation.lost,
                "events": sum(observation.events.values())}


class TracepointBackend(Backend):
    hooks = tuple(HOOKS.values())

    def __init__(self, empty: bool = False):
        self.empty = empty
        hooks_param = Param("hooks", str, "all", "tracepoints to attach: all, or short names joined "
                            f"by '+' ({'+'.join(HOOKS)})", check=check_hooks)
        flavour_param = Param("flavour", str, DEFAULT_FLAVOUR, "program type: tp (classic tracepoint), raw_tp "
                              "(raw tracepoint, TP_PROTO arguments) or tp_btf (the same, BTF-typed)",
                              choices=FLAVOURS)
        if empty:
            self.name = "tracepoint-empty"
            self.description = "the same tracepoints with programs that return at once: the in-kernel floor"
            self.params = (hooks_param, flavour_param)
        else:
            self.name = "tracepoint"
            self.description = "eBPF (bcc) on the 7 stable TCP tracepoints, streamed or aggregated in maps"
            self.params = (
                Param("mode", str, "stream", "stream every event to user space, or aggregate in maps",
                      choices=("stream", "aggregate")),
                hooks_param,
                Param("transport", str, "auto", "stream transport (auto: ring buffer where the kernel has one)",
                      choices=("auto", "ringbuf", "perf")),
                Param("consumer", str, "auto", "stream consumer: c (libbpf, like libbpf-tools) or python "
                      "(bcc callbacks); auto: c with a ring buffer", choices=("auto", "c", "python")),
                Param("buffer_kib", int, 8192, "stream buffer size in KiB (ring total, or perf over all CPUs)",
                      minimum=16, maximum=1 << 20),
                Param("wakeup_batch", int, 64, "unbatched ring: events per consumer wake-up (1: every event)",
                      minimum=1, maximum=65536),
                Param("batch", int, 32, "ring buffer: events staged per CPU and emitted together "
                      "(1: reserve/submit each event)", minimum=1, maximum=256,
                      check=lambda n: None if n & (n - 1) == 0 else "must be a power of two"),
                flavour_param,
                Param("check", bool, False, "raw_tp/tp_btf: attach the classic tracepoints as witnesses and "
                      "compare every event's fields (accounted apart; slows the workload)"),
                Param("rescue", bool, True, "raw_tp/tp_btf: a second program per tracepoint handles the events "
                      "the kernel skips while the first runs (a softirq event nested in a process-context one)"),
            )

    def availability(self, probe: KernelProbe, params: dict[str, Any] | None = None) -> Availability:
        if not probe.available("bcc"):
            return Availability(False, probe["bcc"].reason)
        if not probe.available("headers"):
            return Availability(False, f"no kernel headers for bcc: {probe['headers'].reason}")
        missing = tuple(tp for tp in self.hooks if not probe.available(f"tracepoint:{tp}"))
        if len(missing) == len(self.hooks):
            return Availability(False, "none of the seven TCP tracepoints exists on this kernel", missing)
        note = f"; absent here: {', '.join(missing)}" if missing else ""
        flavour = (params or {}).get("flavour", DEFAULT_FLAVOUR)
        capability = f"flavour:{flavour}"
        if capability in probe.capabilities and not probe.available(capability):
            return Availability(False, f"flavour={flavour}: {probe[capability].reason}", missing)
        return Availability(True, f"{len(self.hooks) - len(missing)} of {len(self.hooks)} tracepoints, "
                            f"flavour {flavour}{note}", missing)

    def check_params(self, params: dict[str, Any]) -> None:
        if params.get("consumer") == "c" and params.get("transport") == "perf":
            raise UsageError("tracepoint: consumer=c reads a BPF ring buffer; it cannot be used with transport=perf")
        if params.get("check") and params.get("flavour", DEFAULT_FLAVOUR) == "tp":
            raise UsageError("tracepoint: check=true compares raw_tp/tp_btf reads with the classic tracepoints; "
                             "with flavour=tp there is nothing to compare")

    def program(self, params: dict[str, Any]) -> Program:
        caps = probe_tracepoints()
        names = parse_hooks(params["hooks"])
        selected = [HOOKS[name] for name in names]
        attached = [tp for tp in selected if caps[f"tracepoint:{tp}"].available]
        absent = {tp: caps[f"tracepoint:{tp}"].reason for tp in selected if tp not in attached}
        if not attached:
            raise BackendError(f"none of the selected tracepoints exists here: {absent}")
        flavour = params.get("flavour", DEFAULT_FLAVOUR)
        headers_path = find_headers().path
        if flavour == "tp":
            return Program(SOURCE, attached, absent, tracepoint_flags(attached, caps, headers_path),
                           details={"flavour": "tp"})
        offset_flags, offsets = raw_offset_flags()
        check = bool(params.get("check")) and not self.empty
        rescue = bool(params.get("rescue")) and not self.empty
        cflags = [*tracepoint_flags(attached, caps, headers_path), *offset_flags, "-DNESTABLE=1"]
        if flavour == "tp_btf":
            cflags.append("-DFLAVOUR_TP_BTF=1")
        if check:
            cflags.append("-DCHECK=1")
        if rescue:
            cflags.append("-DRESCUE=1")
        events = [tp.split(":")[1] for tp in attached]
        kinds = {HOOK_KINDS[name] for name in names if HOOKS[name] in attached}

        def attach(bpf: Any, _exit: Any) -> None:
            # The witnesses (bcc attached them as it loaded them) must fire after the observer on
            # each tracepoint: probes run in the order they were registered.
            witnesses = list(bpf.tracepoint_fds)
            for tp in witnesses:
                bpf.detach_tracepoint(tp)
            for event in events:
                attach_raw(bpf, flavour, event)
                if rescue:
                    attach_raw(bpf, flavour, event, rescue=True)
            for tp in witnesses:
                bpf.attach_tracepoint(tp=tp, fn_name=b"tracepoint__" + tp.replace(b":", b"__"))

        def finish(session: "Session", observation: Observation, witness_stats: dict[str, Any]) -> None:
            observation.details["fidelity"] = witness_fidelity(
                session, witness_stats, attached if check else [], kinds, kinds, {},
                "check=false" if not check else "no witness",
                observer_skips_counted=observation.details["lost_recursion"] is not None,
                witness_skips_counted=kernel_version() >= MISSES_COUNTED_FROM["tp"])  # witnesses: classic tp

        return Program(RAW_SOURCE, attached, absent, cflags,
                       details={"flavour": flavour, "offsets": offsets, "rescue": rescue,
                                "witness_tracepoints": attached if check else []},
                       attach=attach, is_witness=lambda name: name.startswith("tracepoint__"), finish=finish)

    def attach(self, topology: Topology, params: dict[str, Any]) -> Session:
        return Session(self, topology, params)

    def prepare(self, topology: Topology, params: dict[str, Any]) -> _TracepointSwitch:
        if params.get("check"):
            raise UsageError("tracepoint: the toggled measurement needs check=false: the witnesses' cost "
                             "would be counted as the observer's")
        if not self.empty and params["mode"] == "stream" and params["consumer"] == "python" \
                and params["transport"] == "perf":
            # bcc's perf-buffer callbacks run in a thread of this process, whose CPU cannot be told apart
            raise UsageError("tracepoint: the toggled measurement's Python consumer reads a ring buffer in its own "
                             "process: use transport=ringbuf (or auto) with consumer=python")
        return _TracepointSwitch(self, topology, params)
