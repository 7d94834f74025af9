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

In-kernel cost comes from the kernel itself: kernel.bpf_stats_enabled is set for the trial (and
restored) and each program's run_cnt and run_time_ns are read from its fd's fdinfo.

Only the trial's own traffic is observed: the programs skip events that are not to or from the
topology's two addresses (each topology has its own /24 of 198.18.0.0/15) and count them as
filtered. Passive-side events (a SYN_RECV child, a
received FIN) run in softirq, so their pid/comm are those of whichever task was interrupted: they
are recorded anyway, because attribution accuracy is one of the things the harness measures.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Any, Callable

from netns import Topology

from .. import btf
from ..analysis import flowmatch
from ..tcp import EVENT_KINDS, HOOKS as TCP_HOOKS, NSTATES, SIDE_NAMES, transition
from ..errors import UsageError
from ..headers import find_headers, header_file
from ..kernel import KernelProbe, attach_by_btf_id, load_tp_btf, probe_ringbuf, probe_tracepoints
from ..params import Param, names_check, parse_names
from ..system import die_with_runner, sysctl_set
from .processes import DeferredCpu, cached_binary
from ..decoders.tracefs_ring import native_u32
from .base import Availability, Observation
from .witness import witness_fidelity

SOURCE = Path(__file__).with_name("tracepoint.bpf.c")
RAW_SOURCE = Path(__file__).with_name("rawtp.bpf.c")
CONSUMER_SOURCE = Path(__file__).with_name("ringbuf_consumer.c")

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
# The kernel counts a skipped program run (recursion_misses) from this release on, per flavour.
# trace_call_bpf() (tp, kprobe) since 6.7; __bpf_trace_run() (raw_tp, tp_btf) since "bpf: Prevent bpf
# program recursion for raw tracepoint probes" (6.0); trampolines (fentry) since 5.12.
MISSES_COUNTED_FROM = {"tp": (6, 7), "kprobe": (6, 7), "raw_tp": (6, 0), "tp_btf": (6, 0), "fentry": (5, 12)}
# tcp:tcp_send_reset fires in tcp_v4_send_reset for a RST without a full socket (a closed port, a
# TIME_WAIT or request socket) only from Linux 6.10 ("tcp: fully support trace_tcp_send_reset");
# measured on Debian's 6.1: 0 of the server's 100 RSTs to a closed port, the kprobe 100
SOCKETLESS_RESET_TRACED_FROM = (6, 10)
SOCKETLESS_RESET_REASON = ("before Linux 6.10 tcp:tcp_send_reset fires only for a RST sent from a full socket, "
                           "not for one sent without a socket (a closed port) or from a TIME_WAIT or request socket")
# rawtp.bpf.c's struct reads: offset name -> (struct, member, bytes read)
RAW_FIELDS = {
    "skc_daddr": ("sock_common", "skc_daddr", 4),
    "skc_rcv_saddr": ("sock_common", "skc_rcv_saddr", 4),
    "skc_dport": ("sock_common", "skc_dport", 2),
    "skc_num": ("sock_common", "skc_num", 2),
    "skc_family": ("sock_common", "skc_family", 2),
    "skc_state": ("sock_common", "skc_state", 1),
    "sk_protocol": ("sock", "sk_protocol", 2),
    "inet_saddr": ("inet_sock", "inet_saddr", 4),
    "inet_sport": ("inet_sock", "inet_sport", 2),
    "snd_cwnd": ("tcp_sock", "snd_cwnd", 4),
    "skb_head": ("sk_buff", "head", 8),
    "skb_data": ("sk_buff", "data", 8),
    "skb_network_header": ("sk_buff", "network_header", 2),
    "skb_protocol": ("sk_buff", "protocol", 2),
}
_SPAN_LIMIT = 64  # bytes one bpf_probe_read_kernel may copy to the stack in read_sock()
EVENT_SIZE = 56
_KEY = struct.Struct("<I4B")  # pid, kind, side, oldstate, newstate: bytes 16..24 of an event
POLL_TIMEOUT_MS = 20


def parse_hooks(text: str) -> tuple[str, ...]:
    return parse_names(text, HOOKS)


_check_hooks = names_check(HOOKS)


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


