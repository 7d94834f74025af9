"""The peers: the tools users actually run, as Debian ships them, measured as black boxes.

    bcc-tcpstates   tcpstates-bpfcc (bpfcc-tools): a line per TCP state change
    bcc-tcplife     tcplife-bpfcc: a line per closed session (bytes and duration)
    bcc-tcpretrans  tcpretrans-bpfcc: a line per retransmitted skb
    bpftrace        a bpftrace one-liner counting inet_sock_set_state by (address, old, new) in a
                    kernel map, printed once when it exits

Each runs the way a user runs it (`tcpstates-bpfcc > states.log`): no option that is not the
tool's default, the whole host observed, its output to a file in tmpfs, stopped with SIGINT (Ctrl-C).
Two things differ from a terminal, both said in the record: Python's stdout is made unbuffered
(PYTHONUNBUFFERED=1, one write per line, as Python line-buffers a terminal) so that the tool's
header, which it prints once its programs are attached, can be read as the readiness signal; and
bcc gets the kernel headers tpbench uses (BCC_KERNEL_SOURCE), the newest tree bcc can compile.

The tool's processes are children of the runner, in the run's cgroup: their CPU (compile
excepted, which happens before the measured loop) is inside the trial's cost. Their output is
parsed after the tool has stopped, into the same Observation as every backend (per side by local
address: 198.18.0.1 client, 198.18.0.2 server; sockets of other addresses are counted as foreign
and left out). Loss is what the tool says ("Possibly lost N samples" from bcc's perf reader, made
complete by a sentinel session per CPU: send_sentinels) plus what the kernel counted for the
tool's programs (recursion_misses in their fdinfo, 6.7+): before 6.7 the kernel cannot count
skipped classic-tracepoint runs and `lost` is null.

They observe the whole host, so they are only measured when nothing else runs (the preflight
refuses a busy host); they have no `prepare`, so the toggled measurement (which switches an
observer on and off under one workload, harness/toggle.py) does not take them: a bcc tool compiles
for 1-3 s at each start.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from netns import Topology

from ..headers import KernelHeaders, header_candidates
from ..kernel import KernelProbe
from ..params import Param
from ..system import die_with_runner
from ..tcp import SIDES, arrow, state_name
from .base import Availability, Backend, Observation
from .processes import DeferredCpu, kill, process_cpu_s, reap
from .bpf_build import MISSES_COUNTED_FROM, BackendError, kernel_version

START_TIMEOUT_S = 120.0  # a bcc compile under emulation (the VMs) takes tens of seconds
DRAIN_QUIET_S = 0.3  # output unchanged this long after the workload: the tool has printed what it had
DRAIN_MAX_S = 60.0
STOP_TIMEOUT_S = 30.0
SIGINT_HEEDED_S = 5.0  # Ctrl-C, pressed again each second; then SIGTERM (see _stop)
LOST_LINE = re.compile(r"Possibly lost (\d+) samples")
COMPILE_ERROR = re.compile(r"error: |Failed to compile BPF module")
STATE_HOOK = "tracepoint:sock:inet_sock_set_state"
BPFTRACE_PROGRAM = (
    "tracepoint:sock:inet_sock_set_state /args->protocol == 6/ "
    "{ @states[ntop(args->family, args->saddr), args->oldstate, args->newstate] = count(); } "
    # readiness: the interval probe is attached after the tracepoint (program order)
    "interval:ms:100 /@ready == 0/ { @ready = 1; printf(\"ready\\n\"); }"
)
_working_headers: dict[str, KernelHeaders] = {}  # tool -> the tree it compiled against (this process)


@dataclass
class Parsed:
    """One tool's output, per side; `foreign` rows belong to sockets of no topology host."""

    events: dict[str, dict[str, int]] = field(default_factory=lambda: {side: {} for side in SIDES})
    transitions: dict[str, dict[str, int]] = field(default_factory=lambda: {side: {} for side in SIDES})
    rows: int = 0
    foreign: int = 0
    unparsed: list[str] = field(default_factory=list)  # the first few lines no rule matched
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, side: str | None, kind: str, transition: str | None = None, n: int = 1) -> None:
        if side is None:
            self.foreign += n
            return
        self.events[side][kind] = self.events[side].get(kind, 0) + n
        if transition:
            self.transitions[side][transition] = self.transitions[side].get(transition, 0) + n

    def skip(self, line: str) -> None:
        if len(self.unparsed) < 5:
            self.unparsed.append(line[:200])


