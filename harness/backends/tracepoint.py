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

In-kernel cost comes from the kernel itself: kernel.bpf_stats_enabled is set for the trial (and
restored) and each program's run_cnt and run_time_ns are read from its fd's fdinfo.

Only the harness's traffic is observed: the programs skip events whose addresses are outside
198.18.0.0/15 (or not IPv4) and count them as filtered. Passive-side events (a SYN_RECV child, a
received FIN) run in softirq, so their pid/comm are those of whichever task was interrupted: they
are recorded anyway, because attribution accuracy is one of the things the harness measures.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from netns import CLIENT_ADDRESS, SERVER_ADDRESS, SUBNET, Topology

from ..headers import find_headers
from ..kernel import KernelProbe, probe_ringbuf, probe_tracepoints
from ..params import Param
from ..system import sysctl_set
from .base import EVENT_KINDS, SIDES, Availability, Observation

SOURCE = Path(__file__).with_name("tracepoint.bpf.c")

# short name -> tracepoint; `-p hooks=state+destroy` selects some, `all` (default) every one
HOOKS = {
    "state": "sock:inet_sock_set_state",
    "retransmit": "tcp:tcp_retransmit_skb",
    "synack": "tcp:tcp_retransmit_synack",
    "send_reset": "tcp:tcp_send_reset",
    "receive_reset": "tcp:tcp_receive_reset",
    "destroy": "tcp:tcp_destroy_sock",
    "probe": "tcp:tcp_probe",
}
# include/net/tcp_states.h
STATE_NAMES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
    7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV",
}
SIDE_NAMES = (*SIDES, "other")  # "other": another address inside the subnet
NSTATES = 16
EVENT_SIZE = 56
_KEY = struct.Struct("<I4B")  # pid, kind, side, oldstate, newstate: bytes 16..24 of an event
POLL_TIMEOUT_MS = 20


def parse_hooks(text: str) -> tuple[str, ...]:
    if text == "all":
        return tuple(HOOKS)
    names = tuple(dict.fromkeys(text.split("+")))
    unknown = [n for n in names if n not in HOOKS]
    if unknown or not names:
        raise ValueError(f"unknown hook {', '.join(unknown) if unknown else repr(text)}")
    return names


def _check_hooks(text: str) -> str | None:
    try:
        parse_hooks(text)
    except ValueError as exc:
        return f"{exc}; valid: all, or names joined by '+': {'+'.join(HOOKS)}"
    return None


def _native_u32(address: str) -> int:
    """An IPv4 address as the BPF program loads it: network-order bytes read as a native u32."""
    return struct.unpack("=I", socket.inet_aton(address))[0]


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def format_flags(caps: dict[str, Any], tracepoints: list[str]) -> list[str]:
    """-DTP_<event>_<field>_SIZE=n and -DTP_<event>_HAS_<field> from the running kernel's formats."""
    flags = []
    for full in tracepoints:
        event = full.split(":")[1]
        for field in caps[f"tracepoint:{full}"].data["fields"]:
            flags.append(f"-DTP_{event}_{field['name']}_SIZE={field['size']}")
            flags.append(f"-DTP_{event}_HAS_{field['name']}=1")
    return flags


def _needs_rst_reason_stub(caps: dict[str, Any], headers_path: str | None) -> bool:
    fmt = caps.get("tracepoint:tcp:tcp_send_reset")
    uses_enum = fmt is not None and fmt.available and any(
        f["type"] == "enum sk_rst_reason" for f in fmt.data["fields"]
    )
    has_header = headers_path is not None and (Path(headers_path) / "include/net/rstreason.h").exists()
    return uses_enum and not has_header


class BackendError(RuntimeError):
    """The backend could not attach (compile error, no usable hook); the trial fails with this."""


def _read_prog_stats(fd: int) -> dict[str, int]:
    stats = {"run_time_ns": 0, "run_cnt": 0, "recursion_misses": 0}
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in stats:
            stats[key] = int(value)
    return stats