def _needs_rst_reason_stub(caps: dict[str, Any], headers_path: str | None, net_headers: bool) -> bool:
    """tcp_send_reset's 6.10+ format names `enum sk_rst_reason`: the program must see it complete.

    tracepoint.bpf.c and rawtp.bpf.c include no networking headers, so they always take the stub;
    kprobe.bpf.c (net_headers) gets the real enum from net/request_sock.h where the headers have
    net/rstreason.h (6.10+), and the stub otherwise (6.1 headers under a 6.18 format).
    """
    fmt = caps.get("tracepoint:tcp:tcp_send_reset")
    uses_enum = fmt is not None and fmt.available and any(
        f["type"] == "enum sk_rst_reason" for f in fmt.data["fields"]
    )
    has_header = header_file(headers_path, "include/net/rstreason.h") is not None
    return uses_enum and not (net_headers and has_header)


class BackendError(RuntimeError):
    """The backend could not attach (compile error, no usable hook); the trial fails with this."""


def raw_offset_flags() -> tuple[list[str], dict[str, int]]:
    """-DOFF_<name>=n for rawtp.bpf.c from the running kernel's BTF, plus the two read spans.

    read_sock() copies the head of sock_common (COMMON_SPAN bytes) and the bytes of inet_sock
    holding inet_saddr and inet_sport (INET_SPAN from INET_BASE) in one read each.
    """
    try:
        found = btf.offsets({name: (struct_, member) for name, (struct_, member, _) in RAW_FIELDS.items()})
    except btf.BtfError as exc:
        raise BackendError(f"raw_tp/tp_btf read struct fields at the kernel's own offsets: {exc}") from None
    common = [n for n, (struct_, _, _) in RAW_FIELDS.items() if struct_ == "sock_common"]
    common_span = max(found[n] + RAW_FIELDS[n][2] for n in common)
    inet_base = min(found["inet_saddr"], found["inet_sport"])
    inet_span = max(found[n] + RAW_FIELDS[n][2] for n in ("inet_saddr", "inet_sport")) - inet_base
    if common_span > _SPAN_LIMIT or inet_span > _SPAN_LIMIT:
        raise BackendError(f"struct layout unexpected: sock_common fields span {common_span} bytes, "
                           f"inet_sock's {inet_span} (read_sock copies at most {_SPAN_LIMIT})")
    flags = [f"-DOFF_{name}={offset}" for name, offset in found.items()]
    flags += [f"-DCOMMON_SPAN={common_span}", f"-DINET_BASE={inet_base}", f"-DINET_SPAN={inet_span}"]
    return flags, found


def attach_raw(bpf: Any, flavour: str, event: str, rescue: bool = False) -> None:
    """Attach rawtp.bpf.c's primary (or rescue) program for one tracepoint event.

    raw_tp attaches by name, tp_btf by BTF id. Both kinds of link are kept in bcc's
    raw_tracepoint_fds (the rescue program's as `<event>#rescue`), so bcc's cleanup and
    detach_raw_tracepoint() close them alike.
    """
    from bcc import BPF, lib

    role = b"_rescue" if rescue else b""
    key = event.encode() + (b"#rescue" if rescue else b"")
    try:
        if flavour == "raw_tp":
            fn = bpf.load_func(b"rawtp" + role + b"__" + event.encode(), BPF.RAW_TRACEPOINT)
            fd = lib.bpf_attach_raw_tracepoint(fn.fd, event.encode())
            if fd < 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            bpf.raw_tracepoint_fds[key] = fd
            return
        name = b"tpbtf" + role + b"__" + event.encode()
        fn = bpf.funcs.get(name)
        if fn is None:  # loaded once, attached (again) per on-period
            fd = load_tp_btf(event, lib.bpf_function_start(bpf.module, name),
                             lib.bpf_function_size(bpf.module, name), name.decode())
            fn = bpf.funcs[name] = BPF.Function(bpf, name, fd)  # bcc's close() closes it
        bpf.raw_tracepoint_fds[key] = attach_by_btf_id(fn.fd)
    except Exception as exc:
        raise BackendError(f"{flavour} {'rescue ' if rescue else ''}program on {event} failed: {exc}") from None


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


_LOCAL_INCLUDE = re.compile(rb'^#include "([^"/]+)"[ \t]*$', re.MULTILINE)


