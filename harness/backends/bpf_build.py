"""Building and loading bcc BPF programs, for the tracepoint and kprobe backends.

The BPF C with its local headers pasted in (bpf_source), the -D flags from the running kernel
(tracepoint formats; BTF offsets for raw_tp/tp_btf), the compile (clang's first error quoted in
BackendError), the raw_tp/tp_btf attachments, and each program's run_cnt, run_time_ns and
recursion_misses read from its fd's fdinfo. Program is what a backend hands the session
(bpf_session.py); kernel_version and MISSES_COUNTED_FROM say whether this kernel counts skipped runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import tempfile
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .. import btf
from ..headers import find_headers, header_file
from ..kernel import attach_by_btf_id, load_tp_btf
from .base import Observation

if TYPE_CHECKING:
    from .bpf_session import Session

# The kernel counts a skipped program run (recursion_misses) from this release on, per flavour.
# trace_call_bpf() (tp, kprobe) since 6.7; __bpf_trace_run() (raw_tp, tp_btf) since "bpf: Prevent bpf
# program recursion for raw tracepoint probes" (6.0); trampolines (fentry) since 5.12.
MISSES_COUNTED_FROM = {"tp": (6, 7), "kprobe": (6, 7), "raw_tp": (6, 0), "tp_btf": (6, 0), "fentry": (5, 12)}
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


class BackendError(RuntimeError):
    """The backend could not attach (compile error, no usable hook); the trial fails with this."""


@dataclass
class Program:
    """What a bcc backend hands the shared session: its BPF source, hooks and flags.

    attach: explicit attachments after the compile (kprobes resolved against kallsyms), given the
    BPF object and the session's exit stack (for what must be undone at close); None when bcc
    attaches the programs itself (TRACEPOINT_PROBE, KFUNC_PROBE). is_witness: programs that
    check the observer rather than observe (accounted apart). finish: adds the backend's own
    results to the observation at detach, given the session (its .bpf, .topology), before
    the programs are unloaded.
    """

    source: Path
    attached: list[str]
    absent: dict[str, str]
    cflags: list[str]
    details: dict[str, Any] = dataclass_field(default_factory=dict)
    attach: Callable[[Any, contextlib.ExitStack], None] | None = None
    is_witness: Callable[[str], bool] = lambda name: False
    finish: Callable[["Session", Observation, dict[str, Any]], None] | None = None
    prelude: bytes = b""  # C placed before the source (kprobe.py: uapi structs bcc's copy lacks)


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


def format_flags(caps: dict[str, Any], tracepoints: list[str]) -> list[str]:
    """-DTP_<event>_<field>_SIZE=n and -DTP_<event>_HAS_<field> from the running kernel's formats."""
    flags = []
    for full in tracepoints:
        event = full.split(":")[1]
        for field in caps[f"tracepoint:{full}"].data["fields"]:
            flags.append(f"-DTP_{event}_{field['name']}_SIZE={field['size']}")
            flags.append(f"-DTP_{event}_HAS_{field['name']}=1")
    return flags


def needs_rst_reason_stub(caps: dict[str, Any], headers_path: str | None, net_headers: bool) -> bool:
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


def tracepoint_flags(tracepoints: list[str], caps: dict[str, Any], headers_path: str | None,
                     net_headers: bool = False) -> list[str]:
    """-DHOOK_<event> and the format flags for these tracepoints (also kprobe.py's witness)."""
    flags = [*(f"-DHOOK_{tp.split(':')[1]}=1" for tp in tracepoints), *format_flags(caps, tracepoints)]
    if needs_rst_reason_stub(caps, headers_path, net_headers):
        flags.append("-DNEED_SK_RST_REASON_STUB=1")
    return flags


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


def compile_bpf(text: bytes, cflags: list[str]):
    """bcc's BPF object compiled from `text` with `cflags`; BackendError quotes clang's first error and the headers."""
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


def read_prog_stats(fd: int) -> dict[str, int]:
    """A loaded program's run_time_ns, run_cnt and recursion_misses from /proc/self/fdinfo (0 where absent)."""
    stats = {"run_time_ns": 0, "run_cnt": 0, "recursion_misses": 0}
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in stats:
            stats[key] = int(value)
    return stats


def is_rescue(program: str) -> bool:
    """rawtp.bpf.c's rescue programs (rawtp_rescue__<event>, tpbtf_rescue__<event>)."""
    return "_rescue__" in program


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of the running kernel: `6.1.0-27-amd64` -> (6, 1)."""
    match = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)
