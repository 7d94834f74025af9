"""An attached bcc observer: the session the tracepoint and kprobe backends share.

The backend hands it a Program (bpf_build.py): its BPF source, hooks and flags. The session adds
the mode (stream or aggregate), transport (ring or perf buffer) and topology flags, compiles and
attaches, starts a consumer (ringbuf.py) and, at detach, turns the maps, the consumer's counts and
the programs' bpf_stats into the trial's Observation.

In-kernel cost comes from the kernel itself: kernel.bpf_stats_enabled is set for the trial (and
restored) and each program's run_cnt and run_time_ns are read from its fd's fdinfo.

Only the trial's own traffic is observed: the programs skip events that are not to or from the
topology's two addresses (each topology has its own /24 of 198.18.0.0/15) and count them as
filtered. Passive-side events (a SYN_RECV child, a received FIN) run in softirq, so their pid/comm
are those of whichever task was interrupted: they are recorded anyway, because attribution
accuracy is one of the things the harness measures.
"""

from __future__ import annotations

import contextlib
import os
import struct
from typing import Any

from netns import Topology

from ..flows import sample_record
from ..tcp import EVENT_KINDS, NSTATES, SIDE_NAMES, transition
from ..kernel import probe_ringbuf
from ..system import sysctl_set
from .processes import DeferredCpu
from ..decoders.tracefs_ring import native_u32
from .base import Observation
from .bpf_build import (MISSES_COUNTED_FROM, BackendError, bpf_source, compile_bpf, is_rescue, kernel_version,
                        read_prog_stats)
from .ringbuf import EVENT_SIZE, CConsumer, PyProcessConsumer, PythonConsumer, count_key