def _tcpstates(lines: list[str], sides: dict[str, str]) -> Parsed:
    """SKADDR C-PID C-COMM LADDR LPORT RADDR RPORT OLDSTATE -> NEWSTATE MS (COMM may hold spaces:
    read from the right)."""
    out = Parsed()
    for line in lines:
        parts = line.split()
        if len(parts) < 10 or parts[-3] != "->" or parts[0] == "SKADDR":
            if line.strip() and not line.startswith("SKADDR"):
                out.skip(line)
            continue
        out.rows += 1
        out.add(sides.get(parts[-8]), "state_change", f"{parts[-4]}->{parts[-2]}")
    return out


def _tcplife(lines: list[str], sides: dict[str, str]) -> Parsed:
    """PID COMM LADDR LPORT RADDR RPORT TX_KB RX_KB MS: one row per session that ended (it reached
    CLOSE), for sockets whose start tcplife saw. TX_KB/RX_KB are read from struct tcp_sock at the
    headers' offsets: a value beyond what the workload could send is counted as implausible."""
    out = Parsed()
    implausible = 0
    for line in lines:
        parts = line.split()
        if len(parts) < 9 or parts[0] == "PID" or not parts[-3].isdigit():
            if line.strip() and not line.startswith("PID"):
                out.skip(line)
            continue
        out.rows += 1
        out.add(sides.get(parts[-7]), "session")
        if max(int(parts[-3]), int(parts[-2])) > 1 << 30:  # over a TiB per session
            implausible += 1
    out.extra["implausible_byte_counts"] = implausible
    return out


def _tcpretrans(lines: list[str], sides: dict[str, str]) -> Parsed:
    """TIME PID IP LADDR:LPORT T> RADDR:RPORT STATE; T is R (retransmit) or L (tail loss probe, -l)."""
    out = Parsed()
    for line in lines:
        parts = line.split()
        if len(parts) < 7 or not parts[4].endswith(">") or parts[0] == "TIME":
            if line.strip() and not line.startswith(("TIME", "Tracing")):
                out.skip(line)
            continue
        out.rows += 1
        kind = "retransmit" if parts[4] == "R>" else "tail_loss_probe"
        out.add(sides.get(parts[3].rsplit(":", 1)[0]), kind)
    return out


_BPFTRACE_ROW = re.compile(r"@states\[([0-9.:a-f]+), (\d+), (\d+)\]: (\d+)")


def _bpftrace(lines: list[str], sides: dict[str, str]) -> Parsed:
    """@states[ADDRESS, OLD, NEW]: COUNT, printed at exit (the map, read once)."""
    out = Parsed()
    for line in lines:
        match = _BPFTRACE_ROW.fullmatch(line.strip())
        if not match:
            if line.strip() and not line.startswith(("Attaching", "ready", "@ready")):
                out.skip(line)
            continue
        address, old, new, count = match.groups()
        out.rows += 1
        transition = arrow(state_name(int(old)), state_name(int(new)))
        out.add(sides.get(address), "state_change", transition, int(count))
    return out


@dataclass(frozen=True)
class Tool:
    name: str
    package: str
    argv: tuple[str, ...]
    bcc: bool  # a bcc tool: Python, compiled at start against kernel headers
    ready: Callable[[str], bool]  # the output line that says the programs are attached
    parse: Callable[[list[str], dict[str, str]], Parsed]
    description: str
    hooks: tuple[str, ...]
    invisible: dict[str, str]
    sentinel_rows: int = 0  # rows it prints for a sentinel session (send_sentinels); 0: drained by quiet
    sentinel_last: str = ""  # in the session's last row, after its addresses


_NO_EVENTS = "the tool does not trace it"
TOOLS = {tool.name: tool for tool in (
    Tool("bcc-tcpstates", "bpfcc-tools", ("tcpstates-bpfcc",), True, lambda line: line.startswith("SKADDR"),
         _tcpstates, "bcc's tcpstates-bpfcc as Debian ships it: a printed line per state change (Python perf-buffer "
         "callbacks)", (STATE_HOOK,),
         {"retransmit, synack_retransmit, reset_sent, reset_received, sock_destroy, probe": _NO_EVENTS}, 3, "-> CLOSE "),
    Tool("bcc-tcplife", "bpfcc-tools", ("tcplife-bpfcc",), True, lambda line: line.startswith("PID"),
         _tcplife, "bcc's tcplife-bpfcc: a line per closed session, counted in the kernel by state changes",
         (STATE_HOOK,),
         {"state_change": "only a session's end (one line per session) is printed, not its transitions",
          "retransmit, synack_retransmit, reset_sent, reset_received, sock_destroy, probe": _NO_EVENTS}, 1),
    Tool("bcc-tcpretrans", "bpfcc-tools", ("tcpretrans-bpfcc",), True, lambda line: line.startswith("TIME"),
         _tcpretrans, "bcc's tcpretrans-bpfcc: a line per retransmitted skb", ("tracepoint:tcp:tcp_retransmit_skb",),
         {"state_change, synack_retransmit, reset_sent, reset_received, sock_destroy, probe": _NO_EVENTS}),
    Tool("bpftrace", "bpftrace", ("bpftrace", "-e", BPFTRACE_PROGRAM), False, lambda line: line.strip() == "ready",
         _bpftrace, "a bpftrace one-liner counting inet_sock_set_state by (address, old, new) in a kernel map, "
         "printed at exit", (STATE_HOOK,),
         {"retransmit, synack_retransmit, reset_sent, reset_received, sock_destroy, probe": _NO_EVENTS}),
)}


