"""The capability probe: what this kernel lets each backend do, and why not when it does not.

Every backend asks this one module (never the kernel directly) whether its hooks exist. Answers come
from the running kernel, not from assumptions: tracefs format files, the perf PMUs the kernel
registered, a real BPF_PROG_LOAD of a two-instruction fentry program, a real ring-buffer map, and
/proc/config.gz to explain a missing feature.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import gzip
import importlib.util
import os
import platform
import re
import shutil
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import btf
from . import headers as headers_module
from .system import tracefs_mounted
from .tcp import TRACEPOINTS

SEED_TRACEPOINTS = TRACEPOINTS  # the seven stable TCP tracepoints the seed compares


# The kernel functions behind the seed's events, for kprobes and fentry (harness/backends/kprobe.py
# says which event each one stands for). Functions are not an ABI: each is resolved on the running
# kernel, never assumed.
SEED_FUNCTIONS = (
    "tcp_set_state", "inet_sk_set_state", "inet_csk_listen_start",
    "__tcp_retransmit_skb", "tcp_retransmit_skb", "tcp_rtx_synack",
    "tcp_v4_send_reset", "tcp_send_active_reset", "tcp_reset", "tcp_v4_destroy_sock",
    "tcp_rcv_established",
)
# GCC's clone suffixes: a function that exists only as name.isra.0 / .constprop.0 / .part.0 was
# specialised (arguments dropped or reordered, or split), so its registers do not follow the C
# signature: a probe there would read garbage.
CLONE_SUFFIXES = (".isra.", ".constprop.", ".part.", ".cold", ".llvm.")


@dataclass(frozen=True)
class FunctionResolution:
    name: str
    status: str  # "present" | "clone" (only specialised copies) | "absent" (inlined or renamed)
    symbol: str | None  # what a kprobe attaches to
    clones: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        extra = f" (also as clone {', '.join(self.clones)})" if self.clones else ""
        if self.status == "present":
            return f"{self.name} is in /proc/kallsyms{extra}"
        if self.status == "clone":
            return (f"{self.name} exists only as {', '.join(self.clones)}: a compiler clone whose arguments "
                    "need not follow the C signature, so it is not probed")
        return f"{self.name} is not in /proc/kallsyms: inlined into its callers or renamed on this kernel"


def resolve_functions(names: tuple[str, ...] | list[str], kallsyms: str | None = None) -> dict[str, FunctionResolution]:
    """Each name's fate in this kernel's symbol table (text symbols only: T/t, W/w)."""
    if kallsyms is None:
        try:
            kallsyms = Path("/proc/kallsyms").read_text()
        except OSError:
            kallsyms = ""
    exact: set[str] = set()
    clones: dict[str, list[str]] = {}
    # one regular-expression scan for the wanted names (longest first, so a name that is another's
    # prefix is not taken for it), not a split of each of the table's ~200,000 lines (0.6 s a run)
    alternatives = "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True))
    for found in re.finditer(rf"^\S+ [TtWw] ({alternatives})(\S*)", kallsyms, re.MULTILINE) if names else ():
        base, rest = found.groups()
        if not rest:
            exact.add(base)
        elif rest.startswith(CLONE_SUFFIXES):
            clones.setdefault(base, []).append(base + rest)
    result = {}
    for name in names:
        found = tuple(sorted(set(clones.get(name, ()))))
        if name in exact:
            result[name] = FunctionResolution(name, "present", name, found)
        elif found:
            result[name] = FunctionResolution(name, "clone", None, found)
        else:
            result[name] = FunctionResolution(name, "absent", None)
    return result


def probe_functions(names: tuple[str, ...] = SEED_FUNCTIONS) -> dict[str, Capability]:
    """`function:<name>` -> whether the kernel's symbol table has the function (resolve_functions), and why."""
    caps = {}
    for name, found in resolve_functions(names).items():
        key = f"function:{name}"
        caps[key] = Capability(key, found.status == "present", found.reason, asdict(found))
    return caps


