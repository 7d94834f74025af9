"""`kprobe` and `fentry` backends: eBPF via bcc on the kernel functions behind the seed's events.

Uses kprobes (any kernel with CONFIG_KPROBES) or, as `fentry`, BPF trampolines (5.5+, BTF and
BPF_PROG_TYPE_TRACING allowed) on:
  state          tcp_set_state(sk, state): the pre-4.16 tcplife way (new state is the argument,
                 old state read from the socket). Alone it misses what tcp_set_state never sets:
  state_other    inet_sk_set_state(sk, state): a passive child's SYN_RECV, a failed listen's CLOSE
  listen         inet_csk_listen_start(sk): CLOSE->LISTEN
  retransmit     __tcp_retransmit_skb (where the tracepoint sits; tail-loss probes call it
                 directly), else tcp_retransmit_skb
  synack         tcp_rtx_synack          send_reset    tcp_v4_send_reset (socketless RSTs too)
  active_reset   tcp_send_active_reset   receive_reset tcp_reset
  destroy        tcp_v4_destroy_sock     probe         tcp_rcv_established (the tcp_probe site)
Functions are not an ABI: each is resolved against /proc/kallsyms on the running kernel (present,
absent = inlined or renamed, or only as a .isra/.constprop/.part clone, which is never probed) and
the record says per hook what was attached to what.

The BPF C is kprobe.bpf.c; the event record, maps, modes (stream/aggregate), transports, consumers,
per-CPU batching, bpf_stats accounting and the topology address filter are shared with the tracepoint
backend (tcp_events.bpf.h, bpf_build.py, bpf_session.py, ringbuf.py), so both are measured through the
same code.

Misses are counted, not guessed: a kprobe hit while another kprobe's handler runs on the CPU (a
softirq's tcp_set_state during a process-context handler) is dropped by the kprobe layer before any
BPF program runs, and counted only in that kprobe's nmissed (a 6.12 VM run lost 2 state changes and
a destroy that way with recursion_misses 0). bcc makes its kprobes through the perf kprobe PMU,
whose nmissed nothing shows before Linux 6.7 (and then only for BPF links; bcc attaches with an
ioctl). So the kprobes are made in tracefs instead, as bcc itself does without the PMU (`p:tpb/<name>
<function>` in kprobe_events; the same kprobe, handler and BPF program type), where kprobe_profile
prints each one's hits and nmissed; the programs attach to their perf events. `tpbench cleanup`
removes the events a crashed run left (group tpb), and the preflight refuses a run beside them.

Struct reads are checked, not trusted (`-p check=true`, the default): the tracepoints for the same
events are attached as witnesses, and every event the kprobe reports is compared field by field
with what the tracepoint reports for it (same socket, same CPU, same instant). Mismatches are
fidelity errors in the observation (details.fidelity.errors). The witnesses' own cost is reported
apart (details.fidelity.witness_bpf_stats) and kept out of bpf_stats/ns_per_event; it does slow the
workload, so measure throughput with check=false.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..headers import find_headers, header_file
from ..kernel import KernelProbe, btf_func_id, attach_by_btf_id, load_fentry, probe_tracepoints, resolve_functions
from ..params import Param, names_check, parse_names
from ..system import KPROBE_GROUP, add_kprobe_event, kprobe_profile, remove_kprobe_event, tracefs_mounted
from ..tcp import FUNCTION_HOOKS, TRACEPOINT_KINDS
from .base import Availability, Backend, Observation
from .bpf_build import MISSES_COUNTED_FROM, BackendError, Program, kernel_version, tracepoint_flags
from .bpf_session import Session
from .tracepoint import TracepointBackend
from .witness import CHECK_SLOTS, FIELD_NAMES, summarize_check, witness_fidelity  # noqa: F401 (re-exported)

SOURCE = Path(__file__).with_name("kprobe.bpf.c")


@dataclass(frozen=True)
class Hook:
    candidates: tuple[str, ...]  # first present one wins
    tracepoint: str  # the stable tracepoint reporting the same events (the witness: tcp.FUNCTION_HOOKS)
    # why the tracepoint may legitimately not fire for an event the function sees (6.1 code)
    tracepoint_conditional: str | None = None

    @property
    def kind(self) -> str:
        return TRACEPOINT_KINDS[self.tracepoint]


_FUNCTIONS = {
    "state": (("tcp_set_state",), None),
    "state_other": (("inet_sk_set_state",), None),
    "listen": (("inet_csk_listen_start",), None),
    "retransmit": (("__tcp_retransmit_skb", "tcp_retransmit_skb"),
                   "before 6.x the tracepoint fires only for a retransmission that left (err == 0)"),
    "synack": (("tcp_rtx_synack",), "the tracepoint fires only when the SYN-ACK was sent"),
    "send_reset": (("tcp_v4_send_reset",), "before 6.10 the tracepoint fires only for a full socket "
                   "(not TIME_WAIT/request, not socketless)"),
    "active_reset": (("tcp_send_active_reset",), None),
    "receive_reset": (("tcp_reset",), None),
    "destroy": (("tcp_v4_destroy_sock",), None),
    "probe": (("tcp_rcv_established",), None),
}
HOOKS = {name: Hook(candidates, FUNCTION_HOOKS[name], conditional)
         for name, (candidates, conditional) in _FUNCTIONS.items()}
ALL_FUNCTIONS = tuple(dict.fromkeys(f for hook in HOOKS.values() for f in hook.candidates))


def parse_hooks(text: str) -> tuple[str, ...]:
    """`all` or hooks joined by '+' -> hook names (ValueError on an unknown one)."""
    return parse_names(text, HOOKS)


check_hooks = names_check(HOOKS)


def resolve_hooks(names: tuple[str, ...], kallsyms: str | None = None,
                  has_btf: Any = None) -> tuple[dict[str, str], dict[str, str]]:
    """hook -> symbol to attach to, and hook -> why none could be (per candidate).

    has_btf: for fentry, a predicate on a function name (a trampoline needs the function in BTF).
    """
    functions = resolve_functions(ALL_FUNCTIONS, kallsyms)
    chosen, absent = {}, {}
    for name in names:
        reasons = []
        for candidate in HOOKS[name].candidates:
            found = functions[candidate]
            if found.status != "present":
                reasons.append(found.reason)
            elif has_btf is not None and not has_btf(candidate):
                reasons.append(f"{candidate} is not in vmlinux BTF: no trampoline can attach")
            else:
                chosen[name] = candidate
                break
        if name not in chosen:
            absent[name] = "; ".join(reasons)
    return chosen, absent


# BTF-managed objects that linux/bpf.h (6.9+) takes the size of: bcc compiles against its own
# older copy of uapi/linux/bpf.h, which lacks the newer ones ("incomplete type 'struct bpf_wq'"
# with Debian's 6.12 headers; bcc issues 5444, 5451 for 6.18's bpf_task_work).
UAPI_OPAQUE = ("bpf_wq", "bpf_list_head", "bpf_list_node", "bpf_rb_root", "bpf_rb_node", "bpf_refcount",
               "bpf_task_work", "bpf_res_spin_lock")


@functools.lru_cache(maxsize=4)
def uapi_prelude(headers_path: str | None) -> bytes:
    """Definitions, copied from the headers' own uapi/linux/bpf.h, of the structs bcc's copy lacks."""
    if headers_path is None:
        return b""
    uapi = header_file(headers_path, "include/uapi/linux/bpf.h")
    if uapi is None:
        return b""
    text = uapi.read_text(errors="replace")
    bcc_lib = Path("/usr/lib/x86_64-linux-gnu/libbcc.so.0")
    known = bcc_lib.read_bytes() if bcc_lib.exists() else b""
    out = []
    for name in UAPI_OPAQUE:
        found = re.search(r"^struct %s \{[^}]*\}[^;]*;" % name, text, re.MULTILINE)
        if found and f"struct {name} {{".encode() not in known:
            out.append(found.group(0))
    return ("\n".join(out) + "\n").encode() if out else b""


def attach_fentries(bpf: Any, chosen: dict[str, str], attached: list[str], absent: dict[str, str]) -> None:
    """Load and attach each fentry__<function> program on its own; a refused one is absent, not fatal.

    (6.1 refuses fentry on __tcp_retransmit_skb with EINVAL while it accepts the others.) Links go
    into bcc's raw_tracepoint_fds and programs into its funcs, so bcc's cleanup closes them.
    """
    from bcc import BPF, lib

    for hook, symbol in list(chosen.items()):
        name = f"fentry__{symbol}".encode()
        try:
            fd = load_fentry(symbol, lib.bpf_function_start(bpf.module, name), lib.bpf_function_size(bpf.module, name),
                             f"fentry_{hook}")
        except OSError as exc:
            absent[hook] = f"fentry on {symbol} refused by the kernel: {exc.strerror or exc}"
            attached.remove(f"fentry:{symbol}")
            del chosen[hook]
            continue
        bpf.funcs[name] = BPF.Function(bpf, name, fd)
        try:
            bpf.raw_tracepoint_fds[b"fentry:" + symbol.encode()] = attach_by_btf_id(fd)
        except OSError as exc:
            absent[hook] = f"fentry on {symbol} loaded but did not attach: {exc.strerror or exc}"
            attached.remove(f"fentry:{symbol}")
            del chosen[hook]
    if not chosen:
        raise BackendError(f"the kernel refused every fentry program: {absent}")


class TracefsKprobes:
    """The session's kprobes, made in tracefs (see the module's docstring) and removed on close."""

    def __init__(self, bpf: Any, tracefs: Path):
        self.bpf, self.tracefs = bpf, tracefs
        self.events: dict[str, str] = {}  # hook -> event name
        self.perf_fds: list[int] = []

    def attach(self, hook: str, symbol: str) -> None:
        """A kprobe on `symbol` running probe_<hook>; BackendError if the kernel refuses either."""
        from bcc import BPF, lib

        name = f"{KPROBE_GROUP}_{os.getpid()}_{hook}"
        try:
            add_kprobe_event(self.tracefs, name, symbol)
        except OSError as exc:
            raise BackendError(f"kprobe on {symbol} (hook {hook}) refused by kprobe_events: "
                               f"{exc.strerror or exc}") from None
        self.events[hook] = name
        program = self.bpf.load_func(f"probe_{hook}".encode(), BPF.KPROBE)
        fd = lib.bpf_attach_tracepoint(program.fd, KPROBE_GROUP.encode(), name.encode())
        if fd < 0:
            raise BackendError(f"kprobe on {symbol} (hook {hook}): its program did not attach to {KPROBE_GROUP}/{name}")
        self.perf_fds.append(fd)

    def missed(self) -> dict[str, int]:
        """Each hook's kprobe nmissed since it was made (0 at creation)."""
        profile = kprobe_profile(self.tracefs)
        return {hook: profile[name][1] for hook, name in self.events.items()}

    def close(self) -> None:
        """Detach the programs (perf events closed), then remove the events (refused while open)."""
        from bcc import lib

        for fd in self.perf_fds:
            lib.bpf_close_perf_event_fd(fd)
        self.perf_fds = []
        for name in self.events.values():
            with contextlib.suppress(OSError):
                remove_kprobe_event(self.tracefs, name)
        self.events = {}