# tcp:tcp_send_reset fires in tcp_v4_send_reset for a RST without a full socket (a closed port, a
# TIME_WAIT or request socket) only from Linux 6.10 ("tcp: fully support trace_tcp_send_reset");
# measured on Debian's 6.1: 0 of the server's 100 RSTs to a closed port, the kprobe 100
SOCKETLESS_RESET_TRACED_FROM = (6, 10)
SOCKETLESS_RESET_REASON = ("before Linux 6.10 tcp:tcp_send_reset fires only for a RST sent from a full socket, "
                           "not for one sent without a socket (a closed port) or from a TIME_WAIT or request socket")


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class Session:
    """One attachment: programs loaded and attached, consumer running, bpf_stats on."""

    def __init__(self, backend: Any, topology: Topology, params: dict[str, Any], python_process: bool = False):
        self.backend = backend
        self.python_process = python_process  # consumer=python in its own process (the toggled measurement)
        self.deferred = DeferredCpu()
        self.topology = topology
        self.empty = backend.empty
        self.mode = "empty" if backend.empty else params["mode"]
        self.params = params
        self.closed = False
        self.consumer: PythonConsumer | CConsumer | None = None
        self.witnesses: dict[str, int] = {}
        self.exit = contextlib.ExitStack()
        try:
            self._attach()
        except BaseException:
            self.close()
            raise

    def _attach(self) -> None:
        # The backend names its BPF source, its hooks and their flags (tracepoints in tracepoint.py;
        # kprobes or fentry in kprobe.py); everything else (modes, transports, consumers, bpf_stats) is shared.
        self.program = self.backend.program(self.params)
        self.attached, self.absent = self.program.attached, self.program.absent
        self.transport = self.consumer_kind = None
        if self.mode == "stream":
            choice = self.params["transport"]
            if choice == "auto":
                choice = "ringbuf" if probe_ringbuf().available else "perf"
            self.transport = choice
            consumer = self.params["consumer"]
            if consumer == "auto":
                consumer = "c" if choice == "ringbuf" else "python"
            if consumer == "c" and choice != "ringbuf":
                raise BackendError("consumer=c reads a BPF ring buffer: use transport=ringbuf (or consumer=python)")
            self.consumer_kind = consumer
        cflags = [
            f"-DCLIENT_ADDR={native_u32(self.topology.client.address)}U",
            f"-DSERVER_ADDR={native_u32(self.topology.server.address)}U",
            *self.program.cflags,
        ]
        if self.empty:
            cflags.append("-DEMPTY=1")
        elif self.mode == "aggregate":
            cflags.append("-DMODE_AGGREGATE=1")
        self.buffer_bytes = self.params.get("buffer_kib", 0) * 1024
        self.wakeup_batch = self.params.get("wakeup_batch", 1)
        self.batch = self.params.get("batch", 1) if self.transport == "ringbuf" else 1
        if self.transport == "ringbuf":
            self.ring_pages = _pow2_at_least(self.buffer_bytes // 4096)
            cflags += ["-DTRANSPORT_RINGBUF=1", f"-DRINGBUF_PAGES={self.ring_pages}",
                       f"-DWAKEUP_BATCH={self.wakeup_batch}", f"-DBATCH={self.batch}"]
        self.cflags = cflags
        # bpf_stats costs two clock reads per program run: on only while we measure, then restored
        self.exit.enter_context(sysctl_set("kernel.bpf_stats_enabled", "1"))
        self.bpf = compile_bpf(self.program.prelude + bpf_source(self.program.source), cflags)
        self.exit.callback(self.bpf.cleanup)
        if self.program.attach is not None:  # explicit attachments (kprobes); tracepoints auto-attach
            self.program.attach(self.bpf, self.exit)
        functions = {name.decode(): fn.fd for name, fn in self.bpf.funcs.items()}
        # witness programs (kprobe.py's struct-read check) are accounted apart from the observer's cost
        self.witnesses = {n: fd for n, fd in functions.items() if self.program.is_witness(n)}
        self.programs = {n: fd for n, fd in functions.items() if n not in self.witnesses}
        if self.transport is not None:
            self._open_buffer()
        self.stats_before = {name: read_prog_stats(fd) for name, fd in (*self.programs.items(),
                                                                         *self.witnesses.items())}
        self.rescued_before = self._rescued()  # read beside the stats: both are deltas

    def _rescued(self) -> int:
        return self.percpu_sums("rescued", 1)[0] if self.program.details.get("rescue") else 0

    def _open_buffer(self) -> None:
        self.perf_pages_per_cpu = _pow2_at_least(max(1, self.buffer_bytes // 4096 // (os.cpu_count() or 1)))
        if self.consumer_kind == "c":
            self.consumer = CConsumer(self.bpf)
        elif self.python_process and self.transport == "ringbuf":
            self.consumer = PyProcessConsumer(self.bpf)
        else:
            self.consumer = PythonConsumer(self.bpf, self.transport, self.perf_pages_per_cpu, self.wakeup_batch)

    def loop_ended(self) -> None:
        consumer = self.consumer
        if isinstance(consumer, PythonConsumer):
            self.deferred.at_loop_end["consumer"] = consumer.cpu_so_far()
        elif consumer is not None:
            self.deferred.mark("consumer", consumer.process.pid)

    def detach(self) -> Observation:
        # Events still staged in each CPU's partial batch: the C consumer takes them on its stdin,
        # so they meet its socket-address table (a connect's port is known only from the
        # socket's next event, which may have gone out in an earlier batch)
        staged_records = self._staged_records() if self.consumer is not None and self.batch > 1 else []
        if isinstance(self.consumer, CConsumer):
            consumed = self.consumer.stop(b"".join(staged_records))
        else:
            consumed = self.consumer.stop() if self.consumer is not None else None
            if consumed is not None:
                self._count_staged(consumed, staged_records)
        self.consumer = None
        staged = len(staged_records)
        stats_after = {name: read_prog_stats(fd) for name, fd in (*self.programs.items(),
                                                                  *self.witnesses.items())}
        rescued = self._rescued() - self.rescued_before
        observation = Observation()
        filtered = self.percpu_sums("filtered", len(EVENT_KINDS))
        attribution = None
        lost_output = 0
        if self.mode == "aggregate":
            self._read_aggregates(observation)
        elif self.mode == "stream":
            attribution = self._decode_stream(observation, consumed)
            # a full ring (reserve failed) or perf buffer (submit failed; the same drops reach
            # the lost callback as PERF_RECORD_LOST, so take the larger, never the sum)
            lost_output = max(self.percpu_sums("lost", 1)[0], consumed["lost_callback"])
        programs = {name: self._program_stats(name, stats_after) for name in self.programs}
        # trace_call_bpf() runs no tracepoint program while another BPF program is active on the
        # same CPU (bpf_prog_active): a softirq event (the passive side) arriving while a program
        # runs for a process-context event is skipped, and the kernel counts it (6.7+).
        # raw_tp/tp_btf skip a program only while it runs itself; their rescue programs run on
        # every event (and return at once unless their primary was skipped), so events are the
        # primaries' runs plus the rescued ones, while the cost is every program's.
        # A rescue program's own misses lose nothing: it was running after its primary had
        # returned, so the primary was idle and ran the nested event (both busy at once would
        # need a third level of nesting, which TCP's process/softirq contexts never reach).
        misses = sum(p["recursion_misses"] for n, p in programs.items() if not is_rescue(n))
        total_runs = sum(p["run_cnt"] for n, p in programs.items() if not is_rescue(n)) + rescued
        total_ns = sum(p["run_time_ns"] for p in programs.values())
        lost_recursion = misses - rescued  # each rescued event is one of its primary's misses
        flavour = self.program.details.get("flavour", "tp")
        counted_from = MISSES_COUNTED_FROM.get(flavour, (6, 7))
        misses_counted = kernel_version() >= counted_from
        if self.empty:
            observation.lost = lost_output
        elif misses_counted:
            observation.lost = lost_output + lost_recursion
        else:
            observation.lost = None  # the kernel skips runs here without counting them
        observation.details = {
            "mode": self.mode,
            "transport": self.transport,
            "hooks_attached": self.attached,
            "hooks_absent": self.absent,
            "filtered_out": {k: n for k, n in zip(EVENT_KINDS, filtered) if n},
            "lost_recursion": lost_recursion if misses_counted else None,
            "recursion_misses": misses,
            "rescued": rescued if self.program.details.get("rescue") else None,
            # a rescue program's own misses lose nothing (see above); each leaves a stale entry
            # on rawtp.bpf.c's `entered` stack, dropped by the next primary on that kernel stack
            "rescue_misses": (sum(p["recursion_misses"] for n, p in programs.items() if is_rescue(n))
                              if self.program.details.get("rescue") else None),
            "lost_output": lost_output,
            "loss_method": (
                "output failures (ring reserve or perf submit, counted by the programs) + the kernel's "
                f"recursion_misses for skipped {flavour} runs (counted from Linux {counted_from[0]}.{counted_from[1]})"
                if misses_counted else
                f"unknown: this kernel ({os.uname().release}) skips {flavour} program runs that nest with another "
                f"BPF program without counting them (recursion_misses is kept from Linux "
                f"{counted_from[0]}.{counted_from[1]}); output failures alone: {lost_output}. Fidelity compares "
                "the counts with kernel counters that cannot miss instead"),
            "bpf_stats": {
                "programs": programs,
                "run_cnt": total_runs,
                "run_time_ns": total_ns,
                "ns_per_event": round(total_ns / total_runs, 1) if total_runs else None,
            },
        }
        observation.details.update(self.program.details)
        if "tcp:tcp_send_reset" in self.attached and kernel_version() < SOCKETLESS_RESET_TRACED_FROM:
            observation.details.setdefault("invisible", {})["reset_sent (socketless)"] = SOCKETLESS_RESET_REASON
        if self.program.finish is not None:  # e.g. the kprobe backend's struct-read check
            witness_stats = {name: self._program_stats(name, stats_after) for name in self.witnesses}
            self.program.finish(self, observation, witness_stats)
        if self.mode == "stream":
            observation.details.update(
                {
                    "consumer": self.consumer_kind,
                    "consumer_cpu_s": round(consumed["cpu_s"], 4),
                    # the consumer's drain after the measured loop (added to the trial's cost)
                    "deferred_cpu_s": self.deferred.since("consumer", consumed["cpu_s"]),
                    "consumer_max_rss_kib": consumed.get("max_rss_kib"),
                    "lost_callback": consumed["lost_callback"],
                    "buffer_bytes": (self.ring_pages * 4096 if self.transport == "ringbuf"
                                     else self.perf_pages_per_cpu * 4096 * (os.cpu_count() or 1)),
                    "wakeup_batch": self.wakeup_batch,
                    "batch": self.batch,
                    "staged_at_detach": staged,
                    "staged_taken": consumed.get("staged_taken", staged),
                    "consumer_bad_records": consumed.get("bad_records", 0),
                    "consumer_events_read": consumed.get("events_read"),
                    "event_bytes": EVENT_SIZE,
                    "attribution": attribution,
                }
            )
            if "flow_events" in consumed:  # the runner matches them per flow, then drops them
                observation.details["flow_events"] = consumed["flow_events"]
        self.close()
        return observation

    def _program_stats(self, name: str, stats_after: dict[str, dict[str, int]]) -> dict[str, Any]:
        before, after = self.stats_before[name], stats_after[name]
        runs = after["run_cnt"] - before["run_cnt"]
        ns = after["run_time_ns"] - before["run_time_ns"]
        return {"run_cnt": runs, "run_time_ns": ns,
                "recursion_misses": after["recursion_misses"] - before["recursion_misses"],
                "ns_per_run": round(ns / runs, 1) if runs else None}

    def _staged_records(self) -> list[bytes]:
        """The records in each CPU's partial batch (read from the staging map at detach)."""
        table = self.bpf["staging"]
        records = []
        for per_cpu in table[table.Key(0)]:
            raw = bytes(per_cpu)
            staged = struct.unpack_from("<I", raw)[0] & (self.batch - 1)
            records += [raw[8 + i * EVENT_SIZE : 8 + (i + 1) * EVENT_SIZE] for i in range(staged)]
        return records

    @staticmethod
    def _count_staged(consumed: dict[str, Any], records: list[bytes]) -> None:
        """Staged records counted like the rest, for the consumers that did not see them."""
        for raw in records:
            key = raw[16:24] + raw[40:56]
            count_key(consumed["counts"], consumed["attribution"], key, 1)
            if "flow_events" in consumed and (sampled := sample_record(raw)):
                consumed["flow_events"]["events"].append(sampled)

    def percpu_sums(self, name: str, entries: int) -> list[int]:
        table = self.bpf[name]
        return [int(table.sum(table.Key(i)).value) for i in range(entries)]

    def _read_aggregates(self, observation: Observation) -> None:
        kinds = self.percpu_sums("kind_counts", len(SIDE_NAMES) * len(EVENT_KINDS))
        transitions = self.percpu_sums("transition_counts", len(SIDE_NAMES) * NSTATES * NSTATES)
        for side_index, side in enumerate(SIDE_NAMES):
            for kind_index, kind in enumerate(EVENT_KINDS):
                n = kinds[side_index * len(EVENT_KINDS) + kind_index]
                if n:
                    observation.add(side, "events", kind, n)
            for old in range(NSTATES):
                for new in range(NSTATES):
                    n = transitions[(side_index * NSTATES + old) * NSTATES + new]
                    if n:
                        observation.add(side, "transitions", transition(old, new), n)

    def _decode_stream(self, observation: Observation, consumed: dict[str, Any]) -> list[dict[str, Any]]:
        for (side, kind, old, new), n in consumed["counts"].items():
            side_name = SIDE_NAMES[side] if side < len(SIDE_NAMES) else "other"
            observation.add(side_name, "events", EVENT_KINDS[kind], n)
            if EVENT_KINDS[kind] == "state_change":
                observation.add(side_name, "transitions", transition(old, new), n)
        attribution = [
            {"side": SIDE_NAMES[side], "kind": EVENT_KINDS[kind], "pid": pid, "comm": comm, "count": n}
            for (side, kind, pid, comm), n in consumed["attribution"].items()
        ]
        attribution.sort(key=lambda a: -a["count"])
        return attribution

    def close(self) -> None:
        """Idempotent: stop the consumer, detach and unload everything, restore bpf_stats."""
        if self.closed:
            return
        self.closed = True
        if isinstance(self.consumer, CConsumer):
            self.consumer.kill()
        elif self.consumer is not None:
            self.consumer.stop()
        self.consumer = None
        self.exit.close()