def _prog_stats(pid: int) -> dict[str, int]:
    """run_cnt (with bpf_stats on), run_time_ns and recursion_misses of the BPF programs the
    process holds, from its fds' fdinfo (a prog fd's fdinfo carries them)."""
    totals = {"programs": 0, "run_cnt": 0, "run_time_ns": 0, "recursion_misses": 0}
    fd_dir = Path(f"/proc/{pid}/fdinfo")
    try:
        entries = list(fd_dir.iterdir())
    except OSError:
        return totals
    for entry in entries:
        try:
            text = entry.read_text()
        except OSError:
            continue
        if "prog_id:" not in text:
            continue
        totals["programs"] += 1
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key in ("run_cnt", "run_time_ns", "recursion_misses"):
                totals[key] += int(value.strip() or 0)
    return totals


TCP_REPAIR = 19  # linux/tcp.h
SENTINEL_PORT = 9  # the port the sentinel sessions "connect" to; no packet is sent
# LADDR LPORT RADDR RPORT, in tcpstates' and tcplife's rows (tcpstates prints LPORT 0 for CLOSE->SYN_SENT)
SENTINEL_ROW = re.compile(rf"127\.0\.0\.1\s+(\d+)\s+127\.0\.0\.1\s+{SENTINEL_PORT}\s")
SENTINEL_WAIT_S = 2.0  # a sentinel not printed by then is sent again (its CPU's ring may have been full)


def send_sentinels(cpus: set[int]) -> dict[int, int]:
    """A sentinel session on each CPU: a socket in repair mode (TCP_REPAIR, as CRIU restores
    connections) connects to 127.0.0.1 and closes, CLOSE->SYN_SENT->ESTABLISHED->CLOSE with no
    packet sent: three rows for tcpstates, a session for tcplife, foreign to the sides. It does two
    things for a tool reading per-CPU perf rings. When a ring is full the kernel counts what it
    drops and writes that count (PERF_RECORD_LOST, printed by bcc's reader as "Possibly lost N
    samples") only ahead of the next sample that fits on that CPU: after a run's last burst no
    sample comes, and a tool stopped then never reports the loss. And the sentinel's row is the
    last thing in its CPU's ring: once printed, the tool has read everything before it.
    Returns each CPU's sentinel local port."""
    allowed = os.sched_getaffinity(0)
    ports = {}
    try:
        for cpu in sorted(cpus):
            os.sched_setaffinity(0, {cpu})  # this thread only: the events fire on the CPU that connects
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sentinel:
                sentinel.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
                sentinel.connect(("127.0.0.1", SENTINEL_PORT))
                ports[cpu] = sentinel.getsockname()[1]
    finally:
        os.sched_setaffinity(0, allowed)
    return ports