class KprobeBackend(Backend):
    def __init__(self, fentry: bool = False):
        self.fentry = fentry
        self.name = "fentry" if fentry else "kprobe"
        self.empty = False
        self.hooks = ALL_FUNCTIONS
        self.description = ("eBPF (bcc) on BPF trampolines (fentry) at the TCP functions behind the seed events"
                            if fentry else
                            "eBPF (bcc) kprobes on tcp_set_state and the TCP functions behind the seed events")
        # the shared session's modes, transports and consumers; not the tracepoint flavours
        base = {p.name: p for p in TracepointBackend().params if p.name not in ("flavour", "check", "rescue")}
        base["hooks"] = Param("hooks", str, "all", "functions to probe: all, or short names joined by '+' "
                              f"({'+'.join(HOOKS)})", check=check_hooks)
        self.params = (
            *base.values(),
            Param("check", bool, True, "compare every struct read with the tracepoint for the same event "
                  "(witness programs, accounted apart); false to measure throughput alone"),
        )

    # -- what the kernel allows ---------------------------------------------------------------
    def availability(self, probe: KernelProbe, params: dict[str, Any] | None = None) -> Availability:
        if not probe.available("bcc"):
            return Availability(False, probe["bcc"].reason)
        if not probe.available("headers"):
            return Availability(False, f"no kernel headers for bcc: {probe['headers'].reason}")
        facility = "fentry" if self.fentry else "kprobes"
        if not probe.available(facility):
            return Availability(False, probe[facility].reason, tuple(HOOKS))
        missing, resolved = [], []
        for name, hook in HOOKS.items():
            present = [f for f in hook.candidates if probe.available(f"function:{f}")]
            (resolved if present else missing).append(name if present else
                                                      f"{name}: {probe[f'function:{hook.candidates[0]}'].reason}"
                                                      if f"function:{hook.candidates[0]}" in probe.capabilities
                                                      else name)
        if not resolved:
            return Availability(False, "none of the probed TCP functions is in /proc/kallsyms", tuple(missing))
        headers = probe["headers"].data.get("kind")
        note = (" (fallback headers: struct reads are checked against the tracepoints)"
                if headers == "fallback" else "")
        absent = f"; absent here: {', '.join(missing)}" if missing else ""
        return Availability(True, f"{len(resolved)} of {len(HOOKS)} hooks resolved in /proc/kallsyms{note}{absent}",
                            tuple(missing))

    def check_params(self, params: dict[str, Any]) -> None:
        if params.get("consumer") == "c" and params.get("transport") == "perf":
            raise UsageError(f"{self.name}: consumer=c reads a BPF ring buffer; it cannot be used with transport=perf")

    # -- the program the shared session loads -------------------------------------------------
    def program(self, params: dict[str, Any]) -> Program:
        selected = parse_hooks(params["hooks"])
        chosen, absent = resolve_hooks(selected, has_btf=(lambda f: btf_func_id(f) is not None)
                                       if self.fentry else None)
        if not chosen:
            raise BackendError(f"none of the selected functions can be probed here: {absent}")
        headers = find_headers()
        cflags = []
        for name, symbol in chosen.items():
            cflags += [f"-DKHOOK_{name}=1", f"-DFN_{name}={symbol}"]
        if self.fentry:
            cflags.append("-DFENTRY=1")
        details: dict[str, Any] = {
            "flavour": self.name,
            "functions": dict(chosen),
            "headers": {"kind": headers.kind, "package_version": headers.package_version},
        }
        witnesses: list[str] = []
        if params["check"]:
            caps = probe_tracepoints()
            witnesses = list(dict.fromkeys(HOOKS[n].tracepoint for n in chosen
                                           if caps[f"tracepoint:{HOOKS[n].tracepoint}"].available))
            if witnesses:
                cflags += ["-DCHECK=1", *tracepoint_flags(witnesses, caps, headers.path, net_headers=True)]
            details["witness_tracepoints"] = witnesses
        conditional = {HOOKS[n].kind: HOOKS[n].tracepoint_conditional for n in chosen
                       if HOOKS[n].tracepoint_conditional}

        attached = [f"{'fentry' if self.fentry else 'kprobe'}:{symbol}" for symbol in chosen.values()]

        kprobes: list[TracefsKprobes] = []

        def attach(bpf: Any, stack: contextlib.ExitStack) -> None:
            if self.fentry:
                attach_fentries(bpf, chosen, attached, absent)
                return
            tracefs = stack.enter_context(tracefs_mounted())
            made = TracefsKprobes(bpf, tracefs)
            stack.callback(made.close)  # before bcc's cleanup (the stack unwinds last in, first out)
            kprobes.append(made)
            for name, symbol in chosen.items():
                made.attach(name, symbol)

        def finish(session: Session, observation: Observation, witness_stats: dict[str, Any]) -> None:
            details = observation.details
            reason = "check=false" if not params["check"] else "no witness tracepoint on this kernel"
            # the hooks attached in the end (fentry drops those the kernel refused)
            attached_kinds = {HOOKS[n].kind for n in chosen}
            checked_kinds = {HOOKS[n].kind for n in chosen if HOOKS[n].tracepoint in witnesses}
            counted = None  # per kind, the events this observer counted lost (where it counts them all)
            if not self.fentry:
                # the kprobe layer's re-entry misses, per kprobe (see the module's docstring)
                missed = kprobes[0].missed()
                details["kprobe_missed"] = {chosen[hook]: n for hook, n in missed.items()}
                total = sum(missed.values())
                details["loss_method"] += (
                    f"; + the kprobe layer's nmissed per kprobe (tracefs kprobe_profile: {total})"
                    if observation.lost is not None else
                    f"; the kprobe layer's own misses are counted apart, nmissed per kprobe (tracefs kprobe_profile: "
                    f"{total}, details.kprobe_missed): a lower bound")
                if observation.lost is not None:
                    observation.lost += total
                    counted = {}
                    for hook, n in missed.items():
                        counted[HOOKS[hook].kind] = counted.get(HOOKS[hook].kind, 0) + n
                    for hook in chosen:
                        skipped = details["bpf_stats"]["programs"].get(f"probe_{hook}", {}).get("recursion_misses", 0)
                        counted[HOOKS[hook].kind] = counted.get(HOOKS[hook].kind, 0) + skipped
            details["fidelity"] = witness_fidelity(
                session, witness_stats, witnesses, attached_kinds, checked_kinds, conditional, reason,
                observer_skips_counted=details["lost_recursion"] is not None,
                witness_skips_counted=kernel_version() >= MISSES_COUNTED_FROM["tp"],  # witnesses: classic tp
                observer_counted_lost=counted)

        return Program(
            source=SOURCE,
            attached=attached,
            absent=absent,  # attach() adds the hooks the kernel refuses
            cflags=cflags,
            details=details,
            attach=attach,
            is_witness=lambda name: name.startswith("tracepoint__"),
            finish=finish,
            prelude=uapi_prelude(headers.path),
        )

    def attach(self, topology: Any, params: dict[str, Any]) -> Session:
        return Session(self, topology, params)