def bpf_source(path: Path, seen: set[str] | None = None) -> bytes:
    """The BPF C of `path` with its local `#include "x"` files pasted in (recursively).

    bcc rewrites map methods (`filtered.lookup(&key)`) and context reads only in the main file
    it is given: in a #included header they stay calls through function pointers, which the
    verifier rejects ("unknown opcode 8d"). So shared code (tcp_events.bpf.h) is inlined here.
    """
    text = path.read_bytes()
    seen = set() if seen is None else seen

    def paste(match: re.Match) -> bytes:
        name = match.group(1).decode()
        if name in seen:
            return b"// (" + match.group(1) + b" already included)"
        seen.add(name)
        included = bpf_source(path.with_name(name), seen)
        return b"// --- " + match.group(1) + b" ---\n" + included + b"\n// --- end " + match.group(1) + b" ---"

    return _LOCAL_INCLUDE.sub(paste, text)


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


def _count_key(counts: Counter, attribution: Counter, key: bytes, n: int) -> None:
    """key: bytes 16..24 (pid, kind, side, old, new) and 40..56 (comm) of an event."""
    pid, kind, side, old, new = _KEY.unpack_from(key)
    counts[(side, kind, old, new)] += n
    attribution[(side, kind, pid, key[8:].split(b"\0", 1)[0].decode(errors="replace"))] += n


def consumer_binary() -> Path:
    """The C consumer, built once per source version with gcc and libbpf (make setup installs both)."""
    return cached_binary(CONSUMER_SOURCE, ["-lbpf"], "the C ring-buffer consumer", BackendError)


class _PythonConsumer:
    """A thread in this process: bcc's callbacks, one per event. What a Python tool costs."""

    name = "python"

    def __init__(self, bpf: Any, transport: str, per_cpu_pages: int, wakeup_batch: int):
        self.counts: dict[bytes, int] = {}
        self.lost_callback = 0
        self.cpu_s = 0.0
        self.stop_flag = threading.Event()
        self.begin = 0.0
        table = bpf["events"]
        if transport == "ringbuf":
            table.open_ring_buffer(self._on_event)
            poll, consume = bpf.ring_buffer_poll, bpf.ring_buffer_consume
        else:
            table.open_perf_buffer(self._on_event, page_cnt=per_cpu_pages, lost_cb=self._on_lost,
                                   wakeup_events=wakeup_batch)
            poll, consume = bpf.perf_buffer_poll, bpf.perf_buffer_consume
        self.thread = threading.Thread(target=self._run, args=(poll, consume),
                                       name="tpbench-tracepoint-consumer", daemon=True)
        self.thread.start()

    def _on_event(self, ctx: Any, data: int, size: int) -> None:
        raw = ctypes.string_at(data, size)  # one event, or a batch of them
        counts = self.counts
        for offset in range(0, size - EVENT_SIZE + 1, EVENT_SIZE):
            key = raw[offset + 16 : offset + 24] + raw[offset + 40 : offset + 56]  # pid..new + comm
            counts[key] = counts.get(key, 0) + 1

    def _on_lost(self, count: int) -> None:
        self.lost_callback += count

    def cpu_so_far(self) -> float:
        """The consumer thread's CPU since it started (read from another thread)."""
        return time.clock_gettime(time.pthread_getcpuclockid(self.thread.ident)) - self.begin

    def _run(self, poll: Any, consume: Any) -> None:
        self.begin = begin = time.thread_time()
        while not self.stop_flag.is_set():
            poll(POLL_TIMEOUT_MS)  # wakes on batched forced wake-ups ...
            consume()  # ... and drains what was queued without one
        consume()
        self.cpu_s = time.thread_time() - begin

    def stop(self) -> dict[str, Any]:
        if self.thread.is_alive():
            self.stop_flag.set()
            self.thread.join()
        counts, attribution = Counter(), Counter()
        for key, n in self.counts.items():
            _count_key(counts, attribution, key, n)
        return {"counts": counts, "attribution": attribution, "cpu_s": self.cpu_s,
                "lost_callback": self.lost_callback}