class _PeerRun:
    def __init__(self, tool: Tool, topology: Topology, params: dict[str, Any]):
        self.tool = tool
        self.sides = {host.address: host.role for host in topology.hosts}
        self.process: subprocess.Popen | None = None
        self.directory = Path(tempfile.mkdtemp(prefix=f"tpbench-{tool.name}-",
                                               dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
        self.headers: KernelHeaders | None = None
        self.tries: list[str] = []
        self.deferred = DeferredCpu()
        self.sentinels: dict[int, int] = {}  # sentinel port -> the CPU it was sent on
        try:
            started = time.monotonic()
            self._start()
            self.start_s = round(time.monotonic() - started, 3)
            self.startup_cpu_s = process_cpu_s(self.process.pid)
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        tool = self.tool
        candidates: list[KernelHeaders | None] = [None]
        if tool.bcc:
            candidates = ([_working_headers[tool.name]] if tool.name in _working_headers
                          else header_candidates())
        for i, headers in enumerate(candidates):
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            if headers is not None:
                env.update(headers.environment())
            self.stdout = self.directory / "stdout"
            self.stderr = self.directory / "stderr"
            with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
                self.process = subprocess.Popen(list(tool.argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                                env=env, start_new_session=True, preexec_fn=die_with_runner)
            failure = self._wait_ready()
            if failure is None:
                self.headers = headers
                if headers is not None:
                    _working_headers[tool.name] = headers
                return
            self.tries.append(f"{headers.package_version if headers else 'default'}: {failure}")
            kill(self.process)
            last = i == len(candidates) - 1
            if last or not COMPILE_ERROR.search(self.stderr.read_text(errors="replace")):
                raise BackendError(f"{tool.name}: {failure}")

    def _wait_ready(self) -> str | None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            text = self.stdout.read_text(errors="replace")
            if any(self.tool.ready(line) for line in text.splitlines()):
                return None
            if self.process.poll() is not None:
                errors = [line for line in self.stderr.read_text(errors="replace").splitlines() if line.strip()]
                first = next((line for line in errors if COMPILE_ERROR.search(line)), errors[-1] if errors else "")
                return f"exited ({self.process.returncode}) before it was ready: {first.strip() or 'no output'}"
            time.sleep(0.02)
        return f"not ready within {START_TIMEOUT_S:.0f} s (no header in its output)"

    def _drain(self) -> dict[str, Any]:
        """Wait until the tool has printed what its buffers held: until each CPU's sentinel row is
        out (tools that print one), else until its output stops growing."""
        if self.tool.sentinel_rows:
            return self._drain_by_sentinels()
        started = time.monotonic()
        size, since = -1, started
        while time.monotonic() - started < DRAIN_MAX_S:
            now_size = self.stdout.stat().st_size
            if now_size != size:
                size, since = now_size, time.monotonic()
            elif time.monotonic() - since >= DRAIN_QUIET_S:
                break
            time.sleep(0.02)
        return {"method": f"output unchanged for {DRAIN_QUIET_S} s", "drain_s": round(time.monotonic() - started, 3)}

    def _drain_by_sentinels(self) -> dict[str, Any]:
        started = time.monotonic()
        pending = set(os.sched_getaffinity(0))
        sent = self.sentinels  # sentinel port -> its CPU
        rounds = 0
        with open(self.stdout, "rb") as out:
            tail = b""
            while pending and time.monotonic() - started < DRAIN_MAX_S:
                sent.update({port: cpu for cpu, port in send_sentinels(pending).items()})
                rounds += 1
                round_started = time.monotonic()
                while pending and time.monotonic() - round_started < SENTINEL_WAIT_S:
                    chunk = out.read()
                    if chunk:
                        complete, _, tail = (tail + chunk).rpartition(b"\n")
                        for line in complete.decode(errors="replace").splitlines():
                            match = SENTINEL_ROW.search(line)
                            if match and int(match.group(1)) in sent and self.tool.sentinel_last in line[match.end():]:
                                pending.discard(sent[int(match.group(1))])  # its last row is out
                    else:
                        time.sleep(0.02)
        return {"method": "a sentinel session on each CPU, printed after everything before it in that CPU's ring",
                "drain_s": round(time.monotonic() - started, 3), "sentinel_rounds": rounds,
                "complete": not pending, "cpus_not_drained": sorted(pending)}

    def _stop(self) -> tuple[dict[str, float] | None, str]:
        """Stop the tool as a user does, with Ctrl-C: bpftrace prints its maps, bcc tools exit. A bcc
        tool busy with a backlog may not heed it: the KeyboardInterrupt is raised inside a perf-buffer
        callback, which ctypes reports and swallows. Ctrl-C is pressed again each second, then the
        tool gets SIGTERM (it dies at once; what it printed is in its output file)."""
        started = time.monotonic()
        while time.monotonic() - started < SIGINT_HEEDED_S:
            self.process.send_signal(signal.SIGINT)
            try:
                return reap(self.process, 1.0), f"SIGINT ({time.monotonic() - started:.1f} s)"
            except subprocess.TimeoutExpired:
                pass
        self.process.send_signal(signal.SIGTERM)
        try:
            return reap(self.process, STOP_TIMEOUT_S), f"SIGTERM: SIGINT not heeded for {SIGINT_HEEDED_S:.0f} s"
        except subprocess.TimeoutExpired:
            raise BackendError(f"{self.tool.name} did not exit within {STOP_TIMEOUT_S:.0f} s of SIGTERM") from None

    def loop_ended(self) -> None:
        self.deferred.mark("tool", self.process.pid if self.process else None)

    def detach(self) -> Observation:
        try:
            drain = self._drain()
            stats = _prog_stats(self.process.pid)
            cpu, stopped_by = self._stop()
            lines = self.stdout.read_text(errors="replace").splitlines()
            stderr = self.stderr.read_text(errors="replace")
        finally:
            self.close()
        parsed = self.tool.parse(lines, self.sides)
        reported = sum(int(n) for n in LOST_LINE.findall(stderr))
        if self.sentinels:  # a sentinel sent into a full ring is in the tool's count, not the workload's
            printed = sum(1 for line in lines if SENTINEL_ROW.search(line))
            drain["sentinel_samples"] = {"sent": len(self.sentinels) * self.tool.sentinel_rows, "printed": printed}
            reported -= max(0, drain["sentinel_samples"]["sent"] - printed)
        counted = kernel_version() >= MISSES_COUNTED_FROM["tp"]  # classic tracepoint programs
        observation = Observation()
        for side in SIDES:
            observation.sides[side] = {"events": dict(sorted(parsed.events[side].items())),
                                       "transitions": dict(sorted(parsed.transitions[side].items()))}
            for kind, n in parsed.events[side].items():
                observation.events[kind] = observation.events.get(kind, 0) + n
            for name, n in parsed.transitions[side].items():
                observation.transitions[name] = observation.transitions.get(name, 0) + n
        observation.lost = reported + stats["recursion_misses"] if counted else None
        errors = [line for line in stderr.splitlines() if line.strip() and not LOST_LINE.search(line)]
        observation.details = {
            "tool": " ".join(self.tool.argv[:1]), "package": self.tool.package, "scope": "whole host",
            "argv": list(self.tool.argv),
            "environment": {"PYTHONUNBUFFERED": "1", **(self.headers.environment() if self.headers else {})},
            "headers": self.headers.package_version if self.headers else None,
            "header_tries": self.tries,
            "start_s": self.start_s, "startup_cpu_s": self.startup_cpu_s, "drain_s": drain.pop("drain_s"), "drain": drain,
            "stopped_by": stopped_by,
            "tool_cpu_s": cpu, "rows": parsed.rows,
            # printing its backlog, then exiting (bcc's cleanup detaches its programs): in the cost
            "deferred_cpu_s": self.deferred.since("tool", (cpu or {}).get("total")), "foreign_rows": parsed.foreign,
            "unparsed": parsed.unparsed, **parsed.extra,
            "lost_reported_by_tool": reported,  # less the sentinels' own samples
            "programs": stats,
            "lost_recursion": stats["recursion_misses"] if counted else None,
            "loss_method": ("the tool's own 'Possibly lost N samples' lines (bcc's perf reader; for tools drained "
                            "by sentinels, each CPU's pending count is written ahead of its sentinel) plus the kernel's "
                            "recursion_misses of the tool's programs (read from its fds before SIGINT)"
                            + ("" if counted else "; before 6.7 the kernel does not count skipped classic "
                               "tracepoint runs, so lost is null")),
            "stderr_tail": errors[-5:],
            "invisible": self.tool.invisible,
        }
        return observation

    def close(self) -> None:
        kill(self.process)
        self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)


class PeerBackend(Backend):
    """One of TOOLS as a backend."""

    params: tuple[Param, ...] = ()

    def __init__(self, tool: str):
        self.tool = TOOLS[tool]
        self.name = self.tool.name
        self.description = self.tool.description + " (whole host; measured alone)"
        self.hooks = self.tool.hooks

    def availability(self, probe: KernelProbe, params: dict[str, Any] | None = None) -> Availability:
        binary = self.tool.argv[0]
        if shutil.which(binary) is None:
            return Availability(False, f"{binary} not installed (Debian package {self.tool.package}: make setup)",
                                (binary,))
        missing = tuple(hook for hook in self.hooks if hook in probe.capabilities and not probe.available(hook))
        if missing:
            return Availability(False, f"{missing[0]}: {probe[missing[0]].reason}", missing)
        if self.tool.bcc and not probe.available("bcc"):
            reason = probe["bcc"].reason if "bcc" in probe.capabilities else "bcc is not importable"
            return Availability(False, f"bcc: {reason}", ("bcc",))
        return Availability(True, f"{binary} ({self.tool.package}), whole host")

    def attach(self, topology: Topology, params: dict[str, Any]) -> _PeerRun:
        return _PeerRun(self.tool, topology, params)