@dataclass(frozen=True)
class Capability:
    name: str
    available: bool
    reason: str  # why it is (or is not) available, with the evidence
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class KernelProbe:
    release: str
    machine: str
    capabilities: dict[str, Capability]

    def __getitem__(self, name: str) -> Capability:
        return self.capabilities[name]

    def available(self, name: str) -> bool:
        cap = self.capabilities.get(name)
        return bool(cap and cap.available)

    def to_dict(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "machine": self.machine,
            "capabilities": {name: asdict(cap) for name, cap in self.capabilities.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "KernelProbe":
        caps = {n: Capability(**c) for n, c in data["capabilities"].items()}
        return cls(release=data["release"], machine=data["machine"], capabilities=caps)


def kernel_config() -> dict[str, str] | None:
    """CONFIG_* -> value from /proc/config.gz ("n" for "is not set"), or None without it."""
    for path in (Path("/proc/config.gz"), Path(f"/boot/config-{os.uname().release}")):
        try:
            raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        except OSError:
            continue
        config: dict[str, str] = {}
        for line in raw.decode(errors="replace").splitlines():
            if line.startswith("CONFIG_") and "=" in line:
                key, _, value = line.partition("=")
                config[key] = value
            elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
                config[line[2:].split()[0]] = "n"
        return config
    return None


def parse_format(text: str) -> list[dict[str, Any]]:
    """A tracefs format file's own fields (not the common_* header) as dicts."""
    fields = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("field:"):
            continue
        parts = dict(
            part.strip().split(":", 1) for part in line.rstrip(";").split(";") if ":" in part
        )
        declaration = parts["field"].strip()
        if declaration.split()[-1].startswith("common_"):
            continue
        name = declaration.split()[-1]
        ctype = declaration[: -len(name)].strip()
        if "[" in name:  # `__u8 saddr[28]`
            name, _, dims = name.partition("[")
            ctype += "[" + dims
        fields.append(
            {
                "name": name,
                "type": ctype,
                "offset": int(parts["offset"]),
                "size": int(parts["size"]),
                "signed": parts.get("signed", "0").strip() == "1",
            }
        )
    return fields


def _probe_tracepoints(tracefs: Path | None) -> dict[str, Capability]:
    caps = {}
    for full in SEED_TRACEPOINTS:
        category, name = full.split(":")
        key = f"tracepoint:{full}"
        if tracefs is None:
            caps[key] = Capability(key, False, "tracefs is not mounted and could not be mounted")
            continue
        fmt = tracefs / "events" / category / name / "format"
        try:
            fields = parse_format(fmt.read_text())
        except FileNotFoundError:
            caps[key] = Capability(key, False, f"{fmt} does not exist: this kernel has no such tracepoint")
            continue
        except OSError as exc:
            caps[key] = Capability(key, False, f"cannot read {fmt}: {exc.strerror}")
            continue
        caps[key] = Capability(
            key,
            True,
            f"{fmt} exists; arguments come from this format, so fallback headers are harmless here",
            {"fields": fields},
        )
    return caps


def probe_tracepoints() -> dict[str, Capability]:
    """Only the seed tracepoints' answers (what a backend needs at attach time), cheaply."""
    with tracefs_mounted() as tracefs:
        return _probe_tracepoints(tracefs)


# --- raw bpf(2): the probe loads real programs and maps rather than guessing ------------------

_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}.get(platform.machine())
_BPF_MAP_CREATE, _BPF_PROG_LOAD, _BPF_RAW_TRACEPOINT_OPEN = 0, 5, 17
_BPF_MAP_TYPE_RINGBUF = 27
_BPF_PROG_TYPE_RAW_TRACEPOINT, _BPF_PROG_TYPE_TRACING = 17, 26
_BPF_TRACE_RAW_TP, _BPF_TRACE_FENTRY = 23, 24
_BTF_KIND_TYPEDEF, _BTF_KIND_FUNC = btf.KIND_TYPEDEF, btf.KIND_FUNC
# r0 = 0; exit
_RETURN_ZERO = bytes.fromhex("b700000000000000" "9500000000000000")


def _bpf(cmd: int, attr: bytes) -> tuple[int, int]:
    """(fd or -1, errno) of one bpf(2) call."""
    if _BPF_SYSCALL is None:
        return -1, errno.ENOSYS
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(attr, 128)
    fd = libc.syscall(_BPF_SYSCALL, cmd, buf, 128)
    return fd, (ctypes.get_errno() if fd < 0 else 0)


def _errno_text(err: int) -> str:
    return f"{errno.errorcode.get(err, err)} ({os.strerror(err)})"


def probe_ringbuf() -> Capability:
    """Whether the kernel creates a BPF ring buffer (a real 4 KiB BPF_MAP_CREATE), with the errno if not."""
    attr = struct.pack("<IIII", _BPF_MAP_TYPE_RINGBUF, 0, 0, 4096)
    fd, err = _bpf(_BPF_MAP_CREATE, attr)
    if fd >= 0:
        os.close(fd)
        return Capability("bpf_ringbuf", True, "BPF_MAP_CREATE of a 4 KiB BPF_MAP_TYPE_RINGBUF succeeded")
    return Capability(
        "bpf_ringbuf", False, f"BPF_MAP_CREATE of a ring buffer failed: {_errno_text(err)}; use the perf buffer"
    )


def btf_func_id(name: str, kind: int = _BTF_KIND_FUNC) -> int | None:
    """BTF type id of a kernel function (or another kind): harness/btf.py's vmlinux BTF, loaded once."""
    try:
        return btf.kernel_btf().find(name, kind)
    except btf.BtfError:
        return None


def _probe_fentry(btf_present: bool) -> Capability:
    if not btf_present:
        return Capability("fentry", False, "no /sys/kernel/btf/vmlinux: fentry/fexit need kernel BTF")
    target = "tcp_set_state"
    type_id = btf_func_id(target)
    if type_id is None:
        return Capability("fentry", False, f"{target} not found in vmlinux BTF (or libbpf missing)")
    fd, err = _load_return_zero(_BPF_PROG_TYPE_TRACING, _BPF_TRACE_FENTRY, type_id)
    if fd >= 0:
        os.close(fd)
        return Capability("fentry", True, f"a BPF_PROG_TYPE_TRACING fentry program on {target} loaded")
    return Capability(
        "fentry",
        False,
        f"the kernel refuses fentry programs: BPF_PROG_LOAD of a BPF_PROG_TYPE_TRACING (fentry) "
        f"program on {target} failed with {_errno_text(err)}",
    )


def _prog_load(prog_type: int, insns: int, insn_cnt: int, name: str, attach_type: int = 0,
               btf_id: int = 0, log: ctypes.Array | None = None) -> tuple[int, int]:
    """One BPF_PROG_LOAD: (fd or -1, errno); the verifier writes into `log` if given."""
    license_buf = ctypes.create_string_buffer(b"GPL")
    attr = bytearray(128)
    struct.pack_into("<II", attr, 0, prog_type, insn_cnt)
    struct.pack_into("<QQ", attr, 8, insns, ctypes.addressof(license_buf))
    if log is not None:
        struct.pack_into("<IIQ", attr, 24, 1, len(log), ctypes.addressof(log))
    attr[48:64] = name.encode()[:15].ljust(16, b"\0")
    struct.pack_into("<I", attr, 68, attach_type)
    struct.pack_into("<I", attr, 108, btf_id)
    return _bpf(_BPF_PROG_LOAD, bytes(attr))


def _load_return_zero(prog_type: int, attach_type: int = 0, attach_btf_id: int = 0) -> tuple[int, int]:
    """BPF_PROG_LOAD of `r0 = 0; exit` as this program type: (fd or -1, errno)."""
    insns = ctypes.create_string_buffer(_RETURN_ZERO, len(_RETURN_ZERO))
    return _prog_load(prog_type, ctypes.addressof(insns), 2, "tpbench_probe", attach_type, attach_btf_id)


def load_tracing(insns: int, size: int, name: str, attach_type: int, btf_id: int) -> int:
    """Load compiled instructions (bcc's, maps already relocated) as a BPF_PROG_TYPE_TRACING program.

    bcc 0.26 loads tracing programs only all at once as it compiles (fentry, fexit, lsm, by name
    prefix; one refusal fails them all) and not as tp_btf at all, so tpbench loads them one by
    one. Returns the fd; OSError with the verifier's last lines when refused.
    """
    log = ctypes.create_string_buffer(1 << 16)
    fd, err = _prog_load(_BPF_PROG_TYPE_TRACING, insns, size // 8, name, attach_type, btf_id, log)
    if fd < 0:
        lines = [line for line in log.value.decode(errors="replace").splitlines() if line.strip()]
        raise OSError(err, f"{_errno_text(err)}{': ' + ' | '.join(lines[-3:]) if lines else ''}")
    return fd


def load_tp_btf(event: str, insns: int, size: int, name: str) -> int:
    """A tp_btf program on tracepoint `event` (BPF_TRACE_RAW_TP, by the btf_trace_<event> type)."""
    type_id = btf_func_id(f"btf_trace_{event}", _BTF_KIND_TYPEDEF)
    if type_id is None:
        raise OSError(errno.ENOENT, f"btf_trace_{event} not in vmlinux BTF")
    return load_tracing(insns, size, name, _BPF_TRACE_RAW_TP, type_id)


def load_fentry(function: str, insns: int, size: int, name: str) -> int:
    """An fentry program on kernel function `function` (BPF_TRACE_FENTRY, by its BTF FUNC id)."""
    type_id = btf_func_id(function)
    if type_id is None:
        raise OSError(errno.ENOENT, f"{function} not in vmlinux BTF")
    return load_tracing(insns, size, name, _BPF_TRACE_FENTRY, type_id)


def attach_by_btf_id(prog_fd: int) -> int:
    """BPF_RAW_TRACEPOINT_OPEN with no name: the link of a tracing program to its BTF target."""
    link, err = _bpf(_BPF_RAW_TRACEPOINT_OPEN, struct.pack("<QI", 0, prog_fd))
    if link < 0:
        raise OSError(err, _errno_text(err))
    return link


FLAVOUR_TARGET = "inet_sock_set_state"


def _probe_flavours(tracepoints: dict[str, Capability], btf_present: bool) -> dict[str, Capability]:
    """The tracepoint backend's program types, each loaded (and raw_tp attached) for real."""
    caps = {}
    have = tracepoints.get(f"tracepoint:sock:{FLAVOUR_TARGET}")
    if have is not None and have.available:
        caps["flavour:tp"] = Capability("flavour:tp", True, "classic tracepoint programs (tracefs formats)")
    else:
        caps["flavour:tp"] = Capability("flavour:tp", False, f"sock:{FLAVOUR_TARGET} is not in tracefs")
    fd, err = _load_return_zero(_BPF_PROG_TYPE_RAW_TRACEPOINT)
    if fd < 0:
        caps["flavour:raw_tp"] = Capability("flavour:raw_tp", False, "BPF_PROG_LOAD of a BPF_PROG_TYPE_RAW_TRACEPOINT "
                                            f"program failed with {_errno_text(err)}")
    else:
        name = ctypes.create_string_buffer(FLAVOUR_TARGET.encode())
        link, err = _bpf(_BPF_RAW_TRACEPOINT_OPEN, struct.pack("<QI", ctypes.addressof(name), fd))
        os.close(fd)
        if link < 0:
            caps["flavour:raw_tp"] = Capability("flavour:raw_tp", False, f"BPF_RAW_TRACEPOINT_OPEN on {FLAVOUR_TARGET} "
                                                f"failed with {_errno_text(err)}")
        elif not btf_present:
            os.close(link)
            caps["flavour:raw_tp"] = Capability("flavour:raw_tp", False, "raw tracepoints attach, but the programs "
                                                "read struct fields at offsets from /sys/kernel/btf/vmlinux, missing here")
        else:
            os.close(link)
            caps["flavour:raw_tp"] = Capability("flavour:raw_tp", True, f"a BPF_PROG_TYPE_RAW_TRACEPOINT program loaded "
                                                f"and attached to {FLAVOUR_TARGET}; struct offsets from kernel BTF")
    type_id = btf_func_id(f"btf_trace_{FLAVOUR_TARGET}", _BTF_KIND_TYPEDEF) if btf_present else None
    if type_id is None:
        caps["flavour:tp_btf"] = Capability("flavour:tp_btf", False, f"btf_trace_{FLAVOUR_TARGET} not in vmlinux BTF "
                                            "(tp_btf needs kernel BTF)")
    else:
        fd, err = _load_return_zero(_BPF_PROG_TYPE_TRACING, _BPF_TRACE_RAW_TP, type_id)
        if fd >= 0:
            os.close(fd)
            caps["flavour:tp_btf"] = Capability("flavour:tp_btf", True, "a BPF_PROG_TYPE_TRACING (BPF_TRACE_RAW_TP) "
                                                f"program on {FLAVOUR_TARGET} loaded")
        else:
            caps["flavour:tp_btf"] = Capability("flavour:tp_btf", False, "the kernel refuses tp_btf programs: "
                                                "BPF_PROG_LOAD of a BPF_PROG_TYPE_TRACING (BPF_TRACE_RAW_TP) program on "
                                                f"{FLAVOUR_TARGET} failed with {_errno_text(err)}")
    return caps


def _probe_kprobes(config: dict[str, str] | None, tracefs: Path | None) -> Capability:
    pmu = Path("/sys/bus/event_source/devices/kprobe")
    legacy = tracefs / "kprobe_events" if tracefs else None
    evidence = []
    if pmu.exists():
        evidence.append(f"{pmu} exists")
    if legacy is not None and legacy.exists():
        evidence.append(f"{legacy} exists")
    if evidence:
        return Capability("kprobes", True, "; ".join(evidence))
    setting = (config or {}).get("CONFIG_KPROBES")
    if setting == "n":
        why = "CONFIG_KPROBES is not set in this kernel's config"
    elif config is None:
        why = "no kernel config to read (/proc/config.gz)"
    else:
        why = f"CONFIG_KPROBES={setting}"
    return Capability(
        "kprobes", False, f"{why}: no kprobe PMU ({pmu}) and no kprobe_events, so no kprobe can attach"
    )


def _probe_bcc() -> Capability:
    spec = importlib.util.find_spec("bcc")
    if spec is None:
        return Capability(
            "bcc", False, "Python module bcc not importable: install Debian's python3-bpfcc (make setup)"
        )
    try:
        import bcc  # noqa: F401  (loads libbcc through ctypes)
    except Exception as exc:  # a broken libbcc raises OSError or AttributeError at import
        return Capability("bcc", False, f"import bcc failed: {exc}")
    version = getattr(bcc, "__version__", "unknown")
    return Capability("bcc", True, f"bcc {version} from {Path(bcc.__file__).parent}", {"version": version})


def _probe_libpcap() -> Capability:
    path = ctypes.util.find_library("pcap")
    if not path:
        return Capability("libpcap", False, "libpcap not found (install libpcap0.8)")
    lib = ctypes.CDLL(path)
    lib.pcap_lib_version.restype = ctypes.c_char_p
    version = lib.pcap_lib_version().decode()
    return Capability("libpcap", True, version, {"library": path})


def _probe_tools() -> dict[str, Capability]:
    caps = {}
    for tool in ("iptables", "tcpdump", "ethtool", "bpftool", "nsenter"):
        found = shutil.which(tool)
        caps[f"tool:{tool}"] = Capability(
            f"tool:{tool}", bool(found), found or f"{tool} not on PATH (make setup)"
        )
    return caps


def probe(build_headers: bool = True) -> KernelProbe:
    """Probe the running kernel. Mounts tracefs for the duration if needed (and unmounts it)."""
    caps: dict[str, Capability] = {}
    is_root = os.geteuid() == 0
    caps["root"] = Capability(
        "root", is_root, "running as root" if is_root else "not root: runs need root (sudo)"
    )
    config = kernel_config()
    try:
        with tracefs_mounted() as tracefs:
            caps["tracefs"] = Capability("tracefs", True, f"mounted at {tracefs}")
            caps.update(_probe_tracepoints(tracefs))
            caps["kprobes"] = _probe_kprobes(config, tracefs)
    except Exception as exc:  # not root, or mount refused: say so per hook
        caps["tracefs"] = Capability("tracefs", False, str(exc))
        caps.update(_probe_tracepoints(None))
        caps["kprobes"] = _probe_kprobes(config, None)
    btf = Path("/sys/kernel/btf/vmlinux")
    caps["btf"] = Capability(
        "btf",
        btf.exists(),
        f"{btf} ({btf.stat().st_size} bytes)" if btf.exists() else f"{btf} missing (CONFIG_DEBUG_INFO_BTF)",
    )
    if is_root:
        caps["fentry"] = _probe_fentry(btf.exists())
        caps.update(_probe_flavours(caps, btf.exists()))
        caps["bpf_ringbuf"] = probe_ringbuf()
    else:
        caps["fentry"] = Capability("fentry", False, "not probed: loading BPF programs needs root")
        for flavour in ("tp", "raw_tp", "tp_btf"):
            caps[f"flavour:{flavour}"] = Capability(f"flavour:{flavour}", False, "not probed: loading BPF programs needs root")
        caps["bpf_ringbuf"] = Capability("bpf_ringbuf", False, "not probed: creating BPF maps needs root")
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    caps["bpf_stats"] = Capability(
        "bpf_stats", stats.exists(), f"{stats} {'exists' if stats.exists() else 'missing'}"
    )
    caps["bcc"] = _probe_bcc()
    found = headers_module.find_headers(build=build_headers and is_root)
    caps["headers"] = Capability("headers", found.kind != "none", found.detail, found.to_dict())
    caps["libpcap"] = _probe_libpcap()
    caps.update(probe_functions())
    caps.update(_probe_tools())
    uname = os.uname()
    return KernelProbe(release=uname.release, machine=uname.machine, capabilities=caps)