@contextlib.contextmanager
def _stderr_captured():
    """libbcc prints clang's diagnostics on fd 2: keep them to quote the first error line."""
    with tempfile.TemporaryFile(mode="w+") as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield sink
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _compile(text: bytes, cflags: list[str]):
    from bcc import BPF  # imported late: the probe must be able to say bcc is missing

    with _stderr_captured() as errors:
        try:
            return BPF(text=text, cflags=cflags)
        except Exception as exc:
            errors.seek(0)
            diagnostics = [line for line in errors.read().splitlines() if "error" in line]
            first = diagnostics[0].strip() if diagnostics else str(exc)
            headers = find_headers(build=False)
            raise BackendError(
                f"BPF compile failed: {first} (headers: {headers.kind} {headers.path})"
            ) from None


class _Session:
    """One attachment: programs loaded and attached, consumer running, bpf_stats on."""

    def __init__(self, backend: "TracepointBackend", params: dict[str, Any]):
        self.empty = backend.empty
        self.mode = "empty" if backend.empty else params["mode"]
        self.params = params
        self.closed = False
        self.consumer: threading.Thread | None = None
        self.stop = threading.Event()
        self.counts: dict[bytes, int] = {}
        self.lost_callback = 0
        self.consumer_cpu_s = 0.0
        self.exit = contextlib.ExitStack()
        try:
            self._attach()
        except BaseException:
            self.close()
            raise

    def _attach(self) -> None:
        caps = probe_tracepoints()
        selected = [HOOKS[name] for name in parse_hooks(self.params["hooks"])]
        self.attached = [tp for tp in selected if caps[f"tracepoint:{tp}"].available]
        self.absent = {tp: caps[f"tracepoint:{tp}"].reason for tp in selected if tp not in self.attached}
        if not self.attached:
            raise BackendError(f"none of the selected tracepoints exists here: {self.absent}")
        self.transport = None
        if self.mode == "stream":
            choice = self.params["transport"]
            if choice == "auto":
                choice = "ringbuf" if probe_ringbuf().available else "perf"
            self.transport = choice
        headers = find_headers()
        net, _, prefix = SUBNET.partition("/")
        mask = socket.inet_ntoa(struct.pack("!I", (0xFFFFFFFF << (32 - int(prefix))) & 0xFFFFFFFF))
        cflags = [
            f"-DCLIENT_ADDR={_native_u32(CLIENT_ADDRESS)}U",
            f"-DSERVER_ADDR={_native_u32(SERVER_ADDRESS)}U",
            f"-DSUBNET_NET={_native_u32(net)}U",
            f"-DSUBNET_MASK={_native_u32(mask)}U",
            *(f"-DHOOK_{tp.split(':')[1]}=1" for tp in self.attached),
            *format_flags(caps, self.attached),
        ]
        if _needs_rst_reason_stub(caps, headers.path):
            cflags.append("-DNEED_SK_RST_REASON_STUB=1")
        if self.empty:
            cflags.append("-DEMPTY=1")
        elif self.mode == "aggregate":
            cflags.append("-DMODE_AGGREGATE=1")
        self.buffer_bytes = self.params.get("buffer_kib", 0) * 1024
        self.wakeup_batch = self.params.get("wakeup_batch", 1)
        if self.transport == "ringbuf":
            self.ring_pages = _pow2_at_least(self.buffer_bytes // 4096)
            cflags += ["-DTRANSPORT_RINGBUF=1", f"-DRINGBUF_PAGES={self.ring_pages}",
                       f"-DWAKEUP_BATCH={self.wakeup_batch}"]
        self.cflags = cflags
        # bpf_stats costs two clock reads per program run: on only while we measure, then restored
        self.exit.enter_context(sysctl_set("kernel.bpf_stats_enabled", "1"))
        self.bpf = _compile(SOURCE.read_bytes(), cflags)
        self.exit.callback(self.bpf.cleanup)
        self.programs = {name.decode(): fn.fd for name, fn in self.bpf.funcs.items()}
        if self.transport is not None:
            self._open_buffer()
        self.stats_before = {name: _read_prog_stats(fd) for name, fd in self.programs.items()}

    def _open_buffer(self) -> None:
        table = self.bpf["events"]
        if self.transport == "ringbuf":
            table.open_ring_buffer(self._on_event)
            poll, consume = self.bpf.ring_buffer_poll, self.bpf.ring_buffer_consume
        else:
            per_cpu_pages = _pow2_at_least(max(1, self.buffer_bytes // 4096 // (os.cpu_count() or 1)))
            self.perf_pages_per_cpu = per_cpu_pages
            table.open_perf_buffer(self._on_event, page_cnt=per_cpu_pages, lost_cb=self._on_lost,
                                   wakeup_events=self.wakeup_batch)
            poll, consume = self.bpf.perf_buffer_poll, self.bpf.perf_buffer_consume
        self.consumer = threading.Thread(target=self._consume, args=(poll, consume),
                                         name="tpbench-tracepoint-consumer", daemon=True)
        self.consumer.start()

    def _on_event(self, ctx: Any, data: int, size: int) -> None:
        raw = ctypes.string_at(data, EVENT_SIZE)
        key = raw[16:24] + raw[40:56]  # pid, kind, side, old, new + comm
        self.counts[key] = self.counts.get(key, 0) + 1

    def _on_lost(self, count: int) -> None:
        self.lost_callback += count

    def _consume(self, poll, consume) -> None:
        begin = time.thread_time()
        while not self.stop.is_set():
            poll(POLL_TIMEOUT_MS)  # wakes on batched forced wake-ups ...
            consume()  # ... and drains what was queued without one
        consume()
        self.consumer_cpu_s = time.thread_time() - begin

    def _stop_consumer(self) -> None:
        if self.consumer is not None:
            self.stop.set()
            self.consumer.join()
            self.consumer = None

    def detach(self) -> Observation:
        self._stop_consumer()
        stats_after = {name: _read_prog_stats(fd) for name, fd in self.programs.items()}
        observation = Observation()
        filtered = self._percpu_sums("filtered", len(EVENT_KINDS))
        attribution = None
        lost_output = 0
        if self.mode == "aggregate":
            self._read_aggregates(observation)
        elif self.mode == "stream":
            attribution = self._decode_stream(observation)
            # a full ring (reserve failed) or perf buffer (submit failed; the same drops reach
            # the lost callback as PERF_RECORD_LOST, so take the larger, never the sum)
            lost_output = max(self._percpu_sums("lost", 1)[0], self.lost_callback)
        programs = {}
        for name, fd in self.programs.items():
            runs = stats_after[name]["run_cnt"] - self.stats_before[name]["run_cnt"]
            ns = stats_after[name]["run_time_ns"] - self.stats_before[name]["run_time_ns"]
            misses = stats_after[name]["recursion_misses"] - self.stats_before[name]["recursion_misses"]
            programs[name] = {"run_cnt": runs, "run_time_ns": ns, "recursion_misses": misses,
                              "ns_per_run": round(ns / runs, 1) if runs else None}
        total_runs = sum(p["run_cnt"] for p in programs.values())
        total_ns = sum(p["run_time_ns"] for p in programs.values())
        # trace_call_bpf() runs no tracepoint program while another BPF program is active on the
        # same CPU (bpf_prog_active): a softirq event (the passive side) arriving while a program
        # runs for a process-context event is skipped, and the kernel counts it (6.7+).
        lost_recursion = sum(p["recursion_misses"] for p in programs.values())
        observation.lost = lost_output + (0 if self.empty else lost_recursion)
        observation.details = {
            "mode": self.mode,
            "transport": self.transport,
            "hooks_attached": self.attached,
            "hooks_absent": self.absent,
            "filtered_out": {k: n for k, n in zip(EVENT_KINDS, filtered) if n},
            "lost_recursion": lost_recursion,
            "lost_output": lost_output,
            "bpf_stats": {
                "programs": programs,
                "run_cnt": total_runs,
                "run_time_ns": total_ns,
                "ns_per_event": round(total_ns / total_runs, 1) if total_runs else None,
            },
        }
        if self.mode == "stream":
            observation.details.update(
                {
                    "consumer_cpu_s": round(self.consumer_cpu_s, 4),
                    "lost_callback": self.lost_callback,
                    "buffer_bytes": (self.ring_pages * 4096 if self.transport == "ringbuf"
                                     else self.perf_pages_per_cpu * 4096 * (os.cpu_count() or 1)),
                    "wakeup_batch": self.wakeup_batch,
                    "event_bytes": EVENT_SIZE,
                    "attribution": attribution,
                }
            )
        self.close()
        return observation

    def _percpu_sums(self, name: str, entries: int) -> list[int]:
        table = self.bpf[name]
        return [int(table.sum(table.Key(i)).value) for i in range(entries)]

    def _read_aggregates(self, observation: Observation) -> None:
        kinds = self._percpu_sums("kind_counts", len(SIDE_NAMES) * len(EVENT_KINDS))
        transitions = self._percpu_sums("transition_counts", len(SIDE_NAMES) * NSTATES * NSTATES)
        for side_index, side in enumerate(SIDE_NAMES):
            for kind_index, kind in enumerate(EVENT_KINDS):
                n = kinds[side_index * len(EVENT_KINDS) + kind_index]
                if n:
                    _add(observation, side, "events", kind, n)
            for old in range(NSTATES):
                for new in range(NSTATES):
                    n = transitions[(side_index * NSTATES + old) * NSTATES + new]
                    if n:
                        _add(observation, side, "transitions", _transition(old, new), n)

    def _decode_stream(self, observation: Observation) -> list[dict[str, Any]]:
        attribution: list[dict[str, Any]] = []
        for key, n in self.counts.items():
            pid, kind, side, old, new = _KEY.unpack_from(key)
            side_name = SIDE_NAMES[side] if side < len(SIDE_NAMES) else "other"
            kind_name = EVENT_KINDS[kind]
            _add(observation, side_name, "events", kind_name, n)
            if kind_name == "state_change":
                _add(observation, side_name, "transitions", _transition(old, new), n)
            comm = key[8:].split(b"\0", 1)[0].decode(errors="replace")
            attribution.append({"side": side_name, "kind": kind_name, "pid": pid, "comm": comm, "count": n})
        attribution.sort(key=lambda a: -a["count"])
        return attribution

    def close(self) -> None:
        """Idempotent: stop the consumer, detach and unload everything, restore bpf_stats."""
        if self.closed:
            return
        self.closed = True
        self._stop_consumer()
        self.exit.close()


def _transition(old: int, new: int) -> str:
    return f"{STATE_NAMES.get(old, str(old))}->{STATE_NAMES.get(new, str(new))}"


def _add(observation: Observation, side: str, table: str, name: str, n: int) -> None:
    total = observation.events if table == "events" else observation.transitions
    total[name] = total.get(name, 0) + n
    per_side = observation.sides.setdefault(side, {"events": {}, "transitions": {}})[table]
    per_side[name] = per_side.get(name, 0) + n


class TracepointBackend:
    hooks = tuple(HOOKS.values())

    def __init__(self, empty: bool = False):
        self.empty = empty
        hooks_param = Param("hooks", str, "all", "tracepoints to attach: all, or short names joined "
                            f"by '+' ({'+'.join(HOOKS)})", check=_check_hooks)
        if empty:
            self.name = "tracepoint-empty"
            self.description = "the same tracepoints with programs that return at once: the in-kernel floor"
            self.params = (hooks_param,)
        else:
            self.name = "tracepoint"
            self.description = "eBPF (bcc) on the 7 stable TCP tracepoints, streamed or aggregated in maps"
            self.params = (
                Param("mode", str, "stream", "stream every event to user space, or aggregate in maps",
                      choices=("stream", "aggregate")),
                hooks_param,
                Param("transport", str, "auto", "stream transport (auto: ring buffer where the kernel has one)",
                      choices=("auto", "ringbuf", "perf")),
                Param("buffer_kib", int, 8192, "stream buffer size in KiB (ring total, or perf over all CPUs)",
                      minimum=16, maximum=1 << 20),
                Param("wakeup_batch", int, 64, "events per consumer wake-up (1: wake on every event)",
                      minimum=1, maximum=65536),
            )

    def availability(self, probe: KernelProbe) -> Availability:
        if not probe.available("bcc"):
            return Availability(False, probe["bcc"].reason)
        if not probe.available("headers"):
            return Availability(False, f"no kernel headers for bcc: {probe['headers'].reason}")
        missing = tuple(tp for tp in self.hooks if not probe.available(f"tracepoint:{tp}"))
        if len(missing) == len(self.hooks):
            return Availability(False, "none of the seven TCP tracepoints exists on this kernel", missing)
        note = f"; absent here: {', '.join(missing)}" if missing else ""
        return Availability(True, f"{len(self.hooks) - len(missing)} of {len(self.hooks)} tracepoints{note}", missing)

    def attach(self, topology: Topology, params: dict[str, Any]) -> _Session:
        return _Session(self, params)