class _CConsumer:
    """ringbuf_consumer.c in its own process, reading the ring through libbpf: what libbpf-tools cost.

    Like every observer process tpbench starts (tcpdump, the capture agent, the peers' tools), it
    runs in a session of its own: with CONFIG_SCHED_AUTOGROUP (on here) a session is a scheduling
    group, so each observer competes with the workload as a tool started from another terminal
    does. Had one observer shared the workload's group and another not, their backlogs and losses
    would differ by scheduling alone (tcpstates-bpfcc at churn 20k: in the workload's session it lost
    31-57% of its rows to its perf buffer and cost +85 us per connection; in a session of its own,
    6-18% and +125-140 us, run by tpbench 0.2% and +140 us)."""

    name = "c"

    def __init__(self, bpf: Any):
        fd = bpf["events"].map_fd
        self.process = subprocess.Popen([str(consumer_binary()), str(fd)], pass_fds=(fd,),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, start_new_session=True,
                                        preexec_fn=die_with_runner)
        ready = self.process.stdout.readline()
        if not ready:
            error = self.process.stderr.read().strip()
            self.process.wait()
            raise BackendError(f"the C consumer did not start: {error}")

    def stop(self, staged: bytes = b"") -> dict[str, Any]:
        """Hand it the staged records, then close its stdin: it drains the ring and reports."""
        if staged:  # a few KiB: within the pipe's buffer
            self.process.stdin.buffer.write(staged)
            self.process.stdin.flush()
        out, err = self.process.communicate(timeout=30)
        if self.process.returncode != 0:
            raise BackendError(f"the C consumer failed ({self.process.returncode}): {err.strip()}")
        report = json.loads(out)
        return {
            "counts": Counter({(s, k, o, n): c for s, k, o, n, c in report["counts"]}),
            "attribution": Counter({(s, k, pid, comm): c for s, k, pid, comm, c in report["attribution"]}),
            "cpu_s": report["cpu_s"],
            "lost_callback": 0,
            "max_rss_kib": report["max_rss_kib"],
            "staged_taken": report["staged_taken"],
            "bad_records": report["bad_records"],
            "events_read": report["events"],
            "attribution_overflow": report["attribution_overflow"],
            "flow_events": {"events": report["flow_events"], "overflow": report["flow_events_overflow"],
                            "sk_overflow": report["flow_sk_overflow"]},
        }

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


class _PyProcessConsumer:
    """agents/observers/ringbuf_py_consumer.py: libbpf's ring_buffer__poll calling a Python function per record
    (the path bcc's RingBuf takes), in a process of its own. Used by the toggled measurement, which
    must attribute the consumer's CPU and wait for its backlog at each switch-off."""

    name = "python"

    def __init__(self, bpf: Any):
        fd = bpf["events"].map_fd
        self.process = subprocess.Popen([sys.executable, "-m", "harness.agents.observers.ringbuf_py_consumer", str(fd)],
                                        pass_fds=(fd,), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, start_new_session=True,
                                        preexec_fn=die_with_runner)
        if not self.process.stdout.readline():
            error = self.process.stderr.read().strip()
            self.process.wait()
            raise BackendError(f"the Python consumer did not start: {error}")

    def drain(self) -> None:
        self.process.stdin.write("drain\n")
        self.process.stdin.flush()
        if not self.process.stdout.readline():
            raise BackendError(f"the Python consumer stopped: {self.process.stderr.read().strip()}")

    def stop(self) -> dict[str, Any]:
        out, err = self.process.communicate(timeout=60)
        if self.process.returncode != 0:
            raise BackendError(f"the Python consumer failed ({self.process.returncode}): {err.strip()}")
        report = json.loads(out.strip().splitlines()[-1])
        counts, attribution = Counter(), Counter()
        for key, n in report["keys"].items():
            _count_key(counts, attribution, bytes.fromhex(key), n)
        return {"counts": counts, "attribution": attribution, "cpu_s": report["cpu_s"], "lost_callback": 0,
                "max_rss_kib": report["max_rss_kib"]}

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@dataclass
class Program:
    """What a bcc backend hands the shared session: its BPF source, hooks and flags.

    attach: explicit attachments after the compile (kprobes resolved against kallsyms); None when
    bcc attaches the programs itself (TRACEPOINT_PROBE, KFUNC_PROBE). is_witness: programs that
    check the observer rather than observe (accounted apart). finish: adds the backend's own
    results to the observation at detach, given the session (its .bpf, .topology), before
    the programs are unloaded.
    """

    source: Path
    attached: list[str]
    absent: dict[str, str]
    cflags: list[str]
    details: dict[str, Any] = dataclass_field(default_factory=dict)
    attach: Callable[[Any], None] | None = None
    is_witness: Callable[[str], bool] = lambda name: False
    finish: Callable[["_Session", Observation, dict[str, Any]], None] | None = None
    prelude: bytes = b""  # C placed before the source (kprobe.py: uapi structs bcc's copy lacks)


def tracepoint_flags(tracepoints: list[str], caps: dict[str, Any], headers_path: str | None,
                     net_headers: bool = False) -> list[str]:
    """-DHOOK_<event> and the format flags for these tracepoints (also kprobe.py's witness)."""
    flags = [*(f"-DHOOK_{tp.split(':')[1]}=1" for tp in tracepoints), *format_flags(caps, tracepoints)]
    if _needs_rst_reason_stub(caps, headers_path, net_headers):
        flags.append("-DNEED_SK_RST_REASON_STUB=1")
    return flags


class _Session:
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
        self.consumer: _PythonConsumer | _CConsumer | None = None
        self.witnesses: dict[str, int] = {}
        self.exit = contextlib.ExitStack()
        try:
            self._attach()
        except BaseException:
            self.close()
            raise

    def _attach(self) -> None:
        # The backend names its BPF source, its hooks and their flags (tracepoints here; kprobes or
        # fentry in kprobe.py); everything else (modes, transports, consumers, bpf_stats) is shared.
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
        self.bpf = _compile(self.program.prelude + bpf_source(self.program.source), cflags)
        self.exit.callback(self.bpf.cleanup)
        if self.program.attach is not None:  # explicit attachments (kprobes); tracepoints auto-attach
            self.program.attach(self.bpf)
        functions = {name.decode(): fn.fd for name, fn in self.bpf.funcs.items()}
        # witness programs (kprobe.py's struct-read check) are accounted apart from the observer's cost
        self.witnesses = {n: fd for n, fd in functions.items() if self.program.is_witness(n)}
        self.programs = {n: fd for n, fd in functions.items() if n not in self.witnesses}
        if self.transport is not None:
            self._open_buffer()
        self.stats_before = {name: _read_prog_stats(fd) for name, fd in (*self.programs.items(),
                                                                          *self.witnesses.items())}
        self.rescued_before = self._rescued()  # read beside the stats: both are deltas

    def _rescued(self) -> int:
        return self._percpu_sums("rescued", 1)[0] if self.program.details.get("rescue") else 0

    def _open_buffer(self) -> None:
        self.perf_pages_per_cpu = _pow2_at_least(max(1, self.buffer_bytes // 4096 // (os.cpu_count() or 1)))
        if self.consumer_kind == "c":
            self.consumer = _CConsumer(self.bpf)
        elif self.python_process and self.transport == "ringbuf":
            self.consumer = _PyProcessConsumer(self.bpf)
        else:
            self.consumer = _PythonConsumer(self.bpf, self.transport, self.perf_pages_per_cpu, self.wakeup_batch)

    def loop_ended(self) -> None:
        consumer = self.consumer
        if isinstance(consumer, _PythonConsumer):
            self.deferred.at_loop_end["consumer"] = consumer.cpu_so_far()
        elif consumer is not None:
            self.deferred.mark("consumer", consumer.process.pid)

    def detach(self) -> Observation:
        # Events still staged in each CPU's partial batch: the C consumer takes them on its stdin,
        # so they meet its socket-address table (a connect's port is known only from the
        # socket's next event, which may have gone out in an earlier batch)
        staged_records = self._staged_records() if self.consumer is not None and self.batch > 1 else []
        if isinstance(self.consumer, _CConsumer):
            consumed = self.consumer.stop(b"".join(staged_records))
        else:
            consumed = self.consumer.stop() if self.consumer is not None else None
            if consumed is not None:
                self._count_staged(consumed, staged_records)
        self.consumer = None
        staged = len(staged_records)
        stats_after = {name: _read_prog_stats(fd) for name, fd in (*self.programs.items(),
                                                                   *self.witnesses.items())}
        rescued = self._rescued() - self.rescued_before
        observation = Observation()
        filtered = self._percpu_sums("filtered", len(EVENT_KINDS))
        attribution = None
        lost_output = 0
        if self.mode == "aggregate":
            self._read_aggregates(observation)
        elif self.mode == "stream":
            attribution = self._decode_stream(observation, consumed)
            # a full ring (reserve failed) or perf buffer (submit failed; the same drops reach
            # the lost callback as PERF_RECORD_LOST, so take the larger, never the sum)
            lost_output = max(self._percpu_sums("lost", 1)[0], consumed["lost_callback"])
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
            _count_key(consumed["counts"], consumed["attribution"], key, 1)
            if "flow_events" in consumed and (sampled := flowmatch.sample_record(raw)):
                consumed["flow_events"]["events"].append(sampled)

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
        if isinstance(self.consumer, _CConsumer):
            self.consumer.kill()
        elif self.consumer is not None:
            self.consumer.stop()
        self.consumer = None
        self.exit.close()


def is_rescue(program: str) -> bool:
    """rawtp.bpf.c's rescue programs (rawtp_rescue__<event>, tpbtf_rescue__<event>)."""
    return "_rescue__" in program


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of the running kernel: `6.1.0-27-amd64` -> (6, 1)."""
    match = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


class _TracepointSwitch:
    """The session compiled and loaded once, its tracepoint links made and closed per on-period.

    Off: every perf-event link is closed (bcc's detach_tracepoint), so the tracepoints have no
    program and cost what they cost untraced; the programs, maps, ring buffer and consumer stay.
    Events per on-period are the programs' own run counts (bpf_stats); lost ones are the kernel's
    recursion misses (6.7+) plus ring-buffer reserve failures."""

    def __init__(self, backend: "TracepointBackend", topology: Topology, params: dict[str, Any]):
        self.session = _Session(backend, topology, params, python_process=True)
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
            stats = _read_prog_stats(fd)
            totals["run_time_ns"] += stats["run_time_ns"]
            totals["all_runs"] += stats["run_cnt"]
            if not is_rescue(name):  # a rescue program's misses lose nothing (see detach)
                totals["run_cnt"] += stats["run_cnt"]
                totals["recursion_misses"] += stats["recursion_misses"]
        rescue = self.session.program.details.get("rescue")
        totals["rescued"] = self.session._percpu_sums("rescued", 1)[0] if rescue else 0
        totals["run_cnt"] += totals["rescued"]
        totals["lost_output"] = self.session._percpu_sums("lost", 1)[0] if self.session.mode == "stream" else 0
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
        if isinstance(self.session.consumer, _PyProcessConsumer):
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
        return [consumer.process.pid] if isinstance(consumer, (_CConsumer, _PyProcessConsumer)) else []

    def close(self) -> dict[str, Any]:
        observation = self.session.detach()
        details = observation.details
        return {"mode": details["mode"], "hooks_attached": details["hooks_attached"],
                "consumer": details.get("consumer"), "consumer_cpu_s": details.get("consumer_cpu_s"),
                "consumer_max_rss_kib": details.get("consumer_max_rss_kib"), "lost": observation.lost,
                "events": sum(observation.events.values())}


class TracepointBackend:
    hooks = tuple(HOOKS.values())

    def __init__(self, empty: bool = False):
        self.empty = empty
        hooks_param = Param("hooks", str, "all", "tracepoints to attach: all, or short names joined "
                            f"by '+' ({'+'.join(HOOKS)})", check=_check_hooks)
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

        def attach(bpf: Any) -> None:
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

        def finish(session: "_Session", observation: Observation, witness_stats: dict[str, Any]) -> None:
            observation.details["fidelity"] = witness_fidelity(
                session, witness_stats, attached if check else [], kinds, kinds, {},
                "check=false" if not check else "no witness",
                observer_skips_counted=observation.details["lost_recursion"] is not None,
                witness_skips_counted=kernel_version() >= MISSES_COUNTED_FROM["tp"])  # witnesses: classic tp

        return Program(RAW_SOURCE, attached, absent, cflags,
                       details={"flavour": flavour, "offsets": offsets, "rescue": rescue,
                                "witness_tracepoints": attached if check else []},
                       attach=attach, is_witness=lambda name: name.startswith("tracepoint__"), finish=finish)

    def attach(self, topology: Topology, params: dict[str, Any]) -> _Session:
        return _Session(self, topology, params)

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
